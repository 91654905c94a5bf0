"""Mask decoder: the two-way transformer, then upscaling and per-token hypernetworks
that turn output tokens into mask logits, plus the IoU prediction head."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from sam_jax.modeling.common import MLP, ConvTranspose2x2, Dtype, gelu, layer_norm_2d
from sam_jax.modeling.transformer import TwoWayTransformer


class MaskDecoder(nn.Module):
    transformer_dim: int = 256
    transformer_depth: int = 2
    transformer_num_heads: int = 8
    transformer_mlp_dim: int = 2048
    num_multimask_outputs: int = 3
    iou_head_depth: int = 3
    iou_head_hidden_dim: int = 256
    dropout_rate: float = 0.0
    dtype: Dtype = jnp.float32
    attention_impl: str = "xla"

    @nn.compact
    def __call__(
        self,
        image_embeddings: jax.Array,
        image_pe: jax.Array,
        sparse_prompt_embeddings: jax.Array,
        dense_prompt_embeddings: jax.Array,
        multimask_output: bool | None,
        sparse_valid: jax.Array | None = None,
        deterministic: bool = True,
    ) -> tuple[jax.Array, jax.Array]:
        """Predict masks for B prompts.

        image_embeddings (1 or B, h, w, C); image_pe (1, h, w, C); sparse (B, T, C);
        sparse_valid (B, T) bool or None; dense (B, h, w, C).
        Returns (masks (B, M, 4h, 4w) logits, iou_pred (B, M)), M = 3 if multimask else 1;
        multimask_output=None returns every mask token's output (M = 1 + num_multimask, the
        single-mask output first), as training needs.
        """
        sparse = sparse_prompt_embeddings
        dense = dense_prompt_embeddings
        dim = self.transformer_dim
        num_mask_tokens = self.num_multimask_outputs + 1
        iou_token = nn.Embed(1, dim, name="iou_token").embedding
        mask_tokens = nn.Embed(num_mask_tokens, dim, name="mask_tokens").embedding
        b = sparse.shape[0]
        output_tokens = jnp.concatenate([iou_token, mask_tokens], axis=0)
        output_tokens = jnp.broadcast_to(output_tokens[None], (b, *output_tokens.shape))
        tokens = jnp.concatenate([output_tokens, sparse.astype(output_tokens.dtype)], axis=1)
        token_mask = None
        if sparse_valid is not None:
            token_mask = jnp.concatenate(
                [jnp.ones((b, 1 + num_mask_tokens), bool), sparse_valid], axis=1
            )

        if image_embeddings.shape[0] not in (1, b):
            raise ValueError(
                f"image_embeddings batch {image_embeddings.shape[0]} must be 1 or the prompt "
                f"batch {b}"
            )
        src = image_embeddings + dense  # broadcasts a single image over B prompts
        _, h, w, c = src.shape
        hs, src = TwoWayTransformer(
            self.transformer_depth,
            dim,
            self.transformer_num_heads,
            self.transformer_mlp_dim,
            dropout_rate=self.dropout_rate,
            dtype=self.dtype,
            attention_impl=self.attention_impl,
            name="transformer",
        )(src, image_pe, tokens, token_mask, deterministic)
        iou_token_out = hs[:, 0]
        mask_tokens_out = hs[:, 1 : 1 + num_mask_tokens]

        src = src.reshape(b, h, w, c)
        x = ConvTranspose2x2(dim // 4, dtype=self.dtype, name="output_upscaling_0")(src)
        x = gelu(layer_norm_2d("output_upscaling_1", self.dtype)(x))
        x = ConvTranspose2x2(dim // 8, dtype=self.dtype, name="output_upscaling_3")(x)
        upscaled = gelu(x)
        hyper_in = jnp.stack(
            [
                MLP(dim, dim // 8, 3, dtype=self.dtype, name=f"output_hypernetworks_mlps_{i}")(
                    mask_tokens_out[:, i]
                )
                for i in range(num_mask_tokens)
            ],
            axis=1,
        )
        masks = jnp.einsum("bmc,byxc->bmyx", hyper_in, upscaled).astype(jnp.float32)
        iou_pred = MLP(
            self.iou_head_hidden_dim,
            num_mask_tokens,
            self.iou_head_depth,
            dtype=self.dtype,
            name="iou_prediction_head",
        )(iou_token_out).astype(jnp.float32)
        if multimask_output is None:
            return masks, iou_pred
        if multimask_output:
            return masks[:, 1:], iou_pred[:, 1:]
        return masks[:, :1], iou_pred[:, :1]
