"""Throughput of the interactive evaluation (masks per second) on this machine.

A random-init model on held-out synthetic pictures, each image embedded once and its
masks run through the click protocol at 1 and at 9 clicks on that same embedding:

    python benchmarks/evaluate.py --model-type vit_b --images 4

Prints, per click count, masks/s including the image embedding (`set_image`, shared by
all masks of an image) and excluding it, and how the remainder splits between the
predictor (prompt encoding, mask decoding, upsampling) and the click simulation (distance
transforms, IoUs). Compilation is excluded: one warm-up image runs first.
"""

from __future__ import annotations

import argparse
import time

import jax


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-type", default="vit_b")
    parser.add_argument("--images", type=int, default=4)
    parser.add_argument("--height", type=int, default=480)
    parser.add_argument("--width", type=int, default=640)
    parser.add_argument("--max-objects", type=int, default=12)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    args = parser.parse_args()

    from sam_jax import SamPredictor, load_sam
    from sam_jax.data.synthetic import make_example
    from sam_jax.evaluation import interactive

    model = load_sam(args.model_type, None, dtype=args.dtype)
    predictor = SamPredictor(model, max_batch=args.batch_size)
    decode_time = [0.0]
    predict_batch = predictor.predict_batch

    def timed_predict_batch(*a, **k):
        t0 = time.perf_counter()
        out = predict_batch(*a, **k)
        decode_time[0] += time.perf_counter() - t0
        return out

    predictor.predict_batch = timed_predict_batch
    size = (args.height, args.width)
    examples = [
        make_example(i, 0, size, args.max_objects, held_out=True) for i in range(args.images + 1)
    ]
    print(
        f"model {args.model_type} ({args.dtype}, random init), jax {jax.__version__} on "
        f"{jax.devices()[0].platform}, {args.images} synthetic images {size[0]}x{size[1]}, "
        f"batch {args.batch_size}"
    )

    def run(example, clicks):
        masks = example[1]
        ids = [str(k) for k in range(len(masks))]
        interactive.evaluate_masks(predictor, masks, ids, clicks, args.batch_size)

    t0 = time.perf_counter()
    predictor.set_image(examples[0][0])
    jax.block_until_ready(predictor.features)
    for clicks in (1, 9):
        run(examples[0], clicks)
    print(f"warm-up (compilation + one image): {time.perf_counter() - t0:.1f} s")

    embed = 0.0
    totals = {1: [0.0, 0.0], 9: [0.0, 0.0]}  # clicks -> [wall time, predictor time]
    num_masks = 0
    for image, masks in examples[1:]:
        t0 = time.perf_counter()
        predictor.set_image(image)
        jax.block_until_ready(predictor.features)
        embed += time.perf_counter() - t0
        num_masks += len(masks)
        for clicks in (1, 9):
            decode_time[0] = 0.0
            t0 = time.perf_counter()
            run((image, masks), clicks)
            totals[clicks][0] += time.perf_counter() - t0
            totals[clicks][1] += decode_time[0]
    n = args.images
    print(f"masks: {num_masks} ({num_masks / n:.1f} per image)")
    print(f"set_image: {embed / n:.2f} s per image")
    for clicks, (wall, dec) in totals.items():
        print(
            f"{clicks} click(s): {num_masks / (wall + embed):.2f} masks/s including set_image, "
            f"{num_masks / wall:.1f} masks/s excluding it "
            f"({1000 * wall / num_masks:.0f} ms per mask: predictor {1000 * dec / num_masks:.0f}"
            f" ms, click simulation {1000 * (wall - dec) / num_masks:.0f} ms)"
        )


if __name__ == "__main__":
    main()
