"""CLIP (OpenAI layout): the image and the text tower, for text prompts.

Both towers are pre-LayerNorm transformers. The image tower embeds patches with a bias-free
convolution, prepends a class token, and projects the LayerNormed class token; the text
tower runs a causally masked transformer over token ids and projects the features at the
end-of-text token (the largest id in each row). Parameter names follow the PyTorch names
(`visual.transformer.resblocks.3.attn.in_proj_weight`, `token_embedding.weight`, ...), so
a checkpoint converts by a table (`sam_jax.io.clip_checkpoint`).

Images are NHWC floats already normalised with CLIP's mean and std (`preprocess_images`).
Embeddings come back unnormalised; `normalize` makes them unit length for cosine scores.
"""

from __future__ import annotations

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from sam_jax.modeling.attention import dot_product_attention
from sam_jax.modeling.common import gelu

Dtype = jnp.dtype

# The normalisation CLIP was trained with (RGB, on [0, 1] pixels).
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
# PyTorch's LayerNorm default, which CLIP uses throughout.
_LN_EPS = 1e-5


@dataclasses.dataclass(frozen=True)
class CLIPConfig:
    """Sizes of both towers. `quick_gelu`: OpenAI's weights were trained with QuickGELU
    (x * sigmoid(1.702 x)); most open_clip LAION weights with exact GELU."""

    embed_dim: int
    image_size: int
    patch_size: int
    vision_width: int
    vision_layers: int
    vision_heads: int
    text_width: int
    text_layers: int
    text_heads: int
    context_length: int = 77
    vocab_size: int = 49408
    mlp_ratio: float = 4.0
    quick_gelu: bool = True

    @property
    def grid_size(self) -> int:
        return self.image_size // self.patch_size


CLIP_CONFIGS: dict[str, CLIPConfig] = {
    # The size used for text prompts in the SAM paper.
    "ViT-L-14-336": CLIPConfig(
        embed_dim=768,
        image_size=336,
        patch_size=14,
        vision_width=1024,
        vision_layers=24,
        vision_heads=16,
        text_width=768,
        text_layers=12,
        text_heads=12,
    ),
    "ViT-L-14": CLIPConfig(
        embed_dim=768,
        image_size=224,
        patch_size=14,
        vision_width=1024,
        vision_layers=24,
        vision_heads=16,
        text_width=768,
        text_layers=12,
        text_heads=12,
    ),
    "ViT-B-16": CLIPConfig(
        embed_dim=512,
        image_size=224,
        patch_size=16,
        vision_width=768,
        vision_layers=12,
        vision_heads=12,
        text_width=512,
        text_layers=12,
        text_heads=8,
    ),
    "ViT-B-32": CLIPConfig(
        embed_dim=512,
        image_size=224,
        patch_size=32,
        vision_width=768,
        vision_layers=12,
        vision_heads=12,
        text_width=512,
        text_layers=12,
        text_heads=8,
    ),
    # For tests: every code path, a fraction of a second on a CPU.
    "tiny": CLIPConfig(
        embed_dim=32,
        image_size=28,
        patch_size=7,
        vision_width=64,
        vision_layers=2,
        vision_heads=4,
        text_width=48,
        text_layers=2,
        text_heads=4,
    ),
}


def clip_config(name: str, **overrides) -> CLIPConfig:
    """A preset by name, with fields replaced (`clip_config("ViT-B-32", quick_gelu=False)`)."""
    if name not in CLIP_CONFIGS:
        raise ValueError(f"unknown CLIP config {name!r}; choose one of {sorted(CLIP_CONFIGS)}")
    return dataclasses.replace(CLIP_CONFIGS[name], **overrides)


def quick_gelu(x: jax.Array) -> jax.Array:
    return x * jax.nn.sigmoid(1.702 * x)


