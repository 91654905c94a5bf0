"""Data sources, decoding and the grain pipeline, on fixtures written in each format."""

from __future__ import annotations

import io
import json
import tarfile

import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as mask_utils

from sam_jax.data.decode import ExampleSpec, decode_masks, load_image, load_rles, prepare_example
from sam_jax.data.pipeline import make_dataset
from sam_jax.data.sources import CocoSource, DataError, SA1BDirectorySource, SA1BTarSource
from sam_jax.data.synthetic import make_example, write_sa1b

SPEC = ExampleSpec(image_size=128, low_res_size=32, max_masks=6)


@pytest.fixture(scope="module")
def sa1b_tars(tmp_path_factory):
    out = tmp_path_factory.mktemp("tars")
    write_sa1b(out, 9, seed=3, size=(96, 128), images_per_shard=4)
    return out


@pytest.fixture(scope="module")
def sa1b_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("dir")
    write_sa1b(out, 4, seed=3, size=(96, 128), images_per_shard=None)
    return out


def _all_masks(source, index):
    desc = source[index]
    image = load_image(desc["image"])
    return image, decode_masks(load_rles(desc, *image.shape[:2]), desc["key"])


@pytest.mark.parametrize("images_per_shard", [4, None])
def test_synthetic_written_by_workers_is_identical(sa1b_tars, sa1b_dir, tmp_path, images_per_shard):
    """Two worker processes write byte-identical shards (or loose files) to one process."""
    reference = sa1b_tars if images_per_shard else sa1b_dir
    num = 9 if images_per_shard else 4
    paths = write_sa1b(
        tmp_path, num, seed=3, size=(96, 128), images_per_shard=images_per_shard, num_workers=2
    )
    names = sorted(p.name for p in reference.iterdir())
    assert sorted(p.name for p in paths) == names == sorted(p.name for p in tmp_path.iterdir())
    for name in names:
        assert (tmp_path / name).read_bytes() == (reference / name).read_bytes(), name


def test_synthetic_is_deterministic_and_masks_disjoint():
    a_img, a_masks = make_example(5, seed=1)
    b_img, b_masks = make_example(5, seed=1)
    assert (a_img == b_img).all() and len(a_masks) == len(b_masks) >= 1
    assert not (make_example(6, seed=1)[0] == a_img).all()
    stack = np.stack(a_masks).astype(int)
    assert stack.sum(0).max() == 1  # visible parts of occluded shapes never overlap


def test_tar_and_directory_sources_read_the_same_examples(sa1b_tars, sa1b_dir):
    tars, loose = SA1BTarSource(sa1b_tars), SA1BDirectorySource(sa1b_dir)
    assert len(tars) == 9 and len(loose) == 4
    assert [tars[i]["key"] for i in range(4)] == [f"sa_{i}" for i in range(1, 5)]
    for i in range(4):
        img_t, masks_t = _all_masks(tars, i)
        img_d, masks_d = _all_masks(loose, i)
        assert (img_t == img_d).all() and (masks_t == masks_d).all()
        _, truth = make_example(i + 1, seed=3, size=(96, 128))
        assert (masks_t == np.stack(truth)).all()  # RLE round trip is exact


def test_sa1b_json_matches_release_format(sa1b_dir):
    record = json.loads((sa1b_dir / "sa_1.json").read_text())
    assert set(record) == {"image", "annotations"}
    assert set(record["image"]) == {"image_id", "width", "height", "file_name"}
    ann = record["annotations"][0]
    assert set(ann) == {
        "id",
        "segmentation",
        "bbox",
        "area",
        "predicted_iou",
        "stability_score",
        "crop_box",
        "point_coords",
    }
    m = mask_utils.decode(ann["segmentation"])
    assert m.sum() == ann["area"]
    ys, xs = np.nonzero(m)
    assert ann["bbox"] == [xs.min(), ys.min(), xs.max() - xs.min() + 1, ys.max() - ys.min() + 1]


