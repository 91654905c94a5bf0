"""The accelerator benchmark: parity, encoder throughput, decode latency, automatic mask
generation, train-step MFU and memory, in one run of at most 8 minutes on one GPU or TPU.

    python benchmarks/accelerator.py                          # on a GPU/TPU host
    python benchmarks/accelerator.py --smoke --output /tmp/b  # tiny model on CPU, < 2 min

Writes <output>/<device>-<date>.json (and .md, the same as tables); `--output` defaults to
benchmarks/results. Keys:

  device            jax's device kind ("NVIDIA H200", "TPU v5 lite", "cpu")
  parity            ViT-B with seeded random weights (see `random_weights`) on a synthetic
                    768 x 1024 image and 16 one-point prompts, on the device in float32 at
                    the highest matmul precision against XLA:CPU the same way:
                    vit_b_mask_agreement (share of the 16 x 3 full-size mask pixels that
                    agree) and vit_b_logit_rel_err (relative L2 error of the low-res
                    logits). vit_b_inference_* : the device as inference runs by default
                    (bf16 on accelerators, attention "auto", so cuDNN on a GPU) against the
                    same reference; vit_b_cpu_bf16_* : XLA:CPU in bf16 against it, what
                    bf16 rounding alone costs on these weights
  encoder_img_per_s vit_b_bf16, vit_h_bf16, vit_h_fp32: images/s of `Sam.embed_images`, the
                    best of batch 16 / 8 / 4 / 1 (by_batch has each), attention "auto";
                    by_attention: the same at the best batch for every implementation the
                    device runs (by_attention["vit_h_bf16"]["cudnn"], ...)
  predict_ms        vit_h_bf16: one-point `SamPredictor.predict` latency, prompt in, masks
                    at the image size on the host (median of 20 calls)
  amg_s_per_image   vit_h_bf16: `SamAutomaticMaskGenerator(points_per_side=32).generate` on
                    the synthetic image, embedding included (random weights keep few masks)
  train_mfu         vit_b, vit_h: model FLOPs / step time / device peak for the train step of
                    configs/vit_b.py and vit_h.py (64 masks x 11 rounds per image, remat as
                    the configs set it, bf16 compute with float32 weights and optimizer)
  peak_memory_gib   the ViT-H train step: vit_h_train_step, measured on the device (peak bytes
                    in use in a process that ran only that step), beside
                    vit_h_train_step_xla_cpu_estimate (the same step compiled by XLA:CPU with
                    its memory-optimised scheduler; benchmarks/train_step.py's method)

MFU method: the model FLOPs of a step are XLA's cost analysis (`Lowered.cost_analysis()
["flops"]`) of the same step lowered in a counting form: no remat (recomputation is not model
work), the prompting rounds unrolled and all masks in one chunk (XLA counts a loop body
once, whatever its trip count), and attention "dense" (a fused kernel is a custom call whose
FLOPs XLA cannot see; "dense" has no loop). Matmul and elementwise FLOPs both count. The
device peak is the dense bf16 figure of its kind (`PEAK_BF16_TFLOPS`, or --peak_tflops).
Timings: compile excluded, one warm-up call, then the median of --reps runs, each run a few
calls with `block_until_ready` at its end.

Every section runs in its own process (a failure or an out-of-memory stays in its section,
and the memory peak of the train step is that step's alone), the device sections one after
another within --budget_s, the CPU work (the parity reference, FLOP counting, the XLA:CPU
memory estimate) in one more process beside them. The JSON is rewritten after each section;
a section that failed or ran out of time records why under "errors". --sections runs some
sections only and --resume merges them into an earlier JSON.
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

# Dense bf16 peak TFLOP/s by device kind (first match wins: more specific names first).
PEAK_BF16_TFLOPS = (
    ("H100 PCIe", 756.0),
    ("GH200", 989.0),
    ("H200", 989.0),
    ("H100", 989.0),
    ("H800", 989.0),
    ("B200", 2250.0),
    ("A100", 312.0),
    ("A800", 312.0),
    ("L40S", 362.0),
    ("L4", 121.0),
    ("TPU v6 lite", 918.0),
    ("TPU v6e", 918.0),
    ("TPU v5 lite", 197.0),
    ("TPU v5e", 197.0),
    ("TPU v5p", 459.0),
    ("TPU v5", 459.0),
    ("TPU v4", 275.0),
)

SEED = 0
PARITY_IMAGE_HW = (768, 1024)
PARITY_PROMPTS = 16
GIB = 1024**3

# Device sections in the order they run: what the issue's checks read first.
SECTIONS = (
    "parity",
    "encoder_vit_h_bf16",
    "train_vit_h",
    "encoder_vit_b_bf16",
    "predict_amg",
    "encoder_attention",
    "encoder_vit_h_fp32",
    "train_vit_b",
)
# Wall-clock caps per section (s), within what is left of --budget_s.
_CAPS = {
    "parity": 100,
    "encoder_vit_h_bf16": 120,
    "train_vit_h": 180,
    "encoder_vit_b_bf16": 60,
    "predict_amg": 80,
    "encoder_attention": 80,
    "encoder_vit_h_fp32": 90,
    "train_vit_b": 100,
}
_ENCODER_CASES = {  # section -> (result key, model, dtype)
    "encoder_vit_b_bf16": ("vit_b_bf16", "vit_b", "bfloat16"),
    "encoder_vit_h_bf16": ("vit_h_bf16", "vit_h", "bfloat16"),
    "encoder_vit_h_fp32": ("vit_h_fp32", "vit_h", "float32"),
}


# ------------------------------------------------------------------------------ settings
def _settings(smoke: bool) -> dict:
    """Sizes of every measurement; --smoke: the tiny model, small batches, few repeats."""
    if smoke:
        return {
            "models": {"vit_b": "tiny", "vit_h": "tiny"},
            "train_configs": {"vit_b": "tiny", "vit_h": "tiny"},
            "train_patch_size": 16,  # 8 x 8 tokens: quick to compile
            "batch_sizes": [2, 1],
            "reps": 2,
            "max_calls": 2,
            "predict_calls": 3,
            "points_per_side": 4,
            "image_hw": (150, 200),
            "prompts": 4,
            "train_batch": {"vit_b": 1, "vit_h": 1},
            "train_masks": 2,
            "train_rounds": 2,
            "train_steps": 2,
        }
    return {
        "models": {"vit_b": "vit_b", "vit_h": "vit_h"},
        "train_configs": {"vit_b": "vit_b", "vit_h": "vit_h"},
        "train_patch_size": None,
        "batch_sizes": [16, 8, 4, 1],
        "reps": 3,
        "max_calls": 10,
        "predict_calls": 20,
        "points_per_side": 32,
        "image_hw": PARITY_IMAGE_HW,
        "prompts": PARITY_PROMPTS,
        "train_batch": {"vit_b": 8, "vit_h": 4},
        "train_masks": None,  # the config's (64)
        "train_rounds": None,  # the config's (11)
        "train_steps": 3,
    }


def _apply_cache(cache_dir: str) -> None:
    """A persistent compilation cache shared by the sections: a program that two sections
    compile alike (the encoder under "auto" and under the implementation it resolves to,
    the tiny model standing for two sizes in --smoke) compiles once."""
    import jax

    jax.config.update("jax_compilation_cache_dir", cache_dir)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)


# ------------------------------------------------------------------------------ inputs
def synthetic_image(hw, seed: int = SEED) -> np.ndarray:
    """An RGB uint8 picture of smooth shading and a few filled discs and boxes, so masks
    have edges to follow; the same for a seed on every machine."""
    rng = np.random.default_rng(seed)
    h, w = hw
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    image = np.empty((h, w, 3), np.float32)
    for c in range(3):
        fy, fx, phase = rng.uniform(1, 4), rng.uniform(1, 4), rng.uniform(0, 2 * np.pi)
        image[..., c] = 128 + 60 * np.sin(fy * yy / h * np.pi + fx * xx / w * np.pi + phase)
    for _ in range(12):
        color = rng.uniform(0, 255, 3)
        cy, cx = rng.uniform(0, h), rng.uniform(0, w)
        r = rng.uniform(0.05, 0.2) * min(h, w)
        if rng.random() < 0.5:
            inside = (yy - cy) ** 2 + (xx - cx) ** 2 < r**2
        else:
            inside = (np.abs(yy - cy) < r) & (np.abs(xx - cx) < 0.7 * r)
        image[inside] = color
    return np.clip(image + rng.normal(0, 4, image.shape), 0, 255).astype(np.uint8)


def parity_prompts(hw, n: int) -> tuple[np.ndarray, np.ndarray]:
    """n one-point prompts on a regular grid over the image: (n, 1, 2) xy, (n, 1) labels."""
    side = int(math.ceil(math.sqrt(n)))
    ys = (np.arange(side) + 0.5) / side * hw[0]
    xs = (np.arange(side) + 0.5) / side * hw[1]
    points = np.stack(np.meshgrid(xs, ys), -1).reshape(-1, 2)[:n]
    return points[:, None].astype(np.float64), np.ones((n, 1), np.int64)


def random_weights(config) -> dict:
    """Seeded random parameters that exercise every path: `init_params` (PyTorch's
    initialisation), position tables 0.1 x N(0, 1) instead of zeros, and the last layers of
    the hypernetworks and IoU head x10, as the parity tests' reference has them. Random
    decoders paint salt-and-pepper masks, nearly every pixel close to the threshold, so
    their mask agreement is a pessimistic measure: trained masks flip only at their edges."""
    import flax

    from sam_jax.io.checkpoint import init_params

    flat = flax.traverse_util.flatten_dict(init_params(config, SEED))
    rng = np.random.default_rng(SEED + 1)
    last = f"layers_{config.iou_head_depth - 1}"
    for path, value in flat.items():
        name = "/".join(path)
        if "rel_pos" in name or path[-1] == "pos_embed":
            flat[path] = 0.1 * rng.standard_normal(value.shape).astype(np.float32)
        elif ("output_hypernetworks_mlps" in name and "layers_2" in name) or (
            "iou_prediction_head" in name and last in name
        ):
            flat[path] = np.asarray(value) * 10.0
    return flax.traverse_util.unflatten_dict(flat)


def _model(model_type: str, dtype: str, attention_impl: str, params=None):
    from sam_jax.inference.build import SamModel
    from sam_jax.modeling.configs import build_sam, model_config

    config = model_config(model_type)
    config.dtype, config.attention_impl = dtype, attention_impl
    if params is None:
        params = random_weights(config)
    return SamModel(build_sam(config), params, config)


def _auto_impl(model_type: str, dtype: str) -> str:
    """What attention "auto" runs in this model's global blocks on this device."""
    from sam_jax.modeling import attention
    from sam_jax.modeling.configs import model_config

    c = model_config(model_type)
    grid = c.image_size // c.patch_size
    head_dim = c.encoder_embed_dim // c.encoder_num_heads
    return attention.resolve_implementation("auto", dtype, head_dim=head_dim, grid=(grid, grid))


