"""Train-step speed and memory.

    python benchmarks/train_step.py                 # tiny + ViT-B step time on this machine
    python benchmarks/train_step.py --skip_memory --trainable=mask_decoder,prompt_encoder
    python benchmarks/train_step.py --memory_only   # ViT-H compiled memory on 8 fake devices

Speed: images/s of the jitted step (compile time reported separately). Memory: the ViT-H
step compiled for an 8-device fsdp=8 mesh from abstract inputs (nothing is allocated), per
device, without remat, with it, and with it plus decoding 16 of the 64 masks per image at a
time (`train.masks_per_chunk`), against a 32 GB TPU v4 and a 16 GB v5e chip. Each runs in a
child process on XLA:CPU with its memory-optimised scheduler: the default CPU scheduler
orders for concurrency and keeps recomputed (remat) activations alive as long as stored
ones, which no accelerator compiler does.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def example_batch(config, batch_size, abstract=False):
    """A training batch of `batch_size` random images, each with every mask slot holding the
    same square; abstract: `jax.ShapeDtypeStruct`s only."""
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

    from sam_jax.io.checkpoint import init_params
    from sam_jax.training.state import Trainer

    config.mesh.data, config.mesh.fsdp, config.mesh.tensor = -1, 1, 1
    t = Trainer(config)
    with jax.set_mesh(t.mesh):
        state = t.init_state(init_params(config.model, 0))
        batch = t.global_batch(example_batch(config, config.batch_size))
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


def abstract_step_inputs(trainer):
    """(state, batch, key) of `trainer`'s step as sharded abstract values: compiling from
    these allocates nothing."""
    import jax

    c = trainer.config
    batch = {
        k: jax.ShapeDtypeStruct(v.shape, v.dtype, sharding=trainer.batch_shardings[k])
        for k, v in example_batch(c, c.batch_size, abstract=True).items()
    }
    key = jax.eval_shape(lambda: jax.random.key(0))
    return trainer.abstract_state, batch, key


def compiled_step_memory(config) -> dict:
    """Bytes per device of the train step of `config`, compiled (for this process's devices)
    from abstract inputs: arguments, output, temporaries, aliased (donated) and the total
    live at once (arguments + output + temporaries - aliased)."""
    import jax

    from sam_jax.training.state import Trainer

    t = Trainer(config)
    with jax.set_mesh(t.mesh):
        compiled = t.step_fn.lower(*abstract_step_inputs(t)).compile()
    mem = compiled.memory_analysis()
    out = {
        "arguments": mem.argument_size_in_bytes,
        "output": mem.output_size_in_bytes,
        "temp": mem.temp_size_in_bytes,
        "alias": mem.alias_size_in_bytes,
    }
    out["total"] = out["arguments"] + out["output"] + out["temp"] - out["alias"]
    return out


def memory(remat: bool, chunk: int, batch_per_device: int, masks: int):
    from configs import vit_h

    c = vit_h.get_config()
    c.model.remat = remat
    c.model.dtype = "bfloat16"
    c.mesh.data, c.mesh.fsdp, c.mesh.tensor = 1, 8, 1
    c.batch_size = 8 * batch_per_device
    c.train.masks_per_image = masks
    c.train.masks_per_chunk = chunk
    mem = compiled_step_memory(c)
    gib = 1024**3
    total = mem["total"]
    chunked = f"{chunk} masks at a time" if chunk else "all masks at once"
    print(
        f"ViT-H bf16 fsdp=8, {batch_per_device} image(s) x {masks} masks x "
        f"{c.train.num_iterations} rounds per device, remat={remat}, {chunked}: arguments "
        f"{mem['arguments'] / gib:.2f} GiB, temp {mem['temp'] / gib:.2f} "
        f"GiB, total {total / gib:.2f} GiB per device (TPU v4 32 GB: "
        f"{'fits' if total < 32e9 else 'does not fit'}, v5e 16 GB: "
        f"{'fits' if total < 16e9 else 'does not fit'})",
        flush=True,
    )


_MEMORY_CASES = ((False, 0), (True, 0), (True, 16))  # (remat, masks_per_chunk)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--memory_only", action="store_true")
    p.add_argument("--skip_memory", action="store_true")
    p.add_argument("--vit_b_steps", type=int, default=1)
    p.add_argument("--masks", type=int, default=64)
    p.add_argument(
        "--trainable",
        default="",
        help="also time the steps with only these parameters training (optimizer.trainable, "
        "e.g. mask_decoder,prompt_encoder: a frozen encoder skips its backward pass)",
    )
    p.add_argument("--memory_case", help=argparse.SUPPRESS)  # "REMAT,CHUNK": child process
    a = p.parse_args()
    if a.memory_case:
        import jax

        assert jax.device_count() >= 8, "memory analysis needs 8 (fake) devices"
        remat, chunk = a.memory_case.split(",")
        memory(remat == "True", int(chunk), batch_per_device=1, masks=a.masks)
        return

    from configs import tiny, vit_b

    if not a.memory_only:
        speed("tiny (default config)", tiny.get_config(), steps=5)
        c = vit_b.get_config()
        c.batch_size, c.train.masks_per_image = 1, 8
        c.model.drop_path_rate = 0.0
        speed("vit_b", c, steps=a.vit_b_steps)
        if a.trainable:
            for name, config in (("tiny", tiny.get_config()), ("vit_b", c)):
                config.optimizer.trainable = a.trainable
                speed(
                    f"{name}, training only {a.trainable}",
                    config,
                    steps=5 if name == "tiny" else a.vit_b_steps,
                )
    if not a.skip_memory:
        env = dict(os.environ, JAX_NUM_CPU_DEVICES="8")
        flag = "--xla_cpu_scheduler_type=CPU_SCHEDULER_TYPE_MEMORY_OPTIMIZED"
        env["XLA_FLAGS"] = f"{env.get('XLA_FLAGS', '')} {flag}".strip()
        for remat, chunk in _MEMORY_CASES:
            cmd = [sys.executable, __file__, "--masks", str(a.masks)]
            subprocess.run([*cmd, "--memory_case", f"{remat},{chunk}"], env=env, check=True)


if __name__ == "__main__":
    main()
