"""Flax linen modules of SAM (and of CLIP), the model presets, attention kernels and the
logical-axis sharding rules of their parameters."""

from sam_jax.modeling.image_encoder import ImageEncoderViT
from sam_jax.modeling.mask_decoder import MaskDecoder
from sam_jax.modeling.prompt_encoder import PromptEncoder
from sam_jax.modeling.sam import Sam
from sam_jax.modeling.transformer import TwoWayTransformer

__all__ = ["ImageEncoderViT", "MaskDecoder", "PromptEncoder", "Sam", "TwoWayTransformer"]
