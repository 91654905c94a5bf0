"""Every attention implementation against the plainest one ("dense": all heads' scores
plus the broadcast relative-position bias), on CPU.

The fused kernels cannot run here, but what they are given can: the folded query and key
(relative positions as extra head dims, zero padding) go through
`jax.nn.dot_product_attention`'s XLA implementation (the cuDNN path's call, other backend),
and the Pallas kernels run in interpret mode.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sam_jax.inference.build import load_sam
from sam_jax.modeling import attention
from sam_jax.modeling.sam import Sam

# float32 on both sides; what is left is summation order.
REL_TOL = 1e-5


def _inputs(seed, batch, heads, grid, head_dim, dtype=jnp.float32):
    """q, k, v (B, heads, H*W, D) and rel_h / rel_w of realistic size (about the scores')."""
    rng = np.random.default_rng(seed)
    length = grid[0] * grid[1]

    def draw(*shape):
        return jnp.asarray(rng.standard_normal(shape), dtype)

    q, k, v = (draw(batch, heads, length, head_dim) for _ in range(3))
    rel_h, rel_w = draw(batch, heads, length, grid[0]), draw(batch, heads, length, grid[1])
    return q, k, v, rel_h, rel_w


def _rel_err(actual, expected):
    actual, expected = np.asarray(actual, np.float64), np.asarray(expected, np.float64)
    assert actual.shape == expected.shape
    return float(np.abs(actual - expected).max() / np.abs(expected).max())


def _dense(q, k, v, rel_h, rel_w, scale):
    return attention.rel_pos_attention(q, k, v, rel_h, rel_w, scale=scale, implementation="dense")


# Windows (folded on the XLA path), a non-square grid above the window size (one head at a
# time), and the real global grids of ViT-B (head dim 64) and ViT-H (80) at 64 x 64.
CASES = {
    "window_7x7": (2, 3, (7, 7), 16),
    "grid_24x20": (2, 2, (24, 20), 16),
    "vit_b_global": (1, 2, (64, 64), 64),
    "vit_h_global": (1, 1, (64, 64), 80),
}


@pytest.mark.parametrize("case", CASES)
def test_xla_matches_dense(case):
    q, k, v, rel_h, rel_w = _inputs(0, *CASES[case])
    scale = q.shape[-1] ** -0.5
    out = attention.rel_pos_attention(q, k, v, rel_h, rel_w, scale=scale, implementation="xla")
    assert _rel_err(out, _dense(q, k, v, rel_h, rel_w, scale)) < REL_TOL


@pytest.mark.parametrize("case", CASES)
def test_folded_form_matches_dense(case):
    """The cuDNN path's folding and padding (multiple of 8, v padded to q's head dim), run
    through the same `jax.nn.dot_product_attention` call with the XLA implementation."""
    q, k, v, rel_h, rel_w = _inputs(1, *CASES[case])
    scale = q.shape[-1] ** -0.5
    out = attention.folded_rel_pos_attention(
        q, k, v, rel_h, rel_w, scale=scale, kernel=attention.xla_kernel
    )
    assert _rel_err(out, _dense(q, k, v, rel_h, rel_w, scale)) < REL_TOL


def test_folded_form_pads_to_the_kernel_multiple():
    """The kernel sees one head dim for q, k and v, rounded up to the multiple."""
    q, k, v, rel_h, rel_w = _inputs(2, 1, 2, (6, 5), 12)
    seen = []

    def kernel(qa, ka, va):
        seen.append((qa.shape, ka.shape, va.shape))
        return attention.xla_kernel(qa, ka, va)

    out = attention.folded_rel_pos_attention(
        q, k, v, rel_h, rel_w, scale=0.3, kernel=kernel, multiple=16
    )
    assert seen == [((1, 2, 30, 32),) * 3]  # 12 + 6 + 5 = 23 -> 32
    assert out.shape == v.shape
    assert _rel_err(out, _dense(q, k, v, rel_h, rel_w, 0.3)) < REL_TOL


def test_folded_form_gradients_match_dense():
    """Training through a fused kernel differentiates the folded q and k: the gradients of
    q, k, v and both relative-position terms must be the dense path's."""
    args = _inputs(3, 1, 2, (12, 10), 16)
    scale = 0.25
    cotangent = jnp.asarray(np.random.default_rng(4).standard_normal(args[2].shape), jnp.float32)

    def loss(fn):
        return lambda *a: (fn(*a) * cotangent).sum()

    def folded(*a):
        return attention.folded_rel_pos_attention(*a, scale=scale, kernel=attention.xla_kernel)

    def xla(*a):
        return attention.rel_pos_attention(*a, scale=scale, implementation="xla")

    expected = jax.grad(loss(lambda *a: _dense(*a, scale)), argnums=range(5))(*args)
    for fn in (folded, xla):
        grads = jax.grad(loss(fn), argnums=range(5))(*args)
        for name, g, e in zip(("q", "k", "v", "rel_h", "rel_w"), grads, expected):
            assert _rel_err(g, e) < 1e-4, name


def test_pallas_gpu_kernel_in_interpret_mode():
    q, k, v, rel_h, rel_w = _inputs(5, 1, 2, (16, 16), 32)
    scale = q.shape[-1] ** -0.5

    def kernel(qa, ka, va):
        return attention.pallas_gpu_kernel(qa, ka, va, interpret=True)

    out = attention.folded_rel_pos_attention(
        q, k, v, rel_h, rel_w, scale=scale, kernel=kernel, multiple=16
    )
    assert _rel_err(out, _dense(q, k, v, rel_h, rel_w, scale)) < REL_TOL


def test_pallas_tpu_kernel_in_interpret_mode():
    from jax.experimental.pallas import tpu as pltpu

    q, k, v, rel_h, rel_w = _inputs(6, 1, 2, (16, 16), 32)
    scale = q.shape[-1] ** -0.5
    with pltpu.force_tpu_interpret_mode():
        out = attention.folded_rel_pos_attention(
            q, k, v, rel_h, rel_w, scale=scale, kernel=attention.pallas_tpu_kernel, multiple=128
        )
    assert _rel_err(out, _dense(q, k, v, rel_h, rel_w, scale)) < REL_TOL


def test_plain_attention_paths_agree():
    rng = np.random.default_rng(7)
    q, k, v = (jnp.asarray(rng.standard_normal((2, 4, n, 16)), jnp.float32) for n in (5, 9, 9))
    key_mask = jnp.asarray(rng.random((2, 9)) > 0.3).at[:, 0].set(True)
    outs = [
        attention.dot_product_attention(q, k, v, key_mask=key_mask, implementation=impl)
        for impl in ("auto", "xla", "dense")
    ]
    expected = jax.nn.dot_product_attention(
        *(jnp.swapaxes(x, 1, 2) for x in (q, k, v)), mask=key_mask[:, None, None, :]
    )
    for out in outs:
        assert _rel_err(out, jnp.swapaxes(expected, 1, 2)) < REL_TOL


# ------------------------------------------------------------------ choosing an implementation
@pytest.mark.parametrize(
    "platform, dtype, grid, max_dim, expected",
    [
        ("cpu", jnp.float32, (64, 64), 256, "xla"),
        ("cpu", jnp.bfloat16, (64, 64), 256, "xla"),
        ("gpu", jnp.bfloat16, (64, 64), 256, "cudnn"),  # Hopper: 80 + 128 = 208 fits
        ("gpu", jnp.float16, (14, 14), 128, "cudnn"),  # windows fit everywhere
        ("gpu", jnp.bfloat16, (64, 64), 128, "xla"),  # Ampere: 208 > 128
        ("gpu", jnp.float32, (64, 64), 256, "xla"),  # cuDNN has no fp32
        ("tpu", jnp.bfloat16, (64, 64), 256, "pallas"),
        ("tpu", jnp.float32, (64, 64), 256, "pallas"),
        ("tpu", jnp.bfloat16, (14, 14), 256, "xla"),  # windows stay in XLA
        ("gpu", jnp.bfloat16, None, 256, "xla"),  # plain (decoder) attention
    ],
)
def test_auto_picks_per_backend(monkeypatch, platform, dtype, grid, max_dim, expected):
    monkeypatch.setattr(attention, "_cudnn_max_head_dim", lambda: max_dim)
    got = attention.resolve_implementation("auto", dtype, head_dim=80, grid=grid, platform=platform)
    assert got == expected


def test_explicit_requests_are_kept_or_refused():
    for impl in ("xla", "dense"):
        assert attention.resolve_implementation(impl, jnp.float32, platform="cpu") == impl
    with pytest.raises(ValueError, match="runs only on NVIDIA GPUs"):
        attention.resolve_implementation("cudnn", jnp.bfloat16, platform="cpu")
    with pytest.raises(ValueError, match="bfloat16 or float16"):
        attention.resolve_implementation("cudnn", jnp.float32, platform="gpu")
    with pytest.raises(ValueError, match="GPU .Triton. and TPU"):
        attention.resolve_implementation("pallas", jnp.float32, platform="cpu")
    with pytest.raises(ValueError, match="unknown attention implementation"):
        attention.resolve_implementation("flash", jnp.float32, platform="gpu")


def test_cudnn_request_on_cpu_fails_clearly():
    q, k, v, rel_h, rel_w = _inputs(8, 1, 1, (7, 7), 16, jnp.bfloat16)
    with pytest.raises(ValueError, match="attention_impl='cudnn' runs only on NVIDIA GPUs"):
        attention.rel_pos_attention(q, k, v, rel_h, rel_w, scale=0.25, implementation="cudnn")


def test_cudnn_head_dim_limit_is_named(monkeypatch):
    monkeypatch.setattr(attention, "_platform", lambda: "gpu")
    monkeypatch.setattr(attention, "_cudnn_max_head_dim", lambda: 128)
    q, k, v, rel_h, rel_w = _inputs(9, 1, 1, (64, 64), 64, jnp.bfloat16)
    with pytest.raises(ValueError, match="folded head dim 192"):
        attention.rel_pos_attention(q, k, v, rel_h, rel_w, scale=0.125, implementation="cudnn")


# ------------------------------------------------------------------------------- whole model
def _embed(model, images):
    return model.module.apply({"params": model.params}, images, method=Sam.embed_images)


@pytest.fixture(scope="module")
def tiny_images():
    return np.random.default_rng(10).integers(0, 256, (2, 256, 256, 3), dtype=np.uint8)


def test_encoder_cudnn_path_matches_xla(monkeypatch, tiny_images):
    """The tiny encoder with attention_impl="cudnn" (windows and the global block folded),
    its kernel swapped for the same call on XLA, against the XLA path, both in bf16."""
    calls = []

    def kernel(q, k, v):
        calls.append((q.dtype, q.shape, v.shape))
        return attention.xla_kernel(q, k, v)

    monkeypatch.setattr(attention, "_platform", lambda: "gpu")
    monkeypatch.setattr(attention, "cudnn_kernel", kernel)
    ours = _embed(load_sam("tiny", dtype="bfloat16", attention_impl="cudnn"), tiny_images)
    # tiny: 2 heads of 32; a 7 x 7 window block (2 x 9 windows) and the 16 x 16 global one
    assert calls == [
        (jnp.bfloat16, (18, 2, 49, 48), (18, 2, 49, 48)),  # 32 + 7 + 7 = 46 -> 48
        (jnp.bfloat16, (2, 2, 256, 64), (2, 2, 256, 64)),  # 32 + 16 + 16 = 64
    ]
    expected = _embed(load_sam("tiny", dtype="bfloat16", attention_impl="xla"), tiny_images)
    # bf16 rounds each path's intermediates differently: ~1e-2 of the largest value.
    assert _rel_err(ours, expected) < 3e-2


@pytest.mark.parametrize("impl", ["auto", "dense"])
def test_encoder_paths_match_xla_in_fp32(impl, tiny_images):
    ours = _embed(load_sam("tiny", dtype="float32", attention_impl=impl), tiny_images)
    expected = _embed(load_sam("tiny", dtype="float32", attention_impl="xla"), tiny_images)
    assert _rel_err(ours, expected) < REL_TOL


# ------------------------------------------------------------------ runtime defaults of a model
@pytest.mark.parametrize(
    "backend, expected", [("cpu", "float32"), ("gpu", "bfloat16"), ("tpu", "bfloat16")]
)
def test_inference_dtype_defaults_per_backend(monkeypatch, backend, expected):
    from sam_jax.inference import build

    monkeypatch.setattr(build.jax, "default_backend", lambda: backend)
    model = build.load_sam("tiny")
    assert model.config.dtype == expected and model.config.attention_impl == "auto"
    assert model.module.dtype == jnp.dtype(expected)
    leaves = jax.tree.leaves(model.params)
    assert all(x.dtype == jnp.float32 for x in leaves)  # parameters stay float32
    explicit = build.load_sam("tiny", dtype="float32", attention_impl="xla")
    assert explicit.config.dtype == "float32" and explicit.module.attention_impl == "xla"


def test_checkpoint_config_does_not_pin_the_runtime(monkeypatch, tmp_path):
    """A converted checkpoint records the dtype it was converted with; where it runs decides."""
    from sam_jax.inference import build
    from sam_jax.io import checkpoint

    model = build.load_sam("tiny", dtype="float32", attention_impl="xla")
    checkpoint.save_converted(model.params, model.config, tmp_path / "tiny")
    monkeypatch.setattr(build.jax, "default_backend", lambda: "gpu")
    loaded = build.load_sam("tiny", tmp_path / "tiny")
    assert loaded.config.dtype == "bfloat16" and loaded.config.attention_impl == "auto"
