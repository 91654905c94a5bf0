"""Per-mask prompt embeddings for training SAM with text prompts.

The paper's text-to-mask variant trains with the CLIP *image* embedding of each mask's crop
as the prompt (masks of at least 100 x 100 px), and prompts with the CLIP *text* embedding
at inference: the two live in one space. An embedder here is what `prepare_example` calls
for the masks it samples:

    embedder(key, image, rles, records, chosen, areas) -> (emb (k, D) float32, ok (k,) bool)

with the example's key, the decoded image (H, W, 3) uint8, every instance's RLE and
annotation record, the sampled indices `chosen` (k,) and every instance's area in pixels.

- `ClipCropEmbedder`: frozen CLIP on the mask's expanded, squared box crop, cached per
  image on disk (every qualifying mask of an image at its first visit), so later epochs
  read instead of running CLIP.
- `CategoryEmbedder`: an embedding per category name (annotation field `category`, or the
  COCO category's name), e.g. CLIP text embeddings of the class names, with optional
  per-mask noise, fixed per mask. The synthetic text-prompt data uses it with stand-in
  vectors (`sam_jax.data.synthetic.class_embeddings`).
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import threading
import zlib
from pathlib import Path

import numpy as np
from pycocotools import mask as mask_utils

log = logging.getLogger(__name__)

CLIP_MEAN_RGB = (122, 116, 104)  # CLIP's normalisation mean in 0..255: the crop padding


def expanded_square_box(
    bbox_xywh, expand: float, image_hw: tuple[int, int]
) -> tuple[int, int, int, int]:
    """A square (x0, y0, x1, y1), exclusive ends, centred on the box, side `expand` times its
    longer side (at least 1 px). It may reach past the image; `crop_square` pads there."""
    x, y, w, h = (float(v) for v in bbox_xywh)
    side = max(1.0, expand * max(w, h))
    cx, cy = x + w / 2, y + h / 2
    x0, y0 = int(np.floor(cx - side / 2)), int(np.floor(cy - side / 2))
    s = int(np.ceil(side))
    return x0, y0, x0 + s, y0 + s


def crop_square(image: np.ndarray, box: tuple[int, int, int, int]) -> np.ndarray:
    """The pixels of `box` (x0, y0, x1, y1), with CLIP's mean colour outside the image."""
    x0, y0, x1, y1 = box
    h, w = image.shape[:2]
    out = np.empty((y1 - y0, x1 - x0, 3), np.uint8)
    out[:] = CLIP_MEAN_RGB
    sx0, sy0, sx1, sy1 = max(x0, 0), max(y0, 0), min(x1, w), min(y1, h)
    if sx1 > sx0 and sy1 > sy0:
        out[sy0 - y0 : sy1 - y0, sx0 - x0 : sx1 - x0] = image[sy0:sy1, sx0:sx1]
    return out


def _cache_name(key: str) -> str:
    """A file name for an example key: readable, and unique (the hash) for any key."""
    safe = re.sub(r"[^A-Za-z0-9_.-]", "_", key)[:80]
    return f"{safe}-{hashlib.sha1(key.encode()).hexdigest()[:12]}.npz"


class ClipCropEmbedder:
    """Frozen CLIP image embeddings of mask crops, cached per image.

    clip: a `sam_jax.inference.text.ClipEncoder`. A mask qualifies when its area is at least
    `min_area` pixels of the original image (the paper: 100^2). Its crop is its box grown
    `expand` times around the centre, squared and padded, so CLIP's centre crop keeps all
    of it. With `cache_dir`, an image's embeddings (all qualifying masks, at its first
    visit) are written to `<cache_dir>/<key>-<hash>.npz` atomically and read back later.
    """

    def __init__(self, clip, min_area: int = 100 * 100, expand: float = 1.5, cache_dir=None):
        if expand < 1.0:
            raise ValueError(f"crop expand factor must be >= 1, got {expand}")
        self.clip = clip
        self.dim = clip.dim
        self.min_area = int(min_area)
        self.expand = float(expand)
        self.cache_dir = None if cache_dir is None else Path(cache_dir)
        if self.cache_dir is not None:
            self.cache_dir.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()  # one CLIP call at a time from the loader threads

    def _read(self, path: Path, n: int):
        try:
            with np.load(path) as f:
                index, emb = f["index"], f["embedding"]
            if emb.ndim != 2 or emb.shape[1] != self.dim or index.max(initial=-1) >= n:
                raise ValueError(f"shape {emb.shape} for {n} masks of {self.dim}-d")
            return dict(zip(index.tolist(), emb, strict=True))
        except FileNotFoundError:
            return None
        except Exception as e:  # a torn or foreign file: recompute and overwrite
            log.warning("ignoring unreadable embedding cache %s: %s", path, e)
            return None

    def _compute(self, image, rles, areas) -> dict[int, np.ndarray]:
        wanted = [i for i in range(len(rles)) if areas[i] >= self.min_area]
        boxes = mask_utils.toBbox([rles[i] for i in wanted]) if wanted else []
        hw = image.shape[:2]
        crops = [crop_square(image, expanded_square_box(b, self.expand, hw)) for b in boxes]
        with self._lock:
            emb = self.clip.encode_images(crops)
        return dict(zip(wanted, emb, strict=True))

    def image_embeddings(self, key: str, image, rles, areas) -> dict[int, np.ndarray]:
        """{instance index: embedding} of every qualifying mask of one image."""
        path = None if self.cache_dir is None else self.cache_dir / _cache_name(key)
        table = None if path is None else self._read(path, len(rles))
        if table is None:
            table = self._compute(image, rles, areas)
            if path is not None:
                index = np.array(sorted(table), np.int64)
                emb = np.stack([table[i] for i in index]) if len(index) else None
                if emb is None:
                    emb = np.zeros((0, self.dim), np.float32)
                tmp = path.with_suffix(f".{os.getpid()}.{threading.get_ident()}.tmp.npz")
                np.savez(tmp, index=index, embedding=emb.astype(np.float32))
                os.replace(tmp, path)  # complete or absent, never half-written
        return table

    def __call__(self, key, image, rles, records, chosen, areas):
        table = self.image_embeddings(key, image, rles, areas)
        emb = np.zeros((len(chosen), self.dim), np.float32)
        ok = np.zeros(len(chosen), bool)
        for j, i in enumerate(chosen):
            if int(i) in table:
                emb[j], ok[j] = table[int(i)], True
        return emb, ok


