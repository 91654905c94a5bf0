"""CLIP checkpoints (OpenAI / open_clip state dicts) -> parameters of `sam_jax.modeling.clip`.

Flax paths follow the PyTorch names by a fixed rule, as in the SAM converter
(`visual/transformer/resblocks_3/mlp/c_fc/kernel` <- `visual.transformer.resblocks.3.mlp.c_fc
.weight`), except the packed attention projection, which PyTorch stores as
`attn.in_proj_weight` / `attn.in_proj_bias`. Raw parameters (`visual.proj`,
`text_projection`, embeddings) are already (in, out) and are taken as they are.

Files are read without unpickling arbitrary objects: `torch.load(weights_only=True)` for
`.pt` / `.pth` / `.bin`, safetensors for `.safetensors`. OpenAI's released `.pt` files are
TorchScript archives; load them once with open_clip (or `torch.jit.load`) and save the
`state_dict()`.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from sam_jax.io.checkpoint import CheckpointError, convert_by_table, to_state_dict
from sam_jax.modeling.clip import CLIPConfig, abstract_params

# Entries of CLIP checkpoints that are not parameters of the two towers: the contrastive
# temperature (and bias), and the metadata OpenAI's state dicts carry.
_IGNORED_KEYS = {
    "logit_scale",
    "logit_bias",
    "input_resolution",
    "context_length",
    "vocab_size",
    "attn_mask",
}
# OpenAI's rule for the number of heads: 64 channels per head in both towers.
_HEAD_WIDTH = 64


def clip_torch_key(flax_path: tuple[str, ...]) -> str:
    """`visual/transformer/resblocks_3/ln_1/scale` -> `visual.transformer.resblocks.3.ln_1
    .weight`. Only `resblocks_N` is a list entry: `ln_1` / `ln_2` are PyTorch names."""
    parts = [re.sub(r"^resblocks_(\d+)$", r"resblocks.\1", part) for part in flax_path[:-1]]
    leaf = flax_path[-1]
    key = ".".join([*parts, "weight" if leaf in ("kernel", "scale", "embedding") else leaf])
    return re.sub(r"\.attn\.in_proj\.(weight|bias)$", r".attn.in_proj_\1", key)


def _shape(state_dict: Mapping[str, Any], key: str) -> tuple[int, ...]:
    if key not in state_dict:
        raise CheckpointError(f"not a CLIP state dict: no {key!r} (cannot infer the config)")
    return tuple(state_dict[key].shape)


def _count_layers(state_dict: Mapping[str, Any], prefix: str) -> int:
    pattern = re.compile(re.escape(prefix) + r"(\d+)\.")
    return len({m.group(1) for k in state_dict if (m := pattern.match(k))})


def infer_config(state_dict: Mapping[str, Any], quick_gelu: bool = True) -> CLIPConfig:
    """The config of an OpenAI-layout CLIP state dict, from its parameter shapes.

    Head counts follow OpenAI's rule (width // 64). The activation cannot be read from the
    weights: OpenAI's weights use QuickGELU (the default here), most open_clip LAION
    weights exact GELU (`quick_gelu=False`).
    """
    vision_width, _, patch, _ = _shape(state_dict, "visual.conv1.weight")
    num_positions = _shape(state_dict, "visual.positional_embedding")[0]
    grid = round((num_positions - 1) ** 0.5)
    if grid * grid + 1 != num_positions:
        raise CheckpointError(
            f"visual.positional_embedding has {num_positions} rows: not a square grid + 1"
        )
    context_length, text_width = _shape(state_dict, "positional_embedding")
    return CLIPConfig(
        embed_dim=_shape(state_dict, "text_projection")[1],
        image_size=grid * patch,
        patch_size=patch,
        vision_width=vision_width,
        vision_layers=_count_layers(state_dict, "visual.transformer.resblocks."),
        vision_heads=vision_width // _HEAD_WIDTH,
        text_width=text_width,
        text_layers=_count_layers(state_dict, "transformer.resblocks."),
        text_heads=text_width // _HEAD_WIDTH,
        context_length=context_length,
        vocab_size=_shape(state_dict, "token_embedding.weight")[0],
        quick_gelu=quick_gelu,
    )


def convert_clip_state_dict(
    state_dict: Mapping[str, Any], config: CLIPConfig | None = None, quick_gelu: bool = True
) -> tuple[CLIPConfig, dict]:
    """PyTorch CLIP state dict (tensors or arrays) -> (config, our params).

    Without `config` it is inferred (`infer_config`, with `quick_gelu`). Raises
    CheckpointError listing every missing key, unexpected key and shape mismatch.
    """
    state_dict = _strip_prefix(state_dict)
    if config is None:
        config = infer_config(state_dict, quick_gelu)
    params = convert_by_table(
        state_dict,
        abstract_params(config),
        clip_torch_key,
        _IGNORED_KEYS,
        f"the CLIP config {config}",
    )
    return config, params


def to_clip_state_dict(params: Mapping) -> dict[str, np.ndarray]:
    """Our params -> a PyTorch-named CLIP state dict of numpy arrays (inverse of conversion)."""
    return to_state_dict(params, clip_torch_key)


def _strip_prefix(state_dict: Mapping[str, Any]) -> Mapping[str, Any]:
    # Training checkpoints of DistributedDataParallel models prefix every key.
    if state_dict and all(k.startswith("module.") for k in state_dict):
        return {k[len("module.") :]: v for k, v in state_dict.items()}
    return state_dict


def load_clip_state_dict(path: str | os.PathLike) -> dict:
    """Read a CLIP state dict from `.pt` / `.pth` / `.bin` (torch, weights only) or
    `.safetensors`. Training checkpoints ({"state_dict": ...}) are unwrapped."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint file not found: {path}")
    if path.suffix == ".safetensors":
        try:
            from safetensors.numpy import load_file
        except ImportError as e:
            raise CheckpointError(
                "reading .safetensors needs the safetensors package (pip install safetensors)"
            ) from e
        try:
            obj = load_file(str(path))
        except Exception as e:
            raise CheckpointError(f"{path} is not a readable safetensors file: {e}") from e
    else:
        try:
            import torch
        except ImportError as e:
            raise CheckpointError(
                f"reading {path.suffix} checkpoints needs torch (pip install torch)"
            ) from e
        try:
            obj = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:
            hint = ""
            if "TorchScript" in str(e) or "constants.pkl" in str(e):
                hint = (
                    " (a TorchScript archive, as OpenAI's released .pt files: load it with "
                    "open_clip or torch.jit.load and save its state_dict())"
                )
            raise CheckpointError(f"{path} is not a readable PyTorch checkpoint{hint}: {e}") from e
    if isinstance(obj, Mapping):
        for wrapper in ("state_dict", "model"):
            if isinstance(obj.get(wrapper), Mapping):
                obj = obj[wrapper]
                break
    if not isinstance(obj, Mapping) or not all(
        isinstance(k, str) and hasattr(v, "shape") for k, v in obj.items()
    ):
        raise CheckpointError(f"{path} does not hold a state dict (name -> tensor)")
    return dict(obj)


def load_clip(
    path: str | os.PathLike, config: CLIPConfig | None = None, quick_gelu: bool = True
) -> tuple[CLIPConfig, dict]:
    """Read and convert a CLIP checkpoint file -> (config, params)."""
    return convert_clip_state_dict(load_clip_state_dict(path), config, quick_gelu)
