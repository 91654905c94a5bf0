"""Random-access sources of raw training examples, one per image, in their release formats.

A source only indexes: `source[i]` returns a small descriptor (paths, offsets, parsed
annotation lists) and never raises for a bad file. Reading and decoding happen in
`sam_jax.data.decode`, where a corrupt JPEG, a malformed JSON or an invalid RLE is caught,
counted and skipped. A source in which nothing can be indexed fails at once with a
`DataError` naming the path.

Descriptors are dicts with "key" (a stable example name),
  "image": ("file", path) | ("tar", path, offset, size) | ("array", uint8 HxWx3) | ("error", msg)
  "annotation": ("file", path) | ("tar", path, offset, size) | ("missing", name)
                | ("coco", h, w, [COCO annotations]) | ("rles", [RLE dicts]) | ("error", msg)
"""

from __future__ import annotations

import json
import logging
import re
import tarfile
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)

_SA_NAME = re.compile(r"^(sa_\d+)\.(jpg|json)$")


class DataError(ValueError):
    """Data that cannot be used; the message names the file or example."""


class SA1BDirectorySource:
    """SA-1B as extracted: `sa_N.jpg` + `sa_N.json` pairs in a directory (searched recursively).

    An image without its JSON is kept in the index and reported when read, so a damaged
    download shows up in the skip counts instead of silently shrinking the data set.
    """

    def __init__(self, root):
        self.root = Path(root)
        if not self.root.is_dir():
            raise DataError(f"SA-1B directory not found: {self.root}")
        images = sorted(self.root.rglob("sa_*.jpg"), key=lambda p: str(p))
        if not images:
            raise DataError(f"no sa_*.jpg images found under {self.root}")
        self._items = [(p, p.with_suffix(".json")) for p in images]

    def __len__(self) -> int:
        return len(self._items)

    def __getitem__(self, index: int) -> dict:
        image, ann = self._items[index]
        return {"key": image.stem, "image": ("file", str(image)), "annotation": ("file", str(ann))}


class SA1BTarSource:
    """SA-1B `.tar` shards read in place (no extraction): an index of member offsets.

    Shards that cannot be opened are logged and skipped; if none can be read, DataError.
    """

    def __init__(self, shards):
        if isinstance(shards, (str, Path)):
            shards = [shards]
        paths = []
        for s in shards:
            s = Path(s)
            paths.extend(sorted(s.glob("*.tar")) if s.is_dir() else [s])
        if not paths:
            raise DataError(f"no .tar shards found in {list(map(str, shards))}")
        self._items = []
        self.bad_shards: list[tuple[str, str]] = []
        for path in paths:
            try:
                self._items.extend(self._index(path))
            except (OSError, tarfile.TarError) as e:
                log.warning("skipping unreadable shard %s: %s", path, e)
                self.bad_shards.append((str(path), str(e)))
        if not self._items:
            raise DataError(
                f"no readable SA-1B examples in {len(paths)} shard(s): "
                + "; ".join(f"{p}: {e}" for p, e in self.bad_shards[:5])
            )

    @staticmethod
    def _index(path: Path) -> list[dict]:
        members: dict[str, dict[str, tuple]] = {}
        with tarfile.open(path, "r:") as tar:
            for m in tar:
                if not m.isfile():
                    continue
                match = _SA_NAME.match(Path(m.name).name)
                if match:
                    loc = ("tar", str(path), m.offset_data, m.size)
                    members.setdefault(match.group(1), {})[match.group(2)] = loc
        items = []
        for stem in sorted(members, key=lambda s: int(s[3:])):
            parts = members[stem]
            if "jpg" not in parts:
                continue
            items.append(
                {
                    "key": stem,
                    "image": parts["jpg"],
                    "annotation": parts.get("json", ("missing", f"{path}:{stem}.json")),
                }
            )
        return items

    def __len__(self) -> int:
        return len(self._items)

    def __getitem__(self, index: int) -> dict:
        return self._items[index]


class CocoSource:
    """COCO-style instance segmentation: one JSON (polygons, RLE or uncompressed RLE) and an
    image folder. Crowd annotations are left out, as instance training usually does."""

    def __init__(self, annotation_file, image_dir, include_crowd: bool = False):
        self.annotation_file = Path(annotation_file)
        self.image_dir = Path(image_dir)
        try:
            data = json.loads(self.annotation_file.read_text())
        except FileNotFoundError:
            raise DataError(f"COCO annotation file not found: {self.annotation_file}") from None
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            raise DataError(f"malformed COCO JSON {self.annotation_file}: {e}") from None
        if (
            not isinstance(data, dict)
            or not isinstance(data.get("images"), list)
            or not (isinstance(data.get("annotations"), list))
        ):
            raise DataError(
                f"{self.annotation_file} is not COCO instance JSON (needs 'images' and "
                "'annotations' lists)"
            )
        if not self.image_dir.is_dir():
            raise DataError(f"COCO image directory not found: {self.image_dir}")
        names = {
            c.get("id"): c.get("name")
            for c in data.get("categories") or []
            if isinstance(c, dict) and isinstance(c.get("name"), str)
        }
        by_image: dict = {}
        for ann in data["annotations"]:
            if not isinstance(ann, dict) or "image_id" not in ann:
                continue
            if ann.get("iscrowd", 0) and not include_crowd:
                continue
            if "category" not in ann and ann.get("category_id") in names:
                ann = {**ann, "category": names[ann["category_id"]]}  # for text prompts
            by_image.setdefault(ann["image_id"], []).append(ann)
        self._items = []
        for img in data["images"]:
            try:
                image_id, name = img["id"], img["file_name"]
                h, w = int(img["height"]), int(img["width"])
            except (KeyError, TypeError, ValueError):
                log.warning("skipping malformed image entry in %s: %r", self.annotation_file, img)
                continue
            anns = by_image.get(image_id, [])
            if not anns:
                continue
            self._items.append(
                {
                    "key": str(image_id),
                    "image": ("file", str(self.image_dir / name)),
                    "annotation": ("coco", h, w, anns),
                }
            )
        if not self._items:
            raise DataError(f"no images with usable annotations in {self.annotation_file}")

    def __len__(self) -> int:
        return len(self._items)

    def __getitem__(self, index: int) -> dict:
        return self._items[index]


