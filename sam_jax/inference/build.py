"""`sam_model_registry`: model bundles (module + params + config) by model type."""

from __future__ import annotations

import dataclasses
import functools

import jax
import ml_collections
import numpy as np

from sam_jax.io.resolve import resolve
from sam_jax.modeling.configs import build_sam
from sam_jax.modeling.sam import Sam


@dataclasses.dataclass
class SamModel:
    """A SAM model ready to run: the Flax module, its parameters and its config."""

    module: Sam
    params: dict
    config: ml_collections.ConfigDict

    def __post_init__(self):
        # Host (numpy) parameters are copied to the default device once, here: passed to a
        # compiled call as numpy, they would be copied again on every call (for ViT-B one
        # `predict` spent about 10 ms of its 45 on that). Arrays already on a device, such
        # as sharded ones, are kept as they are.
        self.params = jax.tree.map(
            lambda x: jax.device_put(x) if isinstance(x, np.ndarray) else x, self.params
        )

    @property
    def image_size(self) -> int:
        return self.module.image_size

    @property
    def model_type(self) -> str:
        return self.config.model_type


# Model config keys that change how the model runs but not its parameters.
RUNTIME_KEYS = ("dtype", "attention_impl")


def default_inference_dtype() -> str:
    """The compute dtype of inference when none is asked for: bfloat16 on GPU and TPU
    (parameters stay float32; activations and matmul inputs are bf16, accumulation fp32),
    float32 on CPU, where outputs match the PyTorch reference."""
    return "bfloat16" if jax.default_backend() in ("gpu", "tpu") else "float32"


def load_sam(model_type: str, checkpoint=None, seed: int = 0, **overrides) -> SamModel:
    """Build a model of `model_type`.

    checkpoint: None (random init seeded by `seed`), a PyTorch `.pth` state dict, a
    directory written by `python -m sam_jax.cli.convert`, or a training workdir (`train.py
    --workdir`; its newest finished checkpoint). `overrides` change model config keys
    that do not affect the parameters (e.g. dtype="float32", attention_impl="xla").

    Unless given, dtype is `default_inference_dtype()` and attention_impl "auto" (per
    backend), whatever a checkpoint's own config recorded: how a model runs is chosen where
    it runs.
    """
    config, params = resolve(checkpoint, model_type, seed=seed)
    unknown = sorted(set(overrides) - set(config))
    if unknown:
        raise ValueError(f"unknown model config keys {unknown}")
    shaping = sorted(k for k in overrides if k not in RUNTIME_KEYS and overrides[k] != config[k])
    if shaping:
        raise ValueError(
            f"model config keys {shaping} change the parameters, which come from the "
            f"checkpoint (or the {model_type} preset); only {', '.join(RUNTIME_KEYS)} can be "
            "overridden here (build another architecture with sam_jax.modeling.configs)"
        )
    config.update({"dtype": default_inference_dtype(), "attention_impl": "auto", **overrides})
    return SamModel(build_sam(config), params, config)


sam_model_registry = {
    "default": functools.partial(load_sam, "vit_h"),
    "vit_h": functools.partial(load_sam, "vit_h"),
    "vit_l": functools.partial(load_sam, "vit_l"),
    "vit_b": functools.partial(load_sam, "vit_b"),
    "tiny": functools.partial(load_sam, "tiny"),
}
