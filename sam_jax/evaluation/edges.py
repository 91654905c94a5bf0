"""Zero-shot edge detection (SAM paper section 7.2, appendix D.2) from a predictor.

The recipe: a 16 x 16 grid of single foreground points gives 768 masks (three per point);
redundant masks are removed by box NMS at 0.7 (ranked by predicted IoU), with no
predicted-IoU or stability filter and no crops. Each kept mask's unthresholded
probability map (sigmoid of the logits at image resolution) is filtered with Sobel; the
edge map is the per-pixel maximum of the gradient magnitudes, scaled to [0, 1], then
thinned by edge non-maximum suppression along the local edge orientation (the structured
edge detector's `edgesNms`: orientation from the second derivatives of the
triangle-smoothed map, radius 1, 1.01 multiplier, attenuated within 5 pixels of the
border). The benchmark then thresholds and thins it (`bsds`).

Our reading where the paper is silent: the Sobel magnitude is sqrt(gx^2 + gy^2) with
scipy's 3 x 3 kernels, the maximum is taken over masks, and the map is divided by its
maximum (so the benchmark's thresholds span each image's range).
"""

from __future__ import annotations

import dataclasses

import numpy as np
from scipy import ndimage

from sam_jax.inference import mask_utils


@dataclasses.dataclass(frozen=True)
class EdgeSettings:
    points_per_side: int = 16
    box_nms_thresh: float = 0.7
    points_per_batch: int = 64
    nms_radius: int = 1
    nms_border: int = 5
    nms_multiplier: float = 1.01


def _sigmoid(x):
    return 0.5 * (1.0 + np.tanh(0.5 * x))


def triangle_filter(image: np.ndarray, radius: int) -> np.ndarray:
    """Separable triangle smoothing of the given radius (the toolbox's `convTri`)."""
    if radius <= 0:
        return image
    kernel = np.concatenate([np.arange(1, radius + 2), np.arange(radius, 0, -1)]).astype(float)
    kernel /= kernel.sum()
    out = ndimage.convolve1d(image, kernel, axis=0, mode="reflect")
    return ndimage.convolve1d(out, kernel, axis=1, mode="reflect")


def edge_orientation(edges: np.ndarray) -> np.ndarray:
    """Orientation (radians in [0, pi)) of the edges, from second derivatives of the
    smoothed map."""
    smooth = triangle_filter(edges, 4)
    oy, ox = np.gradient(smooth)
    _, oxx = np.gradient(ox)
    oyy, oxy = np.gradient(oy)
    # sign(-oxy) with 0 counted as positive, so that an axis-aligned edge (oxy exactly 0,
    # which the toolbox's sign would turn into orientation 0) keeps its orientation
    sign = np.where(oxy > 0, -1.0, 1.0)
    return np.mod(np.arctan(oyy * sign / (oxx + 1e-5)), np.pi)


def edge_nms(
    edges: np.ndarray, orientation: np.ndarray, radius: int = 1, border: int = 5, m: float = 1.01
) -> np.ndarray:
    """Keep a pixel only where it is not smaller than its neighbours across the edge (at
    distances 1..radius along the normal, bilinearly interpolated) by the factor m; fade
    out edges within `border` pixels of the image border."""
    h, w = edges.shape
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float64)
    cos, sin = np.cos(orientation), np.sin(orientation)
    keep = edges > 0
    for d in range(-radius, radius + 1):
        if d == 0:
            continue
        # the normal of an edge of orientation o points along (cos o, sin o)
        neighbour = ndimage.map_coordinates(
            edges, [ys + d * sin, xs + d * cos], order=1, mode="nearest"
        )
        keep &= edges * m >= neighbour
    out = np.where(keep, edges, 0.0)
    if border > 0:
        yy = np.minimum(np.arange(h), np.arange(h)[::-1])[:, None]
        xx = np.minimum(np.arange(w), np.arange(w)[::-1])[None, :]
        fade = np.minimum(np.minimum(yy, xx) / border, 1.0)
        out = out * fade
    return out


def sobel_magnitude(probability: np.ndarray) -> np.ndarray:
    gx = ndimage.sobel(probability, axis=1, mode="nearest")
    gy = ndimage.sobel(probability, axis=0, mode="nearest")
    return np.hypot(gx, gy)


def edge_map(predictor, image: np.ndarray, settings: EdgeSettings = EdgeSettings()) -> dict:
    """A soft edge map (H, W) float32 in [0, 1] of `image` by the recipe above, with the
    number of masks decoded and kept -> {"edges", "masks_decoded", "masks_kept"}."""
    predictor.set_image(image)
    h, w = predictor.original_size
    grid = mask_utils.build_point_grid(settings.points_per_side) * np.array([[w, h]])
    step = settings.points_per_batch
    boxes, scores, where = [], [], []
    # pass 1: every mask's box and predicted IoU
    for start in range(0, len(grid), step):
        pts = grid[start : start + step, None, :]
        masks, iou, _ = predictor.predict_batch(
            point_coords=pts, point_labels=np.ones(pts.shape[:2], np.int32)
        )
        flat = masks.reshape(-1, h, w)
        boxes.append(mask_utils.batched_mask_to_box(flat))
        scores.append(iou.reshape(-1))
        where.extend((start + i, j) for i in range(masks.shape[0]) for j in range(masks.shape[1]))
    boxes_all = np.concatenate(boxes)
    scores_all = np.concatenate(scores)
    nonempty = (boxes_all[:, 2] > boxes_all[:, 0]) | (boxes_all[:, 3] > boxes_all[:, 1])
    candidates = np.flatnonzero(nonempty)
    keep = candidates[
        mask_utils.nms(boxes_all[candidates], scores_all[candidates], settings.box_nms_thresh)
    ]
    # pass 2: the kept masks' probability maps, decoded again point by point group
    wanted: dict[int, list[int]] = {}
    for k in keep:
        point, output = where[int(k)]
        wanted.setdefault(point, []).append(output)
    points = sorted(wanted)
    edges = np.zeros((h, w), np.float64)
    for start in range(0, len(points), step):
        chunk = points[start : start + step]
        pts = grid[chunk][:, None, :]
        logits, _, _ = predictor.predict_batch(
            point_coords=pts, point_labels=np.ones(pts.shape[:2], np.int32), return_logits=True
        )
        for row, point in enumerate(chunk):
            for output in wanted[point]:
                prob = _sigmoid(np.asarray(logits[row, output], np.float64))
                np.maximum(edges, sobel_magnitude(prob), out=edges)
    top = edges.max()
    if top > 0:
        edges /= top
    edges = edge_nms(
        edges,
        edge_orientation(edges),
        settings.nms_radius,
        settings.nms_border,
        settings.nms_multiplier,
    )
    return {
        "edges": edges.astype(np.float32),
        "masks_decoded": int(len(boxes_all)),
        "masks_kept": int(len(keep)),
    }
