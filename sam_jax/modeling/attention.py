"""Every attention in the model goes through this file, so fused kernels can be swapped in.

Layout is heads-first: queries (B, heads, Lq, D), keys (B, heads, Lk, D), values
(B, heads, Lk, Dv). On XLA:CPU this layout makes the score and value products plain batched
matrix products; the token-major layout cost about 40% more in the ViT-B global blocks.

`implementation`:
  - "xla": einsums and a float32 softmax; runs everywhere and is the parity path.
  - "cudnn": `jax.nn.dot_product_attention(implementation="cudnn")` (fused attention on
    NVIDIA GPUs, bf16/fp16 only).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

IMPLEMENTATIONS = ("xla", "cudnn")

# Grids with at most this many tokens (the 14 x 14 windows) fold the relative-position
# terms into the score matmul; larger ones (global blocks) add them by broadcasting.
_FOLD_MAX_TOKENS = 256


def _check_impl(implementation: str) -> None:
    if implementation not in IMPLEMENTATIONS:
        raise ValueError(
            f"unknown attention implementation {implementation!r}; choose one of {IMPLEMENTATIONS}"
        )


def _softmax_attend(scores: jax.Array, v: jax.Array) -> jax.Array:
    """softmax(scores) @ v with scores (B, H, Lq, Lk) -> (B, H, Lq, Dv).

    The normalisation is applied to the (Lq, Dv) output instead of the (Lq, Lk)
    probabilities: one pass less over the largest tensor, which bounds the global blocks.
    """
    scores = scores.astype(jnp.float32)
    weights = jnp.exp(scores - jax.lax.stop_gradient(scores.max(-1, keepdims=True)))
    out = jnp.einsum("bhqk,bhkd->bhqd", weights.astype(v.dtype), v)
    return (out / weights.sum(-1, keepdims=True).astype(out.dtype)).astype(v.dtype)


def _cudnn(q, k, v, bias=None, mask=None, scale=None):
    # jax.nn.dot_product_attention takes token-major (B, L, heads, D).
    def t(x):
        return jnp.swapaxes(x, 1, 2)

    out = jax.nn.dot_product_attention(
        t(q), t(k), t(v), bias=bias, mask=mask, scale=scale, implementation="cudnn"
    )
    return t(out)


def dot_product_attention(
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    *,
    key_mask: jax.Array | None = None,
    scale: float | None = None,
    implementation: str = "xla",
) -> jax.Array:
    """softmax(q k^T * scale) v, with an optional key validity mask (B, Lk) of bools.

    Masked keys get no weight at all, so padded prompt tokens leave the real tokens'
    outputs exactly as if the padding were absent.
    """
    _check_impl(implementation)
    if scale is None:
        scale = 1.0 / np.sqrt(q.shape[-1])
    mask = None if key_mask is None else key_mask[:, None, None, :]
    if implementation == "cudnn":
        return _cudnn(q, k, v, mask=mask, scale=scale)
    scores = jnp.einsum("bhqd,bhkd->bhqk", q * jnp.asarray(scale, q.dtype), k)
    if mask is not None:
        scores = jnp.where(mask, scores, -jnp.inf)
    return _softmax_attend(scores, v)


def rel_pos_attention(
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    rel_h: jax.Array,
    rel_w: jax.Array,
    *,
    scale: float,
    implementation: str = "xla",
) -> jax.Array:
    """Attention over an H x W grid with the decomposed relative-position term of ViTDet.

    q, k, v: (B, heads, H*W, D). rel_h: (B, heads, H*W, H) and rel_w: (B, heads, H*W, W),
    the per-query terms added to the scores of all keys in a key row / key column.

    Small grids (windows) fold the relative terms into the QK^T matmul: the query gets
    rel_h and rel_w appended, each key one-hot indicators of its row and column, so one
    matmul yields q.k*scale + rel_h[row(k)] + rel_w[col(k)]. Large grids (global blocks)
    add the two terms by broadcasting, which costs less than a 3x wider matmul there, one
    head at a time.
    """
    _check_impl(implementation)
    b, heads, length, _ = q.shape
    gh, gw = rel_h.shape[-1], rel_w.shape[-1]
    if gh * gw != length:
        raise ValueError(f"grid {gh}x{gw} does not match {length} tokens")
    dtype = q.dtype

    if implementation == "cudnn":
        bias = (rel_h[..., :, None] + rel_w[..., None, :]).reshape(b, heads, length, length)
        return _cudnn(q, k, v, bias=bias, scale=scale)

    qs = q * jnp.asarray(scale, dtype)
    if length <= _FOLD_MAX_TOKENS:
        rows = np.repeat(np.eye(gh, dtype=np.float32), gw, axis=0)  # (H*W, H)
        cols = np.tile(np.eye(gw, dtype=np.float32), (gh, 1))  # (H*W, W)
        indicators = jnp.asarray(np.concatenate([rows, cols], axis=1), dtype)
        indicators = jnp.broadcast_to(indicators, (b, heads, length, gh + gw))
        q_aug = jnp.concatenate([qs, rel_h, rel_w], axis=-1)
        k_aug = jnp.concatenate([k, indicators], axis=-1)
        return _softmax_attend(jnp.einsum("bhqd,bhkd->bhqk", q_aug, k_aug), v)

    # One (batch, head) at a time: its 4096 x 4096 scores stay a bounded buffer instead of
    # all heads' at once (0.8 GB for ViT-B), and on CPU the loop is faster too. Under a
    # gradient the loop body is rematerialised: the backward pass recomputes each head's
    # scores instead of keeping every head's (ViT-B: 6 GB less per image in training).
    def one_head(args):
        q1, k1, v1, h1, w1 = args
        scores = jnp.einsum("qd,kd->qk", q1, k1).reshape(length, gh, gw)
        scores = scores + h1[:, :, None] + w1[:, None, :]
        return _softmax_attend(scores.reshape(1, 1, length, length), v1[None, None])[0, 0]

    def flat(x):
        return x.reshape(b * heads, *x.shape[2:])

    out = jax.lax.map(
        jax.checkpoint(one_head), (flat(qs), flat(k), flat(v), flat(rel_h), flat(rel_w))
    )
    return out.reshape(b, heads, length, -1)
