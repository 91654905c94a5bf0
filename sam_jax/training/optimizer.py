"""AdamW with the paper's schedule (linear warmup, then x0.1 steps; a cosine decay as an
option), layer-wise learning-rate decay over the image encoder, no weight decay on norms,
biases and position tables, and the prompt encoder's fixed Fourier matrix frozen; with
`optimizer.trainable`, only the named parameters train (e.g. the mask decoder alone)."""

from __future__ import annotations

import flax
import jax
import jax.numpy as jnp
import optax

from sam_jax.io.checkpoint import abstract_params

FROZEN = ("positional_encoding_gaussian_matrix",)  # a buffer in the reference, not trained


SCHEDULES = ("step", "cosine")


def learning_rate_schedule(
    lr: float,
    warmup_steps: int,
    decay_steps,
    decay_factor: float,
    kind: str = "step",
    total_steps: int = 0,
):
    """Linear warmup from 0 to lr over warmup_steps, then

    - "step" (the paper's): lr * decay_factor**k after the k-th of `decay_steps` (absolute
      step numbers);
    - "cosine": a half cosine from lr at the end of warmup to lr * decay_factor at
      `total_steps`, constant after.
    """
    if kind == "step":
        boundaries = {int(s): decay_factor for s in decay_steps}
        after = optax.piecewise_constant_schedule(lr, boundaries)
    elif kind == "cosine":
        start = max(int(warmup_steps), 0)
        if int(total_steps) <= start:
            raise ValueError(
                f"a cosine schedule needs num_train_steps ({total_steps}) above "
                f"warmup_steps ({warmup_steps})"
            )
        cosine = optax.cosine_decay_schedule(lr, int(total_steps) - start, alpha=decay_factor)

        def after(step):
            return cosine(step - start)
    else:
        raise ValueError(f"unknown optimizer.schedule {kind!r}; choose one of {SCHEDULES}")
    if warmup_steps <= 0:
        return after
    warm = optax.linear_schedule(0.0, lr, warmup_steps)
    return lambda step: jnp.where(step < warmup_steps, warm(step), after(step))


def layer_id(path: tuple[str, ...], depth: int) -> int:
    """0 for the patch/position embeddings, i+1 for encoder block i, depth+1 for the neck and
    everything after the encoder."""
    if path[0] != "image_encoder":
        return depth + 1
    if path[1] in ("patch_embed", "pos_embed"):
        return 0
    if path[1].startswith("blocks_"):
        return int(path[1].split("_")[1]) + 1
    return depth + 1


def layer_scales(params, depth: int, decay: float):
    """Per-parameter lr multipliers decay**(depth + 1 - layer_id): 1 for the decoder."""
    flat = flax.traverse_util.flatten_dict(params)
    return flax.traverse_util.unflatten_dict(
        {p: decay ** (depth + 1 - layer_id(p, depth)) for p in flat}
    )


def weight_decay_mask(params):
    """Decay only matrices and conv kernels (not norms, biases, embeddings, position tables)."""
    flat = flax.traverse_util.flatten_dict(params)
    return flax.traverse_util.unflatten_dict({p: p[-1] == "kernel" for p in flat})


def _scale_by_tree(scales) -> optax.GradientTransformation:
    """Multiply each update by its entry of `scales` (a tree of floats like the params).

    Inside `multi_transform` the updates of the other group arrive as `optax.MaskedNode`
    placeholders; `scales` leads the tree_map so such a subtree is passed through whole.
    """

    def scale(s, u):
        return u if isinstance(u, optax.MaskedNode) else u * s

    def update(updates, state, params=None):
        del params
        return jax.tree_util.tree_map(scale, scales, updates), state

    return optax.GradientTransformation(lambda params: optax.EmptyState(), update)


def trainable_prefixes(text: str) -> list[str]:
    """`optimizer.trainable` ("a/b, c") -> ["a/b", "c"] (empty: everything trains)."""
    return [part.strip().strip("/") for part in str(text or "").split(",") if part.strip()]


def parameter_paths(model_config) -> list[str]:
    """Every parameter of a model config, as "/"-joined paths (shapes only, nothing run)."""
    flat = flax.traverse_util.flatten_dict(abstract_params(model_config))
    return ["/".join(p) for p in flat]


def _label(path: tuple[str, ...], prefixes: list[str]) -> str:
    if path[-1] in FROZEN:
        return "frozen"
    if not prefixes:
        return "train"
    name = "/".join(path)
    hit = any(name == p or name.startswith(p + "/") for p in prefixes)
    return "train" if hit else "frozen"


def make_optimizer(config, params, depth: int) -> tuple[optax.GradientTransformation, callable]:
    """The optimizer for `config.optimizer` and its learning-rate schedule."""
    o = config.optimizer
    schedule = learning_rate_schedule(
        o.lr,
        o.warmup_steps,
        o.decay_steps,
        o.decay_factor,
        o.schedule,
        config.num_train_steps,
    )
    parts = []
    if o.grad_clip_norm and o.grad_clip_norm > 0:
        parts.append(optax.clip_by_global_norm(o.grad_clip_norm))
    parts.append(
        optax.adamw(
            schedule,
            b1=o.b1,
            b2=o.b2,
            eps=o.eps,
            weight_decay=o.weight_decay,
            mask=weight_decay_mask(params),
        )
    )
    if o.layer_decay != 1.0:
        parts.append(_scale_by_tree(layer_scales(params, depth, o.layer_decay)))
    tx = optax.chain(*parts)
    flat = flax.traverse_util.flatten_dict(params)
    prefixes = trainable_prefixes(o.get("trainable", ""))
    labels = flax.traverse_util.unflatten_dict({p: _label(p, prefixes) for p in flat})
    return optax.multi_transform({"train": tx, "frozen": optax.set_to_zero()}, labels), schedule
