"""Synthetic SA-1B: deterministic pictures of textured shapes with exact instance masks,
written in SA-1B's release format (`sa_N.jpg` + `sa_N.json`, COCO RLE masks, packed into
`.tar` shards or a plain directory).

The shapes cover what segmentation has to get right: many sizes, overlaps and occlusion
(masks are the visible parts), holes (rings), thin parts (bars, crosses) and textures that
differ from the background. Everything is a function of the seed.

`classes=True` draws instead pictures for text prompts: objects of named classes ("red
disk", ...; `CLASSES`), each class at most once per picture, on a grey background; each
annotation then carries its `category`. `class_embeddings` gives stand-in vectors for those
names (see there).
"""

from __future__ import annotations

import io
import json
import tarfile
import zlib
from pathlib import Path

import numpy as np
from PIL import Image
from pycocotools import mask as mask_utils

SHAPES = ("disk", "ring", "rectangle", "triangle", "bar", "cross")
CLASS_COLOURS = {
    "red": (205, 45, 40),
    "green": (45, 165, 65),
    "blue": (45, 80, 215),
    "yellow": (230, 205, 45),
}
CLASS_SHAPES = ("disk", "rectangle", "triangle", "cross")
CLASSES = tuple(f"{c} {s}" for c in CLASS_COLOURS for s in CLASS_SHAPES)


def _shape_window(kind: str, h: int, w: int, rng: np.random.Generator):
    """A random shape: (row slice, column slice, bool mask of that window)."""
    size = rng.uniform(0.06, 0.35) * min(h, w)
    cy, cx = rng.uniform(0.1, 0.9) * h, rng.uniform(0.1, 0.9) * w
    angle = rng.uniform(0, np.pi)
    extra = rng.uniform(0.0, 1.0)  # the one free proportion each kind has
    half = int(np.ceil(1.6 * size)) + 2  # every kind fits within 1.5 * size of its centre
    y0, y1 = max(0, int(cy) - half), min(h, int(cy) + half + 1)
    x0, x1 = max(0, int(cx) - half), min(w, int(cx) + half + 1)
    yy, xx = np.mgrid[y0:y1, x0:x1].astype(np.float32)
    ca, sa = np.cos(angle), np.sin(angle)
    u = (xx - cx) * ca + (yy - cy) * sa
    v = -(xx - cx) * sa + (yy - cy) * ca
    r = np.hypot(xx - cx, yy - cy)
    if kind == "disk":
        mask = r < size
    elif kind == "ring":
        mask = (r < size) & (r > size * (0.4 + 0.3 * extra))
    elif kind == "rectangle":
        mask = (abs(u) < size) & (abs(v) < size * (0.3 + 0.7 * extra))
    elif kind == "triangle":
        mask = (v > -size / 2) & (v < size - 1.7 * abs(u))
    elif kind == "bar":
        mask = (abs(u) < size * 1.5) & (abs(v) < max(2.0, size * (0.05 + 0.1 * extra)))
    elif kind == "cross":
        t = max(2.0, size * 0.2)
        mask = ((abs(u) < size) & (abs(v) < t)) | ((abs(v) < size) & (abs(u) < t))
    else:
        raise ValueError(f"unknown shape {kind!r}")
    return slice(y0, y1), slice(x0, x1), mask


def _texture(rows: slice, cols: slice, rng: np.random.Generator) -> np.ndarray:
    """A colour with stripes or noise over an image window, (h, w, 3) float."""
    base = rng.uniform(20, 235, 3)
    yy, xx = np.mgrid[rows, cols].astype(np.float32)
    if rng.random() < 0.5:
        freq, angle = rng.uniform(0.05, 0.3), rng.uniform(0, np.pi)
        wave = np.sin(freq * (xx * np.cos(angle) + yy * np.sin(angle)))[..., None]
        return base + rng.uniform(10, 35) * wave
    return base + rng.normal(0, rng.uniform(3, 15), (*yy.shape, 3))


# Pictures drawn for evaluation come from a stream of their own: their random generator's
# key is one word longer than any training picture's, so no seed and index make a
# held-out picture equal to a training picture.
HELD_OUT_STREAM = 2


def _rng(key: list[int], held_out: bool) -> np.random.Generator:
    return np.random.default_rng(key + [HELD_OUT_STREAM] if held_out else key)


