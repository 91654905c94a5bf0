"""Checkpoints: PyTorch `.pth` state dicts -> our parameter tree, and converted
checkpoints on disk (orbax params + the model config as JSON).

Flax parameter paths follow the PyTorch names by a fixed rule, so conversion is a table:
`image_encoder/blocks_3/attn/qkv/kernel` <- `image_encoder.blocks.3.attn.qkv.weight`
(a `name_N` part is the PyTorch list entry `name.N`; `kernel`, `scale` and `embedding` are
`weight`), with the layout change that each kind of layer needs.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import flax
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from sam_jax.modeling.configs import MODEL_TYPES, build_sam, model_config

CONFIG_FILE = "sam_config.json"
PARAMS_DIR = "params"
# PyTorch buffers that are not parameters of ours (the reference does not save them either,
# but fine-tuning scripts sometimes do).
_IGNORED_TORCH_KEYS = {"pixel_mean", "pixel_std"}
# ConvTranspose2d weights are (in, out, kh, kw); plain Conv2d weights are (out, in, kh, kw).
_TRANSPOSED_CONVS = {"output_upscaling_0", "output_upscaling_3"}


class CheckpointError(ValueError):
    """A checkpoint that cannot be used, with every problem found listed in the message."""


def torch_key(flax_path: tuple[str, ...]) -> str:
    parts = []
    for part in flax_path[:-1]:
        m = re.fullmatch(r"(.+)_(\d+)", part)
        parts.extend([m.group(1), m.group(2)] if m else [part])
    leaf = flax_path[-1]
    parts.append("weight" if leaf in ("kernel", "scale", "embedding") else leaf)
    return ".".join(parts)


def _to_flax_layout(flax_path: tuple[str, ...], value: np.ndarray) -> np.ndarray:
    if flax_path[-1] != "kernel":
        return value
    if value.ndim == 2:  # Linear (out, in) -> Dense (in, out)
        return value.T
    if value.ndim == 4:
        if flax_path[-2] in _TRANSPOSED_CONVS:  # (in, out, kh, kw) -> (kh, kw, in, out)
            return value.transpose(2, 3, 0, 1)
        return value.transpose(2, 3, 1, 0)  # (out, in, kh, kw) -> (kh, kw, in, out)
    return value


def _from_flax_layout(flax_path: tuple[str, ...], value: np.ndarray) -> np.ndarray:
    if flax_path[-1] != "kernel":
        return value
    if value.ndim == 2:
        return value.T
    if value.ndim == 4:
        if flax_path[-2] in _TRANSPOSED_CONVS:
            return value.transpose(2, 3, 0, 1)
        return value.transpose(3, 2, 0, 1)
    return value


def init_params(config: ml_collections.ConfigDict, seed: int = 0) -> dict:
    """Random parameters drawn as the PyTorch reference initialises its modules.

    Linear/conv weights and their biases U(-1/sqrt(fan_in), 1/sqrt(fan_in)) (PyTorch's
    default), embeddings and the Fourier matrix N(0, 1), LayerNorm ones/zeros, position
    tables zeros. Drawn on the host with numpy (seeded per parameter path), which is much
    faster than compiling the Flax initialisers' random-number graph.
    """
    flat = flax.traverse_util.flatten_dict(abstract_params(config))
    out = {}
    for path, leaf in flat.items():
        key = [seed, *(ord(ch) for ch in "/".join(path))]
        rng = np.random.default_rng(key)
        shape, name = leaf.shape, path[-1]
        parent = flat.get((*path[:-1], "kernel"))
        if name == "kernel" or (name == "bias" and parent is not None):
            bound = 1.0 / np.sqrt(_fan_in(path[:-1], parent.shape if parent else shape))
            value = rng.uniform(-bound, bound, shape)
        elif name == "scale":
            value = np.ones(shape)
        elif name in ("embedding", "positional_encoding_gaussian_matrix"):
            value = rng.standard_normal(shape)
        else:  # LayerNorm biases, pos_embed, rel_pos_*: zeros as in the reference
            value = np.zeros(shape)
        out[path] = jnp.asarray(value, leaf.dtype)
    return flax.traverse_util.unflatten_dict(out)


def _fan_in(module_path: tuple[str, ...], kernel_shape: tuple[int, ...]) -> int:
    if len(kernel_shape) == 2:  # Dense (in, out)
        return kernel_shape[0]
    kh, kw, cin, cout = kernel_shape
    # PyTorch takes fan_in from weight dim 1: `in` for Conv2d, `out` for ConvTranspose2d.
    return kh * kw * (cout if module_path[-1] in _TRANSPOSED_CONVS else cin)


def abstract_params(config: ml_collections.ConfigDict) -> dict:
    """Shapes and dtypes of the parameter tree, computed without allocating it."""
    module = build_sam(config)
    return jax.eval_shape(
        lambda key: module.init(key, *_init_inputs(config))["params"], jax.random.key(0)
    )


def _init_inputs(config):
    s = config.image_size
    low = 4 * (s // config.patch_size)
    return (
        jnp.zeros((1, s, s, 3), jnp.float32),
        jnp.zeros((1, 1, 2), jnp.float32),
        jnp.ones((1, 1), jnp.int32),
        jnp.zeros((1, 4), jnp.float32),
        jnp.zeros((1, low, low), jnp.float32),
    )


def convert_state_dict(state_dict: Mapping[str, Any], config: ml_collections.ConfigDict) -> dict:
    """PyTorch state dict (tensors or arrays) -> our params, checked against the config.

    Raises CheckpointError listing every missing key, unexpected key and shape mismatch.
    """
    return convert_by_table(
        state_dict,
        abstract_params(config),
        torch_key,
        _IGNORED_TORCH_KEYS,
        f"model type {config.model_type!r}",
    )


def convert_by_table(
    state_dict: Mapping[str, Any],
    abstract: Mapping,
    key_fn,
    ignored: set[str],
    what: str,
) -> dict:
    """PyTorch state dict -> float32 params in Flax layouts, shaped like the `abstract`
    parameter tree; `key_fn` names each Flax path's PyTorch key (the inverse of
    `to_state_dict(params, key_fn)`).

    Raises CheckpointError naming every missing key, unexpected key (other than `ignored`)
    and shape mismatch, as not fitting `what`.
    """
    expected = flax.traverse_util.flatten_dict(abstract)
    by_torch_key = {key_fn(path): path for path in expected}
    missing, mismatched, flat = [], [], {}
    for key, path in by_torch_key.items():
        if key not in state_dict:
            missing.append(key)
            continue
        torch_value = _to_numpy(state_dict[key])
        value = _to_flax_layout(path, torch_value)
        want = expected[path].shape
        if value.shape != want:
            torch_want = _from_flax_layout(path, np.zeros(want, np.int8)).shape
            mismatched.append(
                f"{key}: checkpoint {tuple(torch_value.shape)}, model expects {tuple(torch_want)}"
            )
            continue
        flat[path] = np.asarray(value, np.float32)
    unexpected = sorted(set(state_dict) - set(by_torch_key) - set(ignored))
    problems = []
    if missing:
        problems.append(f"{len(missing)} missing key(s): " + ", ".join(sorted(missing)))
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected key(s): " + ", ".join(unexpected))
    if mismatched:
        problems.append(f"{len(mismatched)} shape mismatch(es): " + "; ".join(mismatched))
    if problems:
        raise CheckpointError(f"checkpoint does not fit {what}:\n  " + "\n  ".join(problems))
    return flax.traverse_util.unflatten_dict(flat)


TEXT_PROJECTION_KEY = "prompt_encoder.text_projection.weight"


def text_embed_dim_of(state_dict: Mapping[str, Any]) -> int:
    """The text-prompt embedding size a state dict was trained with (0: none, as released)."""
    weight = state_dict.get(TEXT_PROJECTION_KEY)
    return 0 if weight is None else int(weight.shape[1])


def to_state_dict(params: Mapping, key_fn=None) -> dict[str, np.ndarray]:
    """Our params -> a PyTorch-named state dict of numpy arrays (inverse of conversion).

    key_fn maps a Flax path to its PyTorch name (default: SAM's, `torch_key`)."""
    key_fn = torch_key if key_fn is None else key_fn
    flat = flax.traverse_util.flatten_dict(params)
    return {key_fn(p): _from_flax_layout(p, np.asarray(v)) for p, v in flat.items()}


def _to_numpy(value) -> np.ndarray:
    if hasattr(value, "detach"):  # a torch tensor
        return value.detach().cpu().float().numpy()
    return np.asarray(value)


def infer_model_type(state_dict: Mapping[str, Any]) -> str | None:
    """Which preset a SAM state dict is, from its encoder width and depth (None: no preset)."""
    try:
        width = _to_numpy(state_dict["image_encoder.pos_embed"]).shape[-1]
    except KeyError:
        return None
    depth = len({k.split(".")[2] for k in state_dict if k.startswith("image_encoder.blocks.")})
    for name in MODEL_TYPES:
        c = model_config(name)
        if c.encoder_embed_dim == width and c.encoder_depth == depth:
            return name
    return None


def load_torch_state_dict(path: str | os.PathLike) -> dict:
    """Load a `.pth` state dict safely (`weights_only=True`: no arbitrary code runs)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint file not found: {path}")
    try:
        import torch
    except ImportError as e:  # torch is only needed to read .pth files
        raise CheckpointError(
            "reading a PyTorch .pth checkpoint needs torch (pip install torch); "
            "converted checkpoints load without it"
        ) from e
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise CheckpointError(f"{path} is not a readable PyTorch checkpoint: {e}") from e
    if isinstance(obj, Mapping) and len(obj) == 1:
        (only,) = obj.values()
        if isinstance(only, Mapping):  # {"model": state_dict} / {"state_dict": ...}
            obj = only
    if not isinstance(obj, Mapping) or not all(
        isinstance(k, str) and hasattr(v, "shape") for k, v in obj.items()
    ):
        raise CheckpointError(f"{path} does not hold a state dict (name -> tensor)")
    return dict(obj)


def check_output_dir(output_dir, overwrite: bool = False) -> Path:
    """The absolute output path for `save_converted`, or FileExistsError saying why it may
    not be written: it exists and overwrite is off, or overwrite is on but it is not a
    converted checkpoint directory (only `sam_config.json` and `params/`, or empty).
    Nothing else is ever replaced, so a mistyped --output cannot delete unrelated files."""
    output_dir = Path(output_dir).absolute()
    if not output_dir.exists() and not output_dir.is_symlink():
        return output_dir
    if not overwrite:
        raise FileExistsError(f"{output_dir} exists; pass overwrite=True (--overwrite) to replace")
    if output_dir.is_symlink() or not output_dir.is_dir():
        kind = "a symbolic link" if output_dir.is_symlink() else "a file"
        raise FileExistsError(
            f"{output_dir} is {kind}, not a converted checkpoint; --overwrite only replaces a "
            "converted checkpoint directory: choose another --output"
        )
    names = sorted(p.name for p in output_dir.iterdir())
    ours = {CONFIG_FILE, PARAMS_DIR}
    if names and not (set(names) <= ours and is_converted_checkpoint(output_dir)):
        others = [n for n in names if n not in ours] or names
        shown = ", ".join(others[:5]) + (f" and {len(others) - 5} more" if len(others) > 5 else "")
        raise FileExistsError(
            f"{output_dir} is not a converted checkpoint (it holds {shown}); --overwrite only "
            f"replaces a directory holding just {CONFIG_FILE} and {PARAMS_DIR}/: choose "
            "another --output"
        )
    return output_dir


def save_converted(
    params: Mapping, config: ml_collections.ConfigDict, output_dir, overwrite: bool = False
) -> Path:
    """Write params (orbax) and config (JSON) to output_dir, all or nothing.

    Everything is written into a temporary sibling directory that is renamed into place
    only when complete, so a failure never leaves a half-written checkpoint behind. With
    overwrite, an existing output_dir is replaced only if it is a converted checkpoint
    (`check_output_dir`); it is moved aside until the new one is in place.
    """
    import orbax.checkpoint as ocp

    output_dir = check_output_dir(output_dir, overwrite)
    output_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{output_dir.name}.", dir=output_dir.parent))
    old = None
    try:
        with ocp.StandardCheckpointer() as ckptr:
            ckptr.save(tmp / PARAMS_DIR, jax.tree_util.tree_map(np.asarray, params))
        (tmp / CONFIG_FILE).write_text(json.dumps(config.to_dict(), indent=2, default=list))
        check_output_dir(output_dir, overwrite)  # it may have changed while we wrote
        if output_dir.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{output_dir.name}.old.", dir=output_dir.parent))
            output_dir.rename(old / output_dir.name)
        tmp.rename(output_dir)
    except BaseException:
        if old is not None and not output_dir.exists():
            (old / output_dir.name).rename(output_dir)  # put the previous checkpoint back
        shutil.rmtree(tmp, ignore_errors=True)
        if old is not None and not any(old.iterdir()):
            old.rmdir()
        raise
    if old is not None:
        shutil.rmtree(old)
    return output_dir


def is_converted_checkpoint(path) -> bool:
    path = Path(path)
    return (path / CONFIG_FILE).is_file() and (path / PARAMS_DIR).is_dir()


def load_config(path) -> ml_collections.ConfigDict:
    path = Path(path)
    try:
        values = json.loads((path / CONFIG_FILE).read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise CheckpointError(f"cannot read model config {path / CONFIG_FILE}: {e}") from e
    config = model_config(values.get("model_type", "vit_b"))
    unknown = sorted(set(values) - set(config))
    if unknown:
        raise CheckpointError(f"{path / CONFIG_FILE}: unknown model config keys {unknown}")
    config.update(values)
    return config


def load_converted(path) -> tuple[ml_collections.ConfigDict, dict]:
    """Read a converted checkpoint directory -> (model config, params). Needs no torch."""
    import orbax.checkpoint as ocp

    path = Path(path).absolute()
    if not is_converted_checkpoint(path):
        raise CheckpointError(
            f"{path} is not a converted checkpoint (expected {CONFIG_FILE} and {PARAMS_DIR}/)"
        )
    config = load_config(path)
    target = abstract_params(config)
    with ocp.StandardCheckpointer() as ckptr:
        try:
            params = ckptr.restore(path / PARAMS_DIR, target)
        except Exception as e:
            raise CheckpointError(f"cannot restore params from {path / PARAMS_DIR}: {e}") from e
    return config, params
