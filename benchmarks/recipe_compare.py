"""Compare training recipes over seeds on the fixed held-out set: paired differences.

    python benchmarks/recipe_compare.py --config=configs/tiny.py --seeds=0,1,2 \\
        --variant=base: --variant=noclip:train.clip_to_image=False --out=/tmp/compare

Every variant (NAME:KEY=VALUE,KEY=VALUE, config overrides; the first is the baseline) is
trained once per seed (`train_and_evaluate`, one workdir each under OUT/NAME/seedS; a
finished one is reused, so an interrupted comparison resumes), then scored on the fixed
held-out set (`held_out.FIXED_SEED`: the same 548 masks for every seed and variant). Prints
per variant the mean +- sd over seeds of the 1-click mIoU (the head's pick), the best of
the three outputs, the IoU head's top-1 accuracy and 2-click mIoU, and per other variant
the paired per-seed difference to the baseline (mean +- sd, and each seed's). Writes
OUT/compare.json. `--steps` shortens every run (for a quick look, not a decision).
"""

from __future__ import annotations

import argparse
import ast
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

METRICS = ("miou1", "oracle1", "head_top1", "miou2")


def load_config(path: str):
    import importlib.util

    spec = importlib.util.spec_from_file_location("recipe_config", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config()


def parse_variant(text: str) -> tuple[str, dict]:
    name, _, rest = text.partition(":")
    overrides = {}
    for item in filter(None, rest.split(",")):
        key, _, value = item.partition("=")
        try:
            overrides[key.strip()] = ast.literal_eval(value.strip())
        except (ValueError, SyntaxError):
            overrides[key.strip()] = value.strip()
    return name, overrides


def apply(config, overrides: dict) -> None:
    for key, value in overrides.items():
        *parents, leaf = key.split(".")
        node = config
        for p in parents:
            node = node[p]
        if leaf not in node:
            raise KeyError(f"unknown config key {key}")
        node[leaf] = value


def run_one(config_path: str, seed: int, overrides: dict, steps: int, workdir: Path) -> dict:
    done = workdir / "eval_fixed.json"
    if done.exists():
        return json.loads(done.read_text())
    import jax

    from sam_jax.io.workdir import load_params_from_workdir
    from sam_jax.training import held_out
    from sam_jax.training.trainer import train_and_evaluate

    config = load_config(config_path)
    config.seed = seed
    apply(config, overrides)
    if steps:
        config.num_train_steps = steps
        decay = [s for s in config.optimizer.decay_steps if s < steps]
        config.optimizer.decay_steps = tuple(decay)
    config.eval.synthetic_images = 0  # scored below on the fixed set instead
    train_and_evaluate(config, workdir)
    _, params = load_params_from_workdir(workdir)
    result = held_out.evaluate_held_out(
        config, jax.device_get(params), workdir, fixed=True, num_clicks=(1, 2)
    )
    first = result["first_click"]
    row = {
        "seed": seed,
        "num_masks": result["num_masks"],
        "miou1": result["miou"]["1"],
        "miou2": result["miou"]["2"],
        "oracle1": result["oracle_miou"]["1"],
        "head_top1": first["head_top1"],
        "head_abs_err": first["head_abs_err"],
        "output_miou": first["output_miou"],
    }
    done.write_text(json.dumps(row, indent=2))
    return row


def mean_sd(xs) -> str:
    xs = np.asarray(xs, np.float64)
    sd = xs.std(ddof=1) if len(xs) > 1 else float("nan")
    return f"{xs.mean():.3f} +- {sd:.3f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="configs/tiny.py")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--variant", action="append", required=True)
    parser.add_argument("--steps", type=int, default=0)
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    seeds = [int(s) for s in args.seeds.split(",")]
    variants = [parse_variant(v) for v in args.variant]
    out = Path(args.out)
    rows: dict[str, list[dict]] = {}
    for seed in seeds:  # seed-major: a stopped comparison still has pairs
        for name, overrides in variants:
            row = run_one(args.config, seed, overrides, args.steps, out / name / f"seed{seed}")
            rows.setdefault(name, []).append(row)
            print(json.dumps({"variant": name, **row}), flush=True)

    base = variants[0][0]
    lines = ["| variant | seeds | masks | " + " | ".join(METRICS) + " |"]
    lines.append("|---" * (3 + len(METRICS)) + "|")
    for name, _ in variants:
        r = rows[name]
        cells = [mean_sd([x[m] for x in r]) for m in METRICS]
        lines.append(f"| {name} | {len(r)} | {r[0]['num_masks']} | " + " | ".join(cells) + " |")
    for name, _ in variants[1:]:
        for m in METRICS:
            diffs = [x[m] - y[m] for x, y in zip(rows[name], rows[base])]
            each = ", ".join(f"{d:+.3f}" for d in diffs)
            lines.append(f"{name} - {base} {m}: {mean_sd(diffs)} (per seed {each})")
    print("\n".join(lines))
    (out / "compare.json").write_text(
        json.dumps({"variants": dict(variants), "rows": rows}, indent=2)
    )


if __name__ == "__main__":
    main()
