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
        by_image: dict = {}
        for ann in data["annotations"]:
            if not isinstance(ann, dict) or "image_id" not in ann:
                continue
            if ann.get("iscrowd", 0) and not include_crowd:
                continue
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

    Reads through `builder.as_data_source(split)` (array_record files: random access, no
    TensorFlow graph at read time). Needs tensorflow-datasets installed.
    """

    def __init__(self, name: str = "segment_anything", data_dir=None, split: str = "train"):
        try:
            import tensorflow_datasets as tfds
        except ImportError as e:
            raise DataError(
                "the TFDS source needs tensorflow-datasets (pip install tensorflow-datasets)"
            ) from e
        try:
            builder = tfds.builder(name, data_dir=data_dir)
            self._source = builder.as_data_source(split=split)
        except Exception as e:
            raise DataError(f"cannot open TFDS {name!r} in {data_dir}: {e}") from e
        if len(self._source) == 0:
            raise DataError(f"TFDS {name!r} split {split!r} in {data_dir} is empty")

    def __len__(self) -> int:
        return len(self._source)

    def __getitem__(self, index: int) -> dict:
        key = f"tfds:{index}"
        try:
            ex = self._source[index]
            image = ex["image"]
            seg = ex["annotations"]["segmentation"]
            key = str(image.get("file_name", key))
            if isinstance(key, bytes):
                key = key.decode()
            rles = [
                {"size": [int(v) for v in size], "counts": counts}
                for size, counts in zip(seg["size"], seg["counts"])
            ]
            return {"key": key, "image": ("array", image["content"]), "annotation": ("rles", rles)}
        except Exception as e:  # a damaged record: the decoder counts and skips it
            return {"key": key, "image": ("error", str(e)), "annotation": ("error", str(e))}