def _device_impls(platform: str) -> list[str]:
    return {"gpu": ["xla", "cudnn", "pallas"], "tpu": ["xla", "pallas"]}.get(
        platform, ["xla", "dense"]
    )


# ------------------------------------------------------------------------------ timing
def _time_calls(fn, reps: int, max_calls: int, target_s: float = 0.5) -> float:
    """Median seconds per call of `fn` (already compiled and warmed up): `reps` runs of a
    few calls each, as many as fit in about target_s, synchronised at the end of a run."""
    import jax

    t0 = time.perf_counter()
    jax.block_until_ready(fn())
    one = time.perf_counter() - t0
    calls = max(1, min(max_calls, int(target_s / max(one, 1e-6))))
    per_call = []
    for _ in range(reps):
        t0 = time.perf_counter()
        out = None
        for _ in range(calls):
            out = fn()
        jax.block_until_ready(out)
        per_call.append((time.perf_counter() - t0) / calls)
    return statistics.median(per_call)


class _Part:
    """One section's results, rewritten to its file after every update so that a process
    stopped for time still leaves what it measured."""

    def __init__(self, path):
        self.path = Path(path)
        self.data = {}

    def set(self, keys, value):
        d = self.data
        for k in keys[:-1]:
            d = d.setdefault(k, {})
        d[keys[-1]] = value
        self.path.write_text(json.dumps(self.data, indent=1, default=_json_default))


