"""COCO-style downstream tasks: instance masks from detector boxes (SAM paper 7.4), object
proposals (7.3), and their metrics by the maintained evaluators.

- `read_detections`: a detections file in COCO results format (a JSON list of
  {image_id, category_id, bbox [x, y, w, h], score}), checked entry by entry against the
  ground truth it is meant for.
- `box_masks`: one mask per box with a single output (`multimask_output=False`, as the
  reference predictor's `predict(box=...)`), binarised at image resolution, as COCO RLE.
- `instance_metrics`: mask AP by pycocotools' COCOeval (segm), or by the lvis API's
  LVISEval for an LVIS ground truth (adds APr / APc / APf).
- `proposal_metrics`: class-agnostic mask average recall at up to 1000 proposals per image
  (COCOeval with useCats=0), by object size and, for LVIS, by category frequency.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import io
import json
import math
from pathlib import Path

import numpy as np
from pycocotools import mask as mask_api

from sam_jax.data.sources import DataError

AP_KEYS = ("AP", "AP50", "AP75", "APs", "APm", "APl")
LVIS_EXTRA_KEYS = ("APr", "APc", "APf")


class DetectionsError(DataError):
    """A detections file that cannot be used as given."""


def is_lvis(ground_truth: dict) -> bool:
    """LVIS JSONs mark categories with a frequency and images with their negative ids."""
    cats = ground_truth.get("categories") or []
    return bool(cats) and all("frequency" in c for c in cats)


def load_ground_truth(path) -> dict:
    from sam_jax.evaluation.readers import read_json

    data = read_json(path)
    if not isinstance(data, dict) or not all(
        isinstance(data.get(k), list) for k in ("images", "annotations", "categories")
    ):
        raise DataError(
            f"{path} is not COCO/LVIS instance JSON (needs 'images', 'annotations', 'categories')"
        )
    return data


# -------------------------------------------------------------------------- detections
@dataclasses.dataclass
class ImageDetections:
    boxes: np.ndarray  # (N, 4) XYXY float64, inside the image
    scores: np.ndarray  # (N,)
    category_ids: np.ndarray  # (N,) int64
    clipped: int = 0  # boxes that reached outside the image and were clipped to it


def read_detections(path, ground_truth: dict) -> dict[int, ImageDetections]:
    """Detections of `path` by image id, highest score first. Raises DetectionsError naming
    the file and the entry for: malformed JSON, an entry that is not a detection, an image
    id or category id the ground truth does not have, a non-finite box or score, a box of
    negative or zero width or height, a box entirely outside its image. A box that reaches
    outside its image is clipped to it (detectors clip theirs already; the count is kept)."""
    path = Path(path)
    try:
        entries = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise DetectionsError(f"detections file {path} not found") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise DetectionsError(f"detections file {path}: malformed JSON ({e})") from None
    if isinstance(entries, dict) and isinstance(entries.get("annotations"), list):
        entries = entries["annotations"]  # a COCO-style dict holding the detections
    if not isinstance(entries, list):
        raise DetectionsError(
            f"detections file {path}: expected a JSON list of {{image_id, category_id, bbox, "
            f"score}}, got {type(entries).__name__}"
        )
    images = {img["id"]: img for img in ground_truth["images"]}
    categories = {c["id"] for c in ground_truth["categories"]}
    grouped: dict[int, list] = {}
    for i, det in enumerate(entries):
        where = f"detections file {path}, entry {i}"
        if not isinstance(det, dict):
            raise DetectionsError(f"{where}: not an object ({det!r:.80})")
        missing = [k for k in ("image_id", "category_id", "bbox", "score") if k not in det]
        if missing:
            raise DetectionsError(f"{where}: missing {', '.join(missing)}")
        image_id = det["image_id"]
        if image_id not in images:
            raise DetectionsError(
                f"{where}: unknown image_id {image_id!r} (not in the ground truth)"
            )
        if det["category_id"] not in categories:
            raise DetectionsError(f"{where}: unknown category_id {det['category_id']!r}")
        try:
            x, y, w, h = (float(v) for v in det["bbox"])
            score = float(det["score"])
        except (TypeError, ValueError):
            raise DetectionsError(
                f"{where}: bbox must be 4 numbers [x, y, w, h] and score a number, got "
                f"bbox={det['bbox']!r:.80} score={det['score']!r:.40}"
            ) from None
        if not all(math.isfinite(v) for v in (x, y, w, h)):
            raise DetectionsError(f"{where}: bbox {det['bbox']} is not finite")
        if not math.isfinite(score):
            raise DetectionsError(f"{where}: score {det['score']!r} is not finite")
        if w <= 0 or h <= 0:
            raise DetectionsError(
                f"{where}: empty or negative box [x, y, w, h] = {det['bbox']} (w and h must be > 0)"
            )
        img = images[image_id]
        width, height = float(img["width"]), float(img["height"])
        x0, y0, x1, y1 = x, y, x + w, y + h
        if x1 <= 0 or y1 <= 0 or x0 >= width or y0 >= height:
            raise DetectionsError(
                f"{where}: box {det['bbox']} lies outside image {image_id} ({width:g}x{height:g})"
            )
        grouped.setdefault(image_id, []).append((score, x0, y0, x1, y1, det["category_id"]))
    out = {}
    for image_id, dets in grouped.items():
        img = images[image_id]
        arr = np.array([d[:5] for d in dets], np.float64)
        order = np.argsort(-arr[:, 0], kind="stable")
        arr = arr[order]
        boxes = arr[:, 1:5]
        clipped = np.clip(boxes, 0, [img["width"], img["height"], img["width"], img["height"]])
        out[image_id] = ImageDetections(
            boxes=clipped,
            scores=arr[:, 0],
            category_ids=np.array([dets[j][5] for j in order], np.int64),
            clipped=int(np.any(clipped != boxes, axis=1).sum()),
        )
    return out


# ------------------------------------------------------------------------------ masks
def encode_rle(mask: np.ndarray) -> dict:
    """COCO compressed RLE of a (H, W) bool mask, counts as a string (JSON-ready)."""
    rle = mask_api.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": [int(v) for v in rle["size"]], "counts": rle["counts"].decode("ascii")}


def box_masks(predictor, boxes: np.ndarray, batch_size: int = 64) -> tuple[np.ndarray, list]:
    """One mask per XYXY box (in the image frame) of the image set in `predictor`, with a
    single output -> (predicted IoUs (N,), RLEs)."""
    ious, rles = [], []
    for start in range(0, len(boxes), batch_size):
        masks, iou, _ = predictor.predict_batch(
            boxes=boxes[start : start + batch_size], multimask_output=False
        )
        ious.append(iou[:, 0])
        rles.extend(encode_rle(m[0]) for m in masks)
    return (np.concatenate(ious) if ious else np.zeros(0, np.float32)), rles


# ----------------------------------------------------------------------------- metrics
def _quiet():
    """pycocotools and lvis print their progress; keep it out of the run's output."""
    return contextlib.redirect_stdout(io.StringIO())


