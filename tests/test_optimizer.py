"""The optimizer: schedule values, layer-wise lr decay, weight-decay mask, frozen buffer."""

from __future__ import annotations

import flax
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sam_jax.io.checkpoint import init_params
from sam_jax.modeling.configs import model_config
from sam_jax.training.config import base_config
from sam_jax.training.optimizer import layer_id, learning_rate_schedule, make_optimizer


def test_schedule_warmup_then_steps():
    f = learning_rate_schedule(8e-4, 250, (60_000, 86_666), 0.1)
    np.testing.assert_allclose(
        [f(0), f(125), f(250), f(59_999), f(60_000), f(86_666), f(89_999)],
        [0.0, 4e-4, 8e-4, 8e-4, 8e-5, 8e-6, 8e-6],
        rtol=1e-5,
    )


def test_cosine_schedule_after_warmup():
    f = learning_rate_schedule(1e-3, 100, (), 0.1, "cosine", 1100)
    np.testing.assert_allclose(
        [f(0), f(50), f(100), f(600), f(1100), f(5000)],
        [0.0, 5e-4, 1e-3, 1e-3 * (0.1 + 0.9 * 0.5), 1e-4, 1e-4],
        rtol=1e-5,
    )
    # Half way through the cosine the rate is the mean of its two ends; it only falls.
    values = np.array([f(s) for s in range(100, 1101, 50)])
    assert np.all(np.diff(values) < 0)


@pytest.mark.parametrize(
    "kind, total, match",
    [("linear", 1000, "unknown optimizer.schedule 'linear'"), ("cosine", 100, "above warmup")],
)
def test_schedule_errors(kind, total, match):
    with pytest.raises(ValueError, match=match):
        learning_rate_schedule(1e-3, 100, (), 0.1, kind, total)


def test_layer_ids():
    assert layer_id(("image_encoder", "patch_embed", "proj", "kernel"), 12) == 0
    assert layer_id(("image_encoder", "pos_embed"), 12) == 0
    assert layer_id(("image_encoder", "blocks_0", "attn", "qkv", "kernel"), 12) == 1
    assert layer_id(("image_encoder", "blocks_11", "mlp", "lin1", "bias"), 12) == 12
    assert layer_id(("image_encoder", "neck_0", "kernel"), 12) == 13
    assert layer_id(("mask_decoder", "iou_token", "embedding"), 12) == 13


@pytest.fixture(scope="module")
def tiny_params():
    return init_params(model_config("tiny"), 0)


def _first_update(params, grads, **opt):
    config = base_config("tiny")
    config.optimizer.update(dict(warmup_steps=0, grad_clip_norm=0.0, **opt))
    depth = config.model.encoder_depth
    tx, _ = make_optimizer(config, params, depth)
    updates, _ = jax.jit(tx.update)(grads, tx.init(params), params)
    return flax.traverse_util.flatten_dict(updates), depth


def test_layer_decay_scales_first_adam_step(tiny_params):
    # Adam's first step is lr * g / (|g| + eps) ~ lr per entry: the scale shows directly.
    grads = jax.tree_util.tree_map(jnp.ones_like, tiny_params)
    updates, depth = _first_update(tiny_params, grads, lr=1e-3, layer_decay=0.8, weight_decay=0.0)
    for path, u in updates.items():
        expected = 0.0
        if path[-1] != "positional_encoding_gaussian_matrix":  # frozen buffer
            expected = 1e-3 * 0.8 ** (depth + 1 - layer_id(path, depth))
        np.testing.assert_allclose(np.abs(u), expected, rtol=1e-4, err_msg=str(path))


def test_weight_decay_only_on_kernels(tiny_params):
    grads = jax.tree_util.tree_map(jnp.zeros_like, tiny_params)
    updates, _ = _first_update(tiny_params, grads, lr=1e-2, layer_decay=1.0, weight_decay=0.1)
    params = flax.traverse_util.flatten_dict(tiny_params)
    for path, u in updates.items():
        if path[-1] == "kernel":  # decoupled decay: -lr * wd * w
            np.testing.assert_allclose(u, -1e-3 * params[path], rtol=1e-5, atol=1e-12)
        else:  # biases, norms, embeddings, position tables, the frozen matrix
            assert not np.any(u), path


def test_trainable_updates_only_the_named_parameters(tiny_params):
    grads = jax.tree_util.tree_map(jnp.ones_like, tiny_params)
    updates, _ = _first_update(
        tiny_params,
        grads,
        lr=1e-3,
        layer_decay=1.0,
        weight_decay=0.1,
        trainable="mask_decoder/iou_prediction_head, mask_decoder/iou_token",
    )
    trained = set()
    for path, u in updates.items():
        name = "/".join(path)
        if name.startswith(("mask_decoder/iou_prediction_head/", "mask_decoder/iou_token/")):
            assert np.all(np.abs(u) > 1e-4), name  # Adam's first step, about lr
            trained.add(path[1])
        else:  # untouched: no step and no weight decay
            assert not np.any(u), name
    assert trained == {"iou_prediction_head", "iou_token"}


def test_trainable_names_are_checked():
    from sam_jax.training.config import ConfigError, validate_config

    config = base_config("tiny")
    config.data.source = "synthetic"
    config.optimizer.trainable = "mask_decoder,mask_decodr/iou_token"
    with pytest.raises(
        ConfigError,
        match=r"'mask_decodr/iou_token' names no parameter.*"
        r"did you mean 'mask_decoder/iou_token'",
    ):
        validate_config(config)
    config.optimizer.trainable = "mask_decoder, prompt_encoder/point_embeddings_0"
    validate_config(config)
