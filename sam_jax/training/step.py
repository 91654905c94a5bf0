"""The training step: one image-encoder pass per image, then the paper's simulated
interactive rounds on the decoder for every sampled mask, losses summed over rounds.

Batches (global arrays, leading axis = images):
  image (B, S, S, 3) uint8, input_size (B, 2) int32, masks (B, K, L, L) uint8 at the
  low-res frame (L = S / 4), mask_valid (B, K) bool.
"""

from __future__ import annotations

import functools
from typing import Any

import flax
import jax
import jax.numpy as jnp
import optax

from sam_jax.modeling.sam import Sam
from sam_jax.sharding import constrain_batch
from sam_jax.training import losses, prompts


@flax.struct.dataclass
class TrainState:
    step: jax.Array
    params: Any
    opt_state: Any


def _round_outputs(logits, iou_pred, state: prompts.PromptState, gt, valid, loss_cfg):
    """Loss terms of one round for all masks, and the logits fed back to the next round.

    A single point alone is ambiguous: the three multimask outputs are scored and only the
    best is trained. Any other prompt uses the single-mask output (token 0), as the paper does.
    """
    num_prompts = state.point_valid.sum(-1) + state.has_box.astype(jnp.int32)
    multimask = (num_prompts == 1) & ~state.has_box
    kw = dict(
        focal_weight=loss_cfg.focal_weight,
        dice_weight=loss_cfg.dice_weight,
        iou_weight=loss_cfg.iou_weight,
        focal_alpha=loss_cfg.focal_alpha,
        focal_gamma=loss_cfg.focal_gamma,
    )
    multi = jax.vmap(functools.partial(losses.sam_loss, multimask=True, **kw))(
        logits[:, 1:], iou_pred[:, 1:], gt, valid
    )
    single = jax.vmap(functools.partial(losses.sam_loss, multimask=False, **kw))(
        logits[:, :1], iou_pred[:, :1], gt, valid
    )
    loss = jnp.where(multimask, multi[0], single[0])
    actual_iou = jnp.where(multimask, multi[1]["actual_iou"], single[1]["actual_iou"])
    terms = {
        k: jnp.where(multimask, multi[1][k], single[1][k]) for k in ("focal", "dice", "iou_mse")
    }
    feedback_multi = jax.vmap(prompts.select_for_feedback)(logits[:, 1:], iou_pred[:, 1:])
    feedback = jnp.where(multimask[:, None, None], feedback_multi, logits[:, 0])
    return loss, terms, actual_iou, feedback


def compute_loss(params, module: Sam, batch, key, config):
    """Total loss and metrics of one batch (pure; differentiable in params)."""
    t = config.train
    images, sizes = batch["image"], batch["input_size"]
    gt = batch["masks"].astype(bool)
    b, k, low = gt.shape[0], gt.shape[1], gt.shape[2]
    n = b * k
    scale = module.image_size / low
    k_drop, k_first, k_sched, k_rounds, k_dec = jax.random.split(key, 5)

    embeddings = module.apply(
        {"params": params},
        images,
        sizes,
        False,
        rngs={"dropout": k_drop},
        method=Sam.embed_images,
    )
    embeddings = constrain_batch(jnp.repeat(embeddings, k, axis=0))  # one row per mask
    gt = constrain_batch(gt.reshape(n, low, low))
    frame = jnp.repeat(sizes, k, axis=0).astype(jnp.float32)
    state, found = jax.vmap(
        functools.partial(
            prompts.first_prompt,
            max_points=1 + t.num_point_rounds,
            scale=scale,
            box_prob=t.box_prob,
            noise_frac=t.box_noise_frac,
            max_noise=t.box_max_noise,
        )
    )(jax.random.split(k_first, n), gt, frame_hw=frame)
    valid = batch["mask_valid"].reshape(n) & found
    num_valid = jnp.maximum(valid.sum(), 1)
    adds_point = prompts.interactive_schedule(k_sched, t.num_iterations, t.num_point_rounds)

    def decode(state, mask_inputs, key):
        return module.apply(
            {"params": params},
            embeddings,
            state.point_coords,
            state.point_labels,
            state.box,
            mask_inputs,
            state.point_valid,
            state.has_box,
            False,
            rngs={"dropout": key},
            method=Sam.decode_all,
        )

    def decode_and_score(state, mask_inputs, key):
        state = jax.tree_util.tree_map(constrain_batch, state)
        logits, iou_pred = decode(state, mask_inputs, key)
        loss, terms, iou, feedback = _round_outputs(logits, iou_pred, state, gt, valid, t)
        return loss, terms, iou, constrain_batch(feedback)

    if config.model.remat:
        # Each round's decoder activations (the image tokens and the upscaled mask features
        # of every mask) dwarf the encoder's at full size; keep only the round's inputs and
        # outputs and recompute the rest in the backward pass.
        decode_and_score = jax.checkpoint(decode_and_score)

    def mean(x):
        return jnp.sum(jnp.where(valid, x, 0.0)) / num_valid

    keys = jax.random.split(k_dec, t.num_iterations)
    loss0, terms0, iou0, feedback = decode_and_score(state, None, keys[0])

    def one_round(carry, xs):
        state, feedback = carry
        adds, k_point, k_dec = xs
        pred = feedback > 0
        xy, label, ok = jax.vmap(prompts.error_region_point, in_axes=(0, 0, 0, None))(
            jax.random.split(k_point, n), pred, gt, scale
        )
        state = jax.vmap(prompts.add_point)(state, xy, label, ok & valid & adds)
        loss, terms, iou, feedback = decode_and_score(state, jax.lax.stop_gradient(feedback), k_dec)
        return (state, feedback), (mean(loss), jax.tree_util.tree_map(mean, terms), mean(iou))

    (_, _), (round_loss, round_terms, round_iou) = jax.lax.scan(
        one_round,
        (state, feedback),
        (adds_point[1:], jax.random.split(k_rounds, t.num_iterations - 1), keys[1:]),
        # Unrolled, XLA fuses and schedules across rounds (on CPU about 1.5x faster for 3
        # rounds); a rolled loop compiles faster for long schedules.
        unroll=bool(t.unroll_rounds),
    )
    round_loss = jnp.concatenate([mean(loss0)[None], round_loss])
    round_iou = jnp.concatenate([mean(iou0)[None], round_iou])
    round_terms = {
        key: jnp.concatenate([mean(terms0[key])[None], v]) for key, v in round_terms.items()
    }
    total = round_loss.sum()
    metrics = {
        "loss": total,
        "focal": round_terms["focal"].sum(),
        "dice": round_terms["dice"].sum(),
        "iou_mse": round_terms["iou_mse"].sum(),
        "round_iou": round_iou,
        "valid_masks": valid.sum(),
    }
    return total, metrics


def train_step(state: TrainState, batch, key, *, module: Sam, tx, schedule, config):
    """One optimizer step -> (new state, metrics). Pure; jit with donate_argnums=0."""
    key = jax.random.fold_in(key, state.step)
    grad_fn = jax.value_and_grad(compute_loss, has_aux=True)
    (_, metrics), grads = grad_fn(state.params, module, batch, key, config)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    metrics["grad_norm"] = optax.tree.norm(grads)
    # A finite loss with a non-finite update would still poison the next checkpoint.
    metrics["update_norm"] = optax.tree.norm(updates)
    metrics["lr"] = schedule(state.step)
    return TrainState(state.step + 1, params, opt_state), metrics
