"""Readers of the annotation formats used by the evaluation datasets, shared between datasets.

Every reader turns a release layout into a `Dataset`: a list of `Sample`s, one per image.
Indexing only lists files (and parses an annotation JSON where the format has one);
reading an image or its masks happens in `Sample.read_image` / `Sample.read_masks`, and a
problem there raises `DataError`, which the runner counts as a skipped image. A single bad
annotation (an invalid polygon, an empty mask) is reported in `Annotations.problems` and
skipped on its own.

Formats:
- `coco_json`: COCO instance JSON (polygons, RLE, uncompressed RLE), also LVIS (images
  found by `coco_url`) - TimberSeg, LVIS, ZeroWaste-f, NDISPark, PIDRay, Plittersdorf,
  TrashCan, and `coco:ANN_JSON:IMAGE_DIR`.
- `label_maps` with a decoder: one label image per image, one mask per label value -
  instance-id PNGs (PPDLS, iShape, EgoHOS, IBD, GTEA's hand labels, DRAM's classes),
  Cityscapes `instanceIds` (panoptic segments), ADE20K full-release `_seg.png` /
  `_parts_N.png`, Hypersim `semantic_instance.hdf5`.
- `mask_files`: one binary PNG per instance (BBBC038v1; DOORS has one per image).
- `youtube_vis_json`: video instance JSON with per-frame RLEs (OVIS).
- `visor_json`: EPIC-KITCHENS VISOR per-video JSONs with polygon segments.
- `via_json`: VGG Image Annotator polygon JSON (NDD20, STREETS).
- `woodscape_json`: WoodScape per-image polygon JSONs.
- `sa1b`: SA-1B `sa_N.jpg` + `sa_N.json` (directory or `.tar` shards).
- `synthetic`: pictures from `sam_jax.data.synthetic`, generated on the fly.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import re
import zipfile
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from sam_jax.data.decode import decode_image, decode_segmentation
from sam_jax.data.sources import DataError

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff")


@dataclasses.dataclass
class Annotations:
    """The instance masks of one image: (annotation id, (H, W) bool mask) pairs, and a
    description of every annotation that could not be used."""

    instances: list[tuple[str, np.ndarray]]
    problems: list[str] = dataclasses.field(default_factory=list)


@dataclasses.dataclass
class Sample:
    """One image of a dataset, read lazily.

    num_masks: the number of annotations when the index knows it without decoding (used
    for subsampling); None where counting needs `read_masks`.
    """

    image_id: str
    read_image: Callable[[], np.ndarray]
    read_masks: Callable[[], Annotations]
    num_masks: int | None = None

    def count_masks(self) -> int:
        if self.num_masks is None:
            self.num_masks = len(self.read_masks().instances)
        return self.num_masks


@dataclasses.dataclass
class Dataset:
    """Samples of one dataset plus what indexing had to leave out (missing files, broken
    index entries): counted as skipped in the results."""

    name: str
    samples: list[Sample]
    skipped: int = 0
    problems: list[str] = dataclasses.field(default_factory=list)
    layout: str = ""  # the release layout the reader recognised, for the inventory

    def skip(self, message: str) -> None:
        self.skipped += 1
        if len(self.problems) < 20:
            self.problems.append(message)
        log.warning("%s: %s", self.name, message)


# --------------------------------------------------------------------------- basic IO
def read_rgb(path) -> np.ndarray:
    """(H, W, 3) uint8 RGB from an image file, by the package's one image decoder
    (`decode_image`: grey, palette, RGBA converted; 16-bit scaled by its bit depth)."""
    return decode_image(path)


def read_rgb_bytes(data: bytes, where: str) -> np.ndarray:
    return decode_image(data, where)


def read_label(path) -> np.ndarray:
    """A label image as stored: palette indices for 'P' images, 16-bit values for 'I;16',
    (H, W, C) for RGB(A)."""
    try:
        with Image.open(path) as im:
            im.load()
            if im.mode == "RGBA":
                im = im.convert("RGB")
            return np.asarray(im)
    except FileNotFoundError:
        raise DataError(f"missing label file {path}") from None
    except Exception as e:
        raise DataError(f"unreadable label file {path}: {e}") from None


def image_size(path) -> tuple[int, int]:
    """(height, width) from the image header, without decoding the pixels."""
    try:
        with Image.open(path) as im:
            w, h = im.size
    except FileNotFoundError:
        raise DataError(f"missing image {path}") from None
    except Exception as e:
        raise DataError(f"unreadable image {path}: {e}") from None
    return h, w


def read_json(path):
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except FileNotFoundError:
        raise DataError(f"missing annotation file {path}") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise DataError(f"malformed JSON {path}: {e}") from None


def _check_shape(mask: np.ndarray, shape: tuple[int, int], where: str) -> None:
    if mask.shape[:2] != tuple(shape):
        raise DataError(f"{where}: annotation is {mask.shape[:2]} but the image is {shape}")


def _keep_nonempty(pairs: Iterable[tuple[str, np.ndarray]], problems: list[str], where: str):
    out = []
    for ann_id, mask in pairs:
        if not mask.any():
            problems.append(f"{where}: annotation {ann_id} is empty")
            continue
        out.append((str(ann_id), mask))
    return out


class _FileIndex:
    """Image files under a root by base name, built on first use (for releases whose JSON
    names images by a path that does not match the extracted layout)."""

    def __init__(self, root: Path):
        self.root = root
        self._by_name: dict[str, Path] | None = None

    def find(self, name: str) -> Path | None:
        if self._by_name is None:
            self._by_name = {}
            for dirpath, _, files in os.walk(self.root):
                for f in files:
                    if f.lower().endswith(IMAGE_EXTENSIONS):
                        self._by_name.setdefault(f, Path(dirpath) / f)
        return self._by_name.get(os.path.basename(name))


# ------------------------------------------------------------------- COCO / LVIS JSON
def _is_coco(data) -> bool:
    return (
        isinstance(data, dict)
        and isinstance(data.get("images"), list)
        and isinstance(data.get("annotations"), list)
    )


def coco_json(
    name: str,
    annotation_files: Sequence[Path],
    image_root: Path | Sequence[Path],
    include_crowd: bool = False,
    id_prefix: bool | None = None,
    other_json_ok: bool = False,
    unique_file_names: bool = False,
) -> Dataset:
    """COCO-format instance annotations (also LVIS, whose image entries may only carry a
    `coco_url`). Images are looked up as `image_root/file_name`, then by base name anywhere
    under the image root(s). Crowd regions are left out: they are not single objects.

    other_json_ok: the files were found by a broad glob, so a JSON that is not COCO
    (release metadata) is passed over instead of counted as skipped.
    unique_file_names: the files are splits of one release that may list the same picture
    more than once (with ids that restart per file): each file name is read once, from
    the first file that has it, and names the sample.
    """
    roots = [Path(image_root)] if isinstance(image_root, (str, Path)) else list(image_root)
    dataset = Dataset(name, [])
    indexes = [_FileIndex(r) for r in roots]
    loaded = []
    for ann_file in annotation_files:
        try:
            data = read_json(ann_file)
        except DataError as e:
            dataset.skip(str(e))
            continue
        if not _is_coco(data):
            if other_json_ok:
                log.info("%s: %s is not COCO instance JSON; passed over", name, ann_file)
            else:
                dataset.skip(
                    f"{ann_file} is not COCO instance JSON (needs 'images', 'annotations')"
                )
            continue
        loaded.append((ann_file, data))
    if id_prefix is None:
        id_prefix = len(loaded) > 1 and not unique_file_names
    seen_files: set[str] = set()
    for ann_file, data in loaded:
        by_image: dict = {}
        for ann in data["annotations"]:
            if not isinstance(ann, dict) or "image_id" not in ann:
                dataset.skip(f"{ann_file}: malformed annotation entry")
                continue
            if ann.get("iscrowd", 0) and not include_crowd:
                continue
            by_image.setdefault(ann["image_id"], []).append(ann)
        for img in data["images"]:
            try:
                image_id = img["id"]
                names = image_file_names(img)
                file_name = names[0]
                h, w = int(img["height"]), int(img["width"])
            except (KeyError, TypeError, ValueError, AttributeError):
                dataset.skip(f"{ann_file}: malformed image entry {img!r:.200}")
                continue
            anns = by_image.get(image_id)
            if not anns:
                continue
            if unique_file_names:
                if file_name in seen_files:
                    continue
                seen_files.add(file_name)
                key = os.path.splitext(file_name)[0]
            else:
                key = f"{Path(ann_file).stem}/{image_id}" if id_prefix else str(image_id)
            dataset.samples.append(
                Sample(
                    image_id=key,
                    read_image=_coco_image_reader(roots, indexes, names),
                    read_masks=_coco_masks_reader(anns, h, w, key),
                    num_masks=len(anns),
                )
            )
    return dataset


def image_file_names(img: dict) -> list[str]:
    """Where a COCO-style image entry's picture may be, most specific first.

    LVIS v0.5 lists COCO-2014 names (`COCO_val2014_000000001268.jpg`) beside a `coco_url`
    into COCO 2017 (`.../val2017/000000001268.jpg`), which is what is on disk; LVIS v1 has
    only the URL (detectron2's datasets/lvis.py reads `coco_url`'s last two parts the same
    way). Other sets name the picture in `file_name`, sometimes under a folder prefix.
    """
    names = []
    url = img.get("coco_url")
    if isinstance(url, str) and url:
        parts = url.rstrip("/").split("/")
        names += ["/".join(parts[-2:]), parts[-1]]
    file_name = img.get("file_name")
    if isinstance(file_name, str) and file_name:
        base = os.path.basename(file_name)
        if re.fullmatch(r"COCO_[a-z]+2014_\d{12}\.\w+", base):
            names.append(base[-16:])
        names.append(file_name)
    if not names:
        raise KeyError("file_name")
    return list(dict.fromkeys(names))


def _coco_image_reader(roots, indexes, names):
    def read():
        for name in names:
            for root in roots:
                path = root / name
                if path.is_file():
                    return read_rgb(path)
        for name in names:
            for index in indexes:
                path = index.find(name)
                if path is not None:
                    return read_rgb(path)
        raise DataError(f"image {names[-1]} not found under {', '.join(map(str, roots))}")

    return read


_INDEXES: dict[Path, _FileIndex] = {}


def coco_image(img: dict, roots: Sequence[Path]) -> np.ndarray:
    """The picture of a COCO-style image entry, looked up under `roots` as `coco_json`
    does (DataError when it is missing or unreadable)."""
    roots = [Path(r) for r in roots]
    indexes = [_INDEXES.setdefault(r, _FileIndex(r)) for r in roots]
    try:
        names = image_file_names(img)
    except KeyError:
        raise DataError(
            f"image entry {img.get('id')!r} has neither file_name nor coco_url"
        ) from None
    return _coco_image_reader(roots, indexes, names)()


def _coco_masks_reader(anns, h, w, key):
    def read():
        problems, pairs = [], []
        for ann in anns:
            where = f"{key} annotation {ann.get('id')}"
            if "segmentation" not in ann:
                problems.append(f"{where}: no segmentation")
                continue
            try:
                pairs.append((ann.get("id"), decode_segmentation(ann["segmentation"], h, w, where)))
            except DataError as e:
                problems.append(str(e))
        return Annotations(_keep_nonempty(pairs, problems, key), problems)

    return read


def find_coco_files(root: Path, patterns: Sequence[str]) -> list[Path]:
    """COCO JSONs under root matching the first glob pattern that matches anything."""
    for pattern in patterns:
        found = sorted(p for p in root.glob(pattern) if p.is_file())
        if found:
            return found
    return []


# ------------------------------------------------------------------------ label maps
def instance_ids(label: np.ndarray, background: Sequence[int] = (0,)):
    """One mask per distinct value of a label image (palette index, gray or 16-bit value,
    or RGB colour), leaving out `background` values (for RGB, black)."""
    if label.ndim == 3:
        flat = (
            label[..., 0].astype(np.int64) << 16
            | label[..., 1].astype(np.int64) << 8
            | label[..., 2].astype(np.int64)
        )
    else:
        flat = label.astype(np.int64)
    values = np.unique(flat)
    for v in values:
        if int(v) in background:
            continue
        yield str(int(v)), flat == v


def label_maps(
    name: str,
    items: Sequence[tuple[str, Path, object]],
    decode: Callable[[object, tuple[int, int]], Iterable[tuple[str, np.ndarray]]],
    image_reader: Callable[[Path], np.ndarray] = read_rgb,
) -> Dataset:
    """Datasets with one label file per image. items: (image id, image path, label source);
    decode(label source, (h, w)) yields (annotation id, mask) pairs."""
    dataset = Dataset(name, [])
    for image_id, image_path, label_src in items:
        dataset.samples.append(
            Sample(
                image_id=image_id,
                read_image=_path_reader(image_reader, image_path),
                read_masks=_label_masks_reader(image_path, label_src, decode, image_id),
            )
        )
    return dataset


def _path_reader(reader, path):
    return lambda: reader(path)


def _label_masks_reader(image_path, label_src, decode, image_id):
    def read():
        shape = image_size(image_path)
        problems: list[str] = []
        pairs = []
        for ann_id, mask in decode(label_src, shape):
            _check_shape(mask, shape, image_id)
            pairs.append((ann_id, mask))
        return Annotations(_keep_nonempty(pairs, problems, image_id), problems)

    return read


def decode_instance_png(background: Sequence[int] = (0,)):
    def decode(path, shape):
        return instance_ids(read_label(path), background)

    return decode


# Cityscapes panoptic: the 19 evaluated classes (labelIds); things carry instances.
CITYSCAPES_STUFF = (7, 8, 11, 12, 13, 17, 19, 20, 21, 22, 23)
CITYSCAPES_THINGS = (24, 25, 26, 27, 28, 31, 32, 33)


def decode_cityscapes_panoptic(path, shape):
    """Panoptic segments from `*_gtFine_instanceIds.png`: each thing instance (value
    class * 1000 + k) and one segment per evaluated stuff class. Void classes, classes
    ignored in evaluation and thing regions without instance ids (crowds) are left out,
    as in cityscapesScripts' panoptic conversion."""
    ids = read_label(path).astype(np.int64)
    if ids.ndim == 3:
        raise DataError(f"{path}: expected a single-channel instanceIds image")
    for v in np.unique(ids):
        v = int(v)
        if v >= 1000 and v // 1000 in CITYSCAPES_THINGS:
            yield str(v), ids == v
        elif v in CITYSCAPES_STUFF:
            yield str(v), ids == v


