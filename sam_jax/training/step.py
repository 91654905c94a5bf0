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
from sam_jax.modeling.sharding import constrain_batch
from sam_jax.training import losses, prompts
from sam_jax.training.optimizer import trainable_prefixes


@flax.struct.dataclass
class TrainState:
    step: jax.Array
    params: Any
    opt_state: Any


def _round_outputs(logits, iou_pred, state: prompts.PromptState, gt, valid, inside, loss_cfg):
    """Loss terms of one round for all masks, and the logits fed back to the next round.

    A single point alone is ambiguous: the three multimask outputs are scored and only the
    best is trained. Any other prompt uses the single-mask output (token 0), as the paper does.
    inside (N, h, w) bool: the grid cells of the image (not its padding), or None; the IoU
    head's target is then measured there only.
    """
    num_prompts = (
        state.point_valid.sum(-1)
        + state.has_box.astype(jnp.int32)
        + state.has_text.astype(jnp.int32)
    )
    multimask = (num_prompts == 1) & ~state.has_box
    kw = dict(
        focal_weight=loss_cfg.focal_weight,
        dice_weight=loss_cfg.dice_weight,
        iou_weight=loss_cfg.iou_weight,
        focal_alpha=loss_cfg.focal_alpha,
        focal_gamma=loss_cfg.focal_gamma,
    )
    multi = jax.vmap(
        functools.partial(
            losses.sam_loss,
            multimask=True,
            others_weight=loss_cfg.multimask_others_weight,
            rank_weight=loss_cfg.iou_rank_weight,
            **kw,
        )
    )(logits[:, 1:], iou_pred[:, 1:], gt, valid, iou_region=inside)
    single = jax.vmap(functools.partial(losses.sam_loss, multimask=False, **kw))(
        logits[:, :1], iou_pred[:, :1], gt, valid, iou_region=inside
    )
    loss = jnp.where(multimask, multi[0], single[0])
    actual_iou = jnp.where(multimask, multi[1]["actual_iou"], single[1]["actual_iou"])
    terms = {
        k: jnp.where(multimask, multi[1][k], single[1][k]) for k in ("focal", "dice", "iou_mse")
    }
    feedback_multi = jax.vmap(prompts.select_for_feedback)(logits[:, 1:], iou_pred[:, 1:])
    feedback = jnp.where(multimask[:, None, None], feedback_multi, logits[:, 0])
    seen = logits[:, 1:] if inside is None else jnp.where(inside[:, None], logits[:, 1:], -1.0)
    ranking = ranking_sums(
        losses.mask_iou(seen, gt[:, None]),
        iou_pred[:, 1:],
        multi[1]["best_index"],
        multimask & valid,
    )
    return loss, terms, actual_iou, feedback, ranking


def ranking_sums(output_iou, iou_pred, best_index, counted) -> dict[str, jax.Array]:
    """Sums over the `counted` masks (N,) of how the three multimask outputs and the IoU
    head did: per-output IoU (N, 3) on the loss grid, the min-loss choice `best_index` (N,),
    whether the head's argmax of `iou_pred` (N, 3) is a truly best output (ties count as
    right), its mean |predicted - actual| IoU, and the IoU of the head's pick and of the
    best output. Sums (and `count`), so chunks and rounds add up; `ranking_means` divides.
    """
    w = counted.astype(jnp.float32)
    iou_pred = iou_pred.astype(jnp.float32)
    picked = jnp.take_along_axis(output_iou, jnp.argmax(iou_pred, -1)[:, None], -1)[:, 0]
    oracle = output_iou.max(-1)
    wins = jax.nn.one_hot(best_index, output_iou.shape[-1])
    return {
        "count": w.sum(),
        "output_iou": (w[:, None] * output_iou).sum(0),
        "output_wins": (w[:, None] * wins).sum(0),
        "iou_head_top1": (w * (picked >= oracle - 1e-6)).sum(),
        "iou_head_abs_err": (w * jnp.abs(iou_pred - output_iou).mean(-1)).sum(),
        "picked_iou": (w * picked).sum(),
        "oracle_iou": (w * oracle).sum(),
    }