def _copies(entries: list[dict]) -> list[dict]:
    """A copy of each entry dict: the evaluators replace keys of the entries they are given
    (segmentation by its RLE, area, id), never mutate the values; far lighter than a deep
    copy of an LVIS-size ground truth."""
    return [dict(e) for e in entries]


def _coco(ground_truth: dict):
    from pycocotools.coco import COCO

    gt = copy.copy(ground_truth)
    gt["annotations"] = [{**a, "iscrowd": a.get("iscrowd", 0)} for a in ground_truth["annotations"]]
    with _quiet():
        coco = COCO()
        coco.dataset = gt
        coco.createIndex()
    return coco


def coco_mask_ap(ground_truth: dict, results: list[dict], image_ids=None) -> dict:
    """{AP, AP50, AP75, APs, APm, APl} (fractions) of `results` by COCOeval (segm) over
    `image_ids` (default: every image of the ground truth)."""
    from pycocotools.cocoeval import COCOeval

    if not results:
        return dict.fromkeys(AP_KEYS, 0.0)
    coco = _coco(ground_truth)
    with _quiet():
        dets = coco.loadRes(_copies(results))
        ev = COCOeval(coco, dets, "segm")
        if image_ids is not None:
            ev.params.imgIds = sorted(image_ids)
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return {k: float(v) for k, v in zip(AP_KEYS, ev.stats[:6])}


@contextlib.contextmanager
def _numpy_float_alias():
    """lvis 0.5.3 (the last release) still calls `np.float`, which NumPy 1.24 removed; give
    it the builtin for the duration of its evaluation only."""
    had = "float" in np.__dict__
    if not had:
        np.float = float  # type: ignore[attr-defined]
    try:
        yield
    finally:
        if not had:
            del np.float


