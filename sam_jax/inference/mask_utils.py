"""Host-side helpers of automatic mask generation: point grids, crop boxes, box NMS, mask
boxes, run-length encoding and small-region cleanup.

Everything here is NumPy on already-filtered masks; the per-prompt work (decoding,
upsampling, scores, boxes) runs on the device in `sam_jax.inference.automatic_mask_generator`. The
decisions (rounding, tie and edge cases) are those of the reference's `utils/amg.py`, so
the two produce the same masks from the same logits.
"""

from __future__ import annotations

import math
from itertools import product
from typing import Any

import numpy as np


# ------------------------------------------------------------------------------ points
def build_point_grid(n_per_side: int) -> np.ndarray:
    """(n*n, 2) points (x, y) evenly spaced in [0, 1]^2, half a cell in from each edge; x
    varies fastest."""
    offset = 1 / (2 * n_per_side)
    side = np.linspace(offset, 1 - offset, n_per_side)
    xs = np.tile(side[None, :], (n_per_side, 1))
    ys = np.tile(side[:, None], (1, n_per_side))
    return np.stack([xs, ys], axis=-1).reshape(-1, 2)


def build_all_layer_point_grids(
    n_per_side: int, n_layers: int, scale_per_layer: int
) -> list[np.ndarray]:
    """One grid per crop layer; layer i has int(n_per_side / scale_per_layer**i) per side."""
    return [build_point_grid(int(n_per_side / (scale_per_layer**i))) for i in range(n_layers + 1)]


# ------------------------------------------------------------------------------- crops
def generate_crop_boxes(
    im_size: tuple[int, int], n_layers: int, overlap_ratio: float
) -> tuple[list[list[int]], list[int]]:
    """Crop boxes XYXY (the whole image first) and the layer of each.

    Layer i >= 1 tiles the image with (2**i)^2 overlapping crops; the overlap is
    overlap_ratio of the short side in layer 1 and shrinks with the crop count.
    """
    im_h, im_w = im_size
    short_side = min(im_h, im_w)
    boxes, layers = [[0, 0, im_w, im_h]], [0]

    def crop_len(orig_len: int, n_crops: int, overlap: int) -> int:
        return int(math.ceil((overlap * (n_crops - 1) + orig_len) / n_crops))

    for i_layer in range(n_layers):
        n_per_side = 2 ** (i_layer + 1)
        overlap = int(overlap_ratio * short_side * (2 / n_per_side))
        crop_w = crop_len(im_w, n_per_side, overlap)
        crop_h = crop_len(im_h, n_per_side, overlap)
        x0s = [int((crop_w - overlap) * i) for i in range(n_per_side)]
        y0s = [int((crop_h - overlap) * i) for i in range(n_per_side)]
        # x-major order, as the reference enumerates them
        for x0, y0 in product(x0s, y0s):
            boxes.append([x0, y0, min(x0 + crop_w, im_w), min(y0 + crop_h, im_h)])
            layers.append(i_layer + 1)
    return boxes, layers


def uncrop_mask(mask: np.ndarray, crop_box, orig_h: int, orig_w: int) -> np.ndarray:
    """A (h, w) mask of a crop placed into an all-False (orig_h, orig_w) frame."""
    x0, y0, x1, y1 = (int(v) for v in crop_box)
    if (x0, y0, x1, y1) == (0, 0, orig_w, orig_h):
        return mask
    out = np.zeros((orig_h, orig_w), dtype=mask.dtype)
    out[y0:y1, x0:x1] = mask
    return out


# ------------------------------------------------------------------------------- boxes
def box_xyxy_to_xywh(box) -> list:
    """One XYXY box -> [x0, y0, w, h] (ints stay ints)."""
    x0, y0, x1, y1 = np.asarray(box).tolist()
    return [x0, y0, x1 - x0, y1 - y0]


