"""Every attention in the model goes through this file, so fused kernels can be swapped in.

Layout: queries (B, Lq, heads, D), keys (B, Lk, heads, D), values (B, Lk, heads, Dv).

`implementation`:
  - "xla": plain einsums and a float32 softmax; runs everywhere and is the parity path.
  - "cudnn": `jax.nn.dot_product_attention(implementation="cudnn")` (fused flash attention on
    NVIDIA GPUs, bf16/fp16 only).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

IMPLEMENTATIONS = ("xla", "cudnn")

# Above this many queries, global attention is computed in query tiles so the
# (heads, Lq, Lk) score tensor never exists whole (4096^2 x heads floats for ViT global blocks).
_QUERY_TILE = 256


def _check_impl(implementation: str) -> None:
    if implementation not in IMPLEMENTATIONS:
        raise ValueError(
            f"unknown attention implementation {implementation!r}; choose one of {IMPLEMENTATIONS}"
        )


def _softmax_attend(scores: jax.Array, v: jax.Array, out_dtype) -> jax.Array:
    """scores (B, heads, Lq, Lk) in any float dtype -> (B, Lq, heads, Dv)."""
    probs = jax.nn.softmax(scores.astype(jnp.float32), axis=-1).astype(v.dtype)
    return jnp.einsum("bhqk,bkhd->bqhd", probs, v).astype(out_dtype)


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
    if implementation == "cudnn":
        mask = None if key_mask is None else key_mask[:, None, None, :]
        return jax.nn.dot_product_attention(q, k, v, mask=mask, scale=scale, implementation="cudnn")
    scores = jnp.einsum("bqhd,bkhd->bhqk", q * jnp.asarray(scale, q.dtype), k)
    if key_mask is not None:
        scores = jnp.where(key_mask[:, None, None, :], scores, -jnp.inf)
    return _softmax_attend(scores, v, q.dtype)


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

    q, k, v: (B, H*W, heads, D). rel_h: (B, H*W, heads, H) and rel_w: (B, H*W, heads, W), the
    per-query terms added to the scores of all keys in a key row / key column.

    Small grids (windows) fold the relative terms into the QK^T matmul: the query gets
    rel_h and rel_w appended, each key one-hot indicators of its row and column, so one
    matmul yields q.k*scale + rel_h[row(k)] + rel_w[col(k)]. Large grids (global blocks) work
    in query tiles and add the two terms by broadcasting, which keeps memory bounded.
    """
    _check_impl(implementation)
    b, length, heads, _ = q.shape
    gh, gw = rel_h.shape[-1], rel_w.shape[-1]
    if gh * gw != length:
        raise ValueError(f"grid {gh}x{gw} does not match {length} tokens")
    dtype = q.dtype

    if implementation == "cudnn":
        bias = (rel_h[..., :, None] + rel_w[..., None, :]).reshape(b, length, heads, length)
        bias = jnp.transpose(bias, (0, 2, 1, 3))
        return jax.nn.dot_product_attention(q, k, v, bias=bias, scale=scale, implementation="cudnn")

    if length <= _QUERY_TILE:
        rows = np.repeat(np.eye(gh, dtype=np.float32), gw, axis=0)  # (H*W, H)
        cols = np.tile(np.eye(gw, dtype=np.float32), (gh, 1))  # (H*W, W)
        indicators = jnp.asarray(np.concatenate([rows, cols], axis=1), dtype)
        indicators = jnp.broadcast_to(indicators[None, :, None, :], (b, length, heads, gh + gw))
        q_aug = jnp.concatenate([q * jnp.asarray(scale, dtype), rel_h, rel_w], axis=-1)
        k_aug = jnp.concatenate([k, indicators], axis=-1)
        scores = jnp.einsum("bqhd,bkhd->bhqk", q_aug, k_aug)
        return _softmax_attend(scores, v, dtype)

    tile = _QUERY_TILE
    n_tiles = -(-length // tile)
    pad = n_tiles * tile - length

    def tiles(x):
        x = jnp.pad(x, ((0, 0), (0, pad), (0, 0), (0, 0)))
        return jnp.moveaxis(x.reshape(b, n_tiles, tile, *x.shape[2:]), 1, 0)

    qs = q * jnp.asarray(scale, dtype)

    def one_tile(args):
        q_t, rh_t, rw_t = args  # (B, tile, heads, .)
        scores = jnp.einsum("bqhd,bkhd->bhqk", q_t, k).reshape(b, heads, tile, gh, gw)
        rh_t = jnp.transpose(rh_t, (0, 2, 1, 3))[..., :, None]
        rw_t = jnp.transpose(rw_t, (0, 2, 1, 3))[..., None, :]
        scores = (scores + rh_t + rw_t).reshape(b, heads, tile, length)
        return _softmax_attend(scores, v, dtype)

    out = jax.lax.map(one_tile, (tiles(qs), tiles(rel_h), tiles(rel_w)))
    out = jnp.moveaxis(out, 0, 1).reshape(b, n_tiles * tile, heads, -1)
    return out[:, :length]
