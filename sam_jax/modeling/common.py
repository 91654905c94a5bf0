"""Small building blocks shared by the SAM modules (channel-last layout throughout)."""

from __future__ import annotations

from collections.abc import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

Dtype = jnp.dtype


def gelu(x: jax.Array) -> jax.Array:
    """Exact (erf) GELU, as torch.nn.GELU's default."""
    return jax.nn.gelu(x, approximate=False)


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
        x = nn.Dense(self.mlp_dim, dtype=self.dtype, name="lin1")(x)
        x = ACTIVATIONS[self.activation](x)
        return nn.Dense(dim, dtype=self.dtype, name="lin2")(x)


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
            x = nn.Dense(features, dtype=self.dtype, name=f"layers_{i}")(x)
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
        y = jnp.einsum("bhwc,ijco->bhiwjo", x, kernel.astype(self.dtype))
        y = y.reshape(b, 2 * h, 2 * w, self.features)
        return y + bias.astype(self.dtype)