def box_area(boxes: np.ndarray) -> np.ndarray:
    boxes = np.asarray(boxes)
    return (boxes[..., 2] - boxes[..., 0]) * (boxes[..., 3] - boxes[..., 1])


def box_iou(boxes1: np.ndarray, boxes2: np.ndarray) -> np.ndarray:
    """(N, M) IoU of XYXY boxes in float32 (areas as (x1 - x0) * (y1 - y0), no +1)."""
    a = np.asarray(boxes1, np.float32)[:, None, :]
    b = np.asarray(boxes2, np.float32)[None, :, :]
    iw = np.maximum(np.minimum(a[..., 2], b[..., 2]) - np.maximum(a[..., 0], b[..., 0]), 0)
    ih = np.maximum(np.minimum(a[..., 3], b[..., 3]) - np.maximum(a[..., 1], b[..., 1]), 0)
    inter = iw * ih
    with np.errstate(divide="ignore", invalid="ignore"):
        return inter / (box_area(a) + box_area(b) - inter)


def nms(boxes: np.ndarray, scores: np.ndarray, iou_threshold: float) -> np.ndarray:
    """Greedy NMS: indices of the kept boxes, highest score first.

    A box is dropped when its IoU with an already kept, higher-scoring box exceeds the
    threshold (strictly), as torchvision's `nms` does, in float32. Equal scores keep their
    input order (a stable sort), which torchvision leaves unspecified.
    """
    boxes = np.asarray(boxes, np.float32).reshape(-1, 4)
    scores = np.asarray(scores)
    order = np.argsort(-scores, kind="stable")
    b = boxes[order]
    x0, y0, x1, y1 = b[:, 0], b[:, 1], b[:, 2], b[:, 3]
    areas = (x1 - x0) * (y1 - y0)
    suppressed = np.zeros(len(b), bool)
    keep = []
    with np.errstate(divide="ignore", invalid="ignore"):
        for i in range(len(b)):
            if suppressed[i]:
                continue
            keep.append(i)
            rest = slice(i + 1, None)
            iw = np.maximum(np.minimum(x1[i], x1[rest]) - np.maximum(x0[i], x0[rest]), 0)
            ih = np.maximum(np.minimum(y1[i], y1[rest]) - np.maximum(y0[i], y0[rest]), 0)
            inter = iw * ih
            suppressed[rest] |= inter / (areas[i] + areas[rest] - inter) > iou_threshold
    return order[np.asarray(keep, np.int64)]


def is_box_near_crop_edge(boxes: np.ndarray, crop_box, orig_box, atol: float = 20.0) -> np.ndarray:
    """(N,) True where a box (XYXY, in the crop's frame) lies within atol of an edge of the
    crop that is not also an edge of the image: such masks are likely cut by the crop."""
    x0, y0 = crop_box[0], crop_box[1]
    b = np.asarray(boxes).reshape(-1, 4) + np.array([x0, y0, x0, y0])
    b = b.astype(np.float32)
    near_crop = np.abs(b - np.asarray(crop_box, np.float32)) <= atol
    near_image = np.abs(b - np.asarray(orig_box, np.float32)) <= atol
    return np.any(near_crop & ~near_image, axis=1)


def batched_mask_to_box(masks: np.ndarray) -> np.ndarray:
    """(..., H, W) bool masks -> (..., 4) int64 XYXY boxes of their pixels (inclusive
    pixel indices); an empty mask gives [0, 0, 0, 0]."""
    masks = np.asarray(masks, bool)
    h, w = masks.shape[-2:]
    rows = masks.any(-1)
    cols = masks.any(-2)
    nonempty = rows.any(-1)
    top = np.argmax(rows, -1)
    bottom = h - 1 - np.argmax(rows[..., ::-1], -1)
    left = np.argmax(cols, -1)
    right = w - 1 - np.argmax(cols[..., ::-1], -1)
    out = np.stack([left, top, right, bottom], -1).astype(np.int64)
    return out * nonempty[..., None]