def lvis_mask_ap(ground_truth: dict, results: list[dict], image_ids=None) -> dict:
    """AP keys plus APr / APc / APf by the lvis API's LVISEval (segm; at most 300 detections
    per image, federated: only categories verified present or absent in an image count)."""
    try:
        from lvis import LVIS, LVISEval, LVISResults
    except ImportError as e:
        raise RuntimeError(f"LVIS metrics need the lvis API (`pip install lvis`): {e}") from None
    if not results:
        return dict.fromkeys(AP_KEYS + LVIS_EXTRA_KEYS, 0.0)
    import logging

    level = logging.getLogger().level
    logging.getLogger().setLevel(max(level, logging.WARNING))  # lvis logs at INFO
    try:
        with _quiet(), _numpy_float_alias():
            gt = LVIS.__new__(LVIS)
            gt.logger = logging.getLogger("lvis")
            gt.dataset = {**ground_truth, "annotations": _copies(ground_truth["annotations"])}
            gt._create_index()
            dets = LVISResults(gt, _copies(results))
            ev = LVISEval(gt, dets, "segm")
            if image_ids is not None:
                ev.params.img_ids = sorted(image_ids)
            ev.run()
    finally:
        logging.getLogger().setLevel(level)
    stats = ev.get_results()
    return {k: float(stats[k]) for k in AP_KEYS + LVIS_EXTRA_KEYS}


def instance_metrics(ground_truth: dict, results: list[dict], image_ids=None) -> dict:
    if is_lvis(ground_truth):
        return lvis_mask_ap(ground_truth, results, image_ids)
    return coco_mask_ap(ground_truth, results, image_ids)


# --------------------------------------------------------------------------- proposals
AREA_RANGES = {
    "all": (0, 1e10),
    "small": (0, 32**2),
    "medium": (32**2, 96**2),
    "large": (96**2, 1e10),
}
FREQUENCIES = {"r": "rare", "c": "common", "f": "frequent"}


def _agnostic_recall(ground_truth: dict, anns: list[dict], results, image_ids, max_dets):
    """COCOeval recall (IoU 0.5:0.95) of class-agnostic proposals per area range."""
    from pycocotools.cocoeval import COCOeval

    gt = {
        "images": ground_truth["images"],
        "categories": [{"id": 1, "name": "object"}],
        "annotations": [{**a, "category_id": 1, "iscrowd": a.get("iscrowd", 0)} for a in anns],
    }
    coco = _coco(gt)
    dets = [{**r, "category_id": 1} for r in results]
    with _quiet():
        res = coco.loadRes(dets) if dets else None
        if res is None:
            return dict.fromkeys(AREA_RANGES, 0.0)
        ev = COCOeval(coco, res, "segm")
        ev.params.imgIds = sorted(image_ids)
        ev.params.useCats = 0
        ev.params.maxDets = [max_dets]
        ev.params.areaRng = [list(v) for v in AREA_RANGES.values()]
        ev.params.areaRngLbl = list(AREA_RANGES)
        ev.evaluate()
        ev.accumulate()
    recall = ev.eval["recall"]  # (iou thresholds, categories, areas, max dets)
    out = {}
    for a, label in enumerate(AREA_RANGES):
        r = recall[:, 0, a, 0]
        r = r[r > -1]
        out[label] = float(r.mean()) if len(r) else float("nan")
    return out


def proposal_metrics(
    ground_truth: dict, results: list[dict], image_ids=None, max_dets: int = 1000
) -> dict:
    """Class-agnostic mask AR@max_dets: {"AR@1000", "ARs", "ARm", "ARl"} and, for LVIS,
    "ARr", "ARc", "ARf": the recall of the ground-truth masks of rare / common / frequent
    categories only (our reading of the paper's breakdown: the other masks are left out of
    the ground truth, the proposals are the same)."""
    if image_ids is None:
        image_ids = [img["id"] for img in ground_truth["images"]]
    image_ids = set(image_ids)
    anns = [a for a in ground_truth["annotations"] if a["image_id"] in image_ids]
    results = [r for r in results if r["image_id"] in image_ids]
    by_area = _agnostic_recall(ground_truth, anns, results, image_ids, max_dets)
    out = {
        f"AR@{max_dets}": by_area["all"],
        "ARs": by_area["small"],
        "ARm": by_area["medium"],
        "ARl": by_area["large"],
    }
    if is_lvis(ground_truth):
        freq = {c["id"]: c["frequency"] for c in ground_truth["categories"]}
        for key in FREQUENCIES:
            subset = [a for a in anns if freq.get(a["category_id"]) == key]
            out[f"AR{key}"] = (
                _agnostic_recall(ground_truth, subset, results, image_ids, max_dets)["all"]
                if subset
                else float("nan")
            )
    return out
