"""Reading and decoding one example: image, instance masks, and the fixed-shape training
record (image resized and padded to the model input, sampled masks at the low-res frame).

Every problem with a single example raises `DataError` with the example's key in the
message; the pipeline turns that into a logged, counted skip.
"""

from __future__ import annotations

import dataclasses
import io
import json
import threading

import numpy as np
from PIL import Image, UnidentifiedImageError
from pycocotools import mask as mask_utils

from sam_jax.data.sources import DataError
from sam_jax.inference.transforms import get_preprocess_shape

Image.MAX_IMAGE_PIXELS = 200_000_000  # SA-1B images are large but not decompression bombs


def read_bytes(loc) -> bytes:
    kind = loc[0]
    if kind == "file":
        with open(loc[1], "rb") as f:
            return f.read()
    if kind == "tar":
        _, path, offset, size = loc
        with open(path, "rb") as f:
            f.seek(offset)
            data = f.read(size)
        if len(data) != size:
            raise DataError(f"truncated member in {path} at offset {offset}")
        return data
    if kind == "missing":
        raise DataError(f"missing file {loc[1]}")
    raise DataError(f"unreadable location {loc!r}")


def decode_image(source, where: str | None = None) -> np.ndarray:
    """(H, W, 3) uint8 RGB from an image file path or encoded bytes: the package's one image
    decoder (training data, evaluation readers, `segment`, `amg`).

    Pixel values are scaled by the stored bit depth, never by the image's own range:
    16-bit grey (PIL modes I;16, I;16B, I;16L, and I holding 0..65535) becomes
    round(v * 255 / 65535); 16-bit colour PNG/TIFF, which PIL opens as 8-bit RGB(A), keep
    the high byte (v >> 8, within one level of the same scaling); float images (mode F)
    with values in [0, 1] become round(v * 255). Images with no known white level (floats
    outside [0, 1], 32-bit integers above 65535) are refused. Palette, grey, grey+alpha,
    RGBA and CMYK images are converted to RGB (alpha is dropped, not composited). EXIF
    orientation is not applied: pixels stay as stored, which is the frame that dataset
    annotations refer to.

    Raises DataError (a ValueError) naming `where` (default: the path) and the problem.
    """
    is_path = not isinstance(source, (bytes, bytearray, memoryview))
    if where is None:
        where = str(source) if is_path else ""
    label = f" {where}" if where else ""
    try:
        with Image.open(source if is_path else io.BytesIO(source)) as im:
            im.load()
            image = _to_rgb(im, label)
    except FileNotFoundError:
        raise DataError(f"image not found: {where}") from None
    except IsADirectoryError:
        raise DataError(f"not an image file: {where} is a directory") from None
    except DataError:
        raise
    except UnidentifiedImageError:  # its message names a BytesIO object, not the file
        raise DataError(f"corrupt image{label}: not a known image format") from None
    except Exception as e:  # PIL raises many types for damaged files
        raise DataError(f"corrupt image{label}: {e}") from None
    if image.shape[0] == 0 or image.shape[1] == 0:
        raise DataError(f"empty image{label}")
    return image


def _to_rgb(im: Image.Image, label: str) -> np.ndarray:
    mode = im.mode
    if mode.startswith("I;16") or mode == "I":
        values = np.asarray(im)
        lo, hi = int(values.min()), int(values.max())
        if lo < 0 or hi > 65535:
            raise DataError(
                f"image{label} is {mode} (integer) with values in [{lo}, {hi}]: no known "
                "white level; save it with 8 or 16 bits per channel"
            )
        grey = np.round(values * (255 / 65535)).astype(np.uint8)  # float64: exact rounding
        return np.repeat(grey[:, :, None], 3, axis=2)
    if mode == "F":
        values = np.asarray(im, dtype=np.float32)
        finite = bool(np.all(np.isfinite(values)))
        lo, hi = (float(values.min()), float(values.max())) if finite else (np.nan, np.nan)
        if not finite or lo < 0.0 or hi > 1.0:
            raise DataError(
                f"image{label} is 32-bit float with values in [{lo:g}, {hi:g}]: only floats "
                "in [0, 1] have a known white level; save it with 8 or 16 bits per channel"
            )
        grey = np.round(values * 255.0).astype(np.uint8)
        return np.repeat(grey[:, :, None], 3, axis=2)
    if mode == "RGB":
        return np.asarray(im)
    if mode == "P" and "transparency" in im.info:
        im = im.convert("RGBA")  # PIL asks for palette transparency to go through RGBA
    return np.asarray(im.convert("RGB"))


