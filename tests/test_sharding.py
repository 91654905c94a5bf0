"""Tensor parallelism of the image encoder on 8 fake CPU devices (in a subprocess, as the
device count is fixed when JAX starts): the fused qkv projection is split by heads, so each
device holds q, k and v of the same heads, and sharded runs equal the unsharded model."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sam_jax.modeling import sharding as shd

ROOT = Path(__file__).resolve().parents[1]

SCRIPT = textwrap.dedent(
    """
    import json, sys
    sys.path.insert(0, {root!r})
    import jax, jax.numpy as jnp, numpy as np
    from sam_jax.modeling import sharding as shd
    from sam_jax.modeling.image_encoder import ImageEncoderViT, QKVProjection

    HEADS = 4
    enc = ImageEncoderViT(img_size=128, patch_size=16, embed_dim=64, depth=2, num_heads=HEADS,
                          window_size=3, global_attn_indexes=(1,), out_chans=16,
                          attention_impl="xla")
    rng = np.random.default_rng(0)
    images = jnp.asarray(rng.standard_normal((4, 128, 128, 3)), jnp.float32)
    params = enc.init(jax.random.key(0), images)["params"]
    params = jax.tree_util.tree_map_with_path(  # non-zero position tables
        lambda p, x: jnp.asarray(rng.standard_normal(x.shape), x.dtype) * 0.1
        if "rel_pos" in jax.tree_util.keystr(p) else x, params)

    weights = jnp.asarray(rng.standard_normal((4, 8, 8, 16)), jnp.float32)

    def loss(p, x):  # not the mean square: the final LayerNorm makes that a constant
        return (enc.apply({{"params": p}}, x) * weights).mean()

    expected_out = np.asarray(enc.apply({{"params": params}}, images))
    expected_grads = jax.grad(loss)(params, images)
    tokens = jnp.asarray(rng.standard_normal((4, 64, 64)), jnp.float32)
    qkv_params = {{"params": params["blocks_0"]["attn"]["qkv"]}}
    expected_qkv = np.asarray(QKVProjection(HEADS).apply(qkv_params, tokens))

    report = {{}}
    for mesh_shape in {meshes}:
        mesh = shd.make_mesh(*mesh_shape)
        shardings = shd.param_shardings(params, mesh)
        with jax.set_mesh(mesh):
            p = jax.device_put(params, shardings)
            x = jax.device_put(images, shd.batch_sharding(mesh, 4))
            out = jax.jit(lambda p, x: enc.apply({{"params": p}}, x))(p, x)
            grads = jax.jit(jax.grad(loss), out_shardings=shardings)(p, x)
            t = jax.device_put(tokens, shd.batch_sharding(mesh, 3))
            qkv = jax.jit(lambda p, t: QKVProjection(HEADS).apply(p, t))(
                {{"params": p["blocks_0"]["attn"]["qkv"]}}, t)
        grad_err = max(
            float(jnp.abs(g - e).max() / (jnp.abs(e).max() + 1e-30))
            for g, e in zip(jax.tree.leaves(grads), jax.tree.leaves(expected_grads)))
        shards = []
        for s in qkv.addressable_shards:  # (B, L, 3, heads, head_dim) slices per device
            sl = s.index[3]
            shards.append({{
                "tensor": int(np.argwhere(mesh.devices == s.device)[0][2]),
                "qkv": [s.index[2].start, s.index[2].stop],
                "heads": [sl.start, sl.stop],
                "err": float(np.abs(np.asarray(s.data) - expected_qkv[s.index]).max()),
            }})
        with jax.set_mesh(mesh):  # dimensions the mesh axes do not divide: left free
            odd = jax.jit(lambda y: shd.constrain(y * 2, ("batch", "heads")))(jnp.ones((3, 6)))
        report[str(mesh_shape)] = {{
            "odd_ok": bool((np.asarray(odd) == 2).all()),
            "out_err": float(np.abs(np.asarray(out) - expected_out).max()
                             / np.abs(expected_out).max()),
            "grad_err": grad_err,
            "qkv_spec": str(qkv.sharding.spec),
            "qkv_err": float(np.abs(np.asarray(qkv) - expected_qkv).max()),
            "shards": shards,
        }}
    print("REPORT", json.dumps(report))
    """
)

MESHES = [(2, 1, 4), (1, 4, 2), (2, 2, 2)]  # (data, fsdp, tensor)


@pytest.fixture(scope="module")
def report():
    env = dict(os.environ, JAX_NUM_CPU_DEVICES="8", JAX_PLATFORMS="cpu")
    script = SCRIPT.format(root=str(ROOT), meshes=MESHES)
    proc = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=600, env=env
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    line = next(x for x in proc.stdout.splitlines() if x.startswith("REPORT "))
    return json.loads(line.split(" ", 1)[1])


@pytest.mark.parametrize("mesh", MESHES)
def test_sharded_encoder_equals_unsharded(report, mesh):
    r = report[str(mesh)]
    assert r["out_err"] < 1e-5, r
    assert r["grad_err"] < 1e-4, r
    assert r["odd_ok"]


@pytest.mark.parametrize("mesh", MESHES)
def test_each_device_projects_q_k_v_of_the_same_heads(report, mesh):
    r = report[str(mesh)]
    tensor = mesh[2]
    assert r["qkv_err"] < 1e-5
    assert "tensor" in r["qkv_spec"], r["qkv_spec"]
    per_device = 4 // tensor
    for shard in r["shards"]:
        assert shard["qkv"] == [None, None], shard  # all three of q, k, v
        t = shard["tensor"]
        assert shard["heads"] == [t * per_device, (t + 1) * per_device], shard
        assert shard["err"] < 1e-5, shard


def test_constrain_without_a_mesh_is_a_no_op():
    x = jnp.ones((4, 6))
    assert shd.constrain(x, ("batch", "heads")) is x


def test_constrain_on_a_single_device_mesh_is_a_no_op():
    devices = np.array(jax.devices()[:1])
    mesh = jax.sharding.Mesh(
        devices.reshape(1, 1, 1),
        shd.MESH_AXES,
        axis_types=(jax.sharding.AxisType.Auto,) * 3,
    )
    with jax.set_mesh(mesh):  # every axis of size 1: nothing to pin
        x = jnp.ones((3, 5))
        assert shd.constrain(x, ("batch", "heads")) is x
