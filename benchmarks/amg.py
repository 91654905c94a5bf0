"""Time `SamAutomaticMaskGenerator.generate` against the PyTorch reference generator.

Both run the same random-init weights on the same image with the same generator settings
(the reference's defaults unless given), each in its own subprocess so that its peak
resident memory can be read from `getrusage`:

    python benchmarks/amg.py --model-type vit_b --points-per-side 32

Random decoders paint salt-and-pepper masks over the whole image, which box NMS reduces to
one; the weights are therefore made to produce compact masks around each point
(`reference.localize_masks`) and their mask logits and IoU predictions are scaled
(--output-scale) so that the default thresholds keep a realistic number of masks.

Prints, per implementation: wall time of `generate` (ours: the first call, which compiles,
and the mean of later calls), CPU time, masks kept and peak RSS; then the time ratio and
how many of the reference's masks ours reproduces (mask IoU >= 0.9).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

# The PyTorch reference helpers live with the tests (outside the installed package).
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

MATCH_IOU = 0.9


def _cpu_seconds() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def _load_image(name: str) -> np.ndarray:
    from skimage import data

    return np.ascontiguousarray(getattr(data, name)())


def _child(args) -> None:
    """Run one implementation and print a JSON line with its numbers."""
    image = _load_image(args.image)
    state = dict(np.load(args.weights))
    kwargs = json.loads(args.kwargs)
    if args.child == "ours":
        from sam_jax import SamAutomaticMaskGenerator
        from sam_jax.inference.build import SamModel
        from sam_jax.io.checkpoint import convert_state_dict
        from sam_jax.modeling.configs import build_sam, model_config

        config = model_config(args.model_type)
        model = SamModel(build_sam(config), convert_state_dict(state, config), config)
        generator = SamAutomaticMaskGenerator(model, **kwargs)

        def generate():
            return generator.generate(image)

        runs = 1 + args.repeats  # the first call compiles
    else:
        import torch
        from reference import build_reference
        from segment_anything import SamAutomaticMaskGenerator

        if args.threads:
            torch.set_num_threads(args.threads)
        sam = build_reference(args.model_type, seed=0, perturb=False)
        sam.load_state_dict({k: torch.as_tensor(v) for k, v in state.items()})
        generator = SamAutomaticMaskGenerator(sam, **kwargs)

        def generate():
            with torch.inference_mode():
                return generator.generate(image)

        runs = args.repeats
    del state
    times, cpu = [], []
    for _ in range(runs):
        t0, c0 = time.perf_counter(), _cpu_seconds()
        records = generate()
        times.append(time.perf_counter() - t0)
        cpu.append(_cpu_seconds() - c0)
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    from pycocotools import mask as mask_utils

    masks = [
        mask_utils.encode(np.asfortranarray(np.asarray(r["segmentation"], np.uint8)))
        for r in records
    ]
    np.save(args.masks_out, np.array([m["counts"] for m in masks], dtype=object))
    print(
        json.dumps({"times": times, "cpu": cpu, "masks": len(records), "peak_rss_mb": peak_mb}),
        flush=True,
    )


def _run_child(name: str, args, weights: Path, masks_out: Path, kwargs: dict) -> dict:
    cmd = [
        sys.executable,
        __file__,
        "--child",
        name,
        "--weights",
        str(weights),
        "--masks-out",
        str(masks_out),
        "--kwargs",
        json.dumps(kwargs),
        "--model-type",
        args.model_type,
        "--image",
        args.image,
        "--repeats",
        str(args.repeats),
    ]
    if args.threads:
        cmd += ["--threads", str(args.threads)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        sys.stderr.write(proc.stdout + proc.stderr)
        raise SystemExit(f"{name} run failed (exit {proc.returncode})")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _matched_fraction(ref_file: Path, ours_file: Path, size) -> float:
    from pycocotools import mask as mask_utils

    def load(path):
        counts = np.load(path, allow_pickle=True)
        return [{"size": list(size), "counts": c} for c in counts]

    ref, ours = load(ref_file), load(ours_file)
    if not ref:
        return float("nan")
    if not ours:
        return 0.0
    iou = mask_utils.iou(ref, ours, [0] * len(ours))
    return float((np.asarray(iou).max(1) >= MATCH_IOU).mean())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-type", default="vit_b")
    parser.add_argument("--image", default="coffee", help="a skimage.data picture name")
    parser.add_argument("--points-per-side", type=int, default=32)
    parser.add_argument("--points-per-batch", type=int, default=64)
    parser.add_argument("--pred-iou-thresh", type=float, default=0.88)
    parser.add_argument("--stability-score-thresh", type=float, default=0.95)
    parser.add_argument("--crop-n-layers", type=int, default=0)
    parser.add_argument("--output-scale", type=float, default=30000.0)
    parser.add_argument("--repeats", type=int, default=1, help="timed calls (ours: after one)")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads")
    parser.add_argument("--skip-reference", action="store_true")
    # internal: run one implementation
    parser.add_argument("--child", choices=["ours", "reference"], help=argparse.SUPPRESS)
    parser.add_argument("--weights", help=argparse.SUPPRESS)
    parser.add_argument("--masks-out", help=argparse.SUPPRESS)
    parser.add_argument("--kwargs", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        _child(args)
        return

    from reference import build_reference, localize_masks, reference_state_dict

    kwargs = dict(
        points_per_side=args.points_per_side,
        points_per_batch=args.points_per_batch,
        pred_iou_thresh=args.pred_iou_thresh,
        stability_score_thresh=args.stability_score_thresh,
        crop_n_layers=args.crop_n_layers,
    )
    image = _load_image(args.image)
    print(
        f"model {args.model_type}, image {args.image} {image.shape}, {os.cpu_count()} CPUs, "
        f"settings {kwargs}, output scale {args.output_scale:g}",
        flush=True,
    )
    sam = build_reference(args.model_type, seed=0, output_scale=args.output_scale)
    localize_masks(sam, sharpness=30.0, strength=100.0)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        np.savez(tmp / "weights.npz", **reference_state_dict(sam))
        del sam
        results = {}
        names = ["ours"] if args.skip_reference else ["ours", "reference"]
        for name in names:
            results[name] = _run_child(
                name, args, tmp / "weights.npz", tmp / f"{name}_masks.npy", kwargs
            )
            r = results[name]
            if name == "ours":
                steady = r["times"][1:]
                line = (
                    f"first call {r['times'][0]:.1f} s (compiles), then "
                    f"{np.mean(steady):.1f} s (cpu {np.mean(r['cpu'][1:]):.1f} s)"
                )
            else:
                line = f"{np.mean(r['times']):.1f} s (cpu {np.mean(r['cpu']):.1f} s)"
            print(
                f"{name:>9}: generate {line}, {r['masks']} masks, "
                f"peak RSS {r['peak_rss_mb']:.0f} MiB",
                flush=True,
            )
        if "reference" in results:
            ours_t = np.mean(results["ours"]["times"][1:])
            ref_t = np.mean(results["reference"]["times"])
            matched = _matched_fraction(
                tmp / "reference_masks.npy", tmp / "ours_masks.npy", image.shape[:2]
            )
            print(
                f"ratio ours/reference: {ours_t / ref_t:.2f}x "
                f"(first call incl. compile {results['ours']['times'][0] / ref_t:.2f}x); "
                f"reference masks matched by ours (IoU >= {MATCH_IOU}): {matched:.3f}"
            )


if __name__ == "__main__":
    main()
