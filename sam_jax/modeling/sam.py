"""`Sam`: image encoder + prompt encoder + mask decoder, with the reference's
normalization, padding and mask post-processing."""

from __future__ import annotations

from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from sam_jax.modeling.common import Dtype
from sam_jax.modeling.image_encoder import ImageEncoderViT
from sam_jax.modeling.mask_decoder import MaskDecoder
from sam_jax.modeling.prompt_encoder import PromptEncoder

PIXEL_MEAN = (123.675, 116.28, 103.53)
PIXEL_STD = (58.395, 57.12, 57.375)


class Sam(nn.Module):
    """The whole model. Fields mirror `sam_jax.modeling.configs` (see `build_sam`)."""

    image_size: int = 1024
    patch_size: int = 16
    encoder_embed_dim: int = 768
    encoder_depth: int = 12
    encoder_num_heads: int = 12
    encoder_global_attn_indexes: Sequence[int] = (2, 5, 8, 11)
    window_size: int = 14
    mlp_ratio: float = 4.0
    prompt_embed_dim: int = 256
    mask_in_chans: int = 16
    decoder_depth: int = 2
    decoder_num_heads: int = 8
    decoder_mlp_dim: int = 2048
    num_multimask_outputs: int = 3
    iou_head_depth: int = 3
    iou_head_hidden_dim: int = 256
    decoder_dropout: float = 0.0
    pixel_mean: Sequence[float] = PIXEL_MEAN
    pixel_std: Sequence[float] = PIXEL_STD
    dtype: Dtype = jnp.float32
    attention_impl: str = "auto"
    remat: bool = False
    drop_path_rate: float = 0.0
    text_embed_dim: int = 0  # > 0: a CLIP embedding of this size is also a prompt

    mask_threshold = 0.0

    @property
    def image_embedding_size(self) -> int:
        return self.image_size // self.patch_size

    def setup(self):
        self.image_encoder = ImageEncoderViT(
            img_size=self.image_size,
            patch_size=self.patch_size,
            embed_dim=self.encoder_embed_dim,
            depth=self.encoder_depth,
            num_heads=self.encoder_num_heads,
            mlp_ratio=self.mlp_ratio,
            out_chans=self.prompt_embed_dim,
            qkv_bias=True,
            use_rel_pos=True,
            window_size=self.window_size,
            global_attn_indexes=tuple(self.encoder_global_attn_indexes),
            dtype=self.dtype,
            attention_impl=self.attention_impl,
            remat=self.remat,
            drop_path_rate=self.drop_path_rate,
        )
        e = self.image_embedding_size
        self.prompt_encoder = PromptEncoder(
            embed_dim=self.prompt_embed_dim,
            image_embedding_size=(e, e),
            input_image_size=(self.image_size, self.image_size),
            mask_in_chans=self.mask_in_chans,
            text_embed_dim=self.text_embed_dim,
            dtype=self.dtype,
        )
        self.mask_decoder = MaskDecoder(
            transformer_dim=self.prompt_embed_dim,
            transformer_depth=self.decoder_depth,
            transformer_num_heads=self.decoder_num_heads,
            transformer_mlp_dim=self.decoder_mlp_dim,
            num_multimask_outputs=self.num_multimask_outputs,
            iou_head_depth=self.iou_head_depth,
            iou_head_hidden_dim=self.iou_head_hidden_dim,
            dropout_rate=self.decoder_dropout,
            dtype=self.dtype,
            attention_impl=self.attention_impl,
        )

    def preprocess(self, images: jax.Array, input_sizes: jax.Array | None = None) -> jax.Array:
        """Normalize and zero-pad images to (B, image_size, image_size, 3).

        `images` (B, H, W, 3) with H, W <= image_size, pixel values 0..255. When the images
        already sit in a zero-padded image_size canvas, `input_sizes` (B, 2) gives each one's
        real (h, w): pixels outside it are zeroed after normalization, as the reference's
        pad-after-normalize does, and the shape never changes with the image size.
        """
        x = (images.astype(jnp.float32) - jnp.asarray(self.pixel_mean)) / jnp.asarray(
            self.pixel_std
        )
        b, h, w, _ = x.shape
        s = self.image_size
        if h > s or w > s:
            raise ValueError(f"image of {h}x{w} is larger than the model input {s}x{s}")
        x = jnp.pad(x, ((0, 0), (0, s - h), (0, s - w), (0, 0)))
        if input_sizes is not None:
            rows = jnp.arange(s)[None, :, None] < input_sizes[:, 0, None, None]
            cols = jnp.arange(s)[None, None, :] < input_sizes[:, 1, None, None]
            x = jnp.where((rows & cols)[..., None], x, 0.0)
        return x

    def embed_images(
        self, images: jax.Array, input_sizes: jax.Array | None = None, deterministic: bool = True
    ) -> jax.Array:
        """Raw images (B, H, W, 3), 0..255 -> image embeddings (B, h, w, C) in float32."""
        x = self.preprocess(images, input_sizes).astype(self.dtype)
        return self.image_encoder(x, deterministic).astype(jnp.float32)

    def decode(
        self,
        image_embeddings: jax.Array,
        point_coords: jax.Array | None = None,
        point_labels: jax.Array | None = None,
        boxes: jax.Array | None = None,
        mask_inputs: jax.Array | None = None,
        multimask_output: bool = True,
        point_valid: jax.Array | None = None,
        deterministic: bool = True,
        box_valid: jax.Array | None = None,
        text_embeddings: jax.Array | None = None,
        text_valid: jax.Array | None = None,
        image_pe: jax.Array | None = None,
    ) -> tuple[jax.Array, jax.Array]:
        """Prompts in the model's input frame -> (low-res logits (B, M, 4h, 4w), iou (B, M)).

        point_valid (B, N) marks padding points; box_valid (B,) marks rows without a box
        when boxes are given for a mixed batch (see PromptEncoder). text_embeddings
        (B, text_embed_dim) are CLIP embeddings (text or image), text_valid (B,) the rows
        that have one; only for models built with text_embed_dim > 0. image_pe: the
        `dense_pe` of these parameters, when the caller keeps it (it is the same for every
        prompt; computing it took about 5 ms of a 40 ms ViT-B decode on CPU); None computes it.
        """
        masks, iou_pred = self.decode_all(
            image_embeddings,
            point_coords,
            point_labels,
            boxes,
            mask_inputs,
            point_valid,
            box_valid,
            deterministic,
            text_embeddings,
            text_valid,
            image_pe,
        )
        if multimask_output:
            return masks[:, 1:], iou_pred[:, 1:]
        return masks[:, :1], iou_pred[:, :1]

    def decode_all(
        self,
        image_embeddings: jax.Array,
        point_coords: jax.Array | None = None,
        point_labels: jax.Array | None = None,
        boxes: jax.Array | None = None,
        mask_inputs: jax.Array | None = None,
        point_valid: jax.Array | None = None,
        box_valid: jax.Array | None = None,
        deterministic: bool = True,
        text_embeddings: jax.Array | None = None,
        text_valid: jax.Array | None = None,
        image_pe: jax.Array | None = None,
    ) -> tuple[jax.Array, jax.Array]:
        """Like `decode` but every mask token's output: (B, 1 + num_multimask, 4h, 4w) and
        (B, 1 + num_multimask); index 0 is the single-mask output. Training picks per row."""
        points = None if point_coords is None else (point_coords, point_labels)
        sparse, sparse_valid, dense = self.prompt_encoder(
            points,
            boxes,
            mask_inputs,
            point_valid=point_valid,
            box_valid=box_valid,
            text=text_embeddings,
            text_valid=text_valid,
        )
        if image_pe is None:
            image_pe = self.prompt_encoder.get_dense_pe()
        return self.mask_decoder(
            image_embeddings,
            image_pe,
            sparse,
            dense,
            None,
            sparse_valid=sparse_valid,
            deterministic=deterministic,
        )

    def __call__(
        self, images, point_coords, point_labels, boxes, mask_inputs, multimask_output: bool = True
    ):
        """Every submodule once (used by `init`): one image, point + box + mask prompts, and
        a text prompt when the model takes one."""
        emb = self.embed_images(images)
        text = None
        if self.text_embed_dim:
            text = jnp.ones((emb.shape[0], self.text_embed_dim), jnp.float32)
        return self.decode(
            emb,
            point_coords,
            point_labels,
            boxes,
            mask_inputs,
            multimask_output,
            text_embeddings=text,
        )


