"""`SamAutomaticMaskGenerator`: masks for a whole image from a grid of point prompts.

The reference generator's arguments, output records and pipeline (grids, crops,
predicted-IoU and stability filters, NMS within and across crops, small-region cleanup),
not its exact decisions: float differences can move a mask across a threshold, so the
parity test asks for matching mask counts within 10% and at least 95% of the reference's
masks found again at IoU >= 0.9 (on random weights scaled so that scores spread out).
What differs is where the work happens. Each batch of points is one compiled call with
fixed shapes (the last batch is padded) that decodes the prompts, upsamples the logits to
the crop's size, and returns per-mask scores, boxes, keep flags and bit-packed binary
masks; the host only touches the masks that pass the filters. Host memory grows with the
number of kept masks, device memory with `points_per_batch`.

The decoder is the model's mask decoder arranged for many single-point prompts on one
image (`sam_jax.inference.point_decoder`).
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from sam_jax.inference import mask_utils
from sam_jax.inference.build import SamModel
from sam_jax.inference.point_decoder import decode_prompts
from sam_jax.inference.predictor import SamPredictor, as_uint8_rgb
from sam_jax.modeling.sam import Sam, postprocess_matrices

OUTPUT_MODES = ("binary_mask", "uncompressed_rle", "coco_rle")
# Masks whose box comes this close (pixels) to an inner crop edge are dropped.
CROP_EDGE_TOLERANCE = 20.0
# Prompts decoded together inside one batch call on CPU: small enough that a chunk's
# upsampled masks stay in cache, large enough for efficient matmuls (measured on 2 cores).
_CPU_CHUNK = 2


def _mask_boxes(rows_any, cols_any):
    """(..., H) and (..., W) 'row/column has a pixel' -> (..., 4) int32 XYXY, inclusive;
    empty masks give zeros."""
    h, w = rows_any.shape[-1], cols_any.shape[-1]
    top = jnp.argmax(rows_any, -1)
    bottom = h - 1 - jnp.argmax(rows_any[..., ::-1], -1)
    left = jnp.argmax(cols_any, -1)
    right = w - 1 - jnp.argmax(cols_any[..., ::-1], -1)
    boxes = jnp.stack([left, top, right, bottom], -1).astype(jnp.int32)
    return boxes * rows_any.any(-1)[..., None]


def _pack_bits(masks):
    """(..., H, W) bool -> (..., H, ceil(W / 8)) uint8, as np.packbits(axis=-1) does."""
    w = masks.shape[-1]
    pad = -w % 8
    m = jnp.pad(masks, [(0, 0)] * (masks.ndim - 1) + [(0, pad)]).astype(jnp.uint8)
    m = m.reshape(*m.shape[:-1], (w + pad) // 8, 8)
    return (m << jnp.arange(7, -1, -1, dtype=jnp.uint8)).sum(-1, dtype=jnp.uint8)


def _process_batch(
    module: Sam,
    chunk: int,
    params,
    image,
    point_coords,
    n_valid,
    rows,
    cols,
    crop_box,
    image_box,
    settings,
):
    """Decode a batch of points, upsample to the crop, score and filter.

    image: the crop's decoder image terms (`point_decoder.image_terms`, made once per crop
    by the predictor, not once per batch). point_coords (P, 2) in the model frame, P a
    multiple of `chunk`; only the first n_valid are real. rows (H, m) and cols (W, m): the
    post-processing matrices of the crop. crop_box and image_box: XYXY int32 in the image
    frame. settings: (iou threshold, use it, stability threshold, use it, stability offset)
    as float32.
    Returns per mask (P, 3, ...): iou, stability, boxes (crop frame), keep, packed masks.
    """
    iou_thresh, use_iou, stab_thresh, use_stab, offset = (settings[i] for i in range(5))
    threshold = Sam.mask_threshold

    def one_chunk(coords):
        low_res, iou = decode_prompts(module, params, image, coords)
        # rows @ low_res @ cols^T, contracting the shorter output side first
        if rows.shape[0] <= cols.shape[0]:
            t = jnp.einsum("yi,bmij->bmyj", rows, low_res)
            logits = jnp.einsum("bmyj,xj->bmyx", t, cols)
        else:
            t = jnp.einsum("bmij,xj->bmix", low_res, cols)
            logits = jnp.einsum("yi,bmix->bmyx", rows, t)
        inter = (logits > threshold + offset).sum((-1, -2), dtype=jnp.int32)
        union = (logits > threshold - offset).sum((-1, -2), dtype=jnp.int32)
        masks = logits > threshold
        boxes = _mask_boxes(masks.any(-1), masks.any(-2))
        return iou, inter / union, boxes, _pack_bits(masks)

    p = point_coords.shape[0]
    iou, stability, boxes, packed = jax.lax.map(one_chunk, point_coords.reshape(-1, chunk, 2))
    iou, stability, boxes, packed = (
        x.reshape(p, *x.shape[2:]) for x in (iou, stability, boxes, packed)
    )
    keep = (jnp.arange(p) < n_valid)[:, None]
    keep &= (iou > iou_thresh) | (use_iou == 0)
    keep &= (stability >= stab_thresh) | (use_stab == 0)
    shift = jnp.stack([crop_box[0], crop_box[1], crop_box[0], crop_box[1]])
    framed = (boxes + shift).astype(jnp.float32)
    near_crop = jnp.abs(framed - crop_box.astype(jnp.float32)) <= CROP_EDGE_TOLERANCE
    near_image = jnp.abs(framed - image_box.astype(jnp.float32)) <= CROP_EDGE_TOLERANCE
    keep &= ~jnp.any(near_crop & ~near_image, -1)
    return iou, stability, boxes, keep, packed


@functools.lru_cache(maxsize=8)
def _compiled_batch(module: Sam, chunk: int):
    """One jitted `_process_batch` per model shape, shared by all generators using it."""
    return jax.jit(functools.partial(_process_batch, module, chunk))


# ---------------------------------------------------------------------------- generator
class SamAutomaticMaskGenerator:
    """Masks for an entire image from a grid of single-point prompts.

    Arguments are those of the reference `SamAutomaticMaskGenerator` (see its docstring):
    exactly one of points_per_side / point_grids; predicted-IoU threshold (strict, skipped
    when <= 0), stability threshold (skipped when <= 0) with the logit offset that defines
    stability; box NMS thresholds within and across crops; crop_n_layers extra layers of
    (2**i)^2 overlapping crops; min_mask_region_area > 0 removes smaller holes and islands
    (then NMS again, preferring masks that did not change); output_mode one of
    "binary_mask", "uncompressed_rle", "coco_rle".
    """

    def __init__(
        self,
        sam: SamModel,
        points_per_side: int | None = 32,
        points_per_batch: int = 64,
        pred_iou_thresh: float = 0.88,
        stability_score_thresh: float = 0.95,
        stability_score_offset: float = 1.0,
        box_nms_thresh: float = 0.7,
        crop_n_layers: int = 0,
        crop_nms_thresh: float = 0.7,
        crop_overlap_ratio: float = 512 / 1500,
        crop_n_points_downscale_factor: int = 1,
        point_grids: list[np.ndarray] | None = None,
        min_mask_region_area: int = 0,
        output_mode: str = "binary_mask",
    ) -> None:
        if not isinstance(sam, SamModel):
            raise TypeError(
                "SamAutomaticMaskGenerator takes the model bundle from "
                f"sam_model_registry[...](...), got {type(sam).__name__}"
            )
        if (points_per_side is None) == (point_grids is None):
            raise ValueError("give exactly one of points_per_side or point_grids")
        crop_n_layers = _check_int(crop_n_layers, "crop_n_layers", 0)
        if points_per_side is not None:
            points_per_side = _check_int(points_per_side, "points_per_side", 1)
            factor = _check_int(crop_n_points_downscale_factor, "crop_n_points_downscale_factor", 1)
            smallest = int(points_per_side / factor**crop_n_layers)
            if smallest < 1:
                raise ValueError(
                    f"points_per_side {points_per_side} / crop_n_points_downscale_factor "
                    f"{factor} ** crop_n_layers {crop_n_layers} leaves no points in the last "
                    "crop layer"
                )
            self.point_grids = mask_utils.build_all_layer_point_grids(
                points_per_side, crop_n_layers, factor
            )
        else:
            self.point_grids = _check_point_grids(point_grids, crop_n_layers)
        self.points_per_batch = _check_int(points_per_batch, "points_per_batch", 1)
        self.pred_iou_thresh = _check_float(pred_iou_thresh, "pred_iou_thresh")
        self.stability_score_thresh = _check_float(stability_score_thresh, "stability_score_thresh")
        self.stability_score_offset = _check_float(stability_score_offset, "stability_score_offset")
        if self.stability_score_offset < 0:
            raise ValueError(f"stability_score_offset must be >= 0, got {stability_score_offset}")
        self.box_nms_thresh = _check_float(box_nms_thresh, "box_nms_thresh", 0.0, 1.0)
        self.crop_nms_thresh = _check_float(crop_nms_thresh, "crop_nms_thresh", 0.0, 1.0)
        self.crop_overlap_ratio = _check_float(crop_overlap_ratio, "crop_overlap_ratio", 0.0, 1.0)
        self.crop_n_layers = crop_n_layers
        self.crop_n_points_downscale_factor = crop_n_points_downscale_factor
        if isinstance(min_mask_region_area, bool) or not isinstance(
            min_mask_region_area, (int, float, np.integer, np.floating)
        ):
            raise ValueError(f"min_mask_region_area must be a number, got {min_mask_region_area!r}")
        if not min_mask_region_area >= 0:
            raise ValueError(f"min_mask_region_area must be >= 0, got {min_mask_region_area}")
        self.min_mask_region_area = min_mask_region_area
        if output_mode not in OUTPUT_MODES:
            raise ValueError(f"unknown output_mode {output_mode!r}; choose one of {OUTPUT_MODES}")
        if output_mode == "coco_rle":
            try:
                import pycocotools.mask  # noqa: F401
            except ImportError as e:
                raise ValueError("output_mode 'coco_rle' needs pycocotools installed") from e
        self.output_mode = output_mode

        self.model = sam
        self.predictor = SamPredictor(sam)
        on_cpu = jax.default_backend() == "cpu"
        self._chunk = min(_CPU_CHUNK, self.points_per_batch) if on_cpu else self.points_per_batch
        self._batch_size = -(-self.points_per_batch // self._chunk) * self._chunk
        self._process_batch = _compiled_batch(sam.module, self._chunk)
        # What the filters did in the last `generate` call (see `_new_stats`).
        self.last_stats: dict[str, Any] | None = None

    # ---------------------------------------------------------------------- public
    def generate(self, image: np.ndarray) -> list[dict[str, Any]]:
        """Masks of an H x W x 3 RGB image (uint8, or float in [0, 1]) as a list of records:
        segmentation (H x W bool array, or an RLE dict per output_mode), area (pixels),
        bbox (XYWH), predicted_iou, point_coords ([[x, y]]), stability_score, crop_box
        (XYWH), ordered as the reference orders them.

        Afterwards `last_stats` says how many candidate masks each filter removed
        (`describe_stats` turns it into a sentence)."""
        return self._generate(as_uint8_rgb(image), None)

    def generate_batch(self, images, images_per_call: int = 8) -> list[list[dict[str, Any]]]:
        """`generate` for several images: the whole-image embeddings are computed together,
        up to `images_per_call` per compiled call (`SamPredictor.set_images`); crops of
        crop_n_layers > 0 are embedded one by one as in `generate`. Returns one record list
        per image; `last_stats` then holds a list of per-image stats."""
        if isinstance(images, np.ndarray) and images.ndim == 3:
            raise ValueError("generate_batch takes a sequence of images; use generate for one")
        images = [as_uint8_rgb(im, f"images[{i}]") for i, im in enumerate(images)]
        if not images:
            raise ValueError("generate_batch needs at least one image")
        self.predictor.set_images(images, images_per_call=images_per_call)
        states = list(self.predictor._batch)
        self.predictor.reset_image()
        out, stats = [], []
        for image, state in zip(images, states):
            out.append(self._generate(image, state))
            stats.append(self.last_stats)
        self.last_stats = stats
        return out

    def _generate(self, image: np.ndarray, embedded) -> list[dict[str, Any]]:
        """embedded: the whole image's (features, original size, input size) if already
        computed."""
        stats = self.last_stats = _new_stats(self)
        orig_h, orig_w = image.shape[:2]
        crop_boxes, layer_idxs = mask_utils.generate_crop_boxes(
            (orig_h, orig_w), self.crop_n_layers, self.crop_overlap_ratio
        )
        parts = [
            self._process_crop(
                image, box, layer, (orig_h, orig_w), stats, embedded if layer == 0 else None
            )
            for box, layer in zip(crop_boxes, layer_idxs)
        ]
        data = {k: np.concatenate([p[k] for p in parts]) for k in parts[0] if k != "packed"}
        packed = [m for p in parts for m in p["packed"]]
        if len(crop_boxes) > 1 and len(data["boxes"]):
            # the same object found in several crops: keep the one from the smallest crop
            scores = 1.0 / mask_utils.box_area(data["crop_boxes"]).astype(np.float32)
            keep = mask_utils.nms(data["boxes"], scores, self.crop_nms_thresh)
            stats["duplicates"] += len(data["boxes"]) - len(keep)
            data = {k: v[keep] for k, v in data.items()}
            packed = [packed[i] for i in keep]
        masks = [
            mask_utils.uncrop_mask(_unpack(m, box), box, orig_h, orig_w)
            for m, box in zip(packed, data["crop_boxes"])
        ]
        if self.min_mask_region_area > 0 and masks:
            before = len(masks)
            masks, data = self._remove_small_regions(masks, data)
            stats["duplicates"] += before - len(masks)
        stats["masks"] = len(masks)
        return self._records(masks, data)

    # -------------------------------------------------------------------- internals
    def _process_crop(self, image, crop_box, layer_idx, orig_size, stats, embedded=None):
        x0, y0, x1, y1 = crop_box
        crop = image[y0:y1, x0:x1]
        crop_h, crop_w = crop.shape[:2]
        if embedded is not None:  # the whole image, embedded with others (generate_batch)
            self.predictor.reset_image()
            self.predictor._use(*embedded)
        else:
            self.predictor.set_image(crop)
        terms = self.predictor.decoder_image_terms()
        low_res = self.predictor.low_res_size
        rows, cols = postprocess_matrices(
            (low_res, low_res), self.model.image_size, self.predictor.input_size, (crop_h, crop_w)
        )
        points = self.point_grids[layer_idx] * np.array([[crop_w, crop_h]])
        model_points = self.predictor.transform.apply_coords(points, (crop_h, crop_w))
        settings = np.array(
            [
                self.pred_iou_thresh,
                self.pred_iou_thresh > 0,
                self.stability_score_thresh,
                self.stability_score_thresh > 0,
                self.stability_score_offset,
            ],
            np.float32,
        )
        consts = (
            rows,
            cols,
            np.asarray(crop_box, np.int32),
            np.array([0, 0, orig_size[1], orig_size[0]], np.int32),
            settings,
        )
        size = self._batch_size
        step = self.points_per_batch
        kept = {"iou": [], "stability": [], "boxes": [], "points": [], "packed": []}

        def collect(start, n_valid, out):
            iou, stability, boxes, keep, packed = jax.device_get(out)
            _count_filtered(stats, settings, iou[:n_valid], stability[:n_valid], keep[:n_valid])
            idx = np.flatnonzero(keep.reshape(-1))
            if not len(idx):
                return
            n_out = keep.shape[1]
            kept["iou"].append(iou.reshape(-1)[idx])
            kept["stability"].append(stability.reshape(-1)[idx])
            kept["boxes"].append(boxes.reshape(-1, 4)[idx])
            kept["points"].append(points[start + idx // n_out])
            kept["packed"].extend(packed.reshape(-1, *packed.shape[2:])[idx])

        pending = None
        for start in range(0, len(points), step):
            batch = np.zeros((size, 2), np.float32)
            chunk = model_points[start : start + step]
            batch[: len(chunk)] = chunk
            # dispatched before the previous batch's results are read, so the device
            # keeps working while the host filters
            out = self._process_batch(
                self.model.params, terms, batch, np.int32(len(chunk)), *consts
            )
            if pending is not None:
                collect(*pending)
            pending = (start, len(chunk), out)
        if pending is not None:
            collect(*pending)
        self.predictor.reset_image()

        if kept["iou"]:
            data = {k: np.concatenate(v) for k, v in kept.items() if k != "packed"}
        else:
            data = {
                "iou": np.zeros(0, np.float32),
                "stability": np.zeros(0, np.float32),
                "boxes": np.zeros((0, 4), np.int32),
                "points": np.zeros((0, 2)),
            }
        keep = mask_utils.nms(data["boxes"], data["iou"], self.box_nms_thresh)
        stats["duplicates"] += len(data["boxes"]) - len(keep)
        data = {k: v[keep] for k, v in data.items()}
        data["boxes"] = data["boxes"].astype(np.int64) + np.array([x0, y0, x0, y0])
        data["points"] = data["points"] + np.array([x0, y0])
        data["crop_boxes"] = np.tile(np.asarray(crop_box, np.int64), (len(keep), 1))
        data["packed"] = [kept["packed"][i] for i in keep]
        return data

    def _remove_small_regions(self, masks, data):
        new_masks, unchanged = [], []
        for mask in masks:
            mask, changed_holes = mask_utils.remove_small_regions(
                mask, self.min_mask_region_area, "holes"
            )
            mask, changed_islands = mask_utils.remove_small_regions(
                mask, self.min_mask_region_area, "islands"
            )
            new_masks.append(mask)
            unchanged.append(not (changed_holes or changed_islands))
        boxes = np.stack([mask_utils.batched_mask_to_box(m) for m in new_masks])
        # prefer masks that needed no cleanup over their cleaned-up duplicates
        scores = np.asarray(unchanged, np.float32)
        keep = mask_utils.nms(boxes, scores, max(self.box_nms_thresh, self.crop_nms_thresh))
        data = {k: v[keep] for k, v in data.items()}
        data["boxes"] = boxes[keep]
        return [new_masks[i] for i in keep], data

    def _records(self, masks, data) -> list[dict[str, Any]]:
        records = []
        for i, mask in enumerate(masks):
            if self.output_mode == "binary_mask":
                segmentation = mask
            elif self.output_mode == "uncompressed_rle":
                segmentation = mask_utils.mask_to_rle(mask)
            else:
                segmentation = mask_utils.coco_encode_mask(mask)
            records.append(
                {
                    "segmentation": segmentation,
                    "area": int(np.count_nonzero(mask)),
                    "bbox": mask_utils.box_xyxy_to_xywh(data["boxes"][i]),
                    "predicted_iou": float(data["iou"][i]),
                    "point_coords": [data["points"][i].tolist()],
                    "stability_score": float(data["stability"][i]),
                    "crop_box": mask_utils.box_xyxy_to_xywh(data["crop_boxes"][i]),
                }
            )
        return records


def _new_stats(generator: SamAutomaticMaskGenerator) -> dict[str, Any]:
    """Counts over one `generate` call. candidates: masks decoded (3 per point, all crops);
    below_pred_iou_thresh / below_stability_score_thresh: candidates failing that filter
    (each counted on its own; 0 when the filter is off); at_crop_edge: candidates passing
    both that touch an inner crop edge; duplicates: removed by NMS within and across crops
    (and after small-region cleanup); masks: what is returned. best_predicted_iou /
    best_stability_score: the highest values among the candidates (None: no candidate)."""
    return {
        "candidates": 0,
        "below_pred_iou_thresh": 0,
        "below_stability_score_thresh": 0,
        "at_crop_edge": 0,
        "duplicates": 0,
        "masks": 0,
        "best_predicted_iou": None,
        "best_stability_score": None,
        "pred_iou_thresh": generator.pred_iou_thresh,
        "stability_score_thresh": generator.stability_score_thresh,
    }


def _count_filtered(stats, settings, iou, stability, keep) -> None:
    """Add one batch's filter counts; the comparisons repeat the device's in float32."""
    iou_thresh, use_iou, stab_thresh, use_stab, _ = settings
    iou_ok = (iou > iou_thresh) | (use_iou == 0)
    stab_ok = (stability >= stab_thresh) | (use_stab == 0)
    stats["candidates"] += int(iou.size)
    stats["below_pred_iou_thresh"] += int(np.count_nonzero(~iou_ok))
    stats["below_stability_score_thresh"] += int(np.count_nonzero(~stab_ok))
    stats["at_crop_edge"] += int(np.count_nonzero(iou_ok & stab_ok & ~keep))
    if iou.size:
        for key, values in (("best_predicted_iou", iou), ("best_stability_score", stability)):
            finite = values[np.isfinite(values)]
            if finite.size:
                best = float(finite.max())
                stats[key] = best if stats[key] is None else max(stats[key], best)


def describe_stats(stats: dict[str, Any]) -> str:
    """One line on what the filters of a `generate` call removed, e.g. `0 masks (of 48
    candidates: 48 below pred_iou_thresh=0.88 (best predicted IoU 0.41), ...)`."""
    parts = []
    if stats["below_pred_iou_thresh"]:
        best = stats["best_predicted_iou"]
        parts.append(
            f"{stats['below_pred_iou_thresh']} below pred_iou_thresh={stats['pred_iou_thresh']:g}"
            + (f" (best predicted IoU {best:.3f})" if best is not None else "")
        )
    if stats["below_stability_score_thresh"]:
        best = stats["best_stability_score"]
        parts.append(
            f"{stats['below_stability_score_thresh']} below stability_score_thresh="
            f"{stats['stability_score_thresh']:g}"
            + (f" (best stability score {best:.3f})" if best is not None else "")
        )
    if stats["at_crop_edge"]:
        parts.append(f"{stats['at_crop_edge']} at an inner crop edge")
    if stats["duplicates"]:
        parts.append(f"{stats['duplicates']} duplicates removed by NMS")
    detail = ": " + ", ".join(parts) if parts else ""
    return f"{stats['masks']} masks (of {stats['candidates']} candidates{detail})"


def _unpack(packed: np.ndarray, crop_box) -> np.ndarray:
    width = int(crop_box[2] - crop_box[0])
    return np.unpackbits(packed, axis=-1, count=width).astype(bool)


def _check_int(value, name: str, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise ValueError(f"{name} must be an integer, got {value!r}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return int(value)


def _check_float(value, name: str, lo: float | None = None, hi: float | None = None) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise ValueError(f"{name} must be a number, got {value!r}")
    value = float(value)
    if not np.isfinite(value):
        raise ValueError(f"{name} must be finite, got {value}")
    if (lo is not None and value < lo) or (hi is not None and value > hi):
        raise ValueError(f"{name} must be in [{lo}, {hi}], got {value}")
    return value


def _check_point_grids(point_grids, crop_n_layers: int) -> list[np.ndarray]:
    if isinstance(point_grids, np.ndarray) and point_grids.ndim == 2:
        raise ValueError("point_grids must be a list of (N, 2) arrays, one per crop layer")
    grids = [np.asarray(g, np.float64) for g in point_grids]
    if len(grids) < crop_n_layers + 1:
        raise ValueError(
            f"point_grids has {len(grids)} grid(s) but crop_n_layers={crop_n_layers} needs "
            f"{crop_n_layers + 1} (one per layer, the whole image first)"
        )
    for i, g in enumerate(grids):
        if g.ndim != 2 or g.shape[1] != 2 or len(g) == 0:
            raise ValueError(f"point_grids[{i}] must be (N, 2) with N >= 1, got {g.shape}")
        if not np.all(np.isfinite(g)) or g.min() < 0 or g.max() > 1:
            raise ValueError(
                f"point_grids[{i}] must hold (x, y) in [0, 1] (normalized to the crop)"
            )
    return grids
