"""Two-way transformer of the mask decoder: prompt tokens and image tokens attend to
each other (token->token, token->image, MLP on tokens, image->token)."""

from __future__ import annotations

import flax.linen as nn
import jax.numpy as jnp

from sam_jax.modeling.attention import dot_product_attention
from sam_jax.modeling.common import Dtype, MLPBlock, dot_general_for


class Attention(nn.Module):
    """Attention with q/k/v projected down to embedding_dim / downsample_rate."""

    embedding_dim: int
    num_heads: int
    downsample_rate: int = 1
    dtype: Dtype = jnp.float32
    attention_impl: str = "xla"

    @nn.compact
    def __call__(self, q, k, v, key_mask=None):
        internal = self.embedding_dim // self.downsample_rate
        if internal % self.num_heads:
            raise ValueError(f"num_heads {self.num_heads} must divide internal dim {internal}")

        def heads(x):  # (B, L, C) -> (B, heads, L, C / heads)
            x = x.reshape(*x.shape[:2], self.num_heads, internal // self.num_heads)
            return jnp.swapaxes(x, 1, 2)

        q = heads(
            nn.Dense(
                internal, dtype=self.dtype, dot_general=dot_general_for(self.dtype), name="q_proj"
            )(q)
        )
        k = heads(
            nn.Dense(
                internal, dtype=self.dtype, dot_general=dot_general_for(self.dtype), name="k_proj"
            )(k)
        )
        v = heads(
            nn.Dense(
                internal, dtype=self.dtype, dot_general=dot_general_for(self.dtype), name="v_proj"
            )(v)
        )
        out = dot_product_attention(q, k, v, key_mask=key_mask, implementation=self.attention_impl)
        out = jnp.swapaxes(out, 1, 2).reshape(q.shape[0], q.shape[2], internal)
        return nn.Dense(
            self.embedding_dim,
            dtype=self.dtype,
            dot_general=dot_general_for(self.dtype),
            name="out_proj",
        )(out)


class TwoWayAttentionBlock(nn.Module):
    embedding_dim: int
    num_heads: int
    mlp_dim: int = 2048
    attention_downsample_rate: int = 2
    skip_first_layer_pe: bool = False
    dropout_rate: float = 0.0
    dtype: Dtype = jnp.float32
    attention_impl: str = "xla"

    @nn.compact
    def __call__(self, queries, keys, query_pe, key_pe, token_mask=None, deterministic=True):
        dim, heads, rate = self.embedding_dim, self.num_heads, self.attention_downsample_rate
        kw = dict(dtype=self.dtype, attention_impl=self.attention_impl)

        def ln(name):
            return nn.LayerNorm(epsilon=1e-5, dtype=self.dtype, name=name)

        def drop(x):
            return nn.Dropout(self.dropout_rate)(x, deterministic=deterministic)

        if self.skip_first_layer_pe:
            queries = Attention(dim, heads, name="self_attn", **kw)(
                queries, queries, queries, key_mask=token_mask
            )
        else:
            q = queries + query_pe
            out = Attention(dim, heads, name="self_attn", **kw)(q, q, queries, key_mask=token_mask)
            queries = queries + drop(out)
        queries = ln("norm1")(queries)

        q, k = queries + query_pe, keys + key_pe
        out = Attention(dim, heads, rate, name="cross_attn_token_to_image", **kw)(q, k, keys)
        queries = ln("norm2")(queries + drop(out))

        out = MLPBlock(self.mlp_dim, activation="relu", dtype=self.dtype, name="mlp")(queries)
        queries = ln("norm3")(queries + drop(out))

        q, k = queries + query_pe, keys + key_pe
        out = Attention(dim, heads, rate, name="cross_attn_image_to_token", **kw)(
            k, q, queries, key_mask=token_mask
        )
        keys = ln("norm4")(keys + drop(out))
        return queries, keys


class TwoWayTransformer(nn.Module):
    depth: int = 2
    embedding_dim: int = 256
    num_heads: int = 8
    mlp_dim: int = 2048
    attention_downsample_rate: int = 2
    dropout_rate: float = 0.0
    dtype: Dtype = jnp.float32
    attention_impl: str = "xla"

    @nn.compact
    def __call__(
        self, image_embedding, image_pe, point_embedding, token_mask=None, deterministic=True
    ):
        """image_embedding (B, h, w, C), image_pe (B or 1, h, w, C), point_embedding (B, T, C),
        token_mask (B, T) -> (queries (B, T, C), keys (B, h*w, C))."""
        b, h, w, c = image_embedding.shape
        keys = image_embedding.reshape(b, h * w, c)
        key_pe = jnp.broadcast_to(image_pe.reshape(-1, h * w, c), keys.shape)
        queries = point_embedding
        for i in range(self.depth):
            queries, keys = TwoWayAttentionBlock(
                self.embedding_dim,
                self.num_heads,
                self.mlp_dim,
                self.attention_downsample_rate,
                skip_first_layer_pe=i == 0,
                dropout_rate=self.dropout_rate,
                dtype=self.dtype,
                attention_impl=self.attention_impl,
                name=f"layers_{i}",
            )(queries, keys, point_embedding, key_pe, token_mask, deterministic)
        q, k = queries + point_embedding, keys + key_pe
        out = Attention(
            self.embedding_dim,
            self.num_heads,
            self.attention_downsample_rate,
            dtype=self.dtype,
            attention_impl=self.attention_impl,
            name="final_attn_token_to_image",
        )(q, k, keys)
        queries = nn.LayerNorm(epsilon=1e-5, dtype=self.dtype, name="norm_final_attn")(
            queries + nn.Dropout(self.dropout_rate)(out, deterministic=deterministic)
        )
        return queries, keys
