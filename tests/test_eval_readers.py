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
    """CVPPP2017_LSC_training.zip: training/A1..A4 (A4 and testing/ are not the paper's)."""
    base = root / "CVPPP2017_LSC_training" / "training"
    palette = [0, 0, 0, 255, 0, 0, 0, 255, 0] + [0] * 759
    expected = {}
    for subset, seed in (("A1", 1), ("A3", 2), ("A4", 3)):
        rgba = np.dstack([_image(seed), np.full((H, W), 255, np.uint8)])
        _save(base / subset / "plant001_rgb.png", rgba, "RGBA")
        label = np.zeros((H, W), np.uint8)
        label[2:10, 3:20] = 1
        label[15:30, 5:25] = 2
        im = Image.fromarray(label, "P")
        im.putpalette(palette)
        im.save(base / subset / "plant001_label.png")
        _save(base / subset / "plant001_fg.png", (label > 0).astype(np.uint8) * 255)
        if subset != "A4":
            expected[f"CVPPP2017_LSC_training/training/{subset}/plant001_rgb"] = {
                "1": label == 1,
                "2": label == 2,
            }
    _save(base / "A1" / "plant002_rgb.png", _image(4))  # no label file: skipped
    test = root / "CVPPP2017_testing" / "testing" / "A1"
    _save(test / "plant001_rgb.png", _image(5))  # the testing set has no labels: not read
    return expected, 1


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
    """lvis_v0.5_val.json as released: COCO-2014 file names beside a val2017 coco_url, no
    iscrowd, polygons; the pictures are COCO 2017 files."""
    p1, p2 = _poly(3, 4, 40, 30), _poly(30, 20, 50, 38)
    data = {"images": [], "annotations": [], "categories": [{"id": 1, "name": "aerosol_can"}]}
    for image_id, seed in ((139, 11), (285, 12), (632, 13)):
        _save(root / "val2017" / f"{image_id:012d}.jpg", _image(seed))
        data["images"].append(
            {
                "id": image_id,
                "file_name": f"COCO_val2014_{image_id:012d}.jpg",
                "coco_url": f"http://images.cocodataset.org/val2017/{image_id:012d}.jpg",
                "flickr_url": "http://farm9.staticflickr.com/x.jpg",
                "height": H,
                "width": W,
                "license": 3,
                "date_captured": "2013-11-19 20:30:17",
                "not_exhaustive_category_ids": [],
                "neg_category_ids": [5],
            }
        )
    for ann_id, image_id, poly in ((5, 139, p1), (6, 139, p2), (7, 285, p2)):
        data["annotations"].append(
            {
                "id": ann_id,
                "image_id": image_id,
                "segmentation": [poly],
                "category_id": 1,
                "area": 100.0,
                "bbox": [0, 0, 1, 1],
            }
        )
    (root / "lvis_v0.5_val.json").write_text(json.dumps(data))
    return {
        "139": {"5": _poly_mask([p1]), "6": _poly_mask([p2])},
        "285": {"7": _poly_mask([p2])},
    }, 0


