"""Pictures of masks for people: overlays of masks, points and boxes on an image."""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw

_COLORS = np.array(
    [
        [30, 144, 255],
        [255, 99, 71],
        [50, 205, 50],
        [255, 215, 0],
        [186, 85, 211],
        [0, 206, 209],
        [255, 140, 0],
        [199, 21, 133],
    ],
    dtype=np.float32,
)


def overlay_masks(
    image: np.ndarray,
    masks: np.ndarray,
    points: np.ndarray | None = None,
    labels: np.ndarray | None = None,
    boxes: np.ndarray | None = None,
    alpha: float = 0.5,
) -> Image.Image:
    """Blend masks (N, H, W) or (H, W) over an RGB uint8 image; draw points and boxes.

    Foreground points are drawn green, background points red, boxes in yellow.
    """
    image = np.asarray(image, dtype=np.uint8)
    masks = np.asarray(masks, dtype=bool)
    if masks.ndim == 2:
        masks = masks[None]
    if masks.shape[1:] != image.shape[:2]:
        raise ValueError(f"masks {masks.shape[1:]} do not match image {image.shape[:2]}")
    out = image.astype(np.float32)
    for i, m in enumerate(masks):
        color = _COLORS[i % len(_COLORS)]
        out[m] = (1 - alpha) * out[m] + alpha * color
    pil = Image.fromarray(out.round().clip(0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(pil)
    r = max(3, round(0.01 * max(image.shape[:2])))
    if points is not None:
        labels = np.ones(len(points), int) if labels is None else np.asarray(labels)
        for (x, y), lab in zip(np.asarray(points, float), labels):
            fill = (0, 200, 0) if lab == 1 else (220, 0, 0)
            draw.ellipse([x - r, y - r, x + r, y + r], fill=fill, outline=(255, 255, 255))
    if boxes is not None:
        for x0, y0, x1, y1 in np.asarray(boxes, float).reshape(-1, 4):
            draw.rectangle([x0, y0, x1, y1], outline=(255, 215, 0), width=max(2, r // 2))
    return pil


def _record_mask(segmentation) -> np.ndarray:
    """A record's segmentation (bool array, uncompressed RLE or COCO RLE) as (H, W) bool."""
    if isinstance(segmentation, dict):
        if isinstance(segmentation.get("counts"), list):
            from sam_jax.inference.mask_utils import rle_to_mask

            return rle_to_mask(segmentation)
        from pycocotools import mask as mask_utils

        rle = dict(segmentation)
        if isinstance(rle["counts"], str):
            rle["counts"] = rle["counts"].encode("utf-8")
        return mask_utils.decode(rle).astype(bool)
    return np.asarray(segmentation, dtype=bool)


def show_anns(
    image: np.ndarray,
    records: list[dict],
    alpha: float = 0.35,
    seed: int = 0,
    draw_points: bool = False,
) -> Image.Image:
    """Overlay automatic-mask-generator records on an RGB uint8 image, each mask in its own
    random color, largest first so small masks stay visible on top of large ones.

    draw_points: also mark each record's prompt point (white-rimmed dot).
    """
    image = np.asarray(image, dtype=np.uint8)
    out = image.astype(np.float32)
    rng = np.random.default_rng(seed)
    for rec in sorted(records, key=lambda r: r["area"], reverse=True):
        mask = _record_mask(rec["segmentation"])
        if mask.shape != image.shape[:2]:
            raise ValueError(f"mask {mask.shape} does not match image {image.shape[:2]}")
        color = rng.uniform(0, 255, 3).astype(np.float32)
        out[mask] = (1 - alpha) * out[mask] + alpha * color
    pil = Image.fromarray(out.round().clip(0, 255).astype(np.uint8))
    if draw_points:
        draw = ImageDraw.Draw(pil)
        r = max(2, round(0.005 * max(image.shape[:2])))
        for rec in records:
            for x, y in rec.get("point_coords", []):
                draw.ellipse(
                    [x - r, y - r, x + r, y + r], fill=(0, 200, 0), outline=(255, 255, 255)
                )
    return pil