def _bilinear_matrix(out_size: int, in_size: int) -> np.ndarray:
    """(out, in) matrix of `F.interpolate(mode="bilinear", align_corners=False)` on one axis."""
    scale = in_size / out_size
    src = np.maximum((np.arange(out_size, dtype=np.float64) + 0.5) * scale - 0.5, 0.0)
    lo = np.minimum(np.floor(src).astype(np.int64), in_size - 1)
    hi = np.minimum(lo + 1, in_size - 1)
    frac = src - lo
    m = np.zeros((out_size, in_size), np.float64)
    np.add.at(m, (np.arange(out_size), lo), 1.0 - frac)
    np.add.at(m, (np.arange(out_size), hi), frac)
    return m


def postprocess_matrices(
    low_res_size: tuple[int, int],
    image_size: int,
    input_size: tuple[int, int],
    original_size: tuple[int, int],
) -> tuple[np.ndarray, np.ndarray]:
    """Row and column matrices of the reference post-processing as one linear map per axis.

    The reference upsamples low-res logits to image_size, crops the padding to input_size,
    then resizes to original_size (bilinear, align_corners=False, both times). Each step is
    linear and separable, so masks = Ry @ logits @ Rx^T with these (H, 256), (W, 256).
    """
    mats = []
    for axis in (0, 1):
        up = _bilinear_matrix(image_size, low_res_size[axis])[: input_size[axis]]
        down = _bilinear_matrix(original_size[axis], input_size[axis])
        mats.append((down @ up).astype(np.float32))
    return mats[0], mats[1]


def dense_pe(module: Sam, params) -> jax.Array:
    """The positional encoding of the image embedding grid (1, h, w, C) for `params`."""
    return module.apply({"params": params}, method=lambda m: m.prompt_encoder.get_dense_pe())


def postprocess_masks(low_res: jax.Array, rows: jax.Array, cols: jax.Array) -> jax.Array:
    """(..., 256, 256) logits -> (..., H, W) logits with the matrices above."""
    return jnp.einsum("yi,...ij,xj->...yx", rows, low_res, cols)
