"""Every evaluation dataset reader on a fixture written in that dataset's release layout."""

from __future__ import annotations

import io
import json
import zipfile
from pathlib import Path

import h5py
import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as mask_utils

from sam_jax.data.sources import DataError
from sam_jax.data.synthetic import write_sa1b
from sam_jax.evaluation import registry

H, W = 40, 56


def _image(seed: int = 0, h: int = H, w: int = W) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def _save(path: Path, array: np.ndarray, mode: str | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array, mode).save(path)
    return path


def _rect(y0, y1, x0, x1, h=H, w=W) -> np.ndarray:
    m = np.zeros((h, w), bool)
    m[y0:y1, x0:x1] = True
    return m


def _poly(x0, y0, x1, y1) -> list[float]:
    return [x0, y0, x1, y0, x1, y1, x0, y1]


def _poly_mask(polys, h=H, w=W) -> np.ndarray:
    return mask_utils.decode(mask_utils.merge(mask_utils.frPyObjects(polys, h, w))).astype(bool)


def _rle(mask: np.ndarray) -> dict:
    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": list(rle["size"]), "counts": rle["counts"].decode("ascii")}


def _uncompressed_rle(mask: np.ndarray) -> dict:
    flat = mask.T.ravel().astype(np.uint8)  # column-major, as COCO
    counts, current, run = [], 0, 0
    for v in flat:
        if v != current:
            counts.append(run)
            current, run = v, 0
        run += 1
    counts.append(run)
    return {"size": list(mask.shape), "counts": counts}


