"""Train-step speed and memory.

    python benchmarks/train_step.py                 # tiny + ViT-B step time on this machine
    python benchmarks/train_step.py --memory_only   # ViT-H compiled memory on 8 fake devices

Speed: images/s of the jitted step (compile time reported separately). Memory: the ViT-H
step compiled for an 8-device fsdp=8 mesh from abstract inputs (nothing is allocated),
with and without remat, per device, against a 32 GB TPU v4 and a 16 GB v5e chip.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def _batch(config, batch_size, abstract=False):
    import jax
    import numpy as np

    s = config.model.image_size
    low, k = 4 * (s // config.model.patch_size), config.train.masks_per_image
    shapes = {
        "image": ((batch_size, s, s, 3), np.uint8),
        "input_size": ((batch_size, 2), np.int32),
        "masks": ((batch_size, k, low, low), np.uint8),
        "mask_valid": ((batch_size, k), bool),
    }
    if abstract:
        return {n: jax.ShapeDtypeStruct(sh, dt) for n, (sh, dt) in shapes.items()}
    rng = np.random.default_rng(0)
    masks = np.zeros(shapes["masks"][0], np.uint8)
    masks[:, :, low // 4 : low // 2, low // 4 : low // 2] = 1
    return {
        "image": rng.integers(0, 255, shapes["image"][0], dtype=np.uint8),
        "input_size": np.full((batch_size, 2), s, np.int32),
        "masks": masks,
        "mask_valid": np.ones((batch_size, k), bool),
    }


def speed(name, config, steps):
    import jax

    from sam_jax.checkpoint import init_params
    from sam_jax.training.trainer import Trainer

    config.mesh.data, config.mesh.fsdp, config.mesh.tensor = -1, 1, 1
    t = Trainer(config)
    with jax.set_mesh(t.mesh):
        state = t.init_state(init_params(config.model, 0))
        batch = t.global_batch(_batch(config, config.batch_size))
        key = jax.random.key(0)
        t0 = time.perf_counter()
        compiled = t.step_fn.lower(state, batch, key).compile()
        compile_s = time.perf_counter() - t0
        state, m = compiled(state, batch, key)
        jax.block_until_ready(m)
        t0 = time.perf_counter()
        for _ in range(steps):
            state, m = compiled(state, batch, key)
        jax.block_until_ready(m)
        dt = (time.perf_counter() - t0) / steps
    c = config
    print(
        f"{name}: batch {c.batch_size} x {c.train.masks_per_image} masks x "
        f"{c.train.num_iterations} rounds at {c.model.image_size}px: compile {compile_s:.1f} s, "
        f"step {dt:.3f} s, {c.batch_size / dt:.2f} images/s",
        flush=True,
    )


def memory(remat: bool, batch_per_device: int, masks: int):
    import jax

    from configs import vit_h
    from sam_jax.training.trainer import Trainer

    c = vit_h.get_config()
    c.model.remat = remat
    c.model.dtype = "bfloat16"
    c.mesh.data, c.mesh.fsdp, c.mesh.tensor = 1, 8, 1
    c.batch_size = 8 * batch_per_device
    c.train.masks_per_image = masks
    t = Trainer(c)
    with jax.set_mesh(t.mesh):
        batch = {
            k: jax.ShapeDtypeStruct(v.shape, v.dtype, sharding=t.batch_shardings[k])
            for k, v in _batch(c, c.batch_size, abstract=True).items()
        }
        key = jax.eval_shape(lambda: jax.random.key(0))
        compiled = t.step_fn.lower(t.abstract_state, batch, key).compile()
    mem = compiled.memory_analysis()
    gib = 1024**3
    total = (
        mem.argument_size_in_bytes
        + mem.output_size_in_bytes
        + mem.temp_size_in_bytes
        - mem.alias_size_in_bytes
    )
    print(
        f"ViT-H bf16 fsdp=8, {batch_per_device} image(s) x {masks} masks per device, "
        f"remat={remat}: arguments {mem.argument_size_in_bytes / gib:.2f} GiB, temp "
        f"{mem.temp_size_in_bytes / gib:.2f} GiB, total {total / gib:.2f} GiB per device "
        f"(TPU v4 32 GB: {'fits' if total < 32e9 else 'does not fit'}, v5e 16 GB: "
        f"{'fits' if total < 16e9 else 'does not fit'})",
        flush=True,
    )


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--memory_only", action="store_true")
    p.add_argument("--skip_memory", action="store_true")
    p.add_argument("--vit_b_steps", type=int, default=1)
    p.add_argument("--masks", type=int, default=64)
    a = p.parse_args()
    if not a.skip_memory and "JAX_NUM_CPU_DEVICES" not in os.environ:
        os.environ["JAX_NUM_CPU_DEVICES"] = "8"
    import jax

    from configs import tiny, vit_b

    if not a.memory_only:
        speed("tiny (default config)", tiny.get_config(), steps=5)
        c = vit_b.get_config()
        c.batch_size, c.train.masks_per_image = 1, 8
        c.model.drop_path_rate = 0.0
        speed("vit_b", c, steps=a.vit_b_steps)
    if not a.skip_memory:
        assert jax.device_count() >= 8, "memory analysis needs 8 (fake) devices"
        for remat in (True, False):
            memory(remat, batch_per_device=1, masks=a.masks)


if __name__ == "__main__":
    main()
