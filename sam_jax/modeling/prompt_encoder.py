"""Prompt encoder: points, boxes and text (CLIP) embeddings -> sparse tokens, a low-res mask
-> dense embedding."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from sam_jax.modeling.common import Dtype, gelu, layer_norm_2d


class PositionEmbeddingRandom(nn.Module):
    """Random Fourier features of (x, y) in [0, 1]^2 (a fixed Gaussian 2 x F matrix)."""

    num_pos_feats: int = 64
    scale: float = 1.0

    def setup(self):
        self.positional_encoding_gaussian_matrix = self.param(
            "positional_encoding_gaussian_matrix",
            lambda key, shape: self.scale * jax.random.normal(key, shape),
            (2, self.num_pos_feats),
        )

    def _pe_encoding(self, coords: jax.Array) -> jax.Array:
        coords = 2 * coords - 1
        coords = coords @ self.positional_encoding_gaussian_matrix
        coords = 2 * jnp.pi * coords
        return jnp.concatenate([jnp.sin(coords), jnp.cos(coords)], axis=-1)

    def grid(self, size: tuple[int, int]) -> jax.Array:
        """Encoding of every cell centre of an (h, w) grid -> (h, w, 2F)."""
        h, w = size
        y = (jnp.arange(h, dtype=jnp.float32) + 0.5) / h
        x = (jnp.arange(w, dtype=jnp.float32) + 0.5) / w
        xy = jnp.stack(jnp.meshgrid(x, y, indexing="xy"), axis=-1)
        return self._pe_encoding(xy)

    def forward_with_coords(self, coords: jax.Array, image_size: tuple[int, int]) -> jax.Array:
        """Pixel coordinates (..., 2) as (x, y) in an image of (h, w) -> (..., 2F)."""
        h, w = image_size
        coords = coords.astype(jnp.float32) / jnp.array([w, h], jnp.float32)
        return self._pe_encoding(coords)


class PromptEncoder(nn.Module):
    """Embeds prompts as in the reference `PromptEncoder`.

    Points are `(coords (B, N, 2), labels (B, N))` in the model's input frame (1024 px),
    labels 1 foreground, 0 background, -1 "not a point". `point_valid (B, N)` marks padding
    entries (added only to keep shapes static): they produce tokens the decoder ignores.
    Returns `(sparse (B, T, C), sparse_valid (B, T) bool, dense (B, h, w, C))`.

    With `text_embed_dim > 0` (not in the released models) a text prompt is a CLIP embedding
    (B, text_embed_dim), L2-normalised here, projected to one more sparse token after the
    point and box tokens (the paper's text-to-mask variant). It combines with points and
    boxes; `text_valid (B,)` marks the rows that have one.
    """

    embed_dim: int = 256
    image_embedding_size: tuple[int, int] = (64, 64)
    input_image_size: tuple[int, int] = (1024, 1024)
    mask_in_chans: int = 16
    text_embed_dim: int = 0
    dtype: Dtype = jnp.float32

    def setup(self):
        self.pe_layer = PositionEmbeddingRandom(self.embed_dim // 2)
        self.point_embeddings = [
            nn.Embed(1, self.embed_dim, name=f"point_embeddings_{i}") for i in range(4)
        ]
        self.not_a_point_embed = nn.Embed(1, self.embed_dim)
        self.no_mask_embed = nn.Embed(1, self.embed_dim)
        c = self.mask_in_chans
        self.mask_downscaling_0 = nn.Conv(
            c // 4, (2, 2), strides=(2, 2), padding="VALID", dtype=self.dtype
        )
        self.mask_downscaling_1 = layer_norm_2d("mask_downscaling_1", self.dtype)
        self.mask_downscaling_3 = nn.Conv(
            c, (2, 2), strides=(2, 2), padding="VALID", dtype=self.dtype
        )
        self.mask_downscaling_4 = layer_norm_2d("mask_downscaling_4", self.dtype)
        self.mask_downscaling_6 = nn.Conv(self.embed_dim, (1, 1), dtype=self.dtype)
        if self.text_embed_dim:
            self.text_projection = nn.Dense(self.embed_dim)

    @property
    def mask_input_size(self) -> tuple[int, int]:
        return (4 * self.image_embedding_size[0], 4 * self.image_embedding_size[1])

    def get_dense_pe(self) -> jax.Array:
        """Positional encoding of the image-embedding grid, (1, h, w, C)."""
        return self.pe_layer.grid(self.image_embedding_size)[None]

    def _embedding(self, table: nn.Embed) -> jax.Array:
        return table.embedding[0]

    def _embed_points(self, points, labels, valid, pad_valid=None):
        points = points.astype(jnp.float32) + 0.5
        labels = labels.astype(jnp.int32)
        if pad_valid is not None:  # the reference's "not a point" token after the points
            b = points.shape[0]
            points = jnp.concatenate([points, jnp.zeros((b, 1, 2), jnp.float32)], axis=1)
            labels = jnp.concatenate([labels, -jnp.ones((b, 1), jnp.int32)], axis=1)
            valid = jnp.concatenate([valid, pad_valid[:, None]], axis=1)
        emb = self.pe_layer.forward_with_coords(points, self.input_image_size)
        lab = labels[..., None]
        emb = jnp.where(lab == -1, 0.0, emb)
        emb = emb + jnp.where(lab == -1, self._embedding(self.not_a_point_embed), 0.0)
        emb = emb + jnp.where(lab == 0, self._embedding(self.point_embeddings[0]), 0.0)
        emb = emb + jnp.where(lab == 1, self._embedding(self.point_embeddings[1]), 0.0)
        return emb, valid

    def _embed_boxes(self, boxes):
        boxes = boxes.astype(jnp.float32) + 0.5
        corners = boxes.reshape(-1, 2, 2)
        emb = self.pe_layer.forward_with_coords(corners, self.input_image_size)
        emb = emb.at[:, 0].add(self._embedding(self.point_embeddings[2]))
        emb = emb.at[:, 1].add(self._embedding(self.point_embeddings[3]))
        return emb

    def embed_text(self, text: jax.Array) -> jax.Array:
        """CLIP embeddings (B, D) -> tokens (B, 1, C). The embedding is normalised first, so
        raw and normalised CLIP outputs give the same token."""
        if not self.text_embed_dim:
            raise ValueError("this model has no text prompt (model.text_embed_dim is 0)")
        if text.shape[-1] != self.text_embed_dim:
            raise ValueError(
                f"text embedding has {text.shape[-1]} features, the model takes "
                f"{self.text_embed_dim}"
            )
        text = text.astype(jnp.float32)
        text = text / jnp.maximum(jnp.linalg.norm(text, axis=-1, keepdims=True), 1e-6)
        return self.text_projection(text)[:, None]

    def embed_masks(self, masks: jax.Array) -> jax.Array:
        """Mask logits (B, 4h, 4w) -> (B, h, w, C)."""
        x = masks[..., None].astype(self.dtype)
        x = gelu(self.mask_downscaling_1(self.mask_downscaling_0(x)))
        x = gelu(self.mask_downscaling_4(self.mask_downscaling_3(x)))
        return self.mask_downscaling_6(x)

    def __call__(
        self,
        points: tuple[jax.Array, jax.Array] | None = None,
        boxes: jax.Array | None = None,
        masks: jax.Array | None = None,
        point_valid: jax.Array | None = None,
        box_valid: jax.Array | None = None,
        text: jax.Array | None = None,
        text_valid: jax.Array | None = None,
    ):
        """box_valid (B,) lets one batch mix prompts with and without a box (training): the
        box tokens of rows without one are ignored and, as the reference does for point-only
        prompts, their "not a point" token takes part instead. text (B, text_embed_dim) and
        text_valid (B,) do the same for text prompts."""
        if points is not None:
            bs = points[0].shape[0]
        elif boxes is not None:
            bs = boxes.shape[0]
        elif text is not None:
            bs = text.shape[0]
        elif masks is not None:
            bs = masks.shape[0]
        else:
            bs = 1
        sparse = [jnp.zeros((bs, 0, self.embed_dim), jnp.float32)]
        valid = [jnp.zeros((bs, 0), bool)]
        if points is not None:
            coords, labels = points
            if point_valid is None:
                point_valid = jnp.ones(labels.shape, bool)
            if boxes is None:
                pad_valid = jnp.ones((bs,), bool)
            elif box_valid is not None:
                pad_valid = ~box_valid
            else:
                pad_valid = None
            emb, v = self._embed_points(coords, labels, point_valid, pad_valid)
            sparse.append(emb)
            valid.append(v)
        if boxes is not None:
            sparse.append(self._embed_boxes(boxes))
            bv = jnp.ones((bs,), bool) if box_valid is None else box_valid.astype(bool)
            valid.append(jnp.broadcast_to(bv[:, None], (bs, 2)))
        if text is not None:
            sparse.append(self.embed_text(text))
            tv = jnp.ones((bs,), bool) if text_valid is None else text_valid.astype(bool)
            valid.append(tv[:, None])
        no_mask = self._embedding(self.no_mask_embed)  # read always: init creates it
        if masks is not None:
            dense = self.embed_masks(masks)
        else:
            h, w = self.image_embedding_size
            dense = jnp.broadcast_to(no_mask, (bs, h, w, self.embed_dim))
        return jnp.concatenate(sparse, axis=1), jnp.concatenate(valid, axis=1), dense
