"""Model presets (the `model` section of a config) and the `Sam` module built from one."""

from __future__ import annotations

import jax.numpy as jnp
import ml_collections

from sam_jax.modeling.sam import PIXEL_MEAN, PIXEL_STD, Sam

_ENCODERS = {
    # name: (embed dim, depth, heads, global attention block indexes)
    "vit_b": (768, 12, 12, (2, 5, 8, 11)),
    "vit_l": (1024, 24, 16, (5, 11, 17, 23)),
    "vit_h": (1280, 32, 16, (7, 15, 23, 31)),
}

MODEL_TYPES = ("vit_b", "vit_l", "vit_h", "tiny")
DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


def model_config(model_type: str) -> ml_collections.ConfigDict:
    """The model section for one of MODEL_TYPES (`tiny`: 256 px input, 2 blocks, for tests)."""
    if model_type not in MODEL_TYPES:
        raise ValueError(f"unknown model type {model_type!r}; choose one of {MODEL_TYPES}")
    c = ml_collections.ConfigDict()
    c.model_type = model_type
    c.image_size = 1024
    c.patch_size = 16
    c.window_size = 14
    c.mlp_ratio = 4.0
    c.prompt_embed_dim = 256
    c.mask_in_chans = 16
    c.decoder_depth = 2
    c.decoder_num_heads = 8
    c.decoder_mlp_dim = 2048
    c.num_multimask_outputs = 3
    c.iou_head_depth = 3
    c.iou_head_hidden_dim = 256
    c.decoder_dropout = 0.0
    c.pixel_mean = PIXEL_MEAN
    c.pixel_std = PIXEL_STD
    c.dtype = "float32"
    c.attention_impl = "auto"  # per backend: sam_jax.modeling.attention
    c.remat = False
    c.drop_path_rate = 0.0
    c.text_embed_dim = 0  # CLIP embedding size of a text prompt (0: no text prompt, as released)
    if model_type == "tiny":
        c.image_size = 256
        c.window_size = 7  # 16x16 tokens: windows need padding, as ViT's 64 / 14 do
        c.encoder_embed_dim, c.encoder_depth, c.encoder_num_heads = 64, 2, 2
        c.encoder_global_attn_indexes = (1,)
        c.prompt_embed_dim = 64
        c.decoder_mlp_dim = 128
        c.iou_head_hidden_dim = 64
    else:
        dim, depth, heads, global_idx = _ENCODERS[model_type]
        c.encoder_embed_dim, c.encoder_depth, c.encoder_num_heads = dim, depth, heads
        c.encoder_global_attn_indexes = global_idx
    return c


_FIELDS = tuple(f for f in Sam.__dataclass_fields__ if f not in ("parent", "name"))


def build_sam(config: ml_collections.ConfigDict) -> Sam:
    """A `Sam` module from a model config; unknown keys are an error, not ignored."""
    values = dict(config)
    values.pop("model_type", None)
    unknown = sorted(set(values) - set(_FIELDS))
    if unknown:
        raise ValueError(f"unknown model config keys {unknown}; known: {sorted(_FIELDS)}")
    if values.get("dtype", "float32") not in DTYPES:
        raise ValueError(f"model dtype must be one of {sorted(DTYPES)}, got {values['dtype']!r}")
    values["dtype"] = DTYPES[values.get("dtype", "float32")]
    for key in ("encoder_global_attn_indexes", "pixel_mean", "pixel_std"):
        if key in values:
            values[key] = tuple(values[key])
    return Sam(**values)
