"""The attention of the Flax modules (image encoder, two-way transformer, CLIP), in one
place so fused kernels can be swapped in. The automatic mask generator's hand-fused point
decoder (`sam_jax.inference.point_decoder`) has its own, contracted on the token side.

Layout is heads-first: queries (B, heads, Lq, D), keys (B, heads, Lk, D), values
(B, heads, Lk, Dv). On XLA:CPU this layout makes the score and value products plain batched
matrix products; the token-major layout cost about 40% more in the ViT-B global blocks.

`implementation`:
  - "auto" (the default): picked per backend and dtype by `resolve_implementation`:
    "cudnn" on GPUs for bf16/fp16 compute when the folded head dim fits cuDNN's limit,
    "pallas" for the global blocks on TPU, "xla" otherwise (CPU, fp32). The decoder's
    attentions (a few prompt tokens) always take "xla" under "auto".
  - "xla": einsums and a float32 softmax; runs everywhere and is the parity path. Global
    blocks go one (image, head) and QUERY_CHUNK queries at a time, so one 256 x 4096
    block of scores is live at once and stays in cache.
  - "dense": all heads' scores at once with the relative-position bias broadcast; the
    plainest form, for tests and for counting FLOPs (it has no loops), not for running
    full size (it materialises (B, heads, L, L)).
  - "cudnn": cuDNN's fused flash attention (`jax.nn.dot_product_attention(
    implementation="cudnn")`), NVIDIA GPUs, bf16/fp16 only. The relative-position terms are
    folded into the query and key (`folded_rel_pos_attention`), so no score or bias tensor
    is ever written to memory.
  - "pallas": Pallas flash attention (Triton on GPU, Mosaic on TPU) over the same folded
    query and key, for the global blocks; windows (<= 256 tokens) take the "xla" path.

An explicit "cudnn" or "pallas" on a backend that cannot run it is an error, not a silent
fallback: the request is taken to mean that kernel. Only "auto" falls back.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

IMPLEMENTATIONS = ("auto", "xla", "dense", "cudnn", "pallas")

# Grids with at most this many tokens (the 14 x 14 windows) fold the relative-position
# terms into the score matmul on the XLA path; larger ones (global blocks) add them by
# broadcasting, one head at a time.
_FOLD_MAX_TOKENS = 256

# The global blocks' XLA path takes this many queries at a time (see `rel_pos_attention`).
QUERY_CHUNK = 256

# A kernel: heads-first q, k, v of one head dim each (B, heads, L, D) -> (B, heads, Lq, D),
# softmax(q k^T) v with scale 1.
Kernel = Callable[[jax.Array, jax.Array, jax.Array], jax.Array]


def _platform() -> str:
    """The backend traced computations run on ("cpu", "gpu" or "tpu")."""
    return jax.default_backend()


def _check_impl(implementation: str) -> None:
    if implementation not in IMPLEMENTATIONS:
        raise ValueError(
            f"unknown attention implementation {implementation!r}; choose one of {IMPLEMENTATIONS}"
        )


def round_up(n: int, multiple: int) -> int:
    return -(-n // multiple) * multiple


def _cudnn_max_head_dim() -> int:
    """cuDNN flash attention's head-dim limit: 256 from Hopper (sm90) on, 128 before."""
    capability = getattr(jax.devices()[0], "compute_capability", None)
    try:
        major = int(str(capability).split(".")[0])
    except ValueError:
        return 128
    return 256 if major >= 9 else 128


def _folded_dim(head_dim: int, grid: tuple[int, int], multiple: int) -> int:
    return round_up(head_dim + grid[0] + grid[1], multiple)


