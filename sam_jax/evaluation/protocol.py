"""The interactive click protocol of the SAM paper (appendix D.1), which follows RITM.

Rules, exactly as implemented here:

- Distances are Euclidean distance transforms (`scipy.ndimage.distance_transform_edt`) of
  the region padded with one row/column of zeros on every side, so pixels on the image
  border are at distance 1 from the "outside" (RITM pads the same way before
  `cv2.distanceTransform(..., DIST_L2, 0)`, which is also exact).
- First click: positive, at the argmax of the distance transform of the ground-truth mask.
- Next clicks (RITM `Clicker.get_next_click`): FN = GT and not prediction, FP = prediction
  and not GT, where the prediction is the mask that was scored at the previous step. Both
  distance maps are zeroed at pixels that were already clicked. If the largest FN distance
  is strictly greater than the largest FP distance the click is positive at the FN argmax,
  otherwise negative at the FP argmax (ties go to the negative click, as in RITM). This
  compares the error regions by how deep their interior is, not by area.
- Ties between pixels of equal distance go to the first in row-major order (`np.argmax`,
  the same pixel RITM's `np.where(...)[0]` picks).
- When the prediction has no error pixel left the simulation stops for that mask: no click
  is added and the IoU after every later click is the IoU already reached. (RITM would add
  a negative click at pixel (0, 0) here, which can land inside the object.)

Clicks are (x, y) integer pixel indices of the original image, the coordinates SAM's
predictor takes (its prompt encoder adds 0.5 to reach the pixel centre).

Distance transforms are computed on the bounding box of the region plus a one-pixel
margin. That is exact: every pixel outside the box is outside the region, and the nearest
such pixel to a pixel inside is never farther than the nearest pixel of the margin ring
(clamping a point onto the box never increases its distance to a point in the box).
"""

from __future__ import annotations

import dataclasses

import numpy as np
from scipy import ndimage


@dataclasses.dataclass(frozen=True)
class Click:
    x: int
    y: int
    positive: bool

    @property
    def label(self) -> int:
        return int(self.positive)


def _bbox(mask: np.ndarray) -> tuple[int, int, int, int] | None:
    rows = np.flatnonzero(mask.any(axis=1))
    if rows.size == 0:
        return None
    cols = np.flatnonzero(mask.any(axis=0))
    return int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1


def farthest_from_boundary(
    region: np.ndarray, exclude: list[tuple[int, int]] = ()
) -> tuple[float, int, int]:
    """(distance, y, x) of the region pixel farthest from the region's boundary.

    region: (H, W) bool. The image border counts as boundary. Pixels in `exclude` ((y, x)
    pairs) are not eligible. Distance 0 (and y = x = -1) when no pixel is eligible.
    """
    box = _bbox(region)
    if box is None:
        return 0.0, -1, -1
    y0, y1, x0, x1 = box
    crop = np.pad(region[y0:y1, x0:x1], 1)
    dist = ndimage.distance_transform_edt(crop)[1:-1, 1:-1]
    for y, x in exclude:
        if y0 <= y < y1 and x0 <= x < x1:
            dist[y - y0, x - x0] = 0.0
    k = int(np.argmax(dist))
    best = float(dist.flat[k])
    if best <= 0.0:
        return 0.0, -1, -1
    dy, dx = divmod(k, dist.shape[1])
    return best, y0 + dy, x0 + dx


def distance_map(region: np.ndarray) -> np.ndarray:
    """Full-image distance transform of `region` with the image border as boundary (for
    checks and plots; the protocol itself works on crops)."""
    return ndimage.distance_transform_edt(np.pad(region, 1))[1:-1, 1:-1]


def first_click(gt: np.ndarray) -> Click:
    """The positive click at the point of `gt` farthest from its boundary."""
    dist, y, x = farthest_from_boundary(gt)
    if dist <= 0:
        raise ValueError("cannot click on an empty mask")
    return Click(x=x, y=y, positive=True)


def next_click(
    gt: np.ndarray, pred: np.ndarray, clicked: list[tuple[int, int]] = ()
) -> Click | None:
    """The corrective click for prediction `pred` of `gt`, or None if `pred` is exact.

    clicked: (y, x) pixels already clicked, never clicked again (RITM's not_clicked_map).
    """
    fn = gt & ~pred
    fp = pred & ~gt
    fn_dist, fn_y, fn_x = farthest_from_boundary(fn, clicked)
    fp_dist, fp_y, fp_x = farthest_from_boundary(fp, clicked)
    if fn_dist <= 0 and fp_dist <= 0:
        return None
    if fn_dist > fp_dist:
        return Click(x=fn_x, y=fn_y, positive=True)
    return Click(x=fp_x, y=fp_y, positive=False)


def mask_iou(pred: np.ndarray, gt: np.ndarray) -> float:
    """Intersection over union of two (H, W) bool masks (1.0 when both are empty)."""
    union = np.count_nonzero(pred | gt)
    if union == 0:
        return 1.0
    return np.count_nonzero(pred & gt) / union


def batch_ious(masks: np.ndarray, gts: np.ndarray) -> np.ndarray:
    """IoU of every predicted mask against its own ground truth.

    masks (B, C, H, W) bool, gts (B, H, W) bool -> (B, C) float64.
    """
    g = gts[:, None]
    inter = np.count_nonzero(masks & g, axis=(2, 3))
    union = np.count_nonzero(masks | g, axis=(2, 3))
    return np.where(union > 0, inter / np.maximum(union, 1), 1.0)
