"""CLIP as SAM's text-prompt encoder: text and image-crop embeddings, L2-normalised.

    clip = ClipEncoder.from_checkpoint("ViT-L-14-336.pt")      # open_clip / OpenAI weights
    clip.encode_texts(["a red car"])                            # (1, 768) float32, unit norm
    clip.encode_images([crop_1, crop_2])                         # uint8 (H, W, 3) pictures

Both run jitted in fixed-size chunks (padded), so any number of inputs compiles once per
chunk size.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from sam_jax.modeling import clip as clip_lib


class ClipEncoder:
    """A CLIP model and its parameters, with host-side preprocessing and tokenising."""

    def __init__(self, config: clip_lib.CLIPConfig, params, chunk: int = 16):
        self.config = config
        self.params = params
        self.chunk = chunk
        self.module = clip_lib.CLIP(config)
        self._image_fn = jax.jit(
            functools.partial(self.module.apply, method=clip_lib.CLIP.encode_image)
        )
        self._text_fn = jax.jit(
            functools.partial(self.module.apply, method=clip_lib.CLIP.encode_text)
        )

    @classmethod
    def from_checkpoint(
        cls, path: str | os.PathLike, quick_gelu: bool = True, chunk: int = 16
    ) -> ClipEncoder:
        """An open_clip / OpenAI checkpoint file (sizes inferred from its shapes). OpenAI's
        models use QuickGELU; open_clip's own trainings mostly do not (`quick_gelu=False`)."""
        from sam_jax.io.clip_checkpoint import load_clip

        config, params = load_clip(path, quick_gelu=quick_gelu)
        return cls(config, jax.device_put(params), chunk)

    @property
    def dim(self) -> int:
        return self.config.embed_dim

    def _chunked(self, fn, x: np.ndarray) -> np.ndarray:
        out = []
        for i in range(0, len(x), self.chunk):
            part = x[i : i + self.chunk]
            n = len(part)
            if n < self.chunk:  # pad: one compiled shape for every call
                pad = np.zeros((self.chunk - n, *part.shape[1:]), part.dtype)
                part = np.concatenate([part, pad])
            emb = clip_lib.normalize(fn({"params": self.params}, jnp.asarray(part)))
            out.append(np.asarray(emb[:n], np.float32))
        if not out:
            return np.zeros((0, self.dim), np.float32)
        return np.concatenate(out)

    def encode_images(self, images: Sequence[np.ndarray]) -> np.ndarray:
        """uint8 RGB pictures (each (H, W, 3)) -> (N, D) unit-length image embeddings."""
        if len(images) == 0:
            return np.zeros((0, self.dim), np.float32)
        x = clip_lib.preprocess_images(list(images), self.config.image_size)
        return self._chunked(self._image_fn, x)

    def encode_texts(self, texts: str | Sequence[str]) -> np.ndarray:
        """Strings -> (N, D) unit-length text embeddings."""
        from sam_jax.inference.clip_tokenizer import tokenize

        if isinstance(texts, str):
            texts = [texts]
        for t in texts:
            if not isinstance(t, str):
                raise TypeError(f"text prompts must be strings, got {type(t).__name__}")
            if not t.strip():
                raise ValueError("a text prompt is empty")
        tokens = tokenize(list(texts), self.config.context_length)
        return self._chunked(self._text_fn, tokens.astype(np.int32))