def _json_default(x):
    if isinstance(x, (np.integer,)):
        return int(x)
    if isinstance(x, (np.floating,)):
        return float(x)
    if isinstance(x, np.ndarray):
        return x.tolist()
    raise TypeError(type(x))


def _short_error(e: BaseException) -> str:
    text = f"{type(e).__name__}: {e}"
    return text if len(text) < 600 else text[:600] + " ..."


# ------------------------------------------------------------------------------ sections
def _device_info(part: _Part) -> None:
    import jax

    d = jax.devices()[0]
    part.set(["device"], d.device_kind)
    part.set(["platform"], d.platform)
    part.set(["device_count"], jax.device_count())


def _parity_run(model, precision, s: dict) -> dict:
    """Masks (P, 3, H, W), low-res logits and the image embedding of the parity prompts."""
    import jax

    from sam_jax.inference.predictor import SamPredictor

    image = synthetic_image(s["image_hw"])
    points, labels = parity_prompts(s["image_hw"], s["prompts"])
    with jax.default_matmul_precision(precision):
        predictor = SamPredictor(model)
        predictor.set_image(image)
        masks, _, low = predictor.predict_batch(points, labels)
        return {"masks": masks, "low": low, "features": np.asarray(predictor.features)}


def task_parity(part: _Part, s: dict, work: Path) -> None:
    """Device side of the parity check: ViT-B in float32 at the highest precision, and in
    the device's default inference setup; saved for the orchestrator to compare."""
    from sam_jax.inference.build import default_inference_dtype

    _device_info(part)
    model_type = s["models"]["vit_b"]
    dtype = default_inference_dtype()
    part.set(["inference_dtype"], dtype)
    part.set(["inference_attention_impl"], _auto_impl(model_type, dtype))
    params = None
    for name, dt, precision in (("fp32", "float32", "highest"), ("inference", dtype, None)):
        model = _model(model_type, dt, "auto", params=params)
        params = model.params
        np.savez(work / f"parity_device_{name}.npz", **_parity_run(model, precision, s))
        part.set(["runs", name], {"dtype": dt, "precision": precision or "default"})


def cpu_parity_reference(s: dict, work: Path) -> dict:
    """The CPU side: the same weights, image and prompts in float32 at the highest precision
    (the reference), and in bf16 (what bf16 rounding alone costs, for comparison)."""
    model = _model(s["models"]["vit_b"], "float32", "xla")
    np.savez(work / "parity_cpu.npz", **_parity_run(model, "highest", s))
    bf16 = _model(s["models"]["vit_b"], "bfloat16", "xla", params=model.params)
    np.savez(work / "parity_cpu_bf16.npz", **_parity_run(bf16, None, s))
    return {"done": True}


def compare_parity(work: Path) -> dict:
    """Mask agreement and logit (and embedding) relative L2 error against the reference:
    of the device in float32 (vit_b_*), the device as inference runs it (vit_b_inference_*)
    and the CPU in bf16 (vit_b_cpu_bf16_*)."""
    ref = np.load(work / "parity_cpu.npz")
    out = {}
    for file, prefix in (
        ("parity_device_fp32.npz", "vit_b_"),
        ("parity_device_inference.npz", "vit_b_inference_"),
        ("parity_cpu_bf16.npz", "vit_b_cpu_bf16_"),
    ):
        if not (work / file).exists():
            continue
        run = np.load(work / file)
        out[prefix + "mask_agreement"] = float((run["masks"] == ref["masks"]).mean())
        for key, name in (("low", "logit_rel_err"), ("features", "embedding_rel_err")):
            a, b = run[key].astype(np.float64), ref[key].astype(np.float64)
            out[prefix + name] = float(np.linalg.norm(a - b) / np.linalg.norm(b))
    return out


