"""Where the image encoder's time goes on this machine: its parts timed one at a time.

    python benchmarks/encoder_profile.py --model-type vit_b [--dtype bfloat16] [--json OUT]

Times (minimum and median of --repeats calls, after a compiling call) the patch embedding,
one global-attention block, one windowed block, the neck and the whole encoder of the
model type at 1024 x 1024, with random weights; inside the blocks, the attention alone
(projections excluded) and one 4096 x 768 x 3072 matrix product (the MLP's first layer),
from which the GEMM rate in GFLOP/s is reported. The parts' sum estimates the encoder
(depth x blocks + embedding + neck) and is printed beside the measured whole.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import time

import numpy as np

GEMM = (4096, 768, 3072)


def _time(fn, args, repeats: int) -> dict:
    import jax

    jax.block_until_ready(fn(*args))
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - t0)
    return {"min_s": min(times), "median_s": statistics.median(times)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-type", default="vit_b", choices=["vit_b", "vit_l", "vit_h"])
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", help="also write the figures to this file")
    args = parser.parse_args()

    import jax
    import jax.numpy as jnp

    from sam_jax.modeling.attention import rel_pos_attention
    from sam_jax.modeling.common import dot_general_for
    from sam_jax.modeling.configs import model_config
    from sam_jax.modeling.image_encoder import Block, ImageEncoderViT, PatchEmbed

    c = model_config(args.model_type)
    enc_cfg = {
        "embed_dim": c.encoder_embed_dim,
        "depth": c.encoder_depth,
        "num_heads": c.encoder_num_heads,
        "global_attn_indexes": tuple(c.encoder_global_attn_indexes),
        "window_size": c.window_size,
    }
    dtype = jnp.dtype(args.dtype)
    dim, heads = enc_cfg["embed_dim"], enc_cfg["num_heads"]
    grid, head_dim = 64, dim // heads
    rng = np.random.default_rng(0)
    results: dict = {"model_type": args.model_type, "dtype": args.dtype, "parts": {}}
    parts = results["parts"]

    def normal(*shape, dt=dtype):
        return jnp.asarray(rng.standard_normal(shape), dt)

    # One GEMM of the MLP's shape, as the layers run it.
    m, k, n = GEMM
    dot = dot_general_for(dtype)
    gemm = jax.jit(lambda a, b: dot(a, b, (((1,), (0,)), ((), ()))))
    parts["gemm"] = _time(gemm, (normal(m, k), normal(k, n)), args.repeats * 3)
    parts["gemm"]["gflops"] = 2 * m * k * n / parts["gemm"]["min_s"] / 1e9

    image = jnp.zeros((1, 1024, 1024, 3), jnp.float32)
    tokens = normal(1, grid, grid, dim, dt=jnp.float32)
    embed = PatchEmbed(16, dim, dtype=dtype)
    p = embed.init(jax.random.key(0), image)
    parts["patch_embed"] = _time(jax.jit(embed.apply), (p, image), args.repeats)

    for name, window in (("global_block", 0), ("window_block", enc_cfg["window_size"])):
        block = Block(
            heads, use_rel_pos=True, window_size=window, input_size=(grid, grid), dtype=dtype
        )
        p = block.init(jax.random.key(0), tokens)
        parts[name] = _time(jax.jit(block.apply), (p, tokens), args.repeats)

    def attention(length, side):
        q, kk, v = (normal(1, heads, length, head_dim) for _ in range(3))
        rh, rw = normal(1, heads, length, side), normal(1, heads, length, side)
        fn = jax.jit(lambda *a: rel_pos_attention(*a, scale=head_dim**-0.5))
        return _time(fn, (q, kk, v, rh, rw), args.repeats)

    parts["global_attention"] = attention(grid * grid, grid)
    ws = enc_cfg["window_size"]
    windows = math.ceil(grid / ws) ** 2
    # all windows of the image at once, as the block runs them
    q, kk, v = (normal(windows, heads, ws * ws, head_dim) for _ in range(3))
    rh, rw = normal(windows, heads, ws * ws, ws), normal(windows, heads, ws * ws, ws)
    fn = jax.jit(lambda *a: rel_pos_attention(*a, scale=head_dim**-0.5))
    parts["window_attention"] = _time(fn, (q, kk, v, rh, rw), args.repeats)

    encoder = ImageEncoderViT(dtype=dtype, **enc_cfg)
    p = jax.jit(encoder.init)(jax.random.key(0), image)
    results["encoder"] = _time(jax.jit(encoder.apply), (p, image), args.repeats)
    n_global = len(enc_cfg["global_attn_indexes"])
    n_window = enc_cfg["depth"] - n_global
    blocks = n_global * parts["global_block"]["min_s"] + n_window * parts["window_block"]["min_s"]
    neck_estimate = results["encoder"]["min_s"] - blocks - parts["patch_embed"]["min_s"]
    results["estimate"] = {
        "blocks_s": blocks,
        "global_attention_share": n_global
        * parts["global_attention"]["min_s"]
        / results["encoder"]["min_s"],
        "window_attention_share": n_window
        * parts["window_attention"]["min_s"]
        / results["encoder"]["min_s"],
        "rest_s": neck_estimate,
    }

    print(
        f"{args.model_type} encoder parts, dtype {args.dtype}, jax {jax.__version__} on "
        f"{jax.devices()[0].platform} (minimum / median of {args.repeats})"
    )
    for name, t in parts.items():
        extra = f"   {t['gflops']:.0f} GFLOP/s" if "gflops" in t else ""
        print(f"  {name:<17} {1e3 * t['min_s']:8.1f} / {1e3 * t['median_s']:8.1f} ms{extra}")
    e = results["encoder"]
    print(f"  {'encoder':<17} {1e3 * e['min_s']:8.1f} / {1e3 * e['median_s']:8.1f} ms")
    est = results["estimate"]
    print(
        f"  blocks {est['blocks_s']:.2f} s ({n_global} global + {n_window} windowed); "
        f"attention share: global {100 * est['global_attention_share']:.0f}%, "
        f"windowed {100 * est['window_attention_share']:.0f}%; "
        f"the rest (embedding, neck, glue) {est['rest_s']:.2f} s"
    )
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
