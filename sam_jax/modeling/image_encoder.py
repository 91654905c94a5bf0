"""ViT image encoder of SAM (ViTDet-style windowed + global attention, decomposed
relative positions, convolutional neck). Channel-last: images (B, H, W, 3) ->
embeddings (B, H/16, W/16, out_chans)."""

from __future__ import annotations

from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from sam_jax.modeling.attention import dot_product_attention, rel_pos_attention, round_up
from sam_jax.modeling.common import Dtype, MLPBlock, dot_general_for, einsum, layer_norm_2d
from sam_jax.modeling.sharding import constrain, constrain_batch


def get_rel_pos(q_size: int, k_size: int, rel_pos: jax.Array) -> jax.Array:
    """Relative-position embeddings (q_size, k_size, C) for query/key extents.

    The table is linearly resized when its length differs from 2*max(q,k)-1, as
    `F.interpolate(mode="linear")` does in the reference.
    """
    max_rel_dist = int(2 * max(q_size, k_size) - 1)
    if rel_pos.shape[0] != max_rel_dist:
        rel_pos = jax.image.resize(
            rel_pos, (max_rel_dist, rel_pos.shape[1]), method="linear", antialias=False
        )
    q_coords = np.arange(q_size)[:, None] * max(k_size / q_size, 1.0)
    k_coords = np.arange(k_size)[None, :] * max(q_size / k_size, 1.0)
    relative = (q_coords - k_coords) + (k_size - 1) * max(q_size / k_size, 1.0)
    return rel_pos[relative.astype(np.int64)]


class PatchEmbed(nn.Module):
    """Non-overlapping patch projection (Conv with kernel = stride = patch size)."""

    patch_size: int
    embed_dim: int
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        p = self.patch_size
        return nn.Conv(
            self.embed_dim, (p, p), strides=(p, p), padding="VALID", dtype=self.dtype, name="proj"
        )(x)