def task_encoder(part: _Part, s: dict, section: str, args) -> None:
    """Images/s of the image encoder at each batch size (largest first)."""
    key, model_name, dtype = _ENCODER_CASES[section]
    model_type = s["models"][model_name]
    _device_info(part)
    impl = _auto_impl(model_type, dtype)
    part.set(["attention_impl", key], impl)
    model = _model(model_type, dtype, "auto")
    params = _put(model.params)
    deadline = time.monotonic() + args.section_budget
    for batch in s["batch_sizes"]:
        if time.monotonic() > deadline - 5:
            part.set(["skipped", key, str(batch)], "section time used up")
            continue
        try:
            r = _encoder_rate(model, params, batch, s)
        except Exception as e:  # an out-of-memory at one batch size leaves the others
            part.set(["errors", f"{key}@{batch}"], _short_error(e))
            continue
        part.set(["by_batch", key, str(batch)], r["img_per_s"])
        part.set(["compile_s", key, str(batch)], r["compile_s"])


def task_encoder_attention(part: _Part, s: dict, args, best: dict) -> None:
    """Every attention implementation at the best batch found for "auto"."""
    import jax

    _device_info(part)
    platform = jax.devices()[0].platform
    deadline = time.monotonic() + args.section_budget
    for key, model_name, dtype in (
        ("vit_h_bf16", "vit_h", "bfloat16"),
        ("vit_b_bf16", "vit_b", "bfloat16"),
    ):
        model_type = s["models"][model_name]
        batch = int(best.get(key) or s["batch_sizes"][-1])
        params = None
        for impl in _device_impls(platform):
            if time.monotonic() > deadline - 5:
                part.set(["skipped", key, impl], "section time used up")
                continue
            try:
                model = _model(model_type, dtype, impl, params=params)
                params = params or model.params
                r = _encoder_rate(model, _put(model.params), batch, s)
                part.set(["by_attention", key, impl], r["img_per_s"])
            except Exception as e:
                part.set(["by_attention", key, impl], None)
                part.set(["errors", f"{key}:{impl}"], _short_error(e))
        part.set(["batch", key], batch)


def _put(params):
    import jax

    return jax.device_put(params, jax.devices()[0])


def _encoder_rate(model, params, batch: int, s: dict) -> dict:
    import jax

    from sam_jax.modeling.sam import Sam

    module = model.module
    size = module.image_size
    images = np.random.default_rng(batch).integers(0, 256, (batch, size, size, 3), np.uint8)
    images = jax.device_put(images, jax.devices()[0])
    embed = jax.jit(lambda p, x: module.apply({"params": p}, x, method=Sam.embed_images))
    t0 = time.perf_counter()
    compiled = embed.lower(params, images).compile()
    compile_s = time.perf_counter() - t0
    jax.block_until_ready(compiled(params, images))
    per_call = _time_calls(lambda: compiled(params, images), s["reps"], s["max_calls"])
    return {"img_per_s": batch / per_call, "compile_s": compile_s}


def task_predict_amg(part: _Part, s: dict) -> None:
    """One-point predict latency and automatic mask generation with ViT-H in bf16."""
    from sam_jax import SamAutomaticMaskGenerator
    from sam_jax.inference.predictor import SamPredictor

    _device_info(part)
    model = _model(s["models"]["vit_h"], "bfloat16", "auto")
    model.params = _put(model.params)
    image = synthetic_image(s["image_hw"])
    predictor = SamPredictor(model)
    t0 = time.perf_counter()
    predictor.set_image(image)
    part.set(["set_image_first_s"], time.perf_counter() - t0)
    h, w = s["image_hw"]
    point, label = np.array([[w * 0.4, h * 0.6]]), np.array([1])
    predictor.predict(point, label)  # compiles
    times = []
    for _ in range(s["predict_calls"]):
        t0 = time.perf_counter()
        predictor.predict(point, label)
        times.append(time.perf_counter() - t0)
    part.set(["predict_ms"], 1e3 * statistics.median(times))

    generator = SamAutomaticMaskGenerator(model, points_per_side=s["points_per_side"])
    generator.predictor = predictor  # shares the compiled image encoder
    t0 = time.perf_counter()
    generator.generate(image)
    part.set(["amg_first_s"], time.perf_counter() - t0)
    t0 = time.perf_counter()
    records = generator.generate(image)
    part.set(["amg_s"], time.perf_counter() - t0)
    part.set(["amg_masks"], len(records))


def _one_device_mesh():
    """Every measurement is per chip: the first device, whatever the host has."""
    import jax

    from sam_jax.modeling.sharding import make_mesh

    return make_mesh(1, 1, 1, devices=jax.devices()[:1])


def _train_config(name: str, s: dict, counting: bool = False):
    """The train config measured for `name` ("vit_b" / "vit_h"). counting: the same step in
    its FLOP-counting form."""
    import importlib

    config = importlib.import_module(f"configs.{s['train_configs'][name]}").get_config()
    config.mesh.data, config.mesh.fsdp, config.mesh.tensor = 1, 1, 1
    config.model.dtype = "bfloat16"
    config.batch_size = s["train_batch"][name]
    if s["train_patch_size"]:
        config.model.patch_size = s["train_patch_size"]
    if s["train_masks"]:
        config.train.masks_per_image = s["train_masks"]
        config.train.masks_per_chunk = 0
    if s["train_rounds"]:
        config.train.num_iterations = s["train_rounds"]
        config.train.num_point_rounds = max(0, s["train_rounds"] - 2)
    if counting:
        config.model.remat = False
        config.model.attention_impl = "dense"
        config.train.unroll_rounds = True
        config.train.masks_per_chunk = 0
    return config