def resolve_implementation(
    implementation: str,
    dtype,
    *,
    head_dim: int | None = None,
    grid: tuple[int, int] | None = None,
    platform: str | None = None,
) -> str:
    """The concrete implementation that `implementation` means for this call.

    "auto" becomes "cudnn" on GPU for bf16/fp16 when the folded head dim (head_dim + grid
    height + width, rounded up to 8) fits cuDNN's limit; "pallas" on TPU for grids larger
    than a window; "xla" otherwise, and always for plain attention (grid None). Anything
    else is returned as given, after checking that the backend can run it.
    """
    _check_impl(implementation)
    platform = platform or _platform()
    half = jnp.dtype(dtype) in (jnp.dtype(jnp.bfloat16), jnp.dtype(jnp.float16))
    if implementation == "auto":
        if grid is None:
            return "xla"
        if platform == "gpu" and half:
            dim = _folded_dim(head_dim or 0, grid, 8)
            return "cudnn" if dim <= _cudnn_max_head_dim() else "xla"
        if platform == "tpu" and grid[0] * grid[1] > _FOLD_MAX_TOKENS:
            return "pallas"
        return "xla"
    if implementation == "cudnn":
        if platform != "gpu":
            raise ValueError(
                f"attention_impl='cudnn' runs only on NVIDIA GPUs, not on {platform!r}; "
                "use 'auto' (picks per backend) or 'xla'"
            )
        if not half:
            raise ValueError(
                f"attention_impl='cudnn' needs bfloat16 or float16 compute, got {jnp.dtype(dtype)}"
                " (set dtype='bfloat16', or use 'auto' / 'xla')"
            )
    if implementation == "pallas" and platform not in ("gpu", "tpu"):
        raise ValueError(
            f"attention_impl='pallas' compiles for GPU (Triton) and TPU (Mosaic), not "
            f"{platform!r}; use 'auto' or 'xla'"
        )
    return implementation


def _softmax_attend(scores: jax.Array, v: jax.Array) -> jax.Array:
    """softmax(scores) @ v with scores (B, H, Lq, Lk) -> (B, H, Lq, Dv).

    The normalisation is applied to the (Lq, Dv) output instead of the (Lq, Lk)
    probabilities: one pass less over the largest tensor, which bounds the global blocks.
    """
    scores = scores.astype(jnp.float32)
    weights = jnp.exp(scores - jax.lax.stop_gradient(scores.max(-1, keepdims=True)))
    out = _matmul("bhqk,bhkd->bhqd", weights.astype(v.dtype), v)
    return (out / weights.sum(-1, keepdims=True)).astype(v.dtype)


def _matmul(spec: str, a: jax.Array, b: jax.Array) -> jax.Array:
    """An einsum accumulated and returned in float32 whatever the operands' dtype (bf16
    operands then take the CPU's bf16 dot-product instructions; float32 is unchanged)."""
    return jnp.einsum(spec, a, b, preferred_element_type=jnp.float32)


def _token_major(x: jax.Array) -> jax.Array:
    return jnp.swapaxes(x, 1, 2)


def _cudnn(q, k, v, bias=None, mask=None, scale=None):
    # jax.nn.dot_product_attention takes token-major (B, L, heads, D).
    t = _token_major
    out = jax.nn.dot_product_attention(
        t(q), t(k), t(v), bias=bias, mask=mask, scale=scale, implementation="cudnn"
    )
    return t(out)


# ------------------------------------------------------------------------------- kernels
def cudnn_kernel(q: jax.Array, k: jax.Array, v: jax.Array) -> jax.Array:
    """cuDNN flash attention with scale 1 (a `Kernel`)."""
    return _cudnn(q, k, v, scale=1.0)


def xla_kernel(q: jax.Array, k: jax.Array, v: jax.Array) -> jax.Array:
    """`jax.nn.dot_product_attention`'s XLA implementation with scale 1: the same call as
    `cudnn_kernel` on any backend, so the folding can be checked on CPU."""
    t = _token_major
    return t(jax.nn.dot_product_attention(t(q), t(k), t(v), scale=1.0, implementation="xla"))


def pallas_gpu_kernel(
    q: jax.Array, k: jax.Array, v: jax.Array, *, interpret: bool = False
) -> jax.Array:
    """The Triton flash attention of `jax.experimental.pallas.ops.gpu` with scale 1.

    It pads the head dim to a power of two in on-chip tiles; above 128 the query and key
    tiles are halved to stay within shared memory. interpret=True runs it on CPU (slowly).
    """
    from jax.experimental.pallas.ops.gpu import attention as pallas_attention

    length, dim = q.shape[2], q.shape[3]
    block = 128 if dim <= 128 else 64
    sizes = pallas_attention.BlockSizes(
        block_q=min(block, length),
        block_k=min(block, length),
        block_q_dkv=32,
        block_kv_dkv=32,
        block_q_dq=32,
        block_kv_dq=32,
    )
    t = _token_major
    out = pallas_attention.mha(
        t(q), t(k), t(v), None, sm_scale=1.0, block_sizes=sizes, interpret=interpret
    )
    return t(out)