def _coco(path: Path, images, anns) -> None:
    """images: (id, file_name, h, w); anns: (id, image_id, segmentation, iscrowd)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    data = {
        "images": [{"id": i, "file_name": f, "height": h, "width": w} for i, f, h, w in images],
        "annotations": [
            {"id": a, "image_id": im, "segmentation": s, "iscrowd": c, "category_id": 1}
            for a, im, s, c in anns
        ],
        "categories": [{"id": 1, "name": "thing"}],
    }
    path.write_text(json.dumps(data))


# Each writer lays out one dataset under `root` and returns
# ({image id: {annotation id: mask}}, number of entries the index must skip).


def write_ppdls(root):
    _save(root / "A1" / "plant001_rgb.png", _image(1))
    label = np.zeros((H, W), np.uint8)
    label[2:10, 3:20] = 1
    label[15:30, 5:25] = 2
    im = Image.fromarray(label, "P")
    im.putpalette([0, 0, 0, 255, 0, 0, 0, 255, 0] + [0] * 759)
    im.save(root / "A1" / "plant001_label.png")
    _save(root / "Plant" / "Ara2012" / "ara2012_plant001_rgb.png", _image(2))
    label2 = np.zeros((H, W), np.uint8)
    label2[20:30, 30:50] = 4
    _save(root / "Plant" / "Ara2012" / "ara2012_plant001_label.png", label2)
    _save(root / "A1" / "plant002_rgb.png", _image(3))  # no label file
    return {
        "A1/plant001_rgb": {"1": label == 1, "2": label == 2},
        "Plant/Ara2012/ara2012_plant001_rgb": {"4": label2 == 4},
    }, 1


def write_bbbc038(root):
    base = root / "stage1_train" / "abc123"
    rgba = np.dstack([_image(4), np.full((H, W), 255, np.uint8)])
    _save(base / "images" / "abc123.png", rgba, "RGBA")
    m1, m2 = _rect(2, 12, 2, 12), _rect(20, 30, 30, 45)
    _save(base / "masks" / "m1.png", m1.astype(np.uint8) * 255)
    _save(base / "masks" / "m2.png", m2.astype(np.uint8) * 255)
    (base / "masks" / "m3.png").write_bytes(b"not a png")  # unreadable: one problem
    return {"abc123": {"m1": m1, "m2": m2}}, 0


def write_doors(root):
    d = root / "Segmentation" / "DS1" / "DS"
    _save(d / "img" / "0001.png", _image(5)[..., 0])
    m = _rect(10, 25, 10, 30)
    _save(d / "mask" / "0001.png", m.astype(np.uint8) * 255)
    _save(d / "img" / "0002.png", _image(6)[..., 0])  # no mask
    _save(root / "Segmentation" / "DS2" / "DS" / "img" / "0001.png", _image(7))
    return {"0001": {"0001": m}}, 1


def write_timberseg(root):
    _save(root / "original" / "images" / "log_01.png", _image(8))
    p1, p2 = _poly(2, 2, 20, 15), _poly(25, 10, 50, 35)
    _coco(
        root / "original" / "coco_annotation.json",
        [(1, "some/other/dir/log_01.png", H, W)],
        [(11, 1, [p1], 0), (12, 1, [p2], 0)],
    )
    return {"1": {"11": _poly_mask([p1]), "12": _poly_mask([p2])}}, 0


def write_ndd20(root):
    _save(root / "ABOVE" / "a1.jpg", _image(9))
    _save(root / "BELOW" / "b1.jpg", _image(10))
    xs, ys = [5, 30, 30, 5], [5, 5, 20, 20]
    xs2, ys2 = [35, 50, 45], [22, 25, 38]
    above = {
        "a1.jpg1234": {
            "filename": "a1.jpg",
            "size": 1234,
            "regions": {
                "0": {
                    "shape_attributes": {"name": "polygon", "all_points_x": xs, "all_points_y": ys}
                }
            },
        }
    }
    below = {
        "b1.jpg999": {
            "filename": "b1.jpg",
            "regions": [
                {"shape_attributes": {"name": "polygon", "all_points_x": xs, "all_points_y": ys}},
                {"shape_attributes": {"name": "polygon", "all_points_x": xs2, "all_points_y": ys2}},
            ],
        }
    }
    (root / "ABOVE_LABELS.json").write_text(json.dumps(above))
    (root / "BELOW_LABELS.json").write_text(json.dumps(below))
    m1 = _poly_mask([[v for xy in zip(xs, ys) for v in xy]])
    m2 = _poly_mask([[v for xy in zip(xs2, ys2) for v in xy]])
    return {"ABOVE/a1": {"0": m1}, "BELOW/b1": {"0": m1, "1": m2}}, 0


def write_lvis(root):
    _save(root / "val2017" / "000000000139.jpg", _image(11))
    p = _poly(3, 4, 40, 30)
    data = {
        "images": [
            {
                "id": 139,
                "coco_url": "http://images.cocodataset.org/val2017/000000000139.jpg",
                "height": H,
                "width": W,
            }
        ],
        "annotations": [{"id": 5, "image_id": 139, "segmentation": [p], "category_id": 1}],
    }
    (root / "lvis_v0.5_val.json").write_text(json.dumps(data))
    return {"139": {"5": _poly_mask([p])}}, 0


def write_streets(root):
    _save(root / "images" / "cam1" / "frame7.png", _image(12))
    m1, m2 = _rect(5, 15, 5, 25), _rect(25, 35, 30, 50)
    (root / "meta").mkdir(parents=True)
    (root / "meta" / "cameras.json").write_text('{"cameras": []}')  # not annotations
    _coco(
        root / "annotations" / "streets_coco.json",
        [(7, "frame7.png", H, W)],
        [(1, 7, _rle(m1), 0), (2, 7, _rle(m2), 0)],
    )
    return {"7": {"1": m1, "2": m2}}, 0


def write_zerowaste(root):
    base = root / "splits_final_deblurred"
    _save(base / "train" / "data" / "01_frame_000010.PNG", _image(13))
    m1, m2 = _rect(0, 20, 0, 20), _rect(10, 40, 30, 56)
    _coco(
        base / "train" / "labels.json",
        [(3, "01_frame_000010.PNG", H, W)],
        [(1, 3, _uncompressed_rle(m1), 0), (2, 3, _rle(m2), 0), (9, 3, _rle(m1), 1)],
    )
    _coco(base / "val" / "labels.json", [(4, "x.PNG", H, W)], [(1, 4, _rle(m1), 0)])
    return {"3": {"1": m1, "2": m2}}, 0


def write_ishape(root):
    expected = {}
    for i, subset in enumerate(("antenna", "wire")):
        d = root / subset / "val"
        _save(d / "image" / "img_0.jpg", _image(14 + i))
        ids = np.zeros((H, W), np.uint16)
        ids[5:15, 5:50] = 300 + i
        ids[20:35, 10:20] = 2
        (d / "instance_map").mkdir(parents=True, exist_ok=True)
        Image.fromarray(ids).save(d / "instance_map" / "img_0.png")
        expected[f"{subset}/val/image/img_0"] = {str(300 + i): ids == 300 + i, "2": ids == 2}
    _save(root / "antenna" / "train" / "image" / "img_9.jpg", _image(20))
    return expected, 0


def write_ade20k(root):
    d = root / "images" / "ADE" / "validation" / "abbey"
    _save(d / "ADE_val_00000001.jpg", _image(21))
    seg = np.zeros((H, W, 3), np.uint8)
    seg[2:20, 2:20] = (0, 5, 1)  # class 5, instance 1
    seg[25:38, 30:50] = (10, 44, 2)  # class 1 * 256 + 44 = 300, instance 2
    _save(d / "ADE_val_00000001_seg.png", seg)
    parts = np.zeros((H, W, 3), np.uint8)
    parts[5:10, 5:10] = (0, 7, 1)
    _save(d / "ADE_val_00000001_parts_1.png", parts)
    return {
        "images/ADE/validation/abbey/ADE_val_00000001": {
            "object:5:1": _rect(2, 20, 2, 20),
            "object:300:2": _rect(25, 38, 30, 50),
            "part1:7:1": _rect(5, 10, 5, 10),
        }
    }, 0


def write_ovis(root):
    for t in (1, 2):
        _save(root / "train" / "vid1" / f"img_000000{t}.jpg", _image(22 + t))
    m1, m2 = _rect(3, 13, 3, 23), _rect(20, 30, 20, 40)
    data = {
        "videos": [
            {
                "id": 1,
                "width": W,
                "height": H,
                "length": 2,
                "file_names": ["vid1/img_0000001.jpg", "vid1/img_0000002.jpg"],
            }
        ],
        "annotations": [
            {"id": 10, "video_id": 1, "iscrowd": 0, "segmentations": [_rle(m1), None]},
            {
                "id": 11,
                "video_id": 1,
                "iscrowd": 0,
                "segmentations": [_uncompressed_rle(m2), _rle(m2)],
            },
        ],
    }
    (root / "annotations_train.json").write_text(json.dumps(data))
    return {
        "vid1/img_0000001.jpg": {"10": m1, "11": m2},
        "vid1/img_0000002.jpg": {"11": m2},
    }, 0


def write_hypersim(root):
    ids = np.full((H, W), -1, np.int32)
    ids[5:15, 5:15] = 3
    ids[20:30, 25:45] = 7
    for scene in ("ai_001_001", "ai_020_001", "ai_056_001"):  # 20 and 56 are not evaluated
        img = root / scene / "images" / "scene_cam_00_final_preview" / "frame.0000.tonemap.jpg"
        _save(img, _image(25))
        h5 = root / scene / "images" / "scene_cam_00_geometry_hdf5"
        h5.mkdir(parents=True)
        with h5py.File(h5 / "frame.0000.semantic_instance.hdf5", "w") as f:
            f.create_dataset("dataset", data=ids)
    key = "ai_001_001/images/scene_cam_00_final_preview/frame.0000.tonemap"
    return {key: {"3": ids == 3, "7": ids == 7}}, 0


def write_ndispark(root):
    _save(root / "train" / "imgs" / "park_1.jpg", _image(26))
    m = _rect(10, 20, 10, 40)
    _coco(
        root / "train" / "annotations" / "coco.json",
        [(1, "park_1.jpg", H, W)],
        [(1, 1, _rle(m), 0)],
    )
    _coco(
        root / "validation" / "annotations" / "coco.json",
        [(2, "park_2.jpg", H, W)],
        [(1, 2, _rle(m), 0)],
    )
    return {"1": {"1": m}}, 0


def write_visor(root):
    base = root / "GroundTruth-SparseAnnotations"
    name = "P01_107_frame_0000000140.jpg"
    buf = io.BytesIO()
    Image.fromarray(_image(27)).save(buf, format="JPEG")
    zdir = base / "rgb_frames" / "val" / "P01"
    zdir.mkdir(parents=True)
    with zipfile.ZipFile(zdir / "P01_107.zip", "w") as zf:
        zf.writestr(name, buf.getvalue())
    seg_a = [[[2, 2], [20, 2], [20, 12], [2, 12]], [[30, 30], [50, 30], [50, 38], [30, 38]]]
    seg_b = [[[25, 5], [40, 5], [40, 20]]]
    data = {
        "video_annotations": [
            {
                "image": {
                    "name": name,
                    "video": "P01_107",
                    "image_path": f"P01_107/{name}",
                    "subsequence": "P01_107_seq_1",
                },
                "annotations": [
                    {"id": "a1", "name": "left hand", "class_id": 300, "segments": seg_a},
                    {"id": "b2", "name": "knife", "class_id": 8, "segments": seg_b},
                ],
            }
        ]
    }
    (base / "annotations" / "val").mkdir(parents=True)
    (base / "annotations" / "val" / "P01_107.json").write_text(json.dumps(data))

    def flat(seg):
        return [[v for xy in poly for v in xy] for poly in seg]

    return {
        "P01_107_frame_0000000140": {"a1": _poly_mask(flat(seg_a)), "b2": _poly_mask(flat(seg_b))}
    }, 0


def write_plittersdorf(root):
    _save(root / "images" / "cam_left_0001.png", _image(28))
    m = _rect(5, 35, 5, 20)
    _coco(
        root / "annotations" / "instances_test.json",
        [(1, "cam_left_0001.png", H, W)],
        [(4, 1, _rle(m), 0)],
    )
    return {"1": {"4": m}}, 0


def write_egohos(root):
    label = np.zeros((H, W), np.uint8)
    label[2:12, 2:12] = 1
    label[20:30, 30:40] = 2
    label[14:18, 14:40] = 3
    for i, name in enumerate(("ego4d_abc_0001", "thu_read_0002", "epick_P01_0003")):
        _save(root / "train" / "image" / f"{name}.jpg", _image(29 + i))
        _save(root / "train" / "label" / f"{name}.png", label)
    exp = {"1": label == 1, "2": label == 2, "3": label == 3}
    return {"train/image/ego4d_abc_0001": exp, "train/image/thu_read_0002": exp}, 0


def write_ibd(root):
    _save(root / "images" / "roof_1.png", _image(32))
    m1, m2 = _rect(2, 18, 2, 18), _rect(20, 38, 20, 38)
    _coco(
        root / "annotations" / "instances_train.json",
        [(1, "roof_1.png", H, W)],
        [(1, 1, _rle(m1), 0), (2, 1, _rle(m2), 0)],
    )
    _coco(
        root / "annotations" / "instances_val.json",
        [(2, "roof_2.png", H, W)],
        [(1, 2, _rle(m1), 0)],
    )
    return {"1": {"1": m1, "2": m2}}, 0


def write_woodscape(root):
    _save(root / "rgb_images" / "00000_FV.png", _image(33))
    part1, part2 = [[2, 2], [15, 2], [15, 10], [2, 10]], [[2, 12], [15, 12], [15, 20], [2, 20]]
    road = [[20, 25], [55, 25], [55, 39], [20, 39]]
    data = {
        "00000_FV.png": {
            "image_width": W,
            "image_height": H,
            "image_channels": 3,
            "annotation": [
                {"tags": ["vehicles"], "segmentation": part1, "group_id": "g7"},
                {"tags": ["road_surface"], "segmentation": road},
                {"tags": ["vehicles"], "segmentation": part2, "group_id": "g7"},
            ],
        }
    }
    (root / "instance_annotations").mkdir(parents=True)
    (root / "instance_annotations" / "00000_FV.json").write_text(json.dumps(data))

    def flat(p):
        return [v for xy in p for v in xy]

    return {
        "00000_FV": {
            "g7:vehicles": _poly_mask([flat(part1), flat(part2)]),
            "1": _poly_mask([flat(road)]),
        }
    }, 0


def write_cityscapes(root):
    stem = "aachen_000000_000019"
    _save(root / "leftImg8bit" / "val" / "aachen" / f"{stem}_leftImg8bit.png", _image(34))
    ids = np.zeros((H, W), np.uint16)
    ids[:, :] = 1  # ego vehicle: void
    ids[0:10, :] = 23  # sky: stuff
    ids[30:40, :] = 7  # road: stuff
    ids[12:20, 5:15] = 26001  # car instances
    ids[12:20, 20:30] = 26002
    ids[22:28, 40:50] = 26  # cargroup without instance id: left out
    ids[22:28, 5:10] = 30001  # trailer: ignored in evaluation
    p = root / "gtFine" / "val" / "aachen" / f"{stem}_gtFine_instanceIds.png"
    p.parent.mkdir(parents=True)
    Image.fromarray(ids).save(p)
    return {
        f"leftImg8bit/val/aachen/{stem}_leftImg8bit": {
            str(v): ids == v for v in (7, 23, 26001, 26002)
        }
    }, 0


def write_pidray(root):
    _save(root / "hard" / "xray_hard_00001.png", _image(35))
    m = _rect(8, 30, 12, 44)
    _coco(
        root / "annotations" / "xray_test_hard.json",
        [(1, "xray_hard_00001.png", H, W)],
        [(1, 1, _rle(m), 0)],
    )
    _coco(
        root / "annotations" / "xray_test_easy.json",
        [(1, "xray_easy_1.png", H, W)],
        [(1, 1, _rle(m), 0)],
    )
    return {"1": {"1": m}}, 0


def write_dram(root):
    _save(root / "test" / "realism" / "painting_1.jpg", _image(36))
    label = np.zeros((H, W), np.uint8)
    label[2:10, 2:10] = 3
    label[20:30, 40:50] = 3
    label[15:35, 15:30] = 5
    label[36:38, 2:4] = 4  # 4 px: below the minimum component area
    label[0:2, 50:56] = 255
    _save(root / "labels" / "test" / "realism" / "painting_1.png", label)
    return {
        "test/realism/painting_1": {
            "3_1": _rect(2, 10, 2, 10),
            "3_2": _rect(20, 30, 40, 50),
            "5_1": label == 5,
        }
    }, 0


def write_trashcan(root):
    base = root / "dataset" / "instance_version"
    _save(base / "train" / "vid_000002_frame0000010.jpg", _image(37))
    p = _poly(5, 5, 30, 30)
    _coco(
        base / "instances_train_trashcan.json",
        [(1, "vid_000002_frame0000010.jpg", H, W)],
        [(1, 1, [p], 0)],
    )
    return {"1": {"1": _poly_mask([p])}}, 0


def write_gtea(root):
    _save(root / "Images" / "S1_Cheese_C1_0001.jpg", _image(38))
    hands = np.zeros((H, W), np.uint8)
    hands[20:38, 2:18] = 255
    hands[22:38, 36:54] = 255
    _save(root / "Masks" / "S1_Cheese_C1_0001.png", hands)
    return {
        "Images/S1_Cheese_C1_0001": {"1_1": _rect(20, 38, 2, 18), "1_2": _rect(22, 38, 36, 54)}
    }, 0


WRITERS = {
    "PPDLS": write_ppdls,
    "BBBC038v1": write_bbbc038,
    "DOORS": write_doors,
    "TimberSeg": write_timberseg,
    "NDD20": write_ndd20,
    "LVIS": write_lvis,
    "STREETS": write_streets,
    "ZeroWaste-f": write_zerowaste,
    "iShape": write_ishape,
    "ADE20K": write_ade20k,
    "OVIS": write_ovis,
    "Hypersim": write_hypersim,
    "NDISPark": write_ndispark,
    "VISOR": write_visor,
    "Plittersdorf": write_plittersdorf,
    "EgoHOS": write_egohos,
    "IBD": write_ibd,
    "WoodScape": write_woodscape,
    "Cityscapes": write_cityscapes,
    "PIDRay": write_pidray,
    "DRAM": write_dram,
    "TrashCan": write_trashcan,
    "GTEA": write_gtea,
}


def test_registry_has_the_papers_23_datasets():
    assert list(WRITERS) == list(registry.DATASETS)
    assert len(registry.DATASETS) == 23
    for spec in registry.DATASETS.values():
        assert "Obtain:" in spec.layout and "Layout" in spec.layout, spec.name
    assert registry.DATASETS["GTEA"].paper_delta == -21.4
    assert registry.DATASETS["PPDLS"].paper_delta == 46.9


def _check(dataset, expected, index_skips):
    got_ids = [s.image_id for s in dataset.samples]
    assert sorted(got_ids) == sorted(expected), got_ids
    assert dataset.skipped == index_skips, dataset.problems
    for sample in dataset.samples:
        image = sample.read_image()
        assert image.dtype == np.uint8 and image.shape == (H, W, 3)
        annotations = sample.read_masks()
        got = dict(annotations.instances)
        want = expected[sample.image_id]
        assert sorted(got) == sorted(want), (sample.image_id, sorted(got))
        for k, mask in want.items():
            assert mask.any()
            np.testing.assert_array_equal(got[k], mask, err_msg=f"{sample.image_id} {k}")
        assert sample.count_masks() == len(want) + len(annotations.problems)


@pytest.mark.parametrize("name", list(WRITERS))
def test_reader_on_release_layout(tmp_path, name):
    expected, index_skips = WRITERS[name](tmp_path / name)
    result_name, dataset = registry.open_dataset(name.lower(), tmp_path)
    assert result_name == name
    _check(dataset, expected, index_skips)


def test_unreadable_mask_file_is_a_problem_not_a_crash(tmp_path):
    write_bbbc038(tmp_path / "BBBC038v1")
    _, dataset = registry.open_dataset("BBBC038v1", tmp_path)
    annotations = dataset.samples[0].read_masks()
    assert len(annotations.instances) == 2
    assert len(annotations.problems) == 1 and "m3.png" in annotations.problems[0]


def test_corrupt_label_raises_data_error(tmp_path):
    write_gtea(tmp_path / "GTEA")
    (tmp_path / "GTEA" / "Masks" / "S1_Cheese_C1_0001.png").write_bytes(b"\x89PNG broken")
    _, dataset = registry.open_dataset("GTEA", tmp_path)
    with pytest.raises(DataError):
        dataset.samples[0].read_masks()


def test_missing_dataset_folder_names_the_layout(tmp_path):
    with pytest.raises(DataError, match="Layout"):
        registry.open_dataset("Cityscapes", tmp_path)
    with pytest.raises(DataError, match="unknown dataset"):
        registry.open_dataset("NotADataset", tmp_path)


def test_sa1b_and_coco_entries(tmp_path):
    write_sa1b(tmp_path / "sa", 2, seed=3, images_per_shard=None)
    name, dataset = registry.open_dataset(f"sa1b:{tmp_path / 'sa'}", None)
    assert name == "sa1b:sa" and len(dataset.samples) == 2
    masks = dataset.samples[0].read_masks().instances
    image = dataset.samples[0].read_image()
    assert masks and all(m.shape == image.shape[:2] for _, m in masks)

    write_sa1b(tmp_path / "shards", 3, seed=3, images_per_shard=2)
    _, sharded = registry.open_dataset(f"sa1b:{tmp_path / 'shards'}", None)
    assert len(sharded.samples) == 3

    write_streets(tmp_path / "c")
    ann = tmp_path / "c" / "annotations" / "streets_coco.json"
    name, coco = registry.open_dataset(f"coco:{ann}:{tmp_path / 'c' / 'images'}", None)
    assert name == "coco:streets_coco" and len(coco.samples) == 1
    with pytest.raises(DataError):
        registry.open_dataset(f"coco:{ann}", None)


def test_synthetic_entry_is_held_out_and_deterministic():
    from sam_jax.data.synthetic import make_example

    _, a = registry.open_dataset("synthetic", None, synthetic_images=3)
    _, b = registry.open_dataset("synthetic", None, synthetic_images=3)
    assert len(a.samples) == 3
    img_a, img_b = a.samples[1].read_image(), b.samples[1].read_image()
    np.testing.assert_array_equal(img_a, img_b)
    train_image, _ = make_example(1, 0)
    assert not np.array_equal(img_a, train_image)
    assert len(a.samples[1].read_masks().instances) == len(make_example(1, 1000)[1])


def test_synthetic_entry_takes_the_generator_settings():
    from sam_jax.data.synthetic import make_class_example, make_example

    options = {"size": (160, 200), "max_objects": 3}
    _, plain = registry.open_dataset("synthetic", None, 2, synthetic_options=options)
    image, masks = make_example(1, 1000, (160, 200), 3)
    np.testing.assert_array_equal(plain.samples[1].read_image(), image)
    got = plain.samples[1].read_masks().instances
    assert len(got) == len(masks)
    np.testing.assert_array_equal(got[0][1], masks[0])
    _, named = registry.open_dataset(
        "synthetic", None, 2, synthetic_options={**options, "classes": True}
    )
    image, masks, _ = make_class_example(1, 1000, (160, 200), 3)
    np.testing.assert_array_equal(named.samples[1].read_image(), image)
    assert len(named.samples[1].read_masks().instances) == len(masks)
    with pytest.raises(ValueError, match="max_objects"):
        registry.open_dataset("synthetic", None, 2, synthetic_options={"max_objects": 1})
    with pytest.raises(ValueError, match="size"):
        registry.open_dataset("synthetic", None, 2, synthetic_options={"size": (8, 8)})


def test_colour_coded_semantic_labels_split_per_colour_and_component():
    from sam_jax.evaluation.readers import connected_components

    label = np.zeros((H, W, 3), np.uint8)
    label[2:10, 2:10] = (200, 0, 0)
    label[20:30, 2:10] = (200, 0, 0)
    label[2:10, 30:40] = (0, 200, 0)
    label[30:35, 30:50] = 255  # ignore
    got = dict(connected_components(label))
    red = str(200 << 16)
    assert sorted(got) == sorted([f"{red}_1", f"{red}_2", f"{200 << 8}_1"])
    np.testing.assert_array_equal(got[f"{red}_2"], _rect(20, 30, 2, 10))