def make_class_example(
    index: int,
    seed: int = 0,
    size: tuple[int, int] = (256, 320),
    max_objects: int = 4,
    held_out: bool = False,
) -> tuple[np.ndarray, list[np.ndarray], list[str]]:
    """Image (H, W, 3) uint8, visible instance masks and their class names (`CLASSES`):
    2..max_objects objects of distinct classes, plain colours with mild noise, on a grey
    textured background. held_out: from the evaluation stream (`HELD_OUT_STREAM`)."""
    rng = _rng([seed, index, 1], held_out)
    h, w = size
    grey = rng.uniform(70, 180)
    image = grey + rng.normal(0, 6, (h, w, 1)) + np.zeros((h, w, 3))
    owner = np.full((h, w), -1, np.int32)
    n = int(rng.integers(2, max(2, min(max_objects, len(CLASSES))) + 1))
    names = [CLASSES[i] for i in rng.choice(len(CLASSES), n, replace=False)]
    for i, name in enumerate(names):
        colour, shape = name.split(" ")
        rows, cols, mask = _shape_window(shape, h, w, rng)
        texture = np.asarray(CLASS_COLOURS[colour], np.float64) + rng.normal(0, 8, (*mask.shape, 3))
        image[rows, cols][mask] = texture[mask]
        owner[rows, cols][mask] = i
    kept = [(owner == i, name) for i, name in enumerate(names) if (owner == i).sum() >= 16]
    return (
        image.round().clip(0, 255).astype(np.uint8),
        [m for m, _ in kept],
        [name for _, name in kept],
    )


def class_embeddings(dim: int, seed: int = 0) -> dict[str, np.ndarray]:
    """Stand-in "CLIP" vectors for `CLASSES`: unit(colour vector + shape vector), one random
    Gaussian vector per colour word and per shape word.

    No trained CLIP can be used here, so these play both of its parts: the text embedding of
    a class name and (with per-mask noise, see `CategoryEmbedder`) the image embedding of a
    crop of an object of that class. Like CLIP's space they are aligned across the two and
    compositional: "red disk" is near "red cross" and near "blue disk".
    """

    def word(w: str) -> np.ndarray:
        return np.random.default_rng([seed, zlib.crc32(w.encode())]).standard_normal(dim)

    out = {}
    for name in CLASSES:
        colour, shape = name.split(" ")
        v = word(colour) + word(shape)
        out[name] = (v / np.linalg.norm(v)).astype(np.float32)
    return out


def make_example(
    index: int,
    seed: int = 0,
    size: tuple[int, int] = (256, 320),
    max_objects: int = 8,
    held_out: bool = False,
) -> tuple[np.ndarray, list[np.ndarray]]:
    """Image (H, W, 3) uint8 and the visible instance masks (each (H, W) bool, non-empty).
    held_out: from the evaluation stream (`HELD_OUT_STREAM`)."""
    rng = _rng([seed, index], held_out)
    h, w = size
    image = _texture(slice(0, h), slice(0, w), rng)
    owner = np.full((h, w), -1, np.int32)
    n = int(rng.integers(2, max_objects + 1))
    for i in range(n):
        rows, cols, mask = _shape_window(SHAPES[int(rng.integers(len(SHAPES)))], h, w, rng)
        image[rows, cols][mask] = _texture(rows, cols, rng)[mask]
        owner[rows, cols][mask] = i  # later shapes occlude earlier ones
    masks = [owner == i for i in range(n)]
    masks = [m for m in masks if m.sum() >= 16]
    return image.round().clip(0, 255).astype(np.uint8), masks


def make_picture(
    index: int,
    seed: int = 0,
    size: tuple[int, int] = (256, 320),
    max_objects: int = 8,
    classes: bool = False,
    held_out: bool = False,
) -> tuple[np.ndarray, list[np.ndarray], list[str] | None]:
    """One picture of either kind -> (image, masks, class names or None): `make_example`,
    or `make_class_example` with classes=True."""
    if classes:
        return make_class_example(index, seed, size, max_objects, held_out)
    return (*make_example(index, seed, size, max_objects, held_out), None)


def sa1b_annotation(
    image_id: int, h: int, w: int, masks: list[np.ndarray], categories: list[str] | None = None
) -> dict:
    """The SA-1B JSON record for one image (with each mask's `category` when given)."""
    anns = []
    for i, m in enumerate(masks):
        rle = mask_utils.encode(np.asfortranarray(m.astype(np.uint8)))
        ys, xs = np.nonzero(m)
        k = len(ys) // 2
        anns.append(
            {
                "id": image_id * 1000 + i,
                "segmentation": {"size": [h, w], "counts": rle["counts"].decode("ascii")},
                "bbox": [
                    float(xs.min()),
                    float(ys.min()),
                    float(xs.max() - xs.min() + 1),
                    float(ys.max() - ys.min() + 1),
                ],
                "area": int(m.sum()),
                "predicted_iou": 1.0,
                "stability_score": 1.0,
                "crop_box": [0.0, 0.0, float(w), float(h)],
                "point_coords": [[float(xs[k]), float(ys[k])]],
            }
        )
        if categories is not None:
            anns[-1]["category"] = categories[i]
    return {
        "image": {"image_id": image_id, "width": w, "height": h, "file_name": f"sa_{image_id}.jpg"},
        "annotations": anns,
    }


