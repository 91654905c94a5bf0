"""The BSDS500 boundary benchmark: ground truth from the release's `.mat` files, thinning,
boundary matching within a distance tolerance, and ODS / OIS / AP / R50.

It follows the benchmark's own procedure (`evaluation_bdry_image.m` and
`collect_eval_bdry.m` of the BSR release), which no Python package provides:

- a soft edge map in [0, 1] is thresholded at 99 levels, linspace(1/100, 99/100, 99);
  each binary map is thinned to one-pixel lines (MATLAB's `bwmorph(..., 'thin', Inf)`,
  the two-subiteration algorithm of Lam, Lee and Suen, `thin` below);
- each binary map is matched to every human annotation with a one-to-one matching of
  pixels no further apart than 0.0075 of the image diagonal. The benchmark solves it as
  a min-cost assignment whose cost for leaving a pixel unmatched is 100 x the tolerance,
  larger than any matched pair costs, so its count of matched pixels is the maximum
  matching's; here it is the maximum bipartite matching (Hopcroft-Karp, scipy) of the
  pixel pairs within the tolerance;
- per threshold, recall counts = matched ground-truth pixels summed over annotators,
  over all their boundary pixels; precision counts = predicted pixels matched to at least
  one annotator, over all predicted pixels.

ODS: the best F of the counts summed over images at one threshold (linearly interpolated
between thresholds, as `maxF` does); OIS: the counts of every image at its own best
threshold, summed; AP: the area under the interpolated precision/recall curve sampled at
recall 0, 0.01, ..., 1; R50: the highest recall at which precision is still at least 0.5.
One departure: thresholds at which no pixel is predicted are left out of the AP / R50
curve (the scripts give them precision 0).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
from scipy import ndimage, sparse
from scipy.sparse.csgraph import maximum_bipartite_matching
from scipy.spatial import cKDTree

from sam_jax.data.sources import DataError

NUM_THRESHOLDS = 99
MAX_DIST = 0.0075  # of the image diagonal


def thresholds(n: int = NUM_THRESHOLDS) -> np.ndarray:
    return np.linspace(1.0 / (n + 1), 1.0 - 1.0 / (n + 1), n)


# ------------------------------------------------------------------------ ground truth
def read_ground_truth(path) -> list[np.ndarray]:
    """The human boundary maps of one BSDS500 `groundTruth/<split>/<id>.mat` file: a list of
    (H, W) bool arrays, one per annotator (its `groundTruth{i}.Boundaries`)."""
    from scipy.io import loadmat

    path = Path(path)
    try:
        data = loadmat(str(path))
    except FileNotFoundError:
        raise DataError(f"missing BSDS ground-truth file {path}") from None
    except Exception as e:  # scipy raises several types for a corrupt file
        raise DataError(f"unreadable BSDS ground-truth file {path}: {e}") from None
    if "groundTruth" not in data:
        raise DataError(f"{path}: no 'groundTruth' variable (found {sorted(data)[:6]})")
    cells = np.asarray(data["groundTruth"]).reshape(-1)
    maps = []
    for i, cell in enumerate(cells):
        try:
            struct = cell[0, 0] if cell.dtype == object else cell
            boundaries = np.asarray(struct["Boundaries"])
            while boundaries.dtype == object:
                boundaries = boundaries.reshape(-1)[0]
            boundaries = np.asarray(boundaries)
        except (KeyError, IndexError, ValueError, TypeError) as e:
            raise DataError(f"{path}: annotation {i + 1} has no Boundaries map ({e})") from None
        if boundaries.ndim != 2:
            raise DataError(f"{path}: annotation {i + 1}'s Boundaries is {boundaries.shape}")
        maps.append(boundaries.astype(bool))
    if not maps:
        raise DataError(f"{path}: no annotations")
    if len({m.shape for m in maps}) != 1:
        raise DataError(f"{path}: annotations of different sizes {[m.shape for m in maps]}")
    return maps


# ---------------------------------------------------------------------------- thinning
def _thin_tables() -> tuple[np.ndarray, np.ndarray]:
    """Deletion tables of the two subiterations, indexed by the 8-neighbourhood code
    sum(x_k << (k - 1)) with x1 = east, x2 = north-east, ..., x8 = south-east
    (counter-clockwise)."""
    first = np.zeros(256, bool)
    second = np.zeros(256, bool)
    for code in range(256):
        x = [(code >> k) & 1 for k in range(8)]  # x[0] = x1 ... x[7] = x8
        xs = x + [x[0]]  # x9 = x1
        crossing = sum(1 for i in range(4) if xs[2 * i] == 0 and (xs[2 * i + 1] or xs[2 * i + 2]))
        n1 = sum(1 for k in range(4) if xs[2 * k] or xs[2 * k + 1])
        n2 = sum(1 for k in range(4) if xs[2 * k + 1] or xs[2 * k + 2])
        if crossing != 1 or not 2 <= min(n1, n2) <= 3:
            continue
        x1, x2, x3, x4, x5, x6, x7, x8 = x
        first[code] = ((x2 or x3 or not x8) and x1) == 0
        second[code] = ((x6 or x7 or not x4) and x5) == 0
    return first, second


_TABLES = _thin_tables()
# The weights that give each pixel its neighbourhood code (row 0 is north).
_CODE_WEIGHTS = np.array([[8, 4, 2], [16, 0, 1], [32, 64, 128]], np.int32)


def thin(mask: np.ndarray) -> np.ndarray:
    """Thin a binary image to one-pixel-wide lines until nothing changes (MATLAB's
    `bwmorph(mask, 'thin', Inf)`)."""
    out = np.asarray(mask, bool).copy()
    while True:
        changed = False
        for table in _TABLES:
            code = ndimage.correlate(out.astype(np.int32), _CODE_WEIGHTS, mode="constant")
            delete = out & table[code]
            if delete.any():
                out &= ~delete
                changed = True
        if not changed:
            return out


# ---------------------------------------------------------------------------- matching
def match_pixels(pred: np.ndarray, gt: np.ndarray, max_dist: float) -> np.ndarray:
    """The predicted pixels that a maximum one-to-one matching of `pred` and `gt` pixels at
    most `max_dist` pixels apart pairs with a ground-truth pixel ((H, W) bool); as many
    ground-truth pixels are matched."""
    out = np.zeros(pred.shape, bool)
    p = np.argwhere(pred)
    g = np.argwhere(gt)
    if not len(p) or not len(g):
        return out
    # ndarray output keeps zero-distance pairs (a sparse matrix would drop them)
    pairs = cKDTree(p).sparse_distance_matrix(cKDTree(g), max_dist, output_type="ndarray")
    if not len(pairs):
        return out
    graph = sparse.csr_matrix(
        (np.ones(len(pairs), np.int8), (pairs["i"], pairs["j"])), shape=(len(p), len(g))
    )
    match = maximum_bipartite_matching(graph, perm_type="column")
    hit = p[match >= 0]
    out[hit[:, 0], hit[:, 1]] = True
    return out


@dataclasses.dataclass
class ImageCounts:
    """Per-threshold counts of one image: recall numerator / denominator, precision
    numerator / denominator (each (T,) int)."""

    cnt_r: np.ndarray
    sum_r: np.ndarray
    cnt_p: np.ndarray
    sum_p: np.ndarray

    def as_dict(self) -> dict:
        return {k: getattr(self, k).tolist() for k in ("cnt_r", "sum_r", "cnt_p", "sum_p")}

    @classmethod
    def from_dict(cls, d: dict) -> ImageCounts:
        return cls(**{k: np.asarray(d[k], np.int64) for k in ("cnt_r", "sum_r", "cnt_p", "sum_p")})


def evaluate_image(
    edges: np.ndarray,
    ground_truth: list[np.ndarray],
    n_thresholds: int = NUM_THRESHOLDS,
    max_dist: float = MAX_DIST,
    thin_edges: bool = True,
) -> ImageCounts:
    """The benchmark's counts for one soft edge map (H, W) in [0, 1] against its annotators'
    boundary maps."""
    edges = np.asarray(edges, np.float64)
    if edges.ndim != 2:
        raise ValueError(f"edge map must be (H, W), got {edges.shape}")
    for g in ground_truth:
        if g.shape != edges.shape:
            raise ValueError(f"edge map {edges.shape} vs ground truth {g.shape}")
    h, w = edges.shape
    tolerance = max_dist * np.hypot(h, w)
    ts = thresholds(n_thresholds)
    cnt_r, sum_r, cnt_p, sum_p = (np.zeros(len(ts), np.int64) for _ in range(4))
    gt_total = int(sum(int(g.sum()) for g in ground_truth))
    previous = None
    for i, t in enumerate(ts):
        binary = edges >= t
        if thin_edges:
            binary = thin(binary)
        sum_r[i] = gt_total
        sum_p[i] = int(binary.sum())
        if previous is not None and np.array_equal(binary, previous[0]):
            cnt_r[i], cnt_p[i] = previous[1], previous[2]
            continue
        matched_any = np.zeros(binary.shape, bool)
        recalled = 0
        for g in ground_truth:
            matched = match_pixels(binary, g, tolerance)
            matched_any |= matched
            recalled += int(matched.sum())
        cnt_r[i] = recalled
        cnt_p[i] = int(matched_any.sum())
        previous = (binary, cnt_r[i], cnt_p[i])
    return ImageCounts(cnt_r, sum_r, cnt_p, sum_p)


# ----------------------------------------------------------------------------- summary
def _ratio(num, den):
    num = np.asarray(num, np.float64)
    den = np.asarray(den, np.float64)
    return num / np.where(den == 0, 1.0, den)


def _f(r, p):
    r, p = np.asarray(r, np.float64), np.asarray(p, np.float64)
    return np.where(r + p > 0, 2 * r * p / np.where(r + p > 0, r + p, 1.0), 0.0)


def _max_f(r: np.ndarray, p: np.ndarray, ts: np.ndarray) -> tuple[float, float, float, float]:
    """(threshold, R, P, F) of the best F, interpolating linearly between neighbouring
    thresholds in 100 steps."""
    best = (float(ts[0]), float(r[0]), float(p[0]), float(_f(r[0], p[0])))
    a = np.linspace(0, 1, 100)
    for i in range(len(ts)):
        if i == 0:
            rr, pp, tt = r[:1], p[:1], ts[:1]
        else:
            rr = a * r[i] + (1 - a) * r[i - 1]
            pp = a * p[i] + (1 - a) * p[i - 1]
            tt = a * ts[i] + (1 - a) * ts[i - 1]
        f = _f(rr, pp)
        j = int(np.argmax(f))
        if f[j] > best[3]:
            best = (float(tt[j]), float(rr[j]), float(pp[j]), float(f[j]))
    return best


def summarize(counts: list[ImageCounts], n_thresholds: int = NUM_THRESHOLDS) -> dict:
    """ODS, OIS, AP and R50 (fractions) of a dataset's per-image counts, with the ODS
    threshold and the precision/recall curve."""
    if not counts:
        raise ValueError("no images to summarize")
    ts = thresholds(n_thresholds)
    tot = {k: sum(getattr(c, k) for c in counts) for k in ("cnt_r", "sum_r", "cnt_p", "sum_p")}
    r = _ratio(tot["cnt_r"], tot["sum_r"])
    p = _ratio(tot["cnt_p"], tot["sum_p"])
    ods_t, ods_r, ods_p, ods_f = _max_f(r, p, ts)
    best = {"cnt_r": 0, "sum_r": 0, "cnt_p": 0, "sum_p": 0}
    for c in counts:
        f = _f(_ratio(c.cnt_r, c.sum_r), _ratio(c.cnt_p, c.sum_p))
        j = int(np.argmax(f))
        for k in best:
            best[k] += int(getattr(c, k)[j])
    ois_r = float(_ratio(best["cnt_r"], best["sum_r"]))
    ois_p = float(_ratio(best["cnt_p"], best["sum_p"]))
    # The curve for AP and R50 leaves out thresholds at which nothing is predicted: their
    # precision is undefined (the benchmark's scripts count it as 0, which draws a line to
    # (0, 0) and halves the AP of a map that is all correct).
    defined = tot["sum_p"] > 0
    rd, pd = r[defined], p[defined]
    ap = 0.0
    if len(rd) > 1:
        # precision interpolated over recall 0, 0.01, ..., 1 where the curve is defined
        order = np.argsort(rd, kind="stable")
        unique_r, first = np.unique(rd[order], return_index=True)
        grid = np.linspace(0, 1, 101)
        inside = (grid >= unique_r[0]) & (grid <= unique_r[-1])
        if len(unique_r) > 1:
            ap = float(np.interp(grid[inside], unique_r, pd[order][first]).sum() * 0.01)
    # R50: the highest recall with precision >= 0.5, interpolating between thresholds.
    r50 = 0.0
    for i in range(len(rd)):
        if pd[i] >= 0.5:
            r50 = max(r50, float(rd[i]))
        if i and (pd[i] - 0.5) * (pd[i - 1] - 0.5) < 0:
            a = (0.5 - pd[i - 1]) / (pd[i] - pd[i - 1])
            r50 = max(r50, float(rd[i - 1] + a * (rd[i] - rd[i - 1])))
    return {
        "ODS": ods_f,
        "OIS": float(_f(ois_r, ois_p)),
        "AP": ap,
        "R50": r50,
        "ods_threshold": ods_t,
        "ods_recall": ods_r,
        "ods_precision": ods_p,
        "num_images": len(counts),
        "curve": {"threshold": ts.tolist(), "recall": r.tolist(), "precision": p.tolist()},
    }