def task_train(part: _Part, s: dict, name: str) -> None:
    """Step time of the train step; on the device, the memory peak of a process that ran
    only this step."""
    import jax
    from train_step import example_batch

    from sam_jax.io.checkpoint import init_params
    from sam_jax.training.state import Trainer

    _device_info(part)
    config = _train_config(name, s)
    c = config
    part.set(
        ["setup"],
        {
            "config": f"configs/{s['train_configs'][name]}.py",
            "batch": c.batch_size,
            "masks_per_image": c.train.masks_per_image,
            "masks_per_chunk": c.train.masks_per_chunk,
            "rounds": c.train.num_iterations,
            "remat": bool(c.model.remat),
            "dtype": c.model.dtype,
            "attention_impl": _auto_impl(c.model.model_type, c.model.dtype),
        },
    )
    t = Trainer(config, mesh=_one_device_mesh())
    with jax.set_mesh(t.mesh):
        state = t.init_state(init_params(config.model, SEED))
        batch = t.global_batch(example_batch(config, config.batch_size))
        key = jax.random.key(SEED)
        t0 = time.perf_counter()
        compiled = t.step_fn.lower(state, batch, key).compile()
        part.set(["compile_s"], time.perf_counter() - t0)
        mem = compiled.memory_analysis()
        if mem is not None:
            total = (
                mem.argument_size_in_bytes
                + mem.output_size_in_bytes
                + mem.temp_size_in_bytes
                - mem.alias_size_in_bytes
            )
            part.set(["compiled_estimate_gib"], total / GIB)
        state, metrics = compiled(state, batch, key)
        jax.block_until_ready((state, metrics))
        times = []
        for _ in range(s["train_steps"]):
            t0 = time.perf_counter()
            state, metrics = compiled(state, batch, key)
            jax.block_until_ready((state, metrics))
            times.append(time.perf_counter() - t0)
    part.set(["step_s"], statistics.median(times))
    part.set(["loss"], float(metrics["loss"]))
    stats = jax.devices()[0].memory_stats() or {}
    if "peak_bytes_in_use" in stats:
        part.set(["peak_gib"], stats["peak_bytes_in_use"] / GIB)


def cpu_model_flops(s: dict, name: str) -> float:
    """Model FLOPs of one train step of `name` (see the module docstring), by lowering its
    counting form on this process's (CPU) device; nothing is compiled or allocated."""
    import jax
    from train_step import abstract_step_inputs

    from sam_jax.training.state import Trainer

    t = Trainer(_train_config(name, s, counting=True), mesh=_one_device_mesh())
    with jax.set_mesh(t.mesh):
        cost = t.step_fn.lower(*abstract_step_inputs(t)).cost_analysis()
    if isinstance(cost, (list, tuple)):  # older jax: one dict per computation
        cost = cost[0]
    return float(cost["flops"])


def cpu_memory_estimate(s: dict) -> dict:
    """The ViT-H step as measured on the device, compiled by XLA:CPU."""
    from train_step import compiled_step_memory

    return {k: v / GIB for k, v in compiled_step_memory(_train_config("vit_h", s)).items()}


def task_cpu(part: _Part, s: dict, work: Path) -> None:
    """Everything that runs on the host CPU, beside the device sections."""
    flops = {}  # one count per distinct step (--smoke measures the tiny one twice)

    def count(name):
        key = (s["train_configs"][name], s["train_batch"][name])
        if key not in flops:
            flops[key] = cpu_model_flops(s, name)
        return flops[key]

    jobs = [("parity_reference", lambda: cpu_parity_reference(s, work))]
    jobs += [(f"flops_{n}", lambda n=n: count(n)) for n in ("vit_h", "vit_b")]
    jobs += [("memory_estimate", lambda: cpu_memory_estimate(s))]
    for name, job in jobs:
        t0 = time.perf_counter()
        try:
            part.set([name], job())
        except Exception as e:
            part.set(["errors", name], _short_error(e))
            traceback.print_exc()
        part.set(["seconds", name], time.perf_counter() - t0)


# ------------------------------------------------------------------------------ orchestrator
def _peak_tflops(device: str, override: float | None, smoke: bool) -> tuple[float | None, str]:
    if override:
        return override, "--peak_tflops"
    for name, tflops in PEAK_BF16_TFLOPS:
        if name.lower() in device.lower():
            return tflops, f"table: {name} dense bf16"
    if smoke:
        return 1.0, "placeholder 1 TFLOP/s (--smoke, no known peak for this device)"
    return None, f"unknown device kind {device!r}: pass --peak_tflops"


def _empty_results(smoke: bool, settings: dict) -> dict:
    return {
        "device": None,
        "platform": None,
        "date": datetime.date.today().isoformat(),
        "smoke": smoke,
        "models": settings["models"],
        "parity": {
            "vit_b_mask_agreement": None,
            "vit_b_logit_rel_err": None,
            "vit_b_inference_mask_agreement": None,
            "vit_b_inference_logit_rel_err": None,
        },
        "encoder_img_per_s": {"vit_b_bf16": None, "vit_h_bf16": None, "vit_h_fp32": None},
        "predict_ms": {"vit_h_bf16": None},
        "amg_s_per_image": {"vit_h_bf16": None},
        "train_mfu": {"vit_b": None, "vit_h": None},
        "peak_memory_gib": {"vit_h_train_step": None, "vit_h_train_step_xla_cpu_estimate": None},
        "errors": {},
        "section_s": {},
    }