# --------------------------------------------------------------------------------- RLE
def mask_to_rle(mask: np.ndarray) -> dict[str, Any]:
    """(H, W) bool -> uncompressed COCO RLE {"size": [H, W], "counts": [...]}: run lengths
    of the column-major pixels, starting with a (possibly empty) run of zeros."""
    mask = np.asarray(mask, bool)
    h, w = mask.shape
    flat = mask.T.ravel()
    changes = np.flatnonzero(flat[1:] != flat[:-1]) + 1
    bounds = np.concatenate([[0], changes, [h * w]])
    counts = np.diff(bounds).tolist()
    if flat.size and flat[0]:
        counts = [0] + counts
    return {"size": [h, w], "counts": counts}


def rle_to_mask(rle: dict[str, Any]) -> np.ndarray:
    """Uncompressed RLE -> (H, W) bool mask (C order)."""
    h, w = rle["size"]
    counts = np.asarray(rle["counts"], np.int64)
    values = np.arange(len(counts)) % 2 == 1
    flat = np.repeat(values, counts)
    if flat.size != h * w:
        raise ValueError(f"RLE counts sum to {flat.size}, expected {h} * {w} = {h * w}")
    return np.ascontiguousarray(flat.reshape(w, h).T)


def area_from_rle(rle: dict[str, Any]) -> int:
    return int(sum(rle["counts"][1::2]))


def coco_encode_rle(uncompressed_rle: dict[str, Any]) -> dict[str, Any]:
    """Uncompressed RLE -> pycocotools' compressed RLE with `counts` as a str (JSON-ready)."""
    from pycocotools import mask as mask_utils

    h, w = uncompressed_rle["size"]
    rle = mask_utils.frPyObjects(uncompressed_rle, h, w)
    rle["counts"] = rle["counts"].decode("utf-8")
    return rle


def coco_encode_mask(mask: np.ndarray) -> dict[str, Any]:
    """(H, W) bool -> the same compressed RLE as `coco_encode_rle(mask_to_rle(mask))`,
    without building the Python list of counts."""
    from pycocotools import mask as mask_utils

    rle = mask_utils.encode(np.asfortranarray(np.asarray(mask, np.uint8)))
    return {"size": [int(v) for v in rle["size"]], "counts": rle["counts"].decode("utf-8")}


# ------------------------------------------------------------------------ small regions
_EIGHT_CONNECTED = np.ones((3, 3), dtype=bool)


def remove_small_regions(
    mask: np.ndarray, area_thresh: float, mode: str
) -> tuple[np.ndarray, bool]:
    """Fill holes ("holes") or drop islands ("islands") smaller than area_thresh pixels.

    Regions are 8-connected (holes included: two background pixels touching at a corner
    are one hole). In "holes" mode the background around the mask is a region like any
    other, so it is filled too if it is small. In "islands" mode, if every island is small
    the largest one is kept. Returns (mask, whether anything was changed).
    """
    from scipy import ndimage

    if mode not in ("holes", "islands"):
        raise ValueError(f"mode must be 'holes' or 'islands', got {mode!r}")
    mask = np.asarray(mask, bool)
    fill_holes = mode == "holes"
    working = mask ^ fill_holes
    labels, n_labels = ndimage.label(working, structure=_EIGHT_CONNECTED)
    sizes = np.bincount(labels.ravel(), minlength=n_labels + 1)[1:]
    small = np.flatnonzero(sizes < area_thresh) + 1
    if len(small) == 0:
        return mask, False
    # a lookup table over labels is much faster than np.isin on every pixel
    if fill_holes:
        # label 0 is the mask itself; it and the small holes make the new mask
        table = np.zeros(n_labels + 1, bool)
        table[0] = True
        table[small] = True
        return table[labels], True
    table = np.ones(n_labels + 1, bool)
    table[0] = False
    table[small] = False
    if not table.any():  # every island is small: keep the largest
        table[int(np.argmax(sizes)) + 1] = True
    return table[labels], True