def _ade_instances(path, prefix):
    seg = read_label(path)
    if seg.ndim != 3:
        raise DataError(f"{path}: expected an RGB ADE20K segmentation image")
    # ADE20K toolkit: class = R / 10 * 256 + G, instance = B.
    cls = (seg[..., 0].astype(np.int64) // 10) * 256 + seg[..., 1].astype(np.int64)
    inst = seg[..., 2].astype(np.int64)
    key = np.where(cls > 0, cls * 256 + inst, -1)
    for v in np.unique(key):
        if v < 0:
            continue
        yield f"{prefix}:{int(v) // 256}:{int(v) % 256}", key == v


def decode_ade20k(seg_path: Path, shape):
    """Object instances from `*_seg.png` and part instances from every `*_parts_N.png`."""
    yield from _ade_instances(seg_path, "object")
    level = 1
    while True:
        part = seg_path.with_name(seg_path.name.replace("_seg.png", f"_parts_{level}.png"))
        if not part.is_file():
            break
        yield from _ade_instances(part, f"part{level}")
        level += 1


def decode_hypersim(path, shape):
    """Instances of a Hypersim `frame.NNNN.semantic_instance.hdf5` (-1 = unlabeled)."""
    import h5py

    try:
        with h5py.File(path, "r") as f:
            ids = np.asarray(f["dataset"])
    except FileNotFoundError:
        raise DataError(f"missing label file {path}") from None
    except Exception as e:
        raise DataError(f"unreadable HDF5 {path}: {e}") from None
    if ids.ndim != 2:
        raise DataError(f"{path}: expected a 2-D instance map, got shape {ids.shape}")
    for v in np.unique(ids):
        if v >= 0:
            yield str(int(v)), ids == v


def paired_label_maps(
    name: str,
    images: Iterable[Path],
    label_for: Callable[[Path], Path],
    root: Path,
    decode: Callable[[object, tuple[int, int]], Iterable[tuple[str, np.ndarray]]],
    layout: str = "",
) -> Dataset:
    """`label_maps` over the images whose label file exists (`pair_by_stem`); each image
    without one is a skip of the index, named."""
    items, missing = pair_by_stem(images, label_for, root)
    dataset = label_maps(name, items, decode)
    dataset.layout = layout
    for message in missing:
        dataset.skip(message)
    return dataset


def pair_by_stem(
    images: Iterable[Path], label_for: Callable[[Path], Path], root: Path
) -> tuple[list[tuple[str, Path, Path]], list[str]]:
    """(image id, image, label) for images whose label file exists, and the image paths
    without one."""
    items, missing = [], []
    for image in sorted(images):
        label = label_for(image)
        if label.is_file():
            items.append((str(image.relative_to(root).with_suffix("")), image, label))
        else:
            missing.append(f"no label file {label} for {image}")
    return items, missing


# ----------------------------------------------------------------- per-instance masks
def mask_files(
    name: str, items: Sequence[tuple[str, Path, Sequence[Path]]], threshold: int = 127
) -> Dataset:
    """One binary PNG per instance. items: (image id, image path, mask paths); a mask is
    the pixels above `threshold`."""
    dataset = Dataset(name, [])
    for image_id, image_path, paths in items:
        dataset.samples.append(
            Sample(
                image_id=image_id,
                read_image=_path_reader(read_rgb, image_path),
                read_masks=_mask_files_reader(image_path, list(paths), threshold, image_id),
                num_masks=len(paths),
            )
        )
    return dataset


def _mask_files_reader(image_path, paths, threshold, image_id):
    def read():
        shape = image_size(image_path)
        pairs, problems = [], []
        for p in paths:
            try:
                label = read_label(p)
            except DataError as e:
                problems.append(str(e))
                continue
            if label.ndim == 3:
                label = label.max(axis=2)
            mask = label > threshold
            if mask.shape != shape:
                problems.append(f"{p}: mask is {mask.shape} but the image is {shape}")
                continue
            pairs.append((Path(p).stem, mask))
        return Annotations(_keep_nonempty(pairs, problems, image_id), problems)

    return read


# -------------------------------------------------------------------- video formats
def youtube_vis_json(name: str, annotation_file: Path, frames_root: Path) -> Dataset:
    """YouTube-VIS style video instance JSON (OVIS): `videos[].file_names` lists the
    frames, `annotations[].segmentations[t]` the instance's RLE in frame t (null when
    absent). Every frame with at least one instance is an image."""
    dataset = Dataset(name, [])
    try:
        data = read_json(annotation_file)
    except DataError as e:
        dataset.skip(str(e))
        return dataset
    if not isinstance(data, dict) or not isinstance(data.get("videos"), list):
        dataset.skip(f"{annotation_file} is not video instance JSON (needs 'videos')")
        return dataset
    by_video: dict = {}
    for ann in data.get("annotations") or []:
        if isinstance(ann, dict) and "video_id" in ann and not ann.get("iscrowd", 0):
            by_video.setdefault(ann["video_id"], []).append(ann)
    for video in data["videos"]:
        try:
            vid, files = video["id"], list(video["file_names"])
            h, w = int(video["height"]), int(video["width"])
        except (KeyError, TypeError, ValueError):
            dataset.skip(f"{annotation_file}: malformed video entry {video!r:.200}")
            continue
        anns = by_video.get(vid, [])
        for t, file_name in enumerate(files):
            frame = []
            for ann in anns:
                segs = ann.get("segmentations") or []
                if t < len(segs) and segs[t]:
                    frame.append({"id": f"{ann.get('id')}", "segmentation": segs[t]})
            if not frame:
                continue
            dataset.samples.append(
                Sample(
                    image_id=str(file_name),
                    read_image=_path_reader(read_rgb, frames_root / file_name),
                    read_masks=_coco_masks_reader(frame, h, w, str(file_name)),
                    num_masks=len(frame),
                )
            )
    return dataset


def polygons_to_mask(polygons: Sequence[Sequence[Sequence[float]]], h: int, w: int, where: str):
    """Union of polygons given as lists of (x, y) points (VIA, VISOR, WoodScape)."""
    flat = [[float(v) for xy in poly for v in xy[:2]] for poly in polygons]
    flat = [p for p in flat if len(p) >= 6]
    if not flat:
        raise DataError(f"{where}: no polygon with 3 or more points")
    return decode_segmentation(flat, h, w, where)


def _visor_frame_reader(frames_root: Path, video: str, image_path: str):
    """Frames extracted (`<root>/<Pxx>/<video>/<name>` or `<root>/<video>/<name>`) or
    still inside the released per-video zip (`<root>/<Pxx>/<video>.zip`)."""
    name = os.path.basename(image_path)
    participant = video.split("_")[0]

    def read():
        for p in (
            frames_root / participant / video / name,
            frames_root / video / name,
            frames_root / image_path,
        ):
            if p.is_file():
                return read_rgb(p)
        for z in (frames_root / participant / f"{video}.zip", frames_root / f"{video}.zip"):
            if z.is_file():
                try:
                    with zipfile.ZipFile(z) as zf:
                        member = next(
                            (m for m in zf.namelist() if os.path.basename(m) == name), None
                        )
                        if member is None:
                            raise DataError(f"{name} not in {z}")
                        return read_rgb_bytes(zf.read(member), f"{z}:{member}")
                except (OSError, zipfile.BadZipFile) as e:
                    raise DataError(f"unreadable zip {z}: {e}") from None
        raise DataError(f"frame {image_path} not found under {frames_root}")

    return read


def visor_json(name: str, annotation_files: Sequence[Path], frames_root: Path) -> Dataset:
    """VISOR sparse annotations: per-video JSON `{"video_annotations": [{"image": {"name",
    "video", "image_path"}, "annotations": [{"id", "name", "segments": [[[x, y], ...],
    ...]}]}]}`; one mask per annotation (union of its segments)."""
    dataset = Dataset(name, [])
    for ann_file in annotation_files:
        try:
            data = read_json(ann_file)
            frames = data["video_annotations"]
        except DataError as e:
            dataset.skip(str(e))
            continue
        except (KeyError, TypeError):
            dataset.skip(f"{ann_file} has no 'video_annotations' list")
            continue
        for entry in frames:
            try:
                info = entry["image"]
                image_name = info["name"]
                video = info.get("video") or "_".join(image_name.split("_")[:2])
                image_path = info.get("image_path") or f"{video}/{image_name}"
                anns = [a for a in entry.get("annotations", []) if isinstance(a, dict)]
            except (KeyError, TypeError, AttributeError):
                dataset.skip(f"{ann_file}: malformed frame entry {entry!r:.200}")
                continue
            if not anns:
                continue
            read_image = _visor_frame_reader(frames_root, video, image_path)
            dataset.samples.append(
                Sample(
                    image_id=os.path.splitext(image_name)[0],
                    read_image=read_image,
                    read_masks=_polygon_masks_reader(
                        read_image,
                        [(a.get("id"), a.get("segments")) for a in anns],
                        image_name,
                    ),
                    num_masks=len(anns),
                )
            )
    return dataset


def _polygon_masks_reader(size_source, polygons, key):
    """size_source: an image path (header read) or the image reader itself (frames in
    zips); polygons: (annotation id, list of [(x, y), ...])."""

    def read():
        if callable(size_source):
            h, w = size_source().shape[:2]
        else:
            h, w = image_size(size_source)
        pairs, problems = [], []
        for ann_id, polys in polygons:
            where = f"{key} annotation {ann_id}"
            try:
                pairs.append((ann_id, polygons_to_mask(polys or [], h, w, where)))
            except DataError as e:
                problems.append(str(e))
        return Annotations(_keep_nonempty(pairs, problems, key), problems)

    return read


# ------------------------------------------------------------------- polygon JSONs
def via_json(name: str, annotation_file: Path, image_dir: Path) -> Dataset:
    """VGG Image Annotator (VIA) project JSON: `{key: {"filename", "regions": [{
    "shape_attributes": {"name": "polygon", "all_points_x", "all_points_y"}}]}}` (regions
    may also be a dict keyed by index, as VIA 1.0 writes them)."""
    dataset = Dataset(name, [])
    try:
        data = read_json(annotation_file)
    except DataError as e:
        dataset.skip(str(e))
        return dataset
    if isinstance(data, dict) and isinstance(data.get("_via_img_metadata"), dict):
        data = data["_via_img_metadata"]  # a VIA 2 project file
    if not isinstance(data, dict):
        dataset.skip(f"{annotation_file} is not a VIA annotation JSON")
        return dataset
    for key, entry in sorted(data.items()):
        try:
            file_name = entry["filename"]
            regions = entry.get("regions") or []
            if isinstance(regions, dict):
                regions = [regions[k] for k in sorted(regions, key=str)]
        except (KeyError, TypeError, AttributeError):
            dataset.skip(f"{annotation_file}: malformed entry {key!r}")
            continue
        polygons = []
        for i, region in enumerate(regions):
            shape = (region or {}).get("shape_attributes") or {}
            if shape.get("name") not in ("polygon", "polyline"):
                continue
            xs, ys = shape.get("all_points_x") or [], shape.get("all_points_y") or []
            polygons.append((str(i), [list(zip(xs, ys))]))
        if not polygons:
            continue
        image_path = image_dir / file_name
        dataset.samples.append(
            Sample(
                image_id=os.path.splitext(file_name)[0],
                read_image=_path_reader(read_rgb, image_path),
                read_masks=_polygon_masks_reader(image_path, polygons, file_name),
                num_masks=len(polygons),
            )
        )
    return dataset


def woodscape_json(name: str, annotation_dir: Path, image_dir: Path) -> Dataset:
    """WoodScape `instance_annotations/<name>.json`: `{"<name>.png": {"image_width",
    "image_height", "annotation": [{"tags": [class], "segmentation": [[x, y], ...],
    "group_id"?}]}}`. Parts of one object share a `group_id` and the class; they are merged
    into one mask (WoodScape's own parser merges them the same way)."""
    dataset = Dataset(name, [])
    for ann_file in sorted(annotation_dir.glob("*.json")):
        image_path = image_dir / (ann_file.stem + ".png")
        if not image_path.is_file():
            dataset.skip(f"no image {image_path} for {ann_file}")
            continue
        dataset.samples.append(
            Sample(
                image_id=ann_file.stem,
                read_image=_path_reader(read_rgb, image_path),
                read_masks=_woodscape_masks_reader(ann_file, image_path),
            )
        )
    return dataset


def _woodscape_masks_reader(ann_file, image_path):
    def read():
        data = read_json(ann_file)
        try:
            entry = next(iter(data.values()))
            anns = entry["annotation"]
        except (StopIteration, AttributeError, KeyError, TypeError):
            raise DataError(f"{ann_file}: no 'annotation' list") from None
        h, w = image_size(image_path)
        groups: dict = {}
        order = []
        for i, ann in enumerate(anns):
            if not isinstance(ann, dict):
                continue
            tags = ann.get("tags") or ["?"]
            group = ann.get("group_id")
            key = (group, tags[0]) if group else (f"#{i}", tags[0])
            if key not in groups:
                groups[key] = []
                order.append(key)
            groups[key].append(ann.get("segmentation") or [])
        polygons = [
            (f"{k[0]}:{k[1]}" if not str(k[0]).startswith("#") else k[0][1:], groups[k])
            for k in order
        ]
        return _polygon_masks_reader(image_path, polygons, ann_file.stem)()

    return read


# -------------------------------------------------------------------- SA-1B, synthetic
def sa1b(name: str, root: Path) -> Dataset:
    """SA-1B as released: `sa_N.jpg` + `sa_N.json` extracted in a directory, or the
    `.tar` shards themselves (read in place)."""
    from sam_jax.data.decode import load_image, read_bytes
    from sam_jax.data.sources import SA1BDirectorySource, SA1BTarSource

    root = Path(root)
    source = SA1BTarSource(root) if list(root.glob("*.tar")) else SA1BDirectorySource(root)
    dataset = Dataset(name, [])
    for i in range(len(source)):
        desc = source[i]

        def read_masks(desc=desc):
            h, w = load_image(desc["image"]).shape[:2]
            try:
                data = json.loads(read_bytes(desc["annotation"]))
                anns = data["annotations"]
            except DataError:
                raise
            except (OSError, ValueError, KeyError, TypeError) as e:
                raise DataError(f"{desc['key']}: malformed annotation JSON: {e}") from None
            return _coco_masks_reader(anns, h, w, desc["key"])()

        dataset.samples.append(
            Sample(
                image_id=desc["key"],
                read_image=lambda desc=desc: load_image(desc["image"]),
                read_masks=read_masks,
            )
        )
    return dataset


def synthetic(
    name: str,
    num_images: int,
    seed: int = 0,
    size: tuple[int, int] = (256, 320),
    max_objects: int = 8,
    classes: bool = False,
) -> Dataset:
    """Held-out pictures from `sam_jax.data.synthetic.make_picture` (plain, or named
    objects with classes=True), made on the fly from the evaluation stream of `seed`, which
    no training picture comes from, whatever the seeds. Give the generator settings and
    seed a model was trained with (a config's `data.synthetic_*` and `seed`) to evaluate
    it on held-out pictures of the kind it was trained on: the training loop's own
    held-out check (`eval.json`) draws exactly these."""
    from sam_jax.data.synthetic import make_picture

    if num_images < 1:
        raise ValueError(f"synthetic: num_images must be >= 1, got {num_images}")
    if len(size) != 2 or min(size) < 32:
        raise ValueError(f"synthetic: size must be (height, width), each >= 32, got {size}")
    if max_objects < 2:
        raise ValueError(f"synthetic: max_objects must be >= 2, got {max_objects}")
    size = (int(size[0]), int(size[1]))

    dataset = Dataset(name, [])
    cache: dict[int, tuple] = {}

    def example(i):
        # The runner reads the image and then the masks of the same sample: make it once.
        if i not in cache:
            cache.clear()
            cache[i] = make_picture(i, seed, size, max_objects, classes, held_out=True)[:2]
        return cache[i]

    for i in range(num_images):
        dataset.samples.append(
            Sample(
                image_id=f"synthetic_{seed}_{i}",
                read_image=lambda i=i: example(i)[0],
                read_masks=lambda i=i: Annotations(
                    [(str(k), m) for k, m in enumerate(example(i)[1])]
                ),
            )
        )
    return dataset