def _merge(results: dict, section: str, part: dict, s: dict) -> None:
    """Fold one section's part into the results."""
    for k in ("device", "platform"):
        if part.get(k):
            results[k] = part[k]
    for k, v in part.get("errors", {}).items():
        results["errors"][f"{section}:{k}"] = v
    if section in _ENCODER_CASES:
        key = _ENCODER_CASES[section][0]
        enc = results["encoder_img_per_s"]
        rates = {int(b): r for b, r in part.get("by_batch", {}).get(key, {}).items()}
        enc.setdefault("by_batch", {})[key] = {str(b): r for b, r in sorted(rates.items())}
        enc.setdefault("compile_s", {})[key] = part.get("compile_s", {}).get(key)
        enc.setdefault("attention_impl", {})[key] = part.get("attention_impl", {}).get(key)
        if rates:
            best = max(rates, key=rates.get)
            enc[key] = rates[best]
            enc.setdefault("best_batch", {})[key] = best
        if part.get("skipped"):
            enc.setdefault("skipped", {})[key] = part["skipped"].get(key)
    elif section == "encoder_attention":
        enc = results["encoder_img_per_s"]
        enc["by_attention"] = part.get("by_attention", {})
        enc["by_attention_batch"] = part.get("batch", {})
    elif section == "parity":
        keys = ("inference_dtype", "inference_attention_impl")
        results["parity"].update({k: part[k] for k in keys if k in part})
        results["parity"]["prompts"] = s["prompts"]
        results["parity"]["image_hw"] = list(s["image_hw"])
    elif section == "predict_amg":
        results["predict_ms"]["vit_h_bf16"] = part.get("predict_ms")
        results["amg_s_per_image"].update(
            {
                "vit_h_bf16": part.get("amg_s"),
                "first_call_s": part.get("amg_first_s"),
                "points_per_side": s["points_per_side"],
                "masks": part.get("amg_masks"),
            }
        )
    elif section.startswith("train_"):
        name = section[len("train_") :]
        details = results["train_mfu"].setdefault("details", {})
        keep = ("setup", "compile_s", "compiled_estimate_gib", "step_s", "loss", "peak_gib")
        details[name] = {k: part[k] for k in keep if k in part}
        if name == "vit_h":
            mem = results["peak_memory_gib"]
            mem["vit_h_train_step"] = part.get("peak_gib")
            mem["vit_h_train_step_compiled_estimate"] = part.get("compiled_estimate_gib")
            mem["setup"] = part.get("setup")


def _finish(results: dict, cpu: dict, work: Path, args) -> None:
    """Results that need both the device sections and the CPU process."""
    for k, v in cpu.get("errors", {}).items():
        results["errors"][f"cpu:{k}"] = v
    results["cpu_s"] = cpu.get("seconds")
    if (work / "parity_cpu.npz").exists():
        try:
            results["parity"].update(compare_parity(work))
        except Exception as e:
            results["errors"]["parity:compare"] = _short_error(e)
    peak, source = _peak_tflops(results["device"] or "", args.peak_tflops, args.smoke)
    mfu = results["train_mfu"]
    mfu["peak_tflops"], mfu["peak_source"] = peak, source
    mfu["method"] = (
        "model FLOPs (XLA cost analysis of the step lowered without remat, rounds unrolled, "
        "one mask chunk, attention 'dense') / median step time / peak"
    )
    for name in ("vit_b", "vit_h"):
        flops = cpu.get(f"flops_{name}")
        d = mfu.get("details", {}).get(name, {})
        if flops:
            d["model_tflops_per_step"] = flops / 1e12
            mfu.setdefault("details", {})[name] = d
        if flops and d.get("step_s") and peak:
            mfu[name] = flops / d["step_s"] / (peak * 1e12)
            d["images_per_s"] = d["setup"]["batch"] / d["step_s"]
    est = cpu.get("memory_estimate")
    if est:
        results["peak_memory_gib"]["vit_h_train_step_xla_cpu_estimate"] = est["total"]
        results["peak_memory_gib"]["xla_cpu_estimate_parts"] = est
    results["peak_memory_gib"]["method"] = (
        "device: memory_stats()['peak_bytes_in_use'] of a process that ran only this step; "
        "estimate: arguments + output + temporaries - aliased of the step compiled by XLA:CPU "
        "(memory-optimised scheduler)"
    )


def _fmt(x, spec=".1f", suffix=""):
    return "-" if x is None else f"{x:{spec}}{suffix}"


