"""benchmarks/accelerator.py --smoke: every section of the accelerator benchmark runs on CPU
with the tiny model and the results file has every key a GPU run reports."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

REQUIRED = {
    "parity": ("vit_b_mask_agreement", "vit_b_logit_rel_err"),
    "encoder_img_per_s": ("vit_b_bf16", "vit_h_bf16", "vit_h_fp32"),
    "predict_ms": ("vit_h_bf16",),
    "amg_s_per_image": ("vit_h_bf16",),
    "train_mfu": ("vit_b", "vit_h"),
    "peak_memory_gib": ("vit_h_train_step", "vit_h_train_step_xla_cpu_estimate"),
}


def test_smoke_run_writes_every_key(tmp_path):
    # The budget is generous so that a loaded CI machine still runs every section; on two
    # idle cores the run takes about 1.5 minutes.
    proc = subprocess.run(
        [
            sys.executable,
            str(ROOT / "benchmarks" / "accelerator.py"),
            "--smoke",
            "--budget_s=500",
            f"--output={tmp_path}",
        ],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=ROOT,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    (path,) = tmp_path.glob("cpu-*.json")
    assert path.with_suffix(".md").exists()
    r = json.loads(path.read_text())
    assert r["device"] == "cpu" and r["smoke"] is True
    assert r["errors"] == {}, r["errors"]
    for section, keys in REQUIRED.items():
        for key in keys:
            assert key in r[section], f"{section}.{key} missing"
            if (section, key) == ("peak_memory_gib", "vit_h_train_step"):
                continue  # the CPU keeps no allocator statistics
            assert r[section][key] is not None, f"{section}.{key} not measured"
    p = r["parity"]
    assert p["vit_b_mask_agreement"] == 1.0 and p["vit_b_logit_rel_err"] < 1e-6  # CPU vs CPU
    by_attention = r["encoder_img_per_s"]["by_attention"]
    assert set(by_attention["vit_h_bf16"]) == {"xla", "dense"}
    assert all(v > 0 for v in by_attention["vit_h_bf16"].values())
    assert 0 < r["train_mfu"]["vit_h"] and r["train_mfu"]["details"]["vit_h"]["step_s"] > 0
    assert r["train_mfu"]["details"]["vit_h"]["model_tflops_per_step"] > 0


def test_full_settings_have_the_smoke_settings_keys():
    """The full run's settings are only read on an accelerator: same keys as the smoke's."""
    spec = importlib.util.spec_from_file_location(
        "accelerator", ROOT / "benchmarks" / "accelerator.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert set(module._settings(True)) == set(module._settings(False))