def _write_coco(tmp_path, polygons=True):
    img = np.zeros((40, 50, 3), np.uint8)
    img[5:20, 10:30] = 200
    (tmp_path / "images").mkdir()
    Image.fromarray(img).save(tmp_path / "images" / "a.png")
    square = np.zeros((40, 50), np.uint8)
    square[5:20, 10:30] = 1
    rle = mask_utils.encode(np.asfortranarray(square))
    anns = [
        {
            "id": 1,
            "image_id": 7,
            "iscrowd": 0,
            "segmentation": [[10, 5, 30, 5, 30, 20, 10, 20]]
            if polygons
            else {"size": [40, 50], "counts": rle["counts"].decode()},
        },
        {
            "id": 2,
            "image_id": 7,
            "iscrowd": 1,
            "segmentation": {"size": [40, 50], "counts": rle["counts"].decode()},
        },
    ]
    data = {
        "images": [{"id": 7, "file_name": "a.png", "height": 40, "width": 50}],
        "annotations": anns,
        "categories": [{"id": 1, "name": "thing"}],
    }
    (tmp_path / "ann.json").write_text(json.dumps(data))
    return square


@pytest.mark.parametrize("polygons", [True, False])
def test_coco_source_polygons_and_rle(tmp_path, polygons):
    square = _write_coco(tmp_path, polygons)
    src = CocoSource(tmp_path / "ann.json", tmp_path / "images")
    assert len(src) == 1
    image, masks = _all_masks(src, 0)
    assert image.shape == (40, 50, 3) and masks.shape == (1, 40, 50)  # crowd left out
    # polygon rasterisation differs from the pixel square only on the boundary
    assert (masks[0] != square.astype(bool)).sum() <= (0 if not polygons else 2 * (20 + 15) + 2)


def test_coco_source_errors(tmp_path):
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(DataError, match="malformed COCO JSON"):
        CocoSource(tmp_path / "bad.json", tmp_path)
    (tmp_path / "wrong.json").write_text(json.dumps({"images": 3}))
    with pytest.raises(DataError, match="not COCO instance JSON"):
        CocoSource(tmp_path / "wrong.json", tmp_path)
    with pytest.raises(DataError, match="not found"):
        CocoSource(tmp_path / "missing.json", tmp_path)


def test_empty_or_unreadable_sources_fail_at_once(tmp_path):
    with pytest.raises(DataError, match="no sa_"):
        SA1BDirectorySource(tmp_path)
    (tmp_path / "sa_000000.tar").write_bytes(b"this is not a tar file" * 100)
    with pytest.raises(DataError, match="sa_000000.tar"):
        SA1BTarSource(tmp_path)


def test_prepare_example_shapes_and_mask_alignment(sa1b_dir):
    src = SA1BDirectorySource(sa1b_dir)
    rec = prepare_example(src[0], np.random.default_rng(0), SPEC)
    assert rec["image"].shape == (128, 128, 3) and rec["image"].dtype == np.uint8
    assert tuple(rec["input_size"]) == (96, 128)
    assert rec["masks"].shape == (6, 32, 32) and rec["mask_valid"].dtype == bool
    assert (rec["image"][96:] == 0).all()  # padding at the bottom
    assert not rec["masks"][:, 24:].any()  # 96/128 * 32 = 24 rows of real image
    # each sampled mask is one of the image's masks, downsampled 4x (the resize is 128/128=1)
    _, truth = make_example(1, seed=3, size=(96, 128))
    pooled = [np.pad(t, ((0, 32), (0, 0))).reshape(32, 4, 32, 4).mean((1, 3)) >= 0.5 for t in truth]
    for m, v in zip(rec["masks"], rec["mask_valid"]):
        if v:
            assert max(((m > 0) == p).mean() for p in pooled) > 0.98


def test_max_area_filter_and_no_usable_mask(tmp_path):
    img = np.full((20, 20, 3), 90, np.uint8)
    Image.fromarray(img).save(tmp_path / "sa_1.jpg")
    full = mask_utils.encode(np.asfortranarray(np.ones((20, 20), np.uint8)))
    ann = {
        "image": {"image_id": 1, "width": 20, "height": 20, "file_name": "sa_1.jpg"},
        "annotations": [{"segmentation": {"size": [20, 20], "counts": full["counts"].decode()}}],
    }
    (tmp_path / "sa_1.json").write_text(json.dumps(ann))
    with pytest.raises(DataError, match="no usable mask"):
        prepare_example(SA1BDirectorySource(tmp_path)[0], np.random.default_rng(0), SPEC)