def write_streets(root):
    """The vehicleannotations element: VIA 1.x regions keyed "0", "1", ...; file names with
    spaces; a stray VIA project among the images."""
    base = root / "vehicleannotations"
    xs1, ys1 = [5, 25, 25, 5], [5, 5, 15, 15]
    xs2, ys2 = [30, 50, 50, 30], [25, 25, 35, 35]
    entries = {}
    for name, seed in (("Delany at Ryan North-5.jpg", 12), ("Delany at Ryan North-6.jpg", 13)):
        _save(base / "images" / name, _image(seed))
        entries[f"{name}51234"] = {
            "fileref": "",
            "size": 51234,
            "filename": name,
            "base64_img_data": "",
            "file_attributes": {},
            "regions": {
                "0": {
                    "shape_attributes": {
                        "name": "polygon",
                        "all_points_x": xs1,
                        "all_points_y": ys1,
                    },
                    "region_attributes": {"vehicle_type": "car"},
                },
                "1": {
                    "shape_attributes": {
                        "name": "polygon",
                        "all_points_x": xs2,
                        "all_points_y": ys2,
                    },
                    "region_attributes": {"vehicle_type": "truck"},
                },
            },
        }
    (base / "annotations").mkdir(parents=True)
    (base / "annotations" / "vehicle-annotations.json").write_text(json.dumps(entries))
    (base / "images" / "via_region_data.json").write_text("{}")
    m1 = _poly_mask([[v for xy in zip(xs1, ys1) for v in xy]])
    m2 = _poly_mask([[v for xy in zip(xs2, ys2) for v in xy]])
    return {
        "Delany at Ryan North-5": {"0": m1, "1": m2},
        "Delany at Ryan North-6": {"0": m1, "1": m2},
    }, 0


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
    """ishape_dataset.tar as extracted: ishape_dataset/<subset>/{train,val}/{image,
    instance_map} with 16-bit ids category * 1000 + k; a fence-like instance in pieces."""
    expected = {}
    for i, subset in enumerate(("antenna", "wire")):
        d = root / "ishape_dataset" / subset / "val"
        _save(d / "image" / "0.jpg", _image(14 + i))
        ids = np.zeros((H, W), np.uint16)
        ids[5:15, 5:20] = 1000
        ids[5:15, 30:50] = 1000  # the same instance, a second piece
        ids[20:35, 10:20] = 1001
        (d / "instance_map").mkdir(parents=True, exist_ok=True)
        Image.fromarray(ids).save(d / "instance_map" / "0.png")
        (d / "coco_format-mask_encoding=rle-instances_2017.json").write_text("{}")
        expected[f"ishape_dataset/{subset}/val/image/0"] = {
            "1000": ids == 1000,
            "1001": ids == 1001,
        }
    _save(root / "ishape_dataset" / "antenna" / "train" / "image" / "9.jpg", _image(20))
    return expected, 0