def load_image(loc) -> np.ndarray:
    """(H, W, 3) uint8 RGB from a descriptor location."""
    if loc[0] == "array":
        image = np.asarray(loc[1])
        if image.ndim == 3 and image.shape[2] == 1:
            image = np.repeat(image, 3, axis=2)
        if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
            raise DataError(f"image array has shape {image.shape} dtype {image.dtype}")
        return image
    if loc[0] == "error":
        raise DataError(f"unreadable record: {loc[1]}")
    try:
        data = read_bytes(loc)
    except OSError as e:
        raise DataError(f"cannot read image {loc[1]}: {e}") from None
    return decode_image(data, str(loc[1]))


def _check_rle(rle, h: int, w: int, where: str) -> dict:
    if not isinstance(rle, dict) or "counts" not in rle or "size" not in rle:
        raise DataError(f"{where}: segmentation is not an RLE dict")
    size = [int(v) for v in rle["size"]]
    if size != [h, w]:
        raise DataError(f"{where}: RLE size {size} does not match image {h}x{w}")
    counts = rle["counts"]
    if isinstance(counts, list):  # uncompressed RLE
        if sum(counts) != h * w:
            raise DataError(f"{where}: uncompressed RLE covers {sum(counts)} pixels, not {h * w}")
        return mask_utils.frPyObjects(rle, h, w)
    if isinstance(counts, str):
        counts = counts.encode("ascii")
    if not isinstance(counts, bytes):
        raise DataError(f"{where}: RLE counts of type {type(counts).__name__}")
    return {"size": size, "counts": counts}


def segmentation_to_rle(seg, h: int, w: int, where: str) -> dict:
    """Compressed RLE of a COCO segmentation: polygons (lists of flat x0, y0, x1, y1, ...
    coordinates; shorter or odd lists are passed over), an RLE or an uncompressed RLE. The
    package's one reader of COCO segmentations (training sources and evaluation readers):
    anything else is a DataError naming `where`."""
    try:
        if isinstance(seg, list):
            polys = [
                [float(v) for v in p]
                for p in seg
                if isinstance(p, list) and len(p) >= 6 and len(p) % 2 == 0
            ]
            if not polys:
                raise DataError(f"{where}: no valid polygon")
            return mask_utils.merge(mask_utils.frPyObjects(polys, h, w))
        return _check_rle(seg, h, w, where)
    except DataError:
        raise
    except Exception as e:  # pycocotools raises plain exceptions for malformed input
        raise DataError(f"{where}: invalid segmentation: {e}") from None


def decode_segmentation(seg, h: int, w: int, where: str) -> np.ndarray:
    """(H, W) bool mask of a COCO segmentation (see `segmentation_to_rle`)."""
    rle = segmentation_to_rle(seg, h, w, where)
    try:
        return mask_utils.decode(rle).astype(bool)
    except Exception as e:
        raise DataError(f"{where}: invalid segmentation: {e}") from None


def load_rles(desc: dict, h: int, w: int) -> list[dict]:
    """Compressed RLEs of all instances of an example (image size (h, w))."""
    return load_annotations(desc, h, w)[0]


def load_annotations(desc: dict, h: int, w: int) -> tuple[list[dict], list[dict]]:
    """(RLEs, annotation records) of all instances of an example, in the same order.

    The records are the annotation objects as stored (COCO or SA-1B JSON, which may carry a
    `category` name); sources that hold bare RLEs give empty records.
    """
    loc, key = desc["annotation"], desc["key"]
    if loc[0] == "coco":
        _, ah, aw, anns = loc
        if (ah, aw) != (h, w):
            raise DataError(f"{key}: image is {h}x{w} but the annotation says {ah}x{aw}")
        rles, records = [], []
        for ann in anns:
            if "segmentation" in ann:
                where = f"{key} annotation {ann.get('id')}"
                rles.append(segmentation_to_rle(ann["segmentation"], h, w, where))
                records.append(ann)
        return rles, records
    if loc[0] == "rles":
        return [_check_rle(r, h, w, key) for r in loc[1]], [{} for _ in loc[1]]
    if loc[0] == "error":
        raise DataError(f"{key}: unreadable record: {loc[1]}")
    try:
        data = json.loads(read_bytes(loc))
    except FileNotFoundError:
        raise DataError(f"{key}: missing annotation file {loc[1]}") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise DataError(f"{key}: malformed annotation JSON {loc[1]}: {e}") from None
    if not isinstance(data, dict) or not isinstance(data.get("annotations"), list):
        raise DataError(f"{key}: annotation JSON {loc[1]} has no 'annotations' list")
    rles = []
    for i, ann in enumerate(data["annotations"]):
        if not isinstance(ann, dict) or "segmentation" not in ann:
            raise DataError(f"{key}: annotation {i} has no segmentation")
        rles.append(_check_rle(ann["segmentation"], h, w, f"{key} annotation {i}"))
    return rles, data["annotations"]


