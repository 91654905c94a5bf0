"""`TfdsSource` on a TFDS-prepared copy of `segment_anything` that the tests write themselves.

The copy is made by the real builder of tensorflow-datasets, without TensorFlow: a subclass
keeps its `_info` (so the features are exactly those of the released builder) and only
replaces the download of 10 TB of shards with synthetic SA-1B files, turned into examples as
the builder's own generator does (image path as `content`, boxes normalised by the builder's
`_parse_annotations`). `download_and_prepare(file_format="array_record")` then writes what
`tfds build segment_anything --file_format=array_record` writes:
`<data_dir>/segment_anything/1.0.0/` with dataset_info.json, features.json and the
array_record shards.
"""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import tensorflow_datasets as tfds
from google.protobuf import json_format
from tensorflow_datasets.datasets.segment_anything import (
    segment_anything_dataset_builder as sa_builder,
)

from sam_jax.data.decode import ExampleSpec, decode_masks, load_image, load_rles, prepare_example
from sam_jax.data.pipeline import make_dataset
from sam_jax.data.sources import DataError, SA1BDirectorySource, TfdsSource
from sam_jax.data.synthetic import make_example, write_sa1b

SPEC = ExampleSpec(image_size=128, low_res_size=32, max_masks=6)
SIZE = (96, 128)
SEED = 3
NUM = 5
VERSION_DIR = "segment_anything/1.0.0"


class _SyntheticSegmentAnything(sa_builder.Builder, skip_registration=True):
    """The released builder fed from a local directory of `sa_N.jpg` + `sa_N.json` files."""

    name = "segment_anything"
    pkg_dir_path = sa_builder.Builder._get_pkg_dir_path()  # the real README/citation

    def __init__(self, *, raw_dir, extra=(), **kwargs):
        super().__init__(**kwargs)
        self._raw_dir = raw_dir
        self._extra = extra  # (image_id, content bytes): records with a damaged image

    def _split_generators(self, dl_manager):
        return {"train": self._generate_from_files()}

    def _generate_from_files(self):
        paths = sorted(self._raw_dir.glob("*.jpg"))
        for path in paths:
            yield self._example(path, path)
        for image_id, content in self._extra:  # the annotations of the first file
            yield self._example(paths[0], content, image_id)

    @staticmethod
    def _example(path, content, image_id=None):
        record = json.loads(path.with_suffix(".json").read_text())
        image = dict(record["image"], content=content)
        if image_id is not None:
            image.update(image_id=image_id, file_name=f"sa_{image_id}.jpg")
        h, w = image["height"], image["width"]
        annotations = sa_builder._parse_annotations(record["annotations"], h, w)
        return image["image_id"], {"image": image, "annotations": annotations}


def _prepare(raw_dir, data_dir, num_shards, extra=()):
    builder = _SyntheticSegmentAnything(
        raw_dir=raw_dir, extra=extra, data_dir=data_dir, file_format="array_record"
    )
    config = tfds.download.DownloadConfig(
        manual_dir=raw_dir, num_shards=num_shards, compute_stats=tfds.download.ComputeStatsMode.SKIP
    )
    builder.download_and_prepare(download_config=config)
    # The one field that names the builder's module: record the released one, as `tfds build`.
    info_path = data_dir / VERSION_DIR / "dataset_info.json"
    info = json.loads(info_path.read_text())
    info["moduleName"] = sa_builder.Builder.__module__
    info_path.write_text(json.dumps(info, indent=2))
    return data_dir


@pytest.fixture(scope="module")
def raw_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("sa1b")
    write_sa1b(out, NUM, seed=SEED, size=SIZE, images_per_shard=None)
    return out


@pytest.fixture(scope="module")
def prepared(raw_dir, tmp_path_factory):
    return _prepare(raw_dir, tmp_path_factory.mktemp("tfds"), num_shards=2)


def _shards(data_dir):
    return sorted((data_dir / VERSION_DIR).glob("segment_anything-train.array_record-*"))


def _copy(prepared, tmp_path):
    return shutil.copytree(prepared, tmp_path / "copy")


def test_prepared_copy_has_the_tfds_layout_and_the_real_features(prepared, tmp_path):
    version_dir = prepared / VERSION_DIR
    assert {"dataset_info.json", "features.json"} <= {p.name for p in version_dir.iterdir()}
    assert [p.name[-14:] for p in _shards(prepared)] == ["00000-of-00002", "00001-of-00002"]
    info = json.loads((version_dir / "dataset_info.json").read_text())
    assert info["name"] == "segment_anything" and info["version"] == "1.0.0"
    assert info["fileFormat"] == "array_record"
    (train,) = info["splits"]
    assert train["name"] == "train" and sum(int(n) for n in train["shardLengths"]) == NUM
    # features.json is what the released builder declares (read from an empty data_dir)
    released = tfds.builder("segment_anything", data_dir=tmp_path)
    assert type(released) is sa_builder.Builder and not released.is_prepared()
    on_disk = json.loads((version_dir / "features.json").read_text())
    assert on_disk == json_format.MessageToDict(released.info.features.to_proto())


