"""What a checkpoint path means: the one place that decides.

`sam_model_registry` / `load_sam`, the training loop's `init_from` and `evaluate.py
--checkpoint` all go through `resolve`, so a new kind of checkpoint location is taught here
and nowhere else. A path is one of:
- nothing (None or ""): a random initialisation, seeded;
- a converted checkpoint directory (`python -m sam_jax.cli.convert`: sam_config.json +
  params/), which carries its own model config;
- a training workdir (`train.py --workdir`: sam_config.json + checkpoints/), whose newest
  finished step is read;
- a PyTorch `.pth` state dict (the official release), converted by name into the given
  model config (or the preset its parameter shapes identify).
"""

from __future__ import annotations

from pathlib import Path

import ml_collections

from sam_jax.io import checkpoint as ckpt
from sam_jax.io import workdir
from sam_jax.modeling.configs import model_config

RANDOM, CONVERTED, WORKDIR, PTH = "random", "converted", "workdir", "pth"


def checkpoint_kind(path) -> str:
    """RANDOM, CONVERTED, WORKDIR or PTH; CheckpointError for a path that is none of them."""
    if path is None or str(path) == "":
        return RANDOM
    p = Path(path)
    if not p.exists():
        raise ckpt.CheckpointError(f"checkpoint {p} not found (no such file or directory)")
    if p.is_dir():
        if ckpt.is_converted_checkpoint(p):
            return CONVERTED
        if workdir.is_training_workdir(p):
            return WORKDIR
        raise ckpt.CheckpointError(
            f"{p} is a directory but not a converted checkpoint ({ckpt.CONFIG_FILE} and "
            f"{ckpt.PARAMS_DIR}/ inside) nor a training workdir ({ckpt.CONFIG_FILE} and "
            f"{workdir.CHECKPOINT_DIR}/ inside)"
        )
    return PTH


def resolve(
    path,
    model_type: str | None = None,
    *,
    config: ml_collections.ConfigDict | None = None,
    seed: int = 0,
) -> tuple[ml_collections.ConfigDict, dict]:
    """(model config, params) of `path`.

    model_type: the model the caller expects; a checkpoint of another type is an error.
    config: the model config to build for a random init or to convert a `.pth` into (its
    model_type is the expected type); by default the preset of `model_type` (for a `.pth`
    without either, the preset its parameter shapes identify). Directories bring their own
    config. A `.pth` that carries a text-prompt projection sets `text_embed_dim` to its size.
    """
    if config is not None:
        if model_type is not None and model_type != config.model_type:
            raise ValueError(f"model_type {model_type!r} but config is {config.model_type!r}")
        model_type = config.model_type
    kind = checkpoint_kind(path)
    if kind == RANDOM:
        if model_type is None:
            raise ValueError("a random initialisation needs a model type")
        config = config.copy_and_resolve_references() if config else model_config(model_type)
        return config, ckpt.init_params(config, seed)
    if kind == CONVERTED:
        loaded_config, params = ckpt.load_converted(path)
    elif kind == WORKDIR:
        loaded_config, params = workdir.load_params_from_workdir(path)
    else:
        state_dict = ckpt.load_torch_state_dict(path)
        if config is not None:
            loaded_config = config.copy_and_resolve_references()
        else:
            model_type = model_type or ckpt.infer_model_type(state_dict)
            if model_type is None:
                raise ckpt.CheckpointError(
                    f"{path}: cannot tell the model type from its parameters; name it"
                )
            loaded_config = model_config(model_type)
        loaded_config.text_embed_dim = ckpt.text_embed_dim_of(state_dict)
        params = ckpt.convert_state_dict(state_dict, loaded_config)
    if model_type is not None and loaded_config.model_type != model_type:
        raise ckpt.CheckpointError(
            f"{path} holds a {loaded_config.model_type!r} model, not {model_type!r}"
        )
    return loaded_config, params
