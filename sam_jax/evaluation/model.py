"""Which weights an evaluation runs: `--checkpoint` resolved to something `load_sam` reads."""

from __future__ import annotations

import logging
from pathlib import Path

import ml_collections

from sam_jax.inference.build import SamModel, load_sam
from sam_jax.io import checkpoint as ckpt
from sam_jax.modeling.configs import build_sam, model_config

log = logging.getLogger(__name__)

# Model config keys that change how the model runs but not its parameters.
_RUNTIME_KEYS = ("dtype", "attention_impl")


def _is_training_workdir(path: Path) -> bool:
    try:
        from sam_jax.training.checkpoints import is_training_workdir
    except ImportError:
        return False
    return is_training_workdir(path)


def resolve_checkpoint(path) -> str | None:
    """Map `--checkpoint` to what `load_sam` takes: None (random init), a `.pth` file, a
    converted checkpoint directory (`sam_config.json` + `params/`) or a training workdir
    (`sam_config.json` + `checkpoints/`; `load_sam` reads its newest finished step).

    This is the one place that decides what a checkpoint path means for evaluation: a new
    kind of checkpoint location is taught here (and to `load_sam`), nowhere else.
    """
    if path is None or str(path) == "":
        return None
    p = Path(path)
    if not p.exists():
        raise ckpt.CheckpointError(f"checkpoint {p} does not exist")
    if p.is_dir():
        if ckpt.is_converted_checkpoint(p) or _is_training_workdir(p):
            return str(p)
        raise ckpt.CheckpointError(
            f"{p} is a directory but neither a converted checkpoint ({ckpt.CONFIG_FILE} and "
            f"{ckpt.PARAMS_DIR}/) nor a training workdir ({ckpt.CONFIG_FILE} and checkpoints/)"
        )
    return str(p)


def load_model(
    model_cfg: ml_collections.ConfigDict | None, checkpoint=None, seed: int = 0
) -> SamModel:
    """The model of `model_cfg` (a config's `model` section) with the weights of
    `checkpoint`.

    With a checkpoint, the architecture is the checkpoint's (its own config, or the preset
    of `model_cfg.model_type` for a `.pth`) and only runtime keys (dtype, attention_impl) of
    `model_cfg` apply. Without one, the whole `model_cfg` is built with random weights
    seeded by `seed`. model_cfg may be None when the checkpoint is a directory with its
    own config.
    """
    resolved = resolve_checkpoint(checkpoint)
    if model_cfg is None:
        if resolved is None or not Path(resolved).is_dir():
            raise ValueError("--config is needed unless --checkpoint is a checkpoint directory")
        return load_sam(ckpt.load_config(resolved).model_type, resolved)
    overrides = {k: model_cfg[k] for k in _RUNTIME_KEYS if k in model_cfg}
    if resolved is not None:
        return load_sam(model_cfg.model_type, resolved, **overrides)
    log.warning(
        "no --checkpoint: evaluating a randomly initialised %s (seed %d)",
        model_cfg.model_type,
        seed,
    )
    config = model_config(model_cfg.model_type)
    config.update(model_cfg.to_dict())
    return SamModel(build_sam(config), ckpt.init_params(config, seed), config)