def decode_masks(rles: list[dict], key: str = "") -> np.ndarray:
    """(N, H, W) bool from compressed RLEs."""
    try:
        masks = mask_utils.decode(rles)
    except Exception as e:
        raise DataError(f"{key}: invalid RLE: {e}") from None
    return np.moveaxis(masks, -1, 0).astype(bool)


@dataclasses.dataclass(frozen=True)
class ExampleSpec:
    """What a training record looks like."""

    image_size: int = 1024  # model input side
    low_res_size: int = 256  # side of the mask logits (image_size / 4)
    max_masks: int = 64  # masks sampled per image (the paper: up to 64)
    max_area_fraction: float = 0.9  # masks covering more of the image are dropped
    min_area: int = 1  # pixels, in the original image


def prepare_example(desc: dict, rng: np.random.Generator, spec: ExampleSpec, embedder=None) -> dict:
    """Descriptor -> fixed-shape record.

    image (S, S, 3) uint8 resized so its longest side is S and zero-padded bottom/right;
    input_size (2,) its (h, w) before padding; masks (K, L, L) uint8 0/1 in the padded
    low-res frame (L = S/4), K = max_masks, sampled without replacement; mask_valid (K,).

    With an `embedder` (`sam_jax.data.mask_embeddings`) the record also holds each sampled
    mask's prompt embedding: text_embedding (K, D) float32 and text_valid (K,) bool (False
    for masks the embedder skips, e.g. below its minimum area, and for padding).
    """
    key = desc["key"]
    image = load_image(desc["image"])
    h, w = image.shape[:2]
    rles, records = load_annotations(desc, h, w)
    if not rles:
        raise DataError(f"{key}: no annotations")
    try:
        areas = mask_utils.area(rles).astype(np.int64)
    except Exception as e:
        raise DataError(f"{key}: invalid RLE: {e}") from None
    usable = np.nonzero((areas >= spec.min_area) & (areas <= spec.max_area_fraction * h * w))[0]
    if usable.size == 0:
        raise DataError(
            f"{key}: no usable mask (all empty or over {spec.max_area_fraction:.0%} of the image)"
        )
    k = min(spec.max_masks, usable.size)
    chosen = rng.choice(usable, size=k, replace=False)
    masks = decode_masks([rles[i] for i in chosen], key)

    s, low = spec.image_size, spec.low_res_size
    nh, nw = get_preprocess_shape(h, w, s)
    canvas = np.zeros((s, s, 3), np.uint8)
    canvas[:nh, :nw] = np.asarray(Image.fromarray(image).resize((nw, nh), Image.BILINEAR))
    full = np.zeros((k, s, s), np.uint8)
    for i, m in enumerate(masks):
        full[i, :nh, :nw] = np.asarray(
            Image.fromarray(m.astype(np.uint8) * 255).resize((nw, nh), Image.BILINEAR)
        )
    f = s // low
    pooled = full.reshape(k, low, f, low, f).mean(axis=(2, 4), dtype=np.float32)
    out_masks = np.zeros((spec.max_masks, low, low), np.uint8)
    out_masks[:k] = pooled >= 127.5
    valid = np.zeros(spec.max_masks, bool)
    valid[:k] = out_masks[:k].reshape(k, -1).any(axis=1)  # tiny masks can vanish at low res
    if not valid.any():
        raise DataError(f"{key}: every sampled mask vanishes at {low}x{low}")
    record = {
        "image": canvas,
        "input_size": np.array([nh, nw], np.int32),
        "masks": out_masks,
        "mask_valid": valid,
    }
    if embedder is not None:
        emb, ok = embedder(key, image, rles, records, chosen, areas)
        record["text_embedding"] = np.zeros((spec.max_masks, embedder.dim), np.float32)
        record["text_embedding"][:k] = emb
        record["text_valid"] = np.zeros(spec.max_masks, bool)
        record["text_valid"][:k] = ok & valid[:k]
    return record


class SkipCounter:
    """Thread-safe tally of examples read and skipped, keeping the first few messages.

    `max_consecutive` skips in a row (no good example between them) mean the data or the
    settings are wrong, not one bad file: `skip` then raises DataError instead of letting
    the pipeline search forever for a usable example.
    """

    def __init__(self, keep: int = 20, max_consecutive: int = 200):
        self._lock = threading.Lock()
        self.seen = 0
        self.skipped = 0
        self.consecutive = 0
        self.max_consecutive = max_consecutive
        self.messages: list[str] = []
        self._keep = keep

    def ok(self) -> None:
        with self._lock:
            self.seen += 1
            self.consecutive = 0

    def skip(self, message: str) -> None:
        with self._lock:
            self.seen += 1
            self.skipped += 1
            self.consecutive += 1
            if len(self.messages) < self._keep:
                self.messages.append(message)
            if self.consecutive >= self.max_consecutive:
                raise DataError(
                    f"the last {self.consecutive} examples were all unusable, e.g. "
                    + "; ".join(self.messages[:3])
                )