class QKVProjection(nn.Module):
    """The fused q/k/v projection, (B, L, C) -> (B, L, 3, heads, C / heads).

    Its parameters are those of `nn.Dense(3 * C)` (kernel (C, 3C) with columns [q | k | v],
    each heads-major: PyTorch's `qkv` Linear, so checkpoints convert by the table). The
    product is taken with the kernel viewed as (C, 3, heads, C / heads) and that view's
    heads axis pinned to the 'tensor' mesh axis: under tensor parallelism each device then
    projects q, k and v of the same heads and attends over them locally, where a split of
    the 3C columns would hand one device q and half of k, and another the rest.
    """

    num_heads: int
    use_bias: bool = True
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        dim = x.shape[-1]
        shape = (3, self.num_heads, dim // self.num_heads)
        kernel = self.param("kernel", nn.initializers.lecun_normal(), (dim, 3 * dim))
        kernel = constrain(kernel.reshape(dim, *shape), (None, None, "heads", None))
        y = einsum("...c,cthd->...thd", x.astype(self.dtype), kernel.astype(self.dtype), self.dtype)
        if self.use_bias:
            bias = self.param("bias", nn.initializers.zeros, (3 * dim,))
            y = y + constrain(bias.reshape(shape), (None, "heads", None)).astype(self.dtype)
        return constrain(y, ("batch",) + (None,) * (x.ndim - 2) + (None, "heads", None))


class Attention(nn.Module):
    """Multi-head self-attention over an (H, W) grid with optional decomposed rel-pos.

    With window_size > 0 it attends within non-overlapping windows (the grid zero-padded to
    a multiple of the window, as the reference does after the block's LayerNorm). The q/k/v
    and output projections run on the unpadded grid: a padding token's q/k/v is the
    projection of zero, i.e. the bias, so the windows are filled with it after projecting,
    and padded queries' outputs are dropped before the output projection. The result is
    the reference's, without projecting the padding (4900 tokens instead of 4096 for
    ViT-B at 1024).
    """

    num_heads: int
    qkv_bias: bool = True
    use_rel_pos: bool = False
    input_size: tuple[int, int] | None = None
    window_size: int = 0
    dtype: Dtype = jnp.float32
    attention_impl: str = "auto"

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        b, h, w, dim = x.shape
        head_dim = dim // self.num_heads
        project = QKVProjection(self.num_heads, self.qkv_bias, dtype=self.dtype, name="qkv")
        qkv = project(x.reshape(b, h * w, dim))
        if self.window_size > 0:
            qkv = qkv.reshape(b, h, w, 3 * dim)
            # A zero token's projection: exactly the bias (or zeros without one).
            pad_value = project(jnp.zeros((1, 1, dim), x.dtype)).reshape(3 * dim)
            windows, padded_hw = _partition_padded(qkv, self.window_size, pad_value)
            out = self._attend(windows.reshape(windows.shape[0], -1, 3, self.num_heads, head_dim))
            ws = self.window_size
            out = window_unpartition(out.reshape(-1, ws, ws, dim), ws, padded_hw, (h, w))
        else:
            out = self._attend(qkv, (h, w)).reshape(b, h, w, dim)
        return nn.Dense(
            dim, dtype=self.dtype, dot_general=dot_general_for(self.dtype), name="proj"
        )(out)

    def _attend(self, qkv: jax.Array, grid: tuple[int, int] | None = None) -> jax.Array:
        """(N, h*w, 3, heads, D) projections -> (N, h*w, heads * D) attention outputs."""
        n, length = qkv.shape[:2]
        head_dim = qkv.shape[-1]
        h, w = grid or (self.window_size, self.window_size)
        scale = head_dim**-0.5
        q, k, v = jnp.transpose(qkv, (2, 0, 3, 1, 4))  # each (N, heads, h*w, D)
        if self.use_rel_pos:
            if self.input_size is None:
                raise ValueError("input_size is required when use_rel_pos=True")
            rel_pos_h = self.param(
                "rel_pos_h", nn.initializers.zeros, (2 * self.input_size[0] - 1, head_dim)
            )
            rel_pos_w = self.param(
                "rel_pos_w", nn.initializers.zeros, (2 * self.input_size[1] - 1, head_dim)
            )
            table_h = get_rel_pos(h, h, rel_pos_h).astype(self.dtype)  # (H, H, D)
            table_w = get_rel_pos(w, w, rel_pos_w).astype(self.dtype)  # (W, W, D)
            grid_q = q.reshape(n, self.num_heads, h, w, head_dim)
            rel_h = jnp.einsum("bnyxc,ykc->bnyxk", grid_q, table_h)
            rel_w = jnp.einsum("bnyxc,xkc->bnyxk", grid_q, table_w)
            out = rel_pos_attention(
                q,
                k,
                v,
                rel_h.reshape(n, self.num_heads, h * w, h),
                rel_w.reshape(n, self.num_heads, h * w, w),
                scale=scale,
                implementation=self.attention_impl,
            )
        else:
            out = dot_product_attention(q, k, v, scale=scale, implementation=self.attention_impl)
        return jnp.transpose(out, (0, 2, 1, 3)).reshape(n, length, -1)


def _partition_padded(
    x: jax.Array, window_size: int, pad_value: jax.Array
) -> tuple[jax.Array, tuple[int, int]]:
    """`window_partition` with the padding filled with `pad_value` (C,) instead of zeros."""
    b, h, w, c = x.shape
    if h % window_size or w % window_size:
        hp, wp = round_up(h, window_size), round_up(w, window_size)
        filled = jnp.broadcast_to(pad_value, (b, hp, wp, c))
        x = jax.lax.dynamic_update_slice(filled, x, (0, 0, 0, 0))
    return window_partition(x, window_size)


def window_partition(x: jax.Array, window_size: int) -> tuple[jax.Array, tuple[int, int]]:
    """(B, H, W, C) -> (B * nW, ws, ws, C), zero-padding H and W up to multiples of ws."""
    b, h, w, c = x.shape
    pad_h = (window_size - h % window_size) % window_size
    pad_w = (window_size - w % window_size) % window_size
    if pad_h or pad_w:
        x = jnp.pad(x, ((0, 0), (0, pad_h), (0, pad_w), (0, 0)))
    hp, wp = h + pad_h, w + pad_w
    x = x.reshape(b, hp // window_size, window_size, wp // window_size, window_size, c)
    x = jnp.transpose(x, (0, 1, 3, 2, 4, 5)).reshape(-1, window_size, window_size, c)
    return x, (hp, wp)


def window_unpartition(
    windows: jax.Array, window_size: int, padded_hw: tuple[int, int], hw: tuple[int, int]
) -> jax.Array:
    """Inverse of `window_partition`, dropping the padding."""
    hp, wp = padded_hw
    h, w = hw
    c = windows.shape[-1]
    b = windows.shape[0] // ((hp // window_size) * (wp // window_size))
    x = windows.reshape(b, hp // window_size, wp // window_size, window_size, window_size, c)
    x = jnp.transpose(x, (0, 1, 3, 2, 4, 5)).reshape(b, hp, wp, c)
    return x[:, :h, :w, :]


class Block(nn.Module):
    """Transformer block: (windowed or global) attention then MLP, both pre-norm residual."""

    num_heads: int
    mlp_ratio: float = 4.0
    qkv_bias: bool = True
    use_rel_pos: bool = False
    window_size: int = 0
    input_size: tuple[int, int] | None = None
    dtype: Dtype = jnp.float32
    attention_impl: str = "auto"
    drop_path: float = 0.0

    @nn.compact
    def __call__(self, x: jax.Array, deterministic: bool = True) -> jax.Array:
        dim = x.shape[-1]
        shortcut = x
        x = nn.LayerNorm(epsilon=1e-6, dtype=self.dtype, name="norm1")(x)
        x = Attention(
            self.num_heads,
            qkv_bias=self.qkv_bias,
            use_rel_pos=self.use_rel_pos,
            input_size=(
                self.input_size if self.window_size == 0 else (self.window_size, self.window_size)
            ),
            window_size=self.window_size,
            dtype=self.dtype,
            attention_impl=self.attention_impl,
            name="attn",
        )(x)
        x = shortcut + self._drop_path(x, deterministic)
        y = nn.LayerNorm(epsilon=1e-6, dtype=self.dtype, name="norm2")(x)
        y = MLPBlock(int(dim * self.mlp_ratio), dtype=self.dtype, name="mlp")(y)
        return x + self._drop_path(y, deterministic)

    def _drop_path(self, x: jax.Array, deterministic: bool) -> jax.Array:
        """Stochastic depth: drop the whole residual branch per example ('dropout' rng)."""
        if deterministic or self.drop_path == 0.0:
            return x
        keep = 1.0 - self.drop_path
        mask = jax.random.bernoulli(
            self.make_rng("dropout"), keep, (x.shape[0],) + (1,) * (x.ndim - 1)
        )
        return jnp.where(mask, x / keep, 0.0).astype(x.dtype)


class ImageEncoderViT(nn.Module):
    """Images (B, img_size, img_size, 3), already normalized and padded -> (B, h, w, out_chans)."""

    img_size: int = 1024
    patch_size: int = 16
    embed_dim: int = 768
    depth: int = 12
    num_heads: int = 12
    mlp_ratio: float = 4.0
    out_chans: int = 256
    qkv_bias: bool = True
    use_abs_pos: bool = True
    use_rel_pos: bool = True
    window_size: int = 14
    global_attn_indexes: Sequence[int] = ()
    dtype: Dtype = jnp.float32
    attention_impl: str = "auto"
    remat: bool = False
    drop_path_rate: float = 0.0

    @nn.compact
    def __call__(self, x: jax.Array, deterministic: bool = True) -> jax.Array:
        x = PatchEmbed(self.patch_size, self.embed_dim, dtype=self.dtype, name="patch_embed")(x)
        grid = self.img_size // self.patch_size
        if self.use_abs_pos:
            pos_embed = self.param(
                "pos_embed", nn.initializers.zeros, (1, grid, grid, self.embed_dim)
            )
            x = x + pos_embed.astype(x.dtype)
        x = constrain_batch(x)
        # `deterministic` (argument 2, counting self) is a Python bool: static under remat.
        block_cls = nn.remat(Block, static_argnums=(2,)) if self.remat else Block
        rates = np.linspace(0.0, self.drop_path_rate, self.depth)  # deeper blocks drop more
        for i in range(self.depth):
            x = block_cls(
                self.num_heads,
                mlp_ratio=self.mlp_ratio,
                qkv_bias=self.qkv_bias,
                use_rel_pos=self.use_rel_pos,
                window_size=0 if i in self.global_attn_indexes else self.window_size,
                input_size=(grid, grid),
                dtype=self.dtype,
                attention_impl=self.attention_impl,
                drop_path=float(rates[i]),
                name=f"blocks_{i}",
            )(x, deterministic)
            x = constrain_batch(x)
        x = nn.Conv(self.out_chans, (1, 1), use_bias=False, dtype=self.dtype, name="neck_0")(x)
        x = layer_norm_2d("neck_1", self.dtype)(x)
        x = nn.Conv(
            self.out_chans,
            (3, 3),
            padding=((1, 1), (1, 1)),
            use_bias=False,
            dtype=self.dtype,
            name="neck_2",
        )(x)
        return layer_norm_2d("neck_3", self.dtype)(x)
