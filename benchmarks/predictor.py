"""Time `set_image` and one-point `predict` of SamPredictor against the PyTorch reference.

Both run the same random-init weights (converted from the reference) on the same image,
in the same process:

    python benchmarks/predictor.py --model-type vit_b --repeats 3

Prints per-call times (median of repeats, after a warm-up call that includes compilation)
and the JAX / reference time ratios; with --batches, the throughput of `set_images` in
images/s at each batch size (the reference has no batched call: its figure is 1 / its
set_image time).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np

# The PyTorch reference helpers live with the tests (outside the installed package).
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))


def _time(fn, repeats: int) -> list[float]:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-type", default="vit_b")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--predict-repeats", type=int, default=20)
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch intra-op threads (default: torch's own choice)",
    )
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    parser.add_argument("--skip-reference", action="store_true")
    parser.add_argument(
        "--batches", default="", help="comma-separated set_images batch sizes, e.g. 1,2,4,8"
    )
    parser.add_argument("--json", help="also write every timing to this file")
    args = parser.parse_args()

    import jax
    import torch
    from reference import build_reference, model_from_reference
    from segment_anything import SamPredictor as RefPredictor
    from skimage import data

    from sam_jax import SamPredictor

    if args.threads:
        torch.set_num_threads(args.threads)
    image = data.coffee()  # 400 x 600 RGB
    point = np.array([[300.0, 200.0]])
    label = np.array([1])
    ref = build_reference(args.model_type)
    ours = SamPredictor(model_from_reference(ref, args.model_type, dtype=args.dtype))
    print(
        f"model {args.model_type}, image {image.shape}, jax {jax.__version__} on "
        f"{jax.devices()[0].platform}, torch {torch.__version__} "
        f"({torch.get_num_threads()} threads), dtype {args.dtype}"
    )

    def jax_set():
        ours.set_image(image)
        jax.block_until_ready(ours.features)

    t0 = time.perf_counter()
    jax_set()
    print(f"jax set_image first call (compile + run): {time.perf_counter() - t0:.2f} s")
    ours.predict(point, label)
    jax_set_t = _time(jax_set, args.repeats)
    jax_pred_t = _time(lambda: ours.predict(point, label), args.predict_repeats)

    results = {"jax": (jax_set_t, jax_pred_t)}
    if not args.skip_reference:
        rp = RefPredictor(ref)
        with torch.inference_mode():
            rp.set_image(image)
            rp.predict(point, label)
            ref_set_t = _time(lambda: rp.set_image(image), args.repeats)
            ref_pred_t = _time(lambda: rp.predict(point, label), args.predict_repeats)
        results["reference"] = (ref_set_t, ref_pred_t)

    for name, (set_t, pred_t) in results.items():
        print(
            f"{name:>9}: set_image {statistics.median(set_t):7.3f} s   "
            f"predict {1e3 * statistics.median(pred_t):7.1f} ms"
        )
    throughput = {}
    for b in [int(v) for v in args.batches.split(",") if v.strip()]:
        images = [image] * b

        def jax_set_many(images=images):
            ours.set_images(images)
            jax.block_until_ready(ours.features)

        jax_set_many()  # compiles this bucket
        t = statistics.median(_time(jax_set_many, args.repeats))
        print(f"set_images batch {b}: {t:7.3f} s   {b / t:6.2f} images/s")
        throughput[b] = b / t
    if "reference" in results:
        r_set = statistics.median(jax_set_t) / statistics.median(results["reference"][0])
        r_pred = statistics.median(jax_pred_t) / statistics.median(results["reference"][1])
        print(f"ratio jax/reference: set_image {r_set:.2f}x   predict {r_pred:.2f}x")
    if args.json:
        record = {
            "model_type": args.model_type,
            "dtype": args.dtype,
            "jax": jax.__version__,
            "torch": torch.__version__,
            "torch_threads": torch.get_num_threads(),
            "set_image_s": {k: v[0] for k, v in results.items()},
            "predict_s": {k: v[1] for k, v in results.items()},
            "set_images_images_per_s": throughput,
        }
        with open(args.json, "w") as f:
            json.dump(record, f, indent=1)


if __name__ == "__main__":
    main()
