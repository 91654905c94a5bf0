"""Small building blocks shared by the SAM modules (channel-last layout throughout)."""

from __future__ import annotations

from collections.abc import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

Dtype = jnp.dtype

_HALF = (jnp.dtype(jnp.bfloat16), jnp.dtype(jnp.float16))


def dot_general_for(dtype: Dtype) -> Callable:
    """The `dot_general` of layers computing in `dtype`: for bfloat16/float16 the product
    accumulates and comes out in float32 and is then rounded to `dtype`; float32 is
    unchanged. The result is at least as exact as a half-precision product, and on CPUs
    with bf16 dot-product instructions XLA only uses them for this form: a ViT-B-sized
    GEMM ran at about 300 GFLOP/s this way against 160 for a bf16-out product (the same as
    float32) on a 2-core AVX-512 BF16 machine.
    """
    if jnp.dtype(dtype) not in _HALF:
        return jax.lax.dot_general

    def dot_general(lhs, rhs, dimension_numbers, precision=None, preferred_element_type=None):
        out = jax.lax.dot_general(
            lhs, rhs, dimension_numbers, precision=precision, preferred_element_type=jnp.float32
        )
        return out.astype(dtype)

    return dot_general


def einsum(spec: str, a: jax.Array, b: jax.Array, dtype: Dtype) -> jax.Array:
    """`jnp.einsum` of two operands in `dtype`, accumulated as `dot_general_for` does."""
    if jnp.dtype(dtype) not in _HALF:
        return jnp.einsum(spec, a, b)
    return jnp.einsum(spec, a, b, preferred_element_type=jnp.float32).astype(dtype)


def gelu(x: jax.Array) -> jax.Array:
    """Exact GELU, x * (1 + erf(x / sqrt(2))) / 2, as torch.nn.GELU's default computes it.

    `jax.nn.gelu(approximate=False)` goes through erfc, which XLA:CPU evaluated about 1.5x
    slower than erf (benchmarks/README.md); the erf form also matches PyTorch's values more
    often (71% bit-equal in float32 against 43%, both within 1.3e-6 on [-10, 10]).
    """
    half = jnp.asarray(0.5, x.dtype)
    return half * x * (1 + jax.lax.erf(x * jnp.asarray(np.sqrt(0.5), x.dtype)))


ACTIVATIONS: dict[str, Callable[[jax.Array], jax.Array]] = {
    "gelu": gelu,
    "relu": jax.nn.relu,
}


class MLPBlock(nn.Module):
    """Two linear layers with an activation between them (reference `MLPBlock`)."""

    mlp_dim: int
    activation: str = "gelu"
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        dim = x.shape[-1]
        x = nn.Dense(
            self.mlp_dim, dtype=self.dtype, dot_general=dot_general_for(self.dtype), name="lin1"
        )(x)
        x = ACTIVATIONS[self.activation](x)
        return nn.Dense(
            dim, dtype=self.dtype, dot_general=dot_general_for(self.dtype), name="lin2"
        )(x)


class MLP(nn.Module):
    """`num_layers` linear layers with ReLU between them (reference `MLP` of the decoder)."""

    hidden_dim: int
    output_dim: int
    num_layers: int
    sigmoid_output: bool = False
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        for i in range(self.num_layers):
            last = i == self.num_layers - 1
            features = self.output_dim if last else self.hidden_dim
            x = nn.Dense(
                features,
                dtype=self.dtype,
                dot_general=dot_general_for(self.dtype),
                name=f"layers_{i}",
            )(x)
            if not last:
                x = jax.nn.relu(x)
        if self.sigmoid_output:
            x = jax.nn.sigmoid(x)
        return x


def layer_norm_2d(name: str, dtype: Dtype = jnp.float32) -> nn.LayerNorm:
    """LayerNorm over the channel axis of an NHWC map (reference `LayerNorm2d`, eps 1e-6)."""
    return nn.LayerNorm(epsilon=1e-6, dtype=dtype, name=name)


class ConvTranspose2x2(nn.Module):
    """Transposed convolution with kernel 2 and stride 2 (no overlap), NHWC.

    Written as one einsum: each input pixel writes its own 2x2 output block. The kernel is
    stored as (kh, kw, in, out); the PyTorch weight (in, out, kh, kw) converts by a transpose.
    """

    features: int
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        b, h, w, c = x.shape
        kernel = self.param(
            "kernel", nn.initializers.lecun_normal(), (2, 2, c, self.features), jnp.float32
        )
        bias = self.param("bias", nn.initializers.zeros, (self.features,), jnp.float32)
        x = x.astype(self.dtype)
        y = einsum("bhwc,ijco->bhiwjo", x, kernel.astype(self.dtype), self.dtype)
        y = y.reshape(b, 2 * h, 2 * w, self.features)
        return y + bias.astype(self.dtype)