def markdown(r: dict) -> str:
    """The results as tables."""
    p, e, m = r["parity"], r["encoder_img_per_s"], r["train_mfu"]
    mem = r["peak_memory_gib"]
    best = e.get("best_batch", {})
    impl = e.get("attention_impl", {})
    lines = [
        f"# {r['device']} ({r['date']}{', smoke run: tiny model' if r['smoke'] else ''})",
        "",
        "| measure | value | goal |",
        "|---|---|---|",
        f"| ViT-H bf16 encoder, img/s | {_fmt(e['vit_h_bf16'])} (batch "
        f"{best.get('vit_h_bf16', '-')}, {impl.get('vit_h_bf16', '-')}) | >= 100 |",
        f"| ViT-B bf16 encoder, img/s | {_fmt(e['vit_b_bf16'])} (batch "
        f"{best.get('vit_b_bf16', '-')}) | |",
        f"| ViT-H fp32 encoder, img/s | {_fmt(e['vit_h_fp32'])} (batch "
        f"{best.get('vit_h_fp32', '-')}) | |",
        f"| ViT-B mask agreement, device fp32 vs CPU fp32 | "
        f"{_fmt(p['vit_b_mask_agreement'], '.4%')} | >= 99.9% |",
        f"| ViT-B logit rel. error, device fp32 | {_fmt(p['vit_b_logit_rel_err'], '.2e')} | |",
        f"| ViT-B mask agreement, device {p.get('inference_dtype', '-')} "
        f"({p.get('inference_attention_impl', '-')}) vs CPU fp32 | "
        f"{_fmt(p.get('vit_b_inference_mask_agreement'), '.4%')} | |",
        f"| ViT-B logit rel. error, device {p.get('inference_dtype', '-')} | "
        f"{_fmt(p.get('vit_b_inference_logit_rel_err'), '.2e')} | |",
        f"| ViT-B mask agreement, CPU bf16 vs CPU fp32 (bf16 alone) | "
        f"{_fmt(p.get('vit_b_cpu_bf16_mask_agreement'), '.4%')} | |",
        f"| one-point predict, ms (ViT-H bf16) | {_fmt(r['predict_ms']['vit_h_bf16'])} | |",
        f"| AMG {r['amg_s_per_image'].get('points_per_side', 32)}^2 points, s/image "
        "(ViT-H bf16) | "
        f"{_fmt(r['amg_s_per_image']['vit_h_bf16'], '.2f')} | |",
        f"| train step MFU, ViT-H | {_fmt(m['vit_h'], '.3f')} | >= 0.4 |",
        f"| train step MFU, ViT-B | {_fmt(m['vit_b'], '.3f')} | |",
        f"| ViT-H train step peak memory, GiB (device / XLA:CPU estimate) | "
        f"{_fmt(mem['vit_h_train_step'], '.2f')} / "
        f"{_fmt(mem['vit_h_train_step_xla_cpu_estimate'], '.2f')} | |",
        "",
        "Encoder img/s by batch size:",
        "",
    ]
    batches = sorted({int(b) for rates in e.get("by_batch", {}).values() for b in rates})
    lines += [
        "| model | " + " | ".join(f"batch {b}" for b in batches) + " |",
        "|---|" + "---|" * len(batches),
    ]
    for key, rates in e.get("by_batch", {}).items():
        cells = " | ".join(_fmt(rates.get(str(b))) for b in batches)
        lines.append(f"| {key} | {cells} |")
    by_attn = e.get("by_attention", {})
    impls = sorted({i for v in by_attn.values() for i in v})
    if impls:
        lines += [
            "",
            "Encoder img/s by attention implementation (at the best batch for auto):",
            "",
            "| model | " + " | ".join(impls) + " |",
            "|---|" + "---|" * len(impls),
        ]
        for key, rates in by_attn.items():
            batch = e.get("by_attention_batch", {}).get(key, "-")
            cells = " | ".join(_fmt(rates.get(i)) for i in impls)
            lines.append(f"| {key} (batch {batch}) | {cells} |")
    details = m.get("details", {})
    if details:
        lines += [
            "",
            f"Train step ({m.get('method')}; peak {m.get('peak_tflops')} TFLOP/s, "
            f"{m.get('peak_source')}):",
            "",
            "| model | batch x masks x rounds | remat | step s | TFLOP/step | img/s | MFU |",
            "|---|---|---|---|---|---|---|",
        ]
        for name, d in details.items():
            st = d.get("setup", {})
            lines.append(
                f"| {name} | {st.get('batch')} x {st.get('masks_per_image')} x "
                f"{st.get('rounds')} | {st.get('remat')} | {_fmt(d.get('step_s'), '.3f')} | "
                f"{_fmt(d.get('model_tflops_per_step'), '.1f')} | "
                f"{_fmt(d.get('images_per_s'), '.2f')} | {_fmt(m.get(name), '.3f')} |"
            )
    if r["errors"]:
        lines += ["", "Errors:", ""] + [f"- {k}: {v}" for k, v in r["errors"].items()]
    return "\n".join(lines) + "\n"


def _write(results: dict, out_dir: Path) -> Path:
    out_dir.mkdir(parents=True, exist_ok=True)
    device = re.sub(r"[^a-z0-9]+", "-", (results["device"] or "unknown").lower()).strip("-")
    stem = out_dir / f"{device}-{results['date']}"
    stem.with_suffix(".json").write_text(
        json.dumps(results, indent=2, default=_json_default) + "\n"
    )
    stem.with_suffix(".md").write_text(markdown(results))
    return stem.with_suffix(".json")


def _child(args, task: str, part: Path, timeout: float, env=None, background=False):
    cmd = [sys.executable, __file__, "--task", task, "--part", str(part)]
    cmd += ["--work", str(args.work), "--section_budget", str(max(1.0, timeout - 10))]
    cmd += ["--smoke"] * bool(args.smoke) + ["--cache_dir", args.cache_dir]
    if args.best:
        cmd += ["--best", args.best]
    if background:
        return subprocess.Popen(cmd, env=env)
    try:
        proc = subprocess.run(cmd, env=env, timeout=timeout)
        return None if proc.returncode == 0 else f"exit status {proc.returncode}"
    except subprocess.TimeoutExpired:
        return f"stopped after {timeout:.0f} s (time budget)"