class MultiheadAttention(nn.Module):
    """torch.nn.MultiheadAttention self-attention: one packed q/k/v projection."""

    num_heads: int
    causal: bool = False
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        b, n, width = x.shape
        qkv = nn.Dense(3 * width, dtype=self.dtype, name="in_proj")(x)
        # (B, N, 3, heads, D) -> three (B, heads, N, D)
        qkv = qkv.reshape(b, n, 3, self.num_heads, width // self.num_heads)
        q, k, v = jnp.moveaxis(qkv, (2, 3), (0, 2))
        if self.causal:
            out = _causal_attention(q, k, v)
        else:
            out = dot_product_attention(q, k, v)
        out = jnp.swapaxes(out, 1, 2).reshape(b, n, width)
        return nn.Dense(width, dtype=self.dtype, name="out_proj")(out)


def _causal_attention(q: jax.Array, k: jax.Array, v: jax.Array) -> jax.Array:
    """Each token attends to itself and the tokens before it; (B, heads, N, D) layout."""
    n = q.shape[2]
    scores = jnp.einsum("bhqd,bhkd->bhqk", q / np.sqrt(q.shape[-1]).astype(q.dtype), k)
    allowed = jnp.tril(jnp.ones((n, n), bool))
    scores = jnp.where(allowed, scores.astype(jnp.float32), -jnp.inf)
    weights = jax.nn.softmax(scores, axis=-1).astype(v.dtype)
    return jnp.einsum("bhqk,bhkd->bhqd", weights, v)


class ResidualAttentionBlock(nn.Module):
    num_heads: int
    mlp_ratio: float
    quick_gelu: bool
    causal: bool = False
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        width = x.shape[-1]
        y = nn.LayerNorm(epsilon=_LN_EPS, dtype=self.dtype, name="ln_1")(x)
        x = x + MultiheadAttention(self.num_heads, self.causal, self.dtype, name="attn")(y)
        y = nn.LayerNorm(epsilon=_LN_EPS, dtype=self.dtype, name="ln_2")(x)
        y = MLP(int(width * self.mlp_ratio), self.quick_gelu, self.dtype, name="mlp")(y)
        return x + y


class MLP(nn.Module):
    hidden_dim: int
    quick_gelu: bool
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        width = x.shape[-1]
        x = nn.Dense(self.hidden_dim, dtype=self.dtype, name="c_fc")(x)
        x = quick_gelu(x) if self.quick_gelu else gelu(x)
        return nn.Dense(width, dtype=self.dtype, name="c_proj")(x)


class Transformer(nn.Module):
    layers: int
    num_heads: int
    mlp_ratio: float
    quick_gelu: bool
    causal: bool = False
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        for i in range(self.layers):
            x = ResidualAttentionBlock(
                self.num_heads,
                self.mlp_ratio,
                self.quick_gelu,
                self.causal,
                self.dtype,
                name=f"resblocks_{i}",
            )(x)
        return x


class VisionTransformer(nn.Module):
    """The image tower: (B, S, S, 3) normalised images -> (B, embed_dim)."""

    config: CLIPConfig
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, images: jax.Array) -> jax.Array:
        c = self.config
        if images.shape[1:] != (c.image_size, c.image_size, 3):
            raise ValueError(
                f"images must be (B, {c.image_size}, {c.image_size}, 3), got {images.shape}"
            )
        p = c.patch_size
        x = nn.Conv(
            c.vision_width,
            (p, p),
            strides=(p, p),
            padding="VALID",
            use_bias=False,
            dtype=self.dtype,
            name="conv1",
        )(images.astype(self.dtype))
        b = x.shape[0]
        x = x.reshape(b, -1, c.vision_width)
        scale = c.vision_width**-0.5
        class_embedding = self.param(
            "class_embedding", nn.initializers.normal(scale), (c.vision_width,)
        )
        positional_embedding = self.param(
            "positional_embedding",
            nn.initializers.normal(scale),
            (c.grid_size**2 + 1, c.vision_width),
        )
        cls = jnp.broadcast_to(class_embedding.astype(x.dtype), (b, 1, c.vision_width))
        x = jnp.concatenate([cls, x], axis=1) + positional_embedding.astype(x.dtype)
        x = nn.LayerNorm(epsilon=_LN_EPS, dtype=self.dtype, name="ln_pre")(x)
        x = Transformer(
            c.vision_layers,
            c.vision_heads,
            c.mlp_ratio,
            c.quick_gelu,
            dtype=self.dtype,
            name="transformer",
        )(x)
        x = nn.LayerNorm(epsilon=_LN_EPS, dtype=self.dtype, name="ln_post")(x[:, 0])
        proj = self.param("proj", nn.initializers.normal(scale), (c.vision_width, c.embed_dim))
        return x @ proj.astype(x.dtype)