class CategoryEmbedder:
    """The embedding of each mask's category name, from `table` {name: (D,) vector}.

    Masks without a category, with one missing from the table, or smaller than `min_area`
    get none. `noise` > 0 adds Gaussian noise of that norm (relative to the unit-length
    class vector) before re-normalising, drawn once per (example key, instance): the same
    mask always gets the same vector, as a cached CLIP crop embedding would.
    """

    def __init__(self, table: dict[str, np.ndarray], noise: float = 0.0, min_area: int = 0):
        if not table:
            raise ValueError("the category embedding table is empty")
        dims = {np.asarray(v).shape for v in table.values()}
        if len(dims) != 1 or len(next(iter(dims))) != 1:
            raise ValueError(f"category embeddings must all be (D,) vectors, got shapes {dims}")
        self.table = {k: _unit(np.asarray(v, np.float32)) for k, v in table.items()}
        self.dim = next(iter(dims))[0]
        self.noise = float(noise)
        self.min_area = int(min_area)

    @classmethod
    def from_file(cls, path, **kwargs) -> CategoryEmbedder:
        """A `.npz` of name -> vector (as `np.savez(path, **table)` writes)."""
        try:
            with np.load(path) as f:
                table = {k: f[k] for k in f.files}
        except (OSError, ValueError) as e:
            raise ValueError(f"cannot read category embeddings {path}: {e}") from e
        return cls(table, **kwargs)

    def embed(self, key: str, index: int, category: str) -> np.ndarray:
        v = self.table[category]
        if self.noise > 0:
            seed = [zlib.crc32(key.encode()), int(index)]
            z = np.random.default_rng(seed).standard_normal(self.dim).astype(np.float32)
            v = _unit(v + self.noise * z / np.sqrt(self.dim))
        return v

    def __call__(self, key, image, rles, records, chosen, areas):
        emb = np.zeros((len(chosen), self.dim), np.float32)
        ok = np.zeros(len(chosen), bool)
        for j, i in enumerate(chosen):
            name = records[i].get("category") if i < len(records) else None
            if name in self.table and areas[i] >= self.min_area:
                emb[j], ok[j] = self.embed(key, int(i), name), True
        return emb, ok


def _unit(v: np.ndarray) -> np.ndarray:
    return v / max(float(np.linalg.norm(v)), 1e-12)


def make_embedder(config, workdir) -> ClipCropEmbedder | CategoryEmbedder | None:
    """The embedder named by a training config's `text` section (None when it is off)."""
    t = config.text
    if not t.source:
        return None
    if t.source == "clip":
        from sam_jax.inference.text import ClipEncoder

        if not t.clip_checkpoint:
            raise ValueError("text.source='clip' needs text.clip_checkpoint (a CLIP .pt/.bin)")
        clip = ClipEncoder.from_checkpoint(t.clip_checkpoint, quick_gelu=t.clip_quick_gelu)
        cache = Path(t.cache_dir) if t.cache_dir else Path(workdir) / "mask_embeddings"
        embedder = ClipCropEmbedder(clip, t.min_area, t.crop_expand, cache)
    elif t.source == "categories":
        if not t.category_embeddings:
            raise ValueError(
                "text.source='categories' needs text.category_embeddings (a .npz of name -> vector)"
            )
        kwargs = dict(noise=t.category_noise, min_area=t.min_area)
        if t.category_embeddings == "synthetic":
            from sam_jax.data.synthetic import class_embeddings

            table = class_embeddings(config.model.text_embed_dim)
            embedder = CategoryEmbedder(table, **kwargs)
        else:
            embedder = CategoryEmbedder.from_file(t.category_embeddings, **kwargs)
    else:
        raise ValueError(f"unknown text.source {t.source!r} ('' | clip | categories)")
    if embedder.dim != config.model.text_embed_dim:
        raise ValueError(
            f"text embeddings are {embedder.dim}-d but model.text_embed_dim is "
            f"{config.model.text_embed_dim}; set it to {embedder.dim}"
        )
    return embedder
