"""MAE-pretrained ViT checkpoints (the MAE / timm `.pth` layout) as the start of SAM's
image encoder, as the paper initialises it (`init_from="mae:PATH"`)."""

from __future__ import annotations

import re

import flax
import jax
import numpy as np

from sam_jax.io import checkpoint as ckpt

_MAE_BLOCK = re.compile(r"^blocks\.(\d+)\.(.+)$")
_MAE_BLOCK_PARTS = {
    "norm1.weight": ("norm1", "scale"),
    "norm1.bias": ("norm1", "bias"),
    "attn.qkv.weight": ("attn", "qkv", "kernel"),
    "attn.qkv.bias": ("attn", "qkv", "bias"),
    "attn.proj.weight": ("attn", "proj", "kernel"),
    "attn.proj.bias": ("attn", "proj", "bias"),
    "norm2.weight": ("norm2", "scale"),
    "norm2.bias": ("norm2", "bias"),
    "mlp.fc1.weight": ("mlp", "lin1", "kernel"),
    "mlp.fc1.bias": ("mlp", "lin1", "bias"),
    "mlp.fc2.weight": ("mlp", "lin2", "kernel"),
    "mlp.fc2.bias": ("mlp", "lin2", "bias"),
}


def _resize_pos_embed(pos: np.ndarray, grid: tuple[int, int]) -> np.ndarray:
    """(1, [1 +] N, C) ViT table -> (1, h, w, C) at the encoder's grid (cls token dropped)."""
    import jax.numpy as jnp

    pos = np.asarray(pos, np.float32)
    n = pos.shape[1]
    side = int(round(np.sqrt(n)))
    if side * side != n:
        pos, side = pos[:, 1:], int(round(np.sqrt(n - 1)))
        if side * side != n - 1:
            raise ckpt.CheckpointError(f"MAE pos_embed with {n} tokens is not a square grid")
    table = pos.reshape(1, side, side, -1)
    if (side, side) != tuple(grid):
        table = np.asarray(
            jax.image.resize(
                jnp.asarray(table), (1, *grid, table.shape[-1]), "bicubic", antialias=False
            )
        )
    return table


def mae_to_encoder(state_dict, params: dict, depth: int) -> tuple[dict, list[str]]:
    """Copy an MAE/timm ViT state dict into `params["image_encoder"]` -> (params, unused keys).

    Blocks beyond the checkpoint's depth, the neck and relative position tables keep their
    fresh initialisation; a shape mismatch is an error.
    """
    flat = flax.traverse_util.flatten_dict(params)
    used, problems = set(), []
    enc = ("image_encoder",)

    def put(path, value, key):
        path = enc + path
        if path not in flat:
            problems.append(f"{key}: no parameter {'/'.join(path)}")
            return
        value = ckpt._to_flax_layout(path, ckpt._to_numpy(value))
        if value.shape != flat[path].shape:
            problems.append(f"{key}: shape {value.shape}, model expects {flat[path].shape}")
            return
        flat[path] = np.asarray(value, np.float32)
        used.add(key)

    for key, value in state_dict.items():
        if key in ("patch_embed.proj.weight", "patch_embed.proj.bias"):
            put(("patch_embed", "proj", "kernel" if key.endswith("weight") else "bias"), value, key)
        elif key == "pos_embed":
            grid = flat.get(enc + ("pos_embed",))
            if grid is None:
                continue
            put(("pos_embed",), _resize_pos_embed(ckpt._to_numpy(value), grid.shape[1:3]), key)
        else:
            m = _MAE_BLOCK.match(key)
            if m and m.group(2) in _MAE_BLOCK_PARTS and int(m.group(1)) < depth:
                put((f"blocks_{m.group(1)}", *_MAE_BLOCK_PARTS[m.group(2)]), value, key)
    if problems:
        raise ckpt.CheckpointError("MAE checkpoint does not fit:\n  " + "\n  ".join(problems))
    unused = sorted(set(state_dict) - used)
    return flax.traverse_util.unflatten_dict(flat), unused