def pallas_tpu_kernel(q: jax.Array, k: jax.Array, v: jax.Array) -> jax.Array:
    """The Mosaic flash attention of `jax.experimental.pallas.ops.tpu` with scale 1 (head
    dims a multiple of 128). Under `pltpu.force_tpu_interpret_mode()` it runs on CPU."""
    from jax.experimental.pallas.ops.tpu import flash_attention as pallas_attention

    return pallas_attention.flash_attention(q, k, v, sm_scale=1.0)


def _xla_folded_kernel(q_aug: jax.Array, k_aug: jax.Array, v: jax.Array) -> jax.Array:
    """The XLA path's windows: one einsum for the folded scores; v keeps its own head dim."""
    return _softmax_attend(_matmul("bhqd,bhkd->bhqk", q_aug, k_aug), v)


def _pallas_kernel(platform: str) -> tuple[Kernel, int]:
    """The Pallas kernel for `platform` and the multiple its head dim is padded to."""
    if platform == "tpu":
        return pallas_tpu_kernel, 128
    return pallas_gpu_kernel, 16


def _cudnn_head_dim_check(dim: int) -> None:
    limit = _cudnn_max_head_dim()
    if dim > limit:
        raise ValueError(
            f"attention_impl='cudnn': the folded head dim {dim} (head dim + grid height + "
            f"width, rounded up to 8) exceeds cuDNN's limit of {limit} on this GPU; use "
            "'auto', 'pallas' or 'xla'"
        )


# ------------------------------------------------------------------------------ attention
def dot_product_attention(
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    *,
    key_mask: jax.Array | None = None,
    scale: float | None = None,
    implementation: str = "auto",
) -> jax.Array:
    """softmax(q k^T * scale) v, with an optional key validity mask (B, Lk) of bools.

    Masked keys get no weight at all, so padded prompt tokens leave the real tokens'
    outputs exactly as if the padding were absent. "cudnn" calls the fused kernel; every
    other implementation takes the XLA einsums ("auto" included: these attentions are a few
    prompt tokens wide, or a 4096-token image attended by a few tokens).
    """
    implementation = resolve_implementation(implementation, q.dtype)
    if scale is None:
        scale = 1.0 / np.sqrt(q.shape[-1])
    mask = None if key_mask is None else key_mask[:, None, None, :]
    if implementation == "cudnn":
        return _cudnn(q, k, v, mask=mask, scale=scale)
    scores = _matmul("bhqd,bhkd->bhqk", q * jnp.asarray(scale, q.dtype), k)
    if mask is not None:
        scores = jnp.where(mask, scores, -jnp.inf)
    return _softmax_attend(scores, v)


def folded_rel_pos_attention(
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    rel_h: jax.Array,
    rel_w: jax.Array,
    *,
    scale: float,
    kernel: Kernel,
    multiple: int = 8,
    pad_v: bool = True,
) -> jax.Array:
    """`rel_pos_attention` through a fused kernel that takes no bias.

    The relative-position terms become extra head dims: q_aug = [q * scale, rel_h, rel_w],
    k_aug = [k, one-hot key row, one-hot key column], so q_aug . k_aug = q.k * scale +
    rel_h[row(k)] + rel_w[col(k)], and the kernel runs with scale 1. Both are zero-padded to
    a multiple of `multiple` (zeros add nothing to the scores). With pad_v, v is
    zero-padded to the same head dim, as the fused kernels want one head dim for q, k and
    v, and the padding is cut from the output.
    """
    b, heads, length, d = q.shape
    dv = v.shape[-1]
    gh, gw = rel_h.shape[-1], rel_w.shape[-1]
    dtype = q.dtype
    dim = _folded_dim(d, (gh, gw), multiple)
    if pad_v:
        dim = max(dim, round_up(dv, multiple))
    rows = np.repeat(np.eye(gh, dtype=np.float32), gw, axis=0)  # (H*W, H)
    cols = np.tile(np.eye(gw, dtype=np.float32), (gh, 1))  # (H*W, W)
    indicators = np.concatenate([rows, cols], axis=1)
    indicators = np.pad(indicators, ((0, 0), (0, dim - d - gh - gw)))
    indicators = jnp.broadcast_to(jnp.asarray(indicators, dtype), (b, heads, length, dim - d))

    def pad(x):
        return jnp.pad(x, ((0, 0), (0, 0), (0, 0), (0, dim - x.shape[-1])))

    q_aug = pad(jnp.concatenate([q * jnp.asarray(scale, dtype), rel_h, rel_w], axis=-1))
    k_aug = jnp.concatenate([k, indicators], axis=-1)
    return kernel(q_aug, k_aug, pad(v) if pad_v else v)[..., :dv]