class TfdsSource:
    """The tensorflow-datasets builder `segment_anything`, for users who prepared it.

    Random access needs the copy prepared as array_record, e.g. `tfds build segment_anything
    --data_dir DIR --manual_dir LINKS_DIR --file_format=array_record` (TFDS' default,
    tfrecord, can only be streamed through TensorFlow; `tfds convert_format` converts it).
    Records are read without TensorFlow; the stored JPEG is decoded by `decode.decode_image`,
    as the other sources' images are, so a TFDS copy yields the same pixels as the SA-1B
    files it was built from.

    Needs tensorflow-datasets. A missing or unprepared data_dir, a copy in another file
    format, missing data files or an unreadable first record raise DataError at once; a
    damaged record later on is reported when read (counted and skipped by the decoder).
    """

    def __init__(self, name: str = "segment_anything", data_dir=None, split: str = "train"):
        try:
            import tensorflow_datasets as tfds
        except ImportError as e:
            raise DataError(
                "the TFDS source needs tensorflow-datasets (pip install tensorflow-datasets)"
            ) from e
        where = f"TFDS {name!r} in {data_dir or 'the default TFDS data_dir'}"
        try:
            builder = tfds.builder(name, data_dir=data_dir)
        except Exception as e:
            raise DataError(f"cannot open {where}: {e}") from e
        if not builder.is_prepared():
            raise DataError(
                f"{where} is not prepared: no dataset_info.json in {builder.data_dir} "
                f"(prepare it with `tfds build {name} --data_dir DIR --file_format=array_record`)"
            )
        try:
            self._records = builder.as_data_source(
                split=split, deserialize_method=tfds.decode.DeserializeMethod.RAW_BYTES
            )
        except NotImplementedError as e:  # prepared in a streaming-only format
            raise DataError(
                f"{where} was prepared as {builder.info.file_format.value}, which has no "
                "random access: rebuild it with --file_format=array_record or convert it "
                "with `tfds convert_format`"
            ) from e
        except Exception as e:
            raise DataError(f"cannot open split {split!r} of {where}: {e}") from e
        self._features = builder.info.features
        # Keep the encoded image: decoded below by the one image decoder, like the others.
        self._decoders = {"image": {"content": tfds.decode.SkipDecoding()}}
        files = [fi.filename for fi in builder.info.splits[split].file_instructions]
        missing = _missing_files(files)
        if missing:
            raise DataError(
                f"{where}: {len(missing)} of {len(files)} data file(s) of split {split!r} "
                f"missing: " + ", ".join(missing[:5])
            )
        if len(self._records) == 0:
            raise DataError(f"{where}: split {split!r} is empty")
        try:
            first = self._records[0]
        except Exception as e:
            raise DataError(f"{where}: cannot read {files[0]}: {e}") from e
        if not first:
            raise DataError(f"{where}: {files[0]} reads as empty (truncated or not array_record)")

    def __len__(self) -> int:
        return len(self._records)

    def __getitem__(self, index: int) -> dict:
        key = f"tfds:{index}"
        try:
            raw = self._records[index]
            if not raw:
                raise DataError("empty record (truncated data file?)")
            ex = self._features.deserialize_example_np(raw, decoders=self._decoders)
            image = ex["image"]
            name = image.get("file_name")
            if isinstance(name, bytes):
                name = name.decode()
            if name:
                key = name.rsplit(".", 1)[0]  # sa_N, as the other SA-1B sources name it
            image_array = _decode_image(image["content"])  # DataError names the problem
            seg = ex["annotations"]["segmentation"]
            rles = [
                {"size": [int(v) for v in size], "counts": counts}
                for size, counts in zip(seg["size"], seg["counts"])
            ]
            return {
                "key": key,
                "image": ("array", image_array),
                "annotation": ("rles", rles),
            }
        except Exception as e:  # a damaged record: the decoder counts and skips it
            msg = f"{key}: {e}"
            return {"key": key, "image": ("error", msg), "annotation": ("error", msg)}


def _missing_files(paths: list[str]) -> list[str]:
    """The paths that do not exist, listing each directory once (data_dir may be remote)."""
    from etils import epath  # a tensorflow-datasets dependency

    present: dict = {}
    missing = []
    for f in paths:
        path = epath.Path(f)
        if path.parent not in present:
            try:
                present[path.parent] = {q.name for q in path.parent.iterdir()}
            except OSError:
                present[path.parent] = set()
        if path.name not in present[path.parent]:
            missing.append(f)
    return missing


def _decode_image(data: bytes) -> np.ndarray:
    """(H, W, 3) uint8 RGB from encoded image bytes, by the one image decoder."""
    from sam_jax.data.decode import decode_image  # decode imports this module

    return decode_image(data)
