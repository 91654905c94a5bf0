"""Input-pipeline throughput: images/s from SA-1B-format tar shards at the model's 1024 px,
with 1 and 2 decode threads.

    python benchmarks/input_pipeline.py --images 48 --size 1500,2250 --objects 60

Writes synthetic shards of the given image size first (SA-1B images are 1500 px on the
short side, ~100 masks each), then times whole batches after one warm-up batch.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=48)
    parser.add_argument("--size", default="1500,2250", help="H,W of the written images")
    parser.add_argument("--objects", type=int, default=60, help="max shapes per image")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--max-masks", type=int, default=64)
    parser.add_argument("--threads", default="1,2")
    args = parser.parse_args()

    from sam_jax.data.decode import ExampleSpec
    from sam_jax.data.pipeline import make_dataset
    from sam_jax.data.sources import SA1BTarSource
    from sam_jax.data.synthetic import write_sa1b

    size = tuple(int(v) for v in args.size.split(","))
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        write_sa1b(
            tmp, args.images, seed=0, size=size, images_per_shard=16, max_objects=args.objects
        )
        print(
            f"wrote {args.images} images of {size[0]}x{size[1]} in "
            f"{time.perf_counter() - t0:.1f} s; {os.cpu_count()} CPU cores"
        )
        spec = ExampleSpec(image_size=1024, low_res_size=256, max_masks=args.max_masks)
        for threads in (int(t) for t in args.threads.split(",")):
            ds = make_dataset(
                SA1BTarSource(tmp),
                spec,
                batch_size=args.batch_size,
                seed=0,
                num_threads=threads,
                process_index=0,
                process_count=1,
            )
            it = iter(ds)
            next(it)
            n_batches = max(1, args.images // args.batch_size - 1)
            t0 = time.perf_counter()
            for _ in range(n_batches):
                next(it)
            dt = time.perf_counter() - t0
            rate = n_batches * args.batch_size / dt
            print(
                f"threads={threads}: {rate:.2f} images/s ({rate / threads:.2f} per thread), "
                f"{1e3 / rate:.0f} ms per image"
            )


if __name__ == "__main__":
    main()