def _dense_rel_pos(qs, k, v, rel_h, rel_w):
    """All heads at once: scores (B, heads, L, L) plus the broadcast bias."""
    b, heads, length, _ = qs.shape
    gh, gw = rel_h.shape[-1], rel_w.shape[-1]
    scores = _matmul("bhqd,bhkd->bhqk", qs, k).reshape(b, heads, length, gh, gw)
    scores = scores + rel_h[..., :, None] + rel_w[..., None, :]
    return _softmax_attend(scores.reshape(b, heads, length, length), v)


def rel_pos_attention(
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    rel_h: jax.Array,
    rel_w: jax.Array,
    *,
    scale: float,
    implementation: str = "auto",
) -> jax.Array:
    """Attention over an H x W grid with the decomposed relative-position term of ViTDet.

    q, k, v: (B, heads, H*W, D). rel_h: (B, heads, H*W, H) and rel_w: (B, heads, H*W, W),
    the per-query terms added to the scores of all keys in a key row / key column.

    XLA path: small grids (windows) fold the relative terms into the QK^T matmul (as
    `folded_rel_pos_attention` does for the fused kernels); large grids (global blocks) add
    the two terms by broadcasting, which costs less than a 3x wider matmul there, one head
    at a time.
    """
    b, heads, length, d = q.shape
    gh, gw = rel_h.shape[-1], rel_w.shape[-1]
    if gh * gw != length:
        raise ValueError(f"grid {gh}x{gw} does not match {length} tokens")
    dtype = q.dtype
    implementation = resolve_implementation(implementation, dtype, head_dim=d, grid=(gh, gw))

    if implementation == "cudnn":
        _cudnn_head_dim_check(max(_folded_dim(d, (gh, gw), 8), round_up(v.shape[-1], 8)))
        return folded_rel_pos_attention(q, k, v, rel_h, rel_w, scale=scale, kernel=cudnn_kernel)
    if implementation == "pallas" and length > _FOLD_MAX_TOKENS:
        kernel, multiple = _pallas_kernel(_platform())
        return folded_rel_pos_attention(
            q, k, v, rel_h, rel_w, scale=scale, kernel=kernel, multiple=multiple
        )

    qs = q * jnp.asarray(scale, dtype)
    if implementation == "dense":
        return _dense_rel_pos(qs, k, v, rel_h, rel_w)
    if length <= _FOLD_MAX_TOKENS:
        return folded_rel_pos_attention(
            q, k, v, rel_h, rel_w, scale=scale, kernel=_xla_folded_kernel, multiple=1, pad_v=False
        )

    # One (batch, head) at a time, and within a head QUERY_CHUNK queries at a time: a
    # chunk's scores (256 x 4096 floats, 4 MB for ViT-B) stay in cache through the bias,
    # max, exp and value passes, where a whole head's (64 MB) went to memory and back on
    # each; on a 2-core CPU this took the ViT-B global attention from about 0.95 s to
    # 0.39 s per block. Under a gradient the head is rematerialised: the backward pass
    # recomputes its scores instead of keeping every head's (ViT-B: 6 GB less per image).
    chunk = min(QUERY_CHUNK, length)
    padded = round_up(length, chunk)

    def one_head(args):
        q1, k1, v1, h1, w1 = args

        def one_chunk(c):
            qc, hc, wc = c
            scores = _matmul("qd,kd->qk", qc, k1).reshape(chunk, gh, gw)
            scores = scores + hc[:, :, None] + wc[:, None, :]
            return _softmax_attend(scores.reshape(1, 1, chunk, length), v1[None, None])[0, 0]

        def rows(x):  # (L, n) -> (L / chunk, chunk, n), query rows padded with zeros
            x = jnp.pad(x, ((0, padded - length), (0, 0)))
            return x.reshape(padded // chunk, chunk, x.shape[-1])

        out = jax.lax.map(one_chunk, (rows(q1), rows(h1), rows(w1)))
        return out.reshape(padded, -1)[:length]

    def flat(x):
        return x.reshape(b * heads, *x.shape[2:])

    out = jax.lax.map(
        jax.checkpoint(one_head), (flat(qs), flat(k), flat(v), flat(rel_h), flat(rel_w))
    )
    return out.reshape(b, heads, length, -1)