def write_ade20k(root):
    d = root / "ADE20K_2021_17_01" / "images" / "ADE" / "validation" / "cultural" / "abbey"
    _save(d / "ADE_val_00000001.jpg", _image(21))
    train = root / "ADE20K_2021_17_01" / "images" / "ADE" / "training" / "cultural" / "abbey"
    _save(train / "ADE_train_00000001.jpg", _image(22))  # training: not read
    seg = np.zeros((H, W, 3), np.uint8)
    seg[2:20, 2:20] = (0, 5, 1)  # class 5, instance 1
    seg[25:38, 30:50] = (10, 44, 2)  # class 1 * 256 + 44 = 300, instance 2
    _save(d / "ADE_val_00000001_seg.png", seg)
    parts = np.zeros((H, W, 3), np.uint8)
    parts[5:10, 5:10] = (0, 7, 1)
    _save(d / "ADE_val_00000001_parts_1.png", parts)
    return {
        "ADE20K_2021_17_01/images/ADE/validation/cultural/abbey/ADE_val_00000001": {
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
    scenes = root / "evermotion_dataset" / "scenes"  # where the download script extracts
    for scene in ("ai_001_001", "ai_020_001", "ai_056_001"):  # 20 and 56 are not evaluated
        img = scenes / scene / "images" / "scene_cam_00_final_preview" / "frame.0000.tonemap.jpg"
        _save(img, _image(25))
        h5 = scenes / scene / "images" / "scene_cam_00_geometry_hdf5"
        h5.mkdir(parents=True)
        with h5py.File(h5 / "frame.0000.semantic_instance.hdf5", "w") as f:
            f.create_dataset("dataset", data=ids)
    key = (
        "evermotion_dataset/scenes/ai_001_001/images/scene_cam_00_final_preview/frame.0000.tonemap"
    )
    return {key: {"3": ids == 3, "7": ids == 7}}, 0


def write_ndispark(root):
    """The Zenodo archive: train/imgs + train/train_coco_annotations.json (an image
    without annotations is listed too), validation/ beside it."""
    base = root / "ndis_park"
    _save(base / "train" / "imgs" / "69_1531569730.jpg", _image(26))
    _save(base / "train" / "imgs" / "69_1531569735.jpg", _image(27))
    m = _rect(10, 20, 10, 40)
    _coco(
        base / "train" / "train_coco_annotations.json",
        [(1, "69_1531569730.jpg", H, W), (2, "69_1531569735.jpg", H, W)],
        [(1, 1, [_poly(10, 10, 40, 20)], 0)],
    )
    _coco(
        base / "validation" / "validation_coco_annotations.json",
        [(2, "park_2.jpg", H, W)],
        [(1, 2, _rle(m), 0)],
    )
    return {"1": {"1": _poly_mask([_poly(10, 10, 40, 20)])}}, 0


def write_visor(root):
    # the download wraps the tree in a folder named after its DOI
    base = root / "2v6cgv1x04ol22qp9rm9x2j6a7" / "GroundTruth-SparseAnnotations"
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
    """plittersdorf_instance_segmentation_coco/: images/ and train/val/test.json whose ids
    restart per file; one frame is in two splits, and the fold files repeat frames."""
    base = root / "plittersdorf_instance_segmentation_coco"
    _save(base / "images" / "vid01_000010.jpg", _image(28))
    _save(base / "images" / "vid02_000020.jpg", _image(29))
    m1, m2 = _rect(5, 35, 5, 20), _rect(10, 30, 30, 50)
    _coco(base / "train.json", [(1, "vid01_000010.jpg", H, W)], [(1, 1, [_poly(5, 5, 20, 35)], 0)])
    _coco(base / "val.json", [(1, "vid02_000020.jpg", H, W)], [(1, 1, _rle(m2), 0)])
    _coco(
        base / "test.json",
        [(1, "vid01_000010.jpg", H, W), (2, "vid02_000020.jpg", H, W)],
        [(1, 1, [_poly(5, 5, 20, 35)], 0), (2, 2, _rle(m2), 0)],
    )
    _coco(
        base / "train_fold_000_train.json", [(1, "vid01_000010.jpg", H, W)], [(1, 1, _rle(m1), 0)]
    )
    return {
        "vid01_000010": {"1": _poly_mask([_poly(5, 5, 20, 35)])},
        "vid02_000020": {"1": m2},
    }, 0


def write_egohos(root):
    """egohos_dataset.zip under data/: {train,val}/{image,label,contact}; frames named by
    source, of which Ego4D and THU-READ are read."""
    label = np.zeros((H, W), np.uint8)
    label[2:12, 2:12] = 1  # left hand
    label[20:30, 30:40] = 2  # right hand
    label[14:18, 14:40] = 4  # object touched by the right hand
    base = root / "data" / "train"
    for i, name in enumerate(("ego4d_abc_0001", "thu_read_0002", "epic_P01_0003")):
        _save(base / "image" / f"{name}.jpg", _image(29 + i))
        _save(base / "label" / f"{name}.png", label)
        _save(base / "contact" / f"{name}.png", (label == 4).astype(np.uint8))
    _save(root / "data" / "val" / "image" / "ego4d_val_0001.jpg", _image(40))
    _save(root / "data" / "val" / "label" / "ego4d_val_0001.png", label)
    exp = {"1": label == 1, "2": label == 2, "4": label == 4}
    return {"data/train/image/ego4d_abc_0001": exp, "data/train/image/thu_read_0002": exp}, 0


def write_ibd(root):
    """The 2D release: train/ (RGB + height as RGBA PNGs) beside train_labels/ (ids)."""
    rgbh = np.dstack([_image(32), np.full((H, W), 90, np.uint8)])
    _save(root / "2D" / "train" / "roof_1.png", rgbh, "RGBA")
    ids = np.zeros((H, W), np.uint16)
    ids[2:18, 2:18] = 1
    ids[20:38, 20:38] = 300  # more roofs than fit in 8 bits: a 16-bit label image
    _save(root / "2D" / "train_labels" / "roof_1.png", ids)
    _save(root / "2D" / "train" / "roof_2.png", rgbh, "RGBA")  # no label: skipped
    _save(root / "2D" / "val" / "roof_9.png", rgbh, "RGBA")  # val is not read
    _save(root / "2D" / "val_labels" / "roof_9.png", ids)
    return {"2D/train/roof_1": {"1": ids == 1, "300": ids == 300}}, 1


def write_woodscape(root):
    _save(root / "rgb_images" / "00000_FV.png", _image(33))
    part1, part2 = [[2, 2], [15, 2], [15, 10], [2, 10]], [[2, 12], [15, 12], [15, 20], [2, 20]]
    road = [[20, 25], [55, 25], [55, 39], [20, 39]]
    data = {
        "00000_FV.json": {
            "image_width": W,
            "image_height": H,
            "image_channels": 3,
            "annotation": [
                {"id": 1, "tags": ["car"], "segmentation": part1, "group_id": 7, "z_order": 2},
                {"id": 2, "tags": ["road_surface"], "segmentation": road, "z_order": 1},
                {"id": 3, "tags": ["car"], "segmentation": part2, "group_id": 7, "z_order": 2},
            ],
        }
    }
    (root / "instance_annotations").mkdir(parents=True)
    (root / "instance_annotations" / "00000_FV.json").write_text(json.dumps(data))

    def flat(p):
        return [v for xy in p for v in xy]

    return {
        "00000_FV": {
            "7:car": _poly_mask([flat(part1), flat(part2)]),
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
    base = root / "pidray"  # the archive's own top folder
    _save(base / "hard" / "xray_hard_00001.png", _image(35))
    _save(base / "easy" / "xray_easy_00001.png", _image(35))
    m = _rect(8, 30, 12, 44)
    _coco(
        base / "annotations" / "xray_test_hard.json",
        [(1, "xray_hard_00001.png", H, W)],
        [(1, 1, [_poly(12, 8, 44, 30)], 0)],
    )
    _coco(
        base / "annotations" / "xray_test_easy.json",
        [(1, "xray_easy_00001.png", H, W)],
        [(1, 1, _rle(m), 0)],
    )
    return {"1": {"1": _poly_mask([_poly(12, 8, 44, 30)])}}, 0


def write_dram(root):
    """DRAM_processed as unpacked: test/<movement>/<artist>/ beside labels/<movement>/<artist>/
    (no test/ level under labels/), PASCAL VOC ids in a palette PNG, 255 = ignore."""
    base = root / "DRAM_processed"
    voc_palette = [0, 0, 0] + [40 * (i % 6) for i in range(3 * 255)]
    expected = {}
    for rel, seed in (("realism/courbet/painting_1", 36), ("unseen/baroque/rubens/p2", 37)):
        _save(base / "test" / f"{rel}.jpg", _image(seed))
        label = np.zeros((H, W), np.uint8)
        label[2:10, 2:10] = 15  # person
        label[20:30, 40:50] = 15  # a second person: the same class, the same mask
        label[15:35, 15:30] = 13  # horse
        label[0:2, 50:56] = 255  # ignore
        im = Image.fromarray(label, "P")
        im.putpalette(voc_palette)
        (base / "labels" / rel).parent.mkdir(parents=True, exist_ok=True)
        im.save(base / "labels" / f"{rel}.png")
        expected[f"DRAM_processed/test/{rel}"] = {"15": label == 15, "13": label == 13}
    (base / "test" / "realism.txt").write_text("realism/courbet/painting_1\n")
    _save(base / "train" / "realism" / "courbet" / "unlabelled.jpg", _image(38))
    return expected, 0


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
    """hand2K_dataset.zip extracted under GTEA/: GTEA/Images + GTEA/Masks (label values per
    hand), beside GTEA_GAZE_PLUS and the superseded oldImages/oldMasks, which are not read."""
    base = root / "hand2K_dataset" / "GTEA"
    _save(base / "Images" / "S1_Cheese_C1_0001.jpg", _image(38))
    hands = np.zeros((H, W), np.uint8)
    hands[20:38, 2:18] = 1  # left
    hands[22:38, 36:54] = 2  # right
    hands[10:14, 20:30] = 1  # a second piece of the left hand: still one mask
    hands[30:38, 20:34] = 3  # intersecting hands
    _save(base / "Masks" / "S1_Cheese_C1_0001.png", hands)
    _save(base / "Images" / "S1_Cheese_C1_0002.jpg", _image(39))
    _save(base / "Masks" / "S1_Cheese_C1_0002.png", np.zeros((H, W), np.uint8))  # no hand
    _save(base / "oldImages" / "S1_Cheese_C1_0001.jpg", _image(38))
    _save(base / "oldMasks" / "S1_Cheese_C1_0001.png", hands)
    gaze = root / "hand2K_dataset" / "GTEA_GAZE_PLUS"
    _save(gaze / "Images" / "Ahmad_American" / "0001.jpg", _image(40))
    _save(gaze / "Masks" / "Ahmad_American" / "0001.png", hands)
    rel = "hand2K_dataset/GTEA/Images"
    return {
        f"{rel}/S1_Cheese_C1_0001": {"1": hands == 1, "2": hands == 2, "3": hands == 3},
        f"{rel}/S1_Cheese_C1_0002": {},
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
    masks = tmp_path / "GTEA" / "hand2K_dataset" / "GTEA" / "Masks"
    (masks / "S1_Cheese_C1_0001.png").write_bytes(b"\x89PNG broken")
    _, dataset = registry.open_dataset("GTEA", tmp_path)
    with pytest.raises(DataError):
        dataset.samples[0].read_masks()


def test_missing_dataset_folder_names_the_layout(tmp_path):
    with pytest.raises(DataError, match=r"^Cityscapes: folder .* not found; .*read_cityscapes\)$"):
        registry.open_dataset("Cityscapes", tmp_path)
    (tmp_path / "Cityscapes").mkdir()
    with pytest.raises(DataError, match=r"^Cityscapes: no leftImg8bit/val/"):
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

    write_trashcan(tmp_path / "c")
    base = tmp_path / "c" / "dataset" / "instance_version"
    ann = base / "instances_train_trashcan.json"
    name, coco = registry.open_dataset(f"coco:{ann}:{base / 'train'}", None)
    assert name == "coco:instances_train_trashcan" and len(coco.samples) == 1
    with pytest.raises(DataError):
        registry.open_dataset(f"coco:{ann}", None)


def test_synthetic_entry_is_held_out_and_deterministic():
    from sam_jax.data.synthetic import make_example

    _, a = registry.open_dataset("synthetic", None, synthetic_images=3)
    _, b = registry.open_dataset("synthetic", None, synthetic_images=3)
    assert len(a.samples) == 3
    img_a, img_b = a.samples[1].read_image(), b.samples[1].read_image()
    np.testing.assert_array_equal(img_a, img_b)
    held_out, masks = make_example(1, 0, held_out=True)
    np.testing.assert_array_equal(img_a, held_out)
    assert len(a.samples[1].read_masks().instances) == len(masks)
    # no training picture of any seed is a held-out picture of another
    for seed in range(4):
        for index in range(4):
            train_image, _ = make_example(index, seed)
            assert not np.array_equal(train_image, held_out)
    _, other = registry.open_dataset("synthetic", None, 3, synthetic_options={"seed": 5})
    assert not np.array_equal(other.samples[1].read_image(), img_a)


def test_synthetic_entry_takes_the_generator_settings():
    from sam_jax.data.synthetic import make_class_example, make_example

    options = {"size": (160, 200), "max_objects": 3}
    _, plain = registry.open_dataset("synthetic", None, 2, synthetic_options=options)
    image, masks = make_example(1, 0, (160, 200), 3, held_out=True)
    np.testing.assert_array_equal(plain.samples[1].read_image(), image)
    got = plain.samples[1].read_masks().instances
    assert len(got) == len(masks)
    np.testing.assert_array_equal(got[0][1], masks[0])
    _, named = registry.open_dataset(
        "synthetic", None, 2, synthetic_options={**options, "classes": True}
    )
    image, masks, _ = make_class_example(1, 0, (160, 200), 3, held_out=True)
    np.testing.assert_array_equal(named.samples[1].read_image(), image)
    assert len(named.samples[1].read_masks().instances) == len(masks)
    with pytest.raises(ValueError, match="max_objects"):
        registry.open_dataset("synthetic", None, 2, synthetic_options={"max_objects": 1})
    with pytest.raises(ValueError, match="size"):
        registry.open_dataset("synthetic", None, 2, synthetic_options={"size": (8, 8)})


def test_readers_refuse_what_is_not_the_papers_subset(tmp_path):
    # EgoHOS with only EPIC-KITCHENS frames: no silent fallback to every frame
    label = np.zeros((H, W), np.uint8)
    label[2:12, 2:12] = 1
    _save(tmp_path / "EgoHOS" / "train" / "image" / "epic_P01_0003.jpg", _image(1))
    _save(tmp_path / "EgoHOS" / "train" / "label" / "epic_P01_0003.png", label)
    with pytest.raises(DataError, match=r"EgoHOS: no frame .* ego4d/thu .* start with: epic"):
        registry.open_dataset("EgoHOS", tmp_path)
    # PPDLS with both the CVPPP 2017 A1-A3 folders and the 2015 Plant/ tree: not twice
    write_ppdls(tmp_path / "PPDLS")
    _save(tmp_path / "PPDLS" / "Plant" / "Ara2012" / "ara2012_plant001_rgb.png", _image(2))
    _save(tmp_path / "PPDLS" / "Plant" / "Ara2012" / "ara2012_plant001_label.png", label)
    with pytest.raises(DataError, match="PPDLS: both the CVPPP 2017 A1-A3 folders"):
        registry.open_dataset("PPDLS", tmp_path)
    # IBD with neither its label folders nor a COCO export: no "any JSON" fallback
    (tmp_path / "IBD" / "meta").mkdir(parents=True)
    (tmp_path / "IBD" / "meta" / "info.json").write_text('{"images": [], "annotations": []}')
    with pytest.raises(DataError, match=r"IBD: expected train/ beside train_labels/"):
        registry.open_dataset("IBD", tmp_path)
    # Plittersdorf without its split files
    (tmp_path / "Plittersdorf").mkdir()
    (tmp_path / "Plittersdorf" / "other.json").write_text("{}")
    with pytest.raises(DataError, match="Plittersdorf: expected .*train.json"):
        registry.open_dataset("Plittersdorf", tmp_path)


def test_ppdls_reads_the_2015_tree_alone_and_says_so(tmp_path):
    label = np.zeros((H, W), np.uint8)
    label[2:12, 2:12] = 3
    base = tmp_path / "PPDLS" / "Plant_Phenotyping_Datasets" / "Plant" / "Tobacco"
    _save(base / "tobacco_plant001_rgb.png", _image(2))
    _save(base / "tobacco_plant001_label.png", label)
    _, dataset = registry.open_dataset("PPDLS", tmp_path)
    assert len(dataset.samples) == 1 and "not the paper's" in dataset.layout


def test_lvis_finds_pictures_by_their_2017_names_without_a_url(tmp_path):
    from sam_jax.evaluation.readers import image_file_names

    assert image_file_names({"file_name": "COCO_val2014_000000001268.jpg"}) == [
        "000000001268.jpg",
        "COCO_val2014_000000001268.jpg",
    ]
    assert image_file_names({"coco_url": "http://x/val2017/000000000139.jpg"})[0] == (
        "val2017/000000000139.jpg"
    )
    with pytest.raises(KeyError):
        image_file_names({})


@pytest.mark.parametrize("name", list(WRITERS))
def test_empty_dataset_folder_is_one_line_naming_it(tmp_path, name):
    (tmp_path / name).mkdir()
    with pytest.raises(DataError) as e:
        registry.open_dataset(name, tmp_path)
    assert str(e.value).startswith(f"{name}: ") and "\n" not in str(e.value)
