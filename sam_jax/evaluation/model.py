"""Which model an evaluation runs: a config's `model` section and `--checkpoint`, read
through `sam_jax.io.resolve` (the one place that decides what a checkpoint path means)."""

from __future__ import annotations

import logging

import ml_collections

from sam_jax.inference.build import RUNTIME_KEYS, SamModel, load_sam
from sam_jax.io import checkpoint as ckpt
from sam_jax.io import resolve
from sam_jax.modeling.configs import build_sam

log = logging.getLogger(__name__)


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
    kind = resolve.checkpoint_kind(checkpoint)
    if model_cfg is None:
        if kind not in (resolve.CONVERTED, resolve.WORKDIR):
            raise ValueError("--config is needed unless --checkpoint is a checkpoint directory")
        return load_sam(ckpt.load_config(checkpoint).model_type, checkpoint)
    overrides = {k: model_cfg[k] for k in RUNTIME_KEYS if k in model_cfg}
    if kind != resolve.RANDOM:
        return load_sam(model_cfg.model_type, checkpoint, **overrides)
    log.warning(
        "no --checkpoint: evaluating a randomly initialised %s (seed %d)",
        model_cfg.model_type,
        seed,
    )
    config, params = resolve.resolve(None, config=model_cfg, seed=seed)
    return SamModel(build_sam(config), params, config)