class CLIP(nn.Module):
    """Both towers. Text parameters sit at the top level, as in the PyTorch model."""

    config: CLIPConfig
    dtype: Dtype = jnp.float32

    def setup(self):
        c = self.config
        self.visual = VisionTransformer(c, self.dtype)
        self.token_embedding = nn.Embed(
            c.vocab_size, c.text_width, embedding_init=nn.initializers.normal(0.02)
        )
        self.positional_embedding = self.param(
            "positional_embedding",
            nn.initializers.normal(0.01),
            (c.context_length, c.text_width),
        )
        self.transformer = Transformer(
            c.text_layers, c.text_heads, c.mlp_ratio, c.quick_gelu, causal=True, dtype=self.dtype
        )
        self.ln_final = nn.LayerNorm(epsilon=_LN_EPS, dtype=self.dtype)
        self.text_projection = self.param(
            "text_projection",
            nn.initializers.normal(c.text_width**-0.5),
            (c.text_width, c.embed_dim),
        )

    def encode_image(self, images: jax.Array) -> jax.Array:
        """(B, S, S, 3) CLIP-normalised images -> (B, embed_dim), not normalised."""
        return self.visual(images)

    def encode_text(self, token_ids: jax.Array) -> jax.Array:
        """(B, context_length) int token ids -> (B, embed_dim), not normalised.

        The features are read at each row's end-of-text token, the largest id in the row
        (as in CLIP: `<end_of_text>` is the last entry of the vocabulary).
        """
        c = self.config
        if token_ids.ndim != 2 or token_ids.shape[1] != c.context_length:
            raise ValueError(
                f"token_ids must be (B, {c.context_length}), got {tuple(token_ids.shape)}"
            )
        x = self.token_embedding(token_ids).astype(self.dtype)
        x = x + self.positional_embedding.astype(x.dtype)
        x = self.transformer(x)
        x = self.ln_final(x)
        eot = jnp.argmax(token_ids, axis=-1)
        x = jnp.take_along_axis(x, eot[:, None, None], axis=1)[:, 0]
        return x @ self.text_projection.astype(x.dtype)

    def __call__(self, images: jax.Array, token_ids: jax.Array) -> tuple[jax.Array, jax.Array]:
        return self.encode_image(images), self.encode_text(token_ids)


def normalize(embeddings: jax.Array, eps: float = 1e-12) -> jax.Array:
    """Unit-length embeddings along the last axis (cosine similarity = dot product)."""
    norm = jnp.linalg.norm(embeddings, axis=-1, keepdims=True)
    return embeddings / jnp.maximum(norm, eps)


def preprocess_images(images, image_size: int) -> np.ndarray:
    """uint8 RGB images (each (H, W, 3), sizes may differ) -> (B, S, S, 3) float32 model input.

    CLIP's evaluation transform: bicubic resize of the shorter side to `image_size`, centre
    crop to a square, scale to [0, 1], normalise with CLIP_MEAN / CLIP_STD. Runs on the
    host (PIL), as the resize is not part of the jitted model.
    """
    from PIL import Image

    if isinstance(images, np.ndarray) and images.ndim == 3:
        images = [images]
    out = []
    for img in images:
        img = np.asarray(img)
        if img.ndim != 3 or img.shape[-1] != 3 or img.dtype != np.uint8:
            raise ValueError(f"expected uint8 (H, W, 3) RGB images, got {img.dtype} {img.shape}")
        h, w = img.shape[:2]
        # The shorter side becomes image_size, the longer one is truncated (as torchvision).
        if h <= w:
            new_h, new_w = image_size, int(image_size * w / h)
        else:
            new_h, new_w = int(image_size * h / w), image_size
        pil = Image.fromarray(img)
        if (new_h, new_w) != (h, w):
            pil = pil.resize((new_w, new_h), Image.Resampling.BICUBIC)
        arr = np.asarray(pil)
        top = int(round((new_h - image_size) / 2.0))
        left = int(round((new_w - image_size) / 2.0))
        arr = arr[top : top + image_size, left : left + image_size]
        out.append(arr)
    x = np.stack(out).astype(np.float32) / 255.0
    return (x - np.asarray(CLIP_MEAN, np.float32)) / np.asarray(CLIP_STD, np.float32)


def init_params(config: CLIPConfig, seed: int = 0) -> dict:
    """Random parameters (Flax initialisers); for tests and training from scratch."""
    module = CLIP(config)
    images = jnp.zeros((1, config.image_size, config.image_size, 3), jnp.float32)
    tokens = jnp.zeros((1, config.context_length), jnp.int32)
    return jax.jit(module.init)(jax.random.key(seed), images, tokens)["params"]


def abstract_params(config: CLIPConfig) -> dict:
    """Shapes and dtypes of the parameter tree, without allocating it."""
    module = CLIP(config)
    images = jax.ShapeDtypeStruct((1, config.image_size, config.image_size, 3), jnp.float32)
    tokens = jax.ShapeDtypeStruct((1, config.context_length), jnp.int32)
    return jax.eval_shape(module.init, jax.random.key(0), images, tokens)["params"]