def test_bad_examples_are_skipped_and_counted(tmp_path):
    write_sa1b(tmp_path, 6, seed=0, size=(64, 64), images_per_shard=None)
    (tmp_path / "sa_2.jpg").write_bytes(b"\xff\xd8\xff garbage")  # corrupt JPEG
    (tmp_path / "sa_3.json").write_text("{")  # malformed JSON
    (tmp_path / "sa_4.json").unlink()  # missing JSON
    rec = json.loads((tmp_path / "sa_5.json").read_text())
    rec["annotations"][0]["segmentation"]["size"] = [1, 1]  # RLE that does not fit
    (tmp_path / "sa_5.json").write_text(json.dumps(rec))
    ds = make_dataset(
        SA1BDirectorySource(tmp_path),
        ExampleSpec(64, 16, 4),
        batch_size=1,
        num_epochs=1,
        shuffle=False,
        process_index=0,
        process_count=1,
    )
    batches = list(ds)
    assert len(batches) == 2  # sa_1 and sa_6
    counter = ds.skip_counter
    assert counter.skipped == 4 and counter.seen == 6
    text = " ".join(counter.messages)
    for needle in ("corrupt image", "malformed annotation JSON", "missing annotation", "RLE size"):
        assert needle in text


def test_a_run_of_unusable_examples_fails_instead_of_spinning(tmp_path):
    # Every example unusable (here all masks cover more than the allowed area): the pipeline
    # would otherwise filter forever looking for one good example.
    write_sa1b(tmp_path, 3, seed=0, size=(64, 64), images_per_shard=None)
    ds = make_dataset(
        SA1BDirectorySource(tmp_path),
        ExampleSpec(64, 16, 4, max_area_fraction=0.0),
        batch_size=1,
        process_index=0,
        process_count=1,
        num_threads=1,
    )
    with pytest.raises(DataError, match="examples were all unusable.*no usable mask"):
        next(iter(ds))


def test_pipeline_is_deterministic_and_resumes_exactly(sa1b_tars):
    def make(seed):
        return make_dataset(
            SA1BTarSource(sa1b_tars),
            SPEC,
            batch_size=2,
            seed=seed,
            process_index=0,
            process_count=1,
        )

    it_a, it_b = iter(make(0)), iter(make(0))
    for _ in range(3):
        a, b = next(it_a), next(it_b)
        assert all((a[k] == b[k]).all() for k in a)
    other = next(iter(make(1)))
    first = next(iter(make(0)))
    assert not all((first[k] == other[k]).all() for k in first)

    it = iter(make(0))
    next(it)
    state = it.get_state()
    expected = [next(it) for _ in range(3)]  # crosses the epoch boundary (9 images)
    resumed = iter(make(0))
    resumed.set_state(state)
    for e in expected:
        r = next(resumed)
        assert all((e[k] == r[k]).all() for k in e)


def test_processes_get_disjoint_shards(sa1b_tars):
    seen = []
    for p in range(2):
        ds = make_dataset(
            SA1BTarSource(sa1b_tars),
            SPEC,
            batch_size=1,
            seed=0,
            num_epochs=1,
            process_index=p,
            process_count=2,
        )
        seen.append([b["image"][0].tobytes() for b in ds])
    assert len(seen[0]) == 5 and len(seen[1]) == 4
    assert not set(seen[0]) & set(seen[1])


def test_tar_member_is_read_in_place(tmp_path):
    data = {"sa_1.jpg": io.BytesIO(), "sa_1.json": None}
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(data["sa_1.jpg"], format="JPEG")
    path = tmp_path / "sa_000000.tar"
    with tarfile.open(path, "w") as tar:
        raw = data["sa_1.jpg"].getvalue()
        info = tarfile.TarInfo("nested/dir/sa_1.jpg")
        info.size = len(raw)
        tar.addfile(info, io.BytesIO(raw))
    src = SA1BTarSource(path)
    assert len(src) == 1 and src[0]["annotation"][0] == "missing"
    assert load_image(src[0]["image"]).shape == (8, 8, 3)