def _encode_jpeg(image: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="JPEG", quality=92)
    return buf.getvalue()


def _example_files(
    image_id: int, seed: int, size, max_objects: int, classes: bool = False
) -> dict[str, bytes]:
    image, masks, names = make_picture(image_id, seed, size, max_objects, classes)
    record = sa1b_annotation(image_id, *size, masks, names)
    return {
        f"sa_{image_id}.jpg": _encode_jpeg(image),
        f"sa_{image_id}.json": json.dumps(record).encode(),
    }


def _write_part(
    out: Path, ids: list[int], shard: int | None, seed, size, max_objects, classes=False
):
    """Write the examples `ids` as loose files (shard None) or as `sa_{shard:06d}.tar`."""
    if shard is None:
        written = []
        for image_id in ids:
            for name, data in _example_files(image_id, seed, size, max_objects, classes).items():
                (out / name).write_bytes(data)
                written.append(out / name)
        return written
    path = out / f"sa_{shard:06d}.tar"
    tmp = path.with_suffix(".tar.tmp")
    with tarfile.open(tmp, "w") as tar:
        for image_id in ids:
            for name, data in _example_files(image_id, seed, size, max_objects, classes).items():
                info = tarfile.TarInfo(name)
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    tmp.replace(path)  # a shard is complete or absent
    return [path]


def write_sa1b(
    output_dir,
    num_images: int,
    seed: int = 0,
    size: tuple[int, int] = (256, 320),
    images_per_shard: int | None = 16,
    first_id: int = 1,
    max_objects: int = 8,
    num_workers: int = 1,
    classes: bool = False,
) -> list[Path]:
    """Write `num_images` synthetic SA-1B examples.

    images_per_shard=None writes loose `sa_N.jpg`/`sa_N.json` files into output_dir;
    otherwise `sa_000000.tar`, `sa_000001.tar`, ... each holding that many pairs (as the
    released shards do). num_workers > 1 writes shards (or groups of loose files) in that
    many processes; every example is a function of (seed, id), so the files are the same.
    classes=True writes `make_class_example` pictures (text-prompt training), each
    annotation with its `category`. Returns the written paths.
    """
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    ids = list(range(first_id, first_id + num_images))
    per_part = images_per_shard or max(1, -(-num_images // (4 * max(1, num_workers))))
    parts = [
        (ids[i : i + per_part], None if images_per_shard is None else i // per_part)
        for i in range(0, num_images, per_part)
    ]
    args = [(out, part, shard, seed, tuple(size), max_objects, classes) for part, shard in parts]
    if num_workers > 1 and len(parts) > 1:
        import concurrent.futures
        import multiprocessing

        # spawn: the caller may hold JAX's threads, which a fork would copy mid-flight.
        ctx = multiprocessing.get_context("spawn")
        with concurrent.futures.ProcessPoolExecutor(num_workers, mp_context=ctx) as pool:
            results = list(pool.map(_write_part, *zip(*args)))
    else:
        results = [_write_part(*a) for a in args]
    return [path for written in results for path in written]


def write_coco(
    annotation_file,
    image_dir,
    num_images: int,
    seed: int = 0,
    size: tuple[int, int] = (256, 320),
    max_objects: int = 8,
    classes: bool = False,
    first_id: int = 1,
) -> tuple[int, int]:
    """Write synthetic pictures as a COCO instance-segmentation set: JPEGs in `image_dir`
    and one JSON with RLE masks -> (number of images, number of annotations).

    Plain pictures get a single category "shape"; classes=True writes `make_class_example`
    pictures with one category per class name in `CLASSES`.
    """
    image_dir = Path(image_dir)
    image_dir.mkdir(parents=True, exist_ok=True)
    names = list(CLASSES) if classes else ["shape"]
    category_id = {name: i + 1 for i, name in enumerate(names)}
    images, annotations = [], []
    for image_id in range(first_id, first_id + num_images):
        image, masks, labels = make_picture(image_id, seed, size, max_objects, classes)
        labels = labels or ["shape"] * len(masks)
        h, w = image.shape[:2]
        file_name = f"{image_id:06d}.jpg"
        (image_dir / file_name).write_bytes(_encode_jpeg(image))
        images.append({"id": image_id, "file_name": file_name, "height": h, "width": w})
        for mask, label in zip(masks, labels, strict=True):
            rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": image_id,
                    "category_id": category_id[label],
                    "segmentation": {"size": [h, w], "counts": rle["counts"].decode("ascii")},
                    "area": int(mask.sum()),
                    "bbox": [float(v) for v in mask_utils.toBbox(rle)],
                    "iscrowd": 0,
                }
            )
    coco = {
        "images": images,
        "annotations": annotations,
        "categories": [{"id": i, "name": name} for name, i in category_id.items()],
    }
    path = Path(annotation_file)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(coco))
    tmp.replace(path)
    return len(images), len(annotations)