def ranking_means(sums: dict[str, jax.Array]) -> dict[str, jax.Array]:
    """`ranking_sums` -> means over the counted masks (zeros when none was counted)."""
    count = jnp.maximum(sums["count"], 1.0)
    return {k: v / count for k, v in sums.items() if k != "count"}


def encoder_is_trained(config) -> bool:
    """False when `optimizer.trainable` names parameters and none is the image encoder's."""
    prefixes = trainable_prefixes(config.optimizer.get("trainable", ""))
    return not prefixes or any(
        p == "image_encoder" or p.startswith("image_encoder/") for p in prefixes
    )


def _run_rounds(params, module: Sam, batch, key, config, with_grads: bool):
    """The encoder pass and every prompting round -> (total, metrics, grads or None).

    with_grads=True differentiates round by round: each round's decoder gradient and its
    gradient with respect to the image embeddings are taken right after that round, summed,
    and the embedding gradient goes back through the encoder once at the end. The rounds only
    see each other through prompts and stopped-gradient masks, so this is the gradient of the
    summed loss, but the backward pass never holds more than one round's decoder activations
    (64 masks of image tokens and 256 x 256 upscaled features each at full size), or one
    chunk's of `train.masks_per_chunk` masks per image.
    """
    t = config.train
    images, sizes = batch["image"], batch["input_size"]
    gt = batch["masks"].astype(bool)
    b, k, low = gt.shape[0], gt.shape[1], gt.shape[2]
    n = b * k
    scale = module.image_size / low
    k_drop, k_first, k_sched, k_rounds, k_dec = jax.random.split(key, 5)
    encoder_params = params["image_encoder"]
    decoder_params = {name: v for name, v in params.items() if name != "image_encoder"}

    def embed(encoder_params):
        return module.apply(
            {"params": {"image_encoder": encoder_params}},
            images,
            sizes,
            False,
            rngs={"dropout": k_drop},
            method=Sam.embed_images,
        )

    # A frozen encoder (optimizer.trainable names none of it) needs no backward pass: its
    # gradient would be thrown away, and it is most of a step's work at full size.
    encoder_trains = encoder_is_trained(config)
    if with_grads and encoder_trains:
        image_embeddings, embed_vjp = jax.vjp(embed, encoder_params)
    else:
        image_embeddings = embed(encoder_params)
        if with_grads:
            image_embeddings = jax.lax.stop_gradient(image_embeddings)
    gt = constrain_batch(gt.reshape(n, low, low))
    frame = jnp.repeat(sizes, k, axis=0).astype(jnp.float32)
    inside = None
    if t.clip_to_image:
        # Grid cells that hold any of the image (the rest is the zero padding below and right
        # of it, which the predictor crops away): error clicks and the IoU head's target stay
        # there, as they do for a user.
        cells = jnp.ceil(frame / scale)
        grid = jnp.arange(low, dtype=jnp.float32)
        inside = (grid[None, :, None] < cells[:, 0, None, None]) & (
            grid[None, None, :] < cells[:, 1, None, None]
        )
        inside = constrain_batch(inside)
    text_kwargs = {}
    text_dim = module.text_embed_dim
    if text_dim:  # a text-prompt model: embeddings from the batch when it has them
        if "text_embedding" in batch:
            text_kwargs["text"] = batch["text_embedding"].reshape(n, text_dim)
            text_kwargs["text_ok"] = batch["text_valid"].reshape(n)
        else:
            text_kwargs["text"] = jnp.zeros((n, text_dim), jnp.float32)
            text_kwargs["text_ok"] = jnp.zeros((n,), bool)
    state, found = jax.vmap(
        functools.partial(
            prompts.first_prompt,
            max_points=1 + t.num_point_rounds,
            scale=scale,
            box_prob=t.box_prob,
            noise_frac=t.box_noise_frac,
            max_noise=t.box_max_noise,
            text_prob=config.text.prob if "text" in config else 0.0,
            interior_prob=t.interior_prob,
            center_prob=t.center_prob,
        )
    )(jax.random.split(k_first, n), gt, frame_hw=frame, **text_kwargs)
    valid = batch["mask_valid"].reshape(n) & found
    num_valid = jnp.maximum(valid.sum(), 1)
    adds_point = prompts.interactive_schedule(k_sched, t.num_iterations, t.num_point_rounds)

    chunk = min(t.masks_per_chunk or k, k)
    if k % chunk:
        raise ValueError(f"train.masks_per_chunk={chunk} must divide masks_per_image={k}")
    num_chunks = k // chunk

    def to_chunks(x):
        """(b * k, ...) -> (num_chunks, b * chunk, ...): chunk j holds masks j*chunk.. of
        every image, so each chunk keeps the image (batch) axis and its sharding."""
        x = x.reshape(b, num_chunks, chunk, *x.shape[1:])
        return jnp.swapaxes(x, 0, 1).reshape(num_chunks, b * chunk, *x.shape[3:])

    def from_chunks(x):
        x = x.reshape(num_chunks, b, chunk, *x.shape[2:])
        return jnp.swapaxes(x, 0, 1).reshape(n, *x.shape[3:])

    def round_loss(decoder_params, image_embeddings, state, mask_inputs, gt, valid, inside, key):
        """Summed loss of one round's masks (or a chunk of them) over all valid masks of the
        batch (so chunks add up to the mean); aux: terms, IoU, fed-back logits."""
        state = jax.tree_util.tree_map(constrain_batch, state)
        repeats = gt.shape[0] // b
        embeddings = constrain_batch(jnp.repeat(image_embeddings, repeats, axis=0))
        logits, iou_pred = module.apply(
            {"params": decoder_params},
            embeddings,
            state.point_coords,
            state.point_labels,
            state.box,
            mask_inputs,
            state.point_valid,
            state.has_box,
            False,
            state.text if text_dim else None,
            state.has_text if text_dim else None,
            rngs={"dropout": key},
            method=Sam.decode_all,
        )
        loss, terms, iou, feedback, ranking = _round_outputs(
            logits, iou_pred, state, gt, valid, inside, t
        )

        def mean(x):
            return jnp.sum(jnp.where(valid, x, 0.0)) / num_valid

        terms = jax.tree_util.tree_map(mean, terms)
        ranking = jax.lax.stop_gradient(ranking)
        return mean(loss), (terms, mean(iou), ranking, constrain_batch(feedback))

    def chunk_round(state, mask_inputs, gt, valid, inside, key):
        """-> (loss, (terms, iou, ranking, feedback), (decoder grads, embedding grads) or
        None)."""
        args = (decoder_params, image_embeddings, state, mask_inputs, gt, valid, inside, key)
        if not with_grads:
            return *round_loss(*args), None
        grad_fn = jax.value_and_grad(round_loss, argnums=(0, 1), has_aux=True)
        (loss, aux), grads = grad_fn(*args)
        return loss, aux, grads

    def run_round(state, mask_inputs, key):
        if num_chunks == 1:
            return chunk_round(state, mask_inputs, gt, valid, inside, key)
        # Masks are independent given the image embeddings: decode and differentiate them
        # a chunk at a time, in a rolled loop, so only one chunk's activations are live.
        xs = jax.tree_util.tree_map(to_chunks, (state, mask_inputs, gt, valid, inside))
        xs = (*xs, jax.random.split(key, num_chunks))
        loss, (terms, iou, ranking, _), grads = jax.eval_shape(
            chunk_round, *jax.tree_util.tree_map(lambda x: x[0], xs)
        )
        zeros = jax.tree_util.tree_map(
            lambda x: jnp.zeros(x.shape, x.dtype), (loss, (terms, iou, ranking), grads)
        )

        def body(acc, xs):
            loss, (terms, iou, ranking, feedback), grads = chunk_round(*xs)
            acc = jax.tree_util.tree_map(jnp.add, acc, (loss, (terms, iou, ranking), grads))
            return acc, feedback

        (loss, (terms, iou, ranking), grads), feedback = jax.lax.scan(body, zeros, xs)
        return loss, (terms, iou, ranking, from_chunks(feedback)), grads

    keys = jax.random.split(k_dec, t.num_iterations)
    # Only the first round's statistics are kept: its single click is what the three
    # outputs and the IoU head are there for (and what the first held-out click scores).
    loss0, (terms0, iou0, ranking0, feedback), grads = run_round(state, None, keys[0])

    def one_round(carry, xs):
        state, feedback, grads = carry
        adds, k_point, k_dec = xs
        pred = feedback > 0 if inside is None else (feedback > 0) & inside
        xy, label, ok = jax.vmap(prompts.error_region_point, in_axes=(0, 0, 0, None, None, None))(
            jax.random.split(k_point, n), pred, gt, scale, t.interior_prob, t.center_prob
        )
        state = jax.vmap(prompts.add_point)(state, xy, label, ok & valid & adds)
        loss, (terms, iou, _, feedback), round_grads = run_round(
            state, jax.lax.stop_gradient(feedback), k_dec
        )
        grads = jax.tree_util.tree_map(jnp.add, grads, round_grads)
        return (state, feedback, grads), (loss, terms, iou)

    (_, _, grads), (round_losses, round_terms, round_iou) = jax.lax.scan(
        one_round,
        (state, feedback, grads),
        (adds_point[1:], jax.random.split(k_rounds, t.num_iterations - 1), keys[1:]),
        # Unrolled, XLA fuses and schedules across rounds (on CPU about 1.5x faster for 3
        # rounds); a rolled loop compiles faster for long schedules and keeps the rounds
        # strictly one after another.
        unroll=bool(t.unroll_rounds),
    )
    round_losses = jnp.concatenate([loss0[None], round_losses])
    round_iou = jnp.concatenate([iou0[None], round_iou])
    round_terms = {
        name: jnp.concatenate([terms0[name][None], v]) for name, v in round_terms.items()
    }
    total = round_losses.sum()
    metrics = {
        "loss": total,
        "focal": round_terms["focal"].sum(),
        "dice": round_terms["dice"].sum(),
        "iou_mse": round_terms["iou_mse"].sum(),
        "round_iou": round_iou,
        "valid_masks": valid.sum(),
        **ranking_means(ranking0),
    }
    if with_grads:
        decoder_grads, embedding_grads = grads
        if encoder_trains:
            (encoder_grads,) = embed_vjp(embedding_grads)
        else:
            encoder_grads = jax.tree_util.tree_map(jnp.zeros_like, encoder_params)
        grads = {**decoder_grads, "image_encoder": encoder_grads}
    return total, metrics, grads


def compute_loss(params, module: Sam, batch, key, config):
    """Total loss and metrics of one batch (pure; differentiable in params)."""
    total, metrics, _ = _run_rounds(params, module, batch, key, config, with_grads=False)
    return total, metrics


def loss_and_grads(params, module: Sam, batch, key, config):
    """((total, metrics), grads): what `jax.value_and_grad(compute_loss, has_aux=True)` gives,
    computed round by round (and chunk by chunk) so that peak memory holds one round's (one
    chunk's) decoder activations."""
    total, metrics, grads = _run_rounds(params, module, batch, key, config, with_grads=True)
    return (total, metrics), grads


def train_step(state: TrainState, batch, key, *, module: Sam, tx, schedule, config):
    """One optimizer step -> (new state, metrics). Pure; jit with donate_argnums=0."""
    key = jax.random.fold_in(key, state.step)
    (_, metrics), grads = loss_and_grads(state.params, module, batch, key, config)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    metrics["grad_norm"] = optax.tree.norm(grads)
    # A finite loss with a non-finite update would still poison the next checkpoint.
    metrics["update_norm"] = optax.tree.norm(updates)
    metrics["lr"] = schedule(state.step)
    return TrainState(state.step + 1, params, opt_state), metrics