def _read(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def orchestrate(args) -> Path:
    start = time.monotonic()
    s = _settings(args.smoke)
    results = _empty_results(args.smoke, s)
    if args.resume:
        results.update(json.loads(Path(args.resume).read_text()))
        results["date"] = datetime.date.today().isoformat()
    sections = args.sections.split(",") if args.sections else list(SECTIONS)
    unknown = sorted(set(sections) - set(SECTIONS))
    if unknown:
        raise SystemExit(f"unknown sections {unknown}; choose from {SECTIONS}")
    out_dir = Path(args.output)
    args.work = Path(tempfile.mkdtemp(prefix="sam_jax_accel_"))
    args.cache_dir = args.cache_dir or str(args.work / "jax_cache")
    args.best = None

    # The CPU work runs beside the device sections; with --smoke everything is on the CPU,
    # so it runs after them instead, without the memory-optimised scheduler flag: then its
    # compile of the train step is the device section's, from the compilation cache.
    cpu_env = dict(os.environ, JAX_PLATFORMS="cpu")
    if not args.smoke:
        flag = "--xla_cpu_scheduler_type=CPU_SCHEDULER_TYPE_MEMORY_OPTIMIZED"
        cpu_env["XLA_FLAGS"] = f"{cpu_env.get('XLA_FLAGS', '')} {flag}".strip()
    cpu_part = args.work / "cpu.json"
    cpu_needed = any(x in sections for x in ("parity", "train_vit_h", "train_vit_b"))
    cpu_proc = None
    if cpu_needed and not args.smoke:
        cpu_proc = _child(args, "cpu", cpu_part, args.budget_s, env=cpu_env, background=True)

    for section in sections:
        left = args.budget_s - (time.monotonic() - start)
        if left < 15:
            results["errors"][section] = "not run: time budget used up"
            continue
        if section == "encoder_attention":
            args.best = json.dumps(results["encoder_img_per_s"].get("best_batch", {}))
        part = args.work / f"{section}.json"
        t0 = time.monotonic()
        error = _child(args, section, part, min(_CAPS[section], left))
        results["section_s"][section] = round(time.monotonic() - t0, 1)
        if error:
            results["errors"][section] = error
        _merge(results, section, _read(part), s)
        _write(results, out_dir)
        print(f"[{time.monotonic() - start:6.1f} s] {section} done", flush=True)

    left = max(5.0, args.budget_s - (time.monotonic() - start))
    if cpu_needed and args.smoke:
        error = _child(args, "cpu", cpu_part, left, env=cpu_env)
        if error:
            results["errors"]["cpu"] = error
    if cpu_proc is not None:
        try:
            cpu_proc.wait(timeout=left)
        except subprocess.TimeoutExpired:
            cpu_proc.kill()
            results["errors"]["cpu"] = "stopped: time budget used up"
    _finish(results, _read(cpu_part), args.work, args)
    results["total_s"] = round(time.monotonic() - start, 1)
    path = _write(results, out_dir)
    shutil.rmtree(args.work, ignore_errors=True)  # parity arrays, and the cache unless given
    print(markdown(results))
    print(f"wrote {path} and {path.with_suffix('.md')}")
    return path


def run_task(args) -> None:
    """A child process: one section (or the CPU work), its results into --part."""
    _apply_cache(args.cache_dir)
    s = _settings(args.smoke)
    part = _Part(args.part)
    work = Path(args.work)
    task = args.task
    if task == "parity":
        task_parity(part, s, work)
    elif task in _ENCODER_CASES:
        task_encoder(part, s, task, args)
    elif task == "encoder_attention":
        task_encoder_attention(part, s, args, json.loads(args.best or "{}"))
    elif task == "predict_amg":
        task_predict_amg(part, s)
    elif task.startswith("train_"):
        task_train(part, s, task[len("train_") :])
    elif task == "cpu":
        task_cpu(part, s, work)
    else:
        raise SystemExit(f"unknown task {task!r}")


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--smoke", action="store_true", help="tiny model, CPU-sized, < 2 minutes")
    p.add_argument("--output", default=str(ROOT / "benchmarks" / "results"))
    p.add_argument("--budget_s", type=float, default=None, help="default 470, smoke 110")
    p.add_argument("--peak_tflops", type=float, default=None, help="device peak (bf16 dense)")
    p.add_argument("--sections", default="", help=f"comma-separated subset of {SECTIONS}")
    p.add_argument("--resume", default="", help="an earlier results JSON to merge into")
    p.add_argument(
        "--cache_dir", default="", help="persistent compilation cache (default: a new temp dir)"
    )
    # internal: one section in a child process
    p.add_argument("--task", help=argparse.SUPPRESS)
    p.add_argument("--part", help=argparse.SUPPRESS)
    p.add_argument("--work", help=argparse.SUPPRESS)
    p.add_argument("--section_budget", type=float, default=60.0, help=argparse.SUPPRESS)
    p.add_argument("--best", default="", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.task:
        run_task(args)
        return
    if args.budget_s is None:
        args.budget_s = 110.0 if args.smoke else 470.0
    orchestrate(args)


if __name__ == "__main__":
    main()