def test_tfds_source_reads_back_images_and_masks(prepared, raw_dir):
    src = TfdsSource(data_dir=prepared)
    assert len(src) == NUM
    by_key = {src[i]["key"]: src[i] for i in range(len(src))}
    assert sorted(by_key) == sorted(f"sa_{i}" for i in range(1, NUM + 1))
    files = SA1BDirectorySource(raw_dir)
    truths = [make_example(i + 1, seed=SEED, size=SIZE) for i in range(NUM)]
    for i in range(NUM):
        desc = by_key[f"sa_{i + 1}"]
        assert desc["image"][0] == "array" and desc["annotation"][0] == "rles"
        image = load_image(desc["image"])
        masks = decode_masks(load_rles(desc, *image.shape[:2]), desc["key"])
        # the stored JPEG decodes to the same pixels as the SA-1B file it was built from
        assert (image == load_image(files[i]["image"])).all()
        truth_image, truth_masks = truths[i]
        assert image.shape == truth_image.shape and image.dtype == np.uint8
        # JPEG is lossy: the picture read back is nearest to the one written, of all of them
        errors = [np.abs(image.astype(int) - other).mean() for other, _ in truths]
        assert np.argmin(errors) == i
        assert masks.shape == (len(truth_masks), *SIZE)
        assert (masks == np.stack(truth_masks)).all()  # RLE round trip is exact
        # the training record is the same whichever copy it comes from
        rec_tfds = prepare_example(desc, np.random.default_rng(i), SPEC)
        rec_files = prepare_example(files[i], np.random.default_rng(i), SPEC)
        for name in rec_tfds:
            assert (rec_tfds[name] == rec_files[name]).all(), name


def _one_pass(source, batch_size):
    """One unshuffled epoch of the training pipeline over `source`, in this process."""
    return make_dataset(
        source,
        SPEC,
        batch_size=batch_size,
        num_epochs=1,
        shuffle=False,
        num_threads=1,
        process_index=0,
        process_count=1,
    )


def test_tfds_source_through_the_pipeline(prepared):
    ds = _one_pass(TfdsSource(data_dir=prepared), batch_size=2)
    batches = list(ds)
    assert len(batches) == NUM // 2
    assert batches[0]["image"].shape == (2, 128, 128, 3) and batches[0]["masks"].shape[1] == 6
    assert ds.skip_counter.seen == NUM and ds.skip_counter.skipped == 0


def test_missing_or_unprepared_data_dir(tmp_path):
    with pytest.raises(DataError, match="is not prepared: no dataset_info.json"):
        TfdsSource(data_dir=tmp_path / "nowhere")
    (tmp_path / "segment_anything" / "1.0.0").mkdir(parents=True)  # an interrupted build
    with pytest.raises(DataError, match="is not prepared"):
        TfdsSource(data_dir=tmp_path)


@pytest.mark.parametrize(
    "damage, message",
    [
        ("info_not_json", "cannot open TFDS 'segment_anything'"),
        ("tfrecord_copy", "prepared as tfrecord, which has no random access"),
        ("shard_missing", r"1 of 2 data file\(s\) of split 'train' missing: .*00001-of-00002"),
        ("shard_garbage", r"cannot read .*00000-of-00002"),
        ("shard_truncated", r"00000-of-00002 reads as empty"),
    ],
)
def test_damaged_copy_fails_at_once_naming_the_problem(prepared, tmp_path, damage, message):
    data_dir = _copy(prepared, tmp_path)
    info_path = data_dir / VERSION_DIR / "dataset_info.json"
    first, second = _shards(data_dir)
    if damage == "info_not_json":
        info_path.write_text("{not json")
    elif damage == "tfrecord_copy":  # what the default `tfds build` records
        info = json.loads(info_path.read_text())
        info["fileFormat"] = "tfrecord"
        info_path.write_text(json.dumps(info))
    elif damage == "shard_missing":
        second.unlink()
    elif damage == "shard_garbage":
        first.write_bytes(b"not an array_record file " * 100)
    elif damage == "shard_truncated":
        first.write_bytes(first.read_bytes()[: first.stat().st_size // 2])
    with pytest.raises(DataError, match=message):
        TfdsSource(data_dir=data_dir)


def test_damaged_records_are_skipped_and_counted(prepared, raw_dir, tmp_path):
    # a later shard cut short: its records read as empty
    data_dir = _copy(prepared, tmp_path)
    second = _shards(data_dir)[1]
    second.write_bytes(second.read_bytes()[: second.stat().st_size // 2])
    src = TfdsSource(data_dir=data_dir)
    descs = [src[i] for i in range(len(src))]
    bad = [d for d in descs if d["image"][0] == "error"]
    assert 0 < len(bad) < NUM and all("empty record" in d["image"][1] for d in bad)
    with pytest.raises(DataError, match="unreadable record"):
        prepare_example(bad[0], np.random.default_rng(0), SPEC)
    # a record whose stored image is not an image
    damaged = _prepare(raw_dir, tmp_path / "damaged", num_shards=1, extra=[(99, b"\xff\xd8 no")])
    ds = _one_pass(TfdsSource(data_dir=damaged), batch_size=1)
    assert len(list(ds)) == NUM
    assert ds.skip_counter.skipped == 1 and ds.skip_counter.seen == NUM + 1
    (message,) = ds.skip_counter.messages
    assert "sa_99: corrupt image" in message
