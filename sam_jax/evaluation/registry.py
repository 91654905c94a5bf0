"""The 23 datasets of the SAM paper's single-point evaluation (appendix D.1, Table 7).

Each entry reads its dataset from `<data_dir>/<NAME>/` holding the release as extracted,
in the layout its docstring gives. `paper_delta` is SAM minus RITM mIoU at one click
(paper Fig. 9a); `split`, `paper_images` and `paper_masks` are Table 7's source split and
sample sizes. None of the data can be fetched by this code: download each release from
the address in its docstring (most need a licence agreement or a form).

Entries besides the registry names (see `open_dataset`): `synthetic`, `sa1b:DIR` and
`coco:ANN_JSON:IMAGE_DIR`.

The downstream tasks' datasets (paper section 7; `DOWNSTREAM`) read the same way from
`<data_dir>/<NAME>/`: COCO2017 and LVISv1 (instances, proposals, text) and BSDS500
(edges); their counts are the releases' own, not a table of the paper's.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable
from pathlib import Path

from sam_jax.data.sources import DataError
from sam_jax.evaluation import readers
from sam_jax.evaluation.readers import Dataset

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class DatasetSpec:
    name: str
    domain: str
    paper_delta: float | None  # None: not one of the 23 (a downstream task's dataset)
    split: str
    paper_images: int | None
    paper_masks: int | None
    fmt: str  # which shared reader
    read: Callable[[Path], Dataset]

    @property
    def layout(self) -> str:
        return self.read.__doc__ or ""


def _first_dir(root: Path, patterns: list[str]) -> Path | None:
    for pattern in patterns:
        found = sorted(p for p in root.glob(pattern) if p.is_dir())
        if found:
            return found[0]
    return None


def _require(path: Path | None, what: str, root: Path) -> Path:
    if path is None or not path.exists():
        raise DataError(f"{what} not found under {root}")
    return path


def _coco(name, root, patterns, image_roots=None) -> Dataset:
    files = readers.find_coco_files(root, patterns)
    if not files:
        raise DataError(f"{name}: no annotation JSON matching {patterns} under {root}")
    roots = image_roots(files[0]) if image_roots else [root]
    broad = any("*" in Path(p).name for p in patterns)
    dataset = readers.coco_json(name, files, roots, other_json_ok=broad)
    if not dataset.samples and not dataset.skipped:
        raise DataError(f"{name}: no COCO instance annotations in {[str(f) for f in files]}")
    dataset.layout = "COCO JSON " + ", ".join(str(f.relative_to(root)) for f in files)
    return dataset


# ---------------------------------------------------------------------------- readers
def read_ppdls(root: Path) -> Dataset:
    """PPDLS - Plant Phenotyping Datasets, leaf segmentation: CVPPP 2017 LSC training A1-A3.

    Obtain: https://www.plant-phenotyping.org/datasets (CVPPP2017_LSC_training.zip).
    Layout (as read by Wizaron/instance-segmentation-pytorch, data/scripts/CVPPP/
    1-create_annotations.py), the training folder at any depth under PPDLS/:
        PPDLS/CVPPP2017_LSC_training/training/A1/plant001_rgb.png + plant001_label.png
        .../training/A2/..., .../training/A3/...
    `*_label.png` is an indexed PNG whose palette index is the leaf id (0 = background).
    Table 7's 182 images fit A1-A3 (128 + 31 + 27 = 186 with labels), not A4 (624) or the
    testing sets (no labels), which are not read. The 2015 release's `Plant/` tree
    (Ara2012, Ara2013-Canon, Tobacco: the same plants and more) is read only when no A1-A3
    folder is there, and reported as such; with both, the reader stops rather than count
    plants twice.
    """

    def labelled(d: Path) -> bool:
        return d.is_dir() and any(d.glob("*_label.png"))

    subsets = sorted(d for d in root.glob("**/A[123]") if labelled(d) and "testing" not in d.parts)
    plant_tree = sorted(d for d in root.glob("**/Plant/*") if labelled(d))
    if subsets and plant_tree:
        raise DataError(
            f"PPDLS: both the CVPPP 2017 A1-A3 folders ({subsets[0]}) and the 2015 Plant/ tree "
            f"({plant_tree[0].parent}) are under {root}; keep one (A1-A3 is the paper's)"
        )
    names = [d.name for d in subsets]
    if len(names) != len(set(names)):
        raise DataError(f"PPDLS: more than one copy of {sorted(names)} under {root}")
    folders = subsets or plant_tree
    if not folders:
        raise DataError(
            f"PPDLS: expected CVPPP2017_LSC_training/training/A1..A3/*_label.png under {root}"
        )
    images = [p for d in folders for p in d.glob("*_rgb.png")]
    return readers.paired_label_maps(
        "PPDLS",
        images,
        lambda p: p.with_name(p.name[: -len("_rgb.png")] + "_label.png"),
        root,
        readers.decode_instance_png(),
        layout=(
            "CVPPP 2017 LSC training " + "+".join(names)
            if subsets
            else "2015 Plant/ tree (not the paper's A1-A3 subset)"
        ),
    )


def read_bbbc038(root: Path) -> Dataset:
    """BBBC038v1 - Kaggle 2018 Data Science Bowl nuclei, split stage1_train.

    Obtain: https://bbbc.broadinstitute.org/BBBC038 (stage1_train.zip). Layout (the Kaggle
    2018 Data Science Bowl data description; 670 images, so the paper's 227 are a subsample):
        BBBC038v1/stage1_train/<image_id>/images/<image_id>.png
        BBBC038v1/stage1_train/<image_id>/masks/<mask_id>.png   (one binary PNG per nucleus)
    """
    base = root / "stage1_train" if (root / "stage1_train").is_dir() else root
    items = []
    ds_skips = []
    for d in sorted(p for p in base.iterdir() if p.is_dir()):
        images = sorted((d / "images").glob("*.png"))
        if not images:
            ds_skips.append(f"no image in {d / 'images'}")
            continue
        masks = sorted((d / "masks").glob("*.png"))
        if masks:
            items.append((d.name, images[0], masks))
    ds = readers.mask_files("BBBC038v1", items)
    for m in ds_skips:
        ds.skip(m)
    return ds


def read_doors(root: Path) -> Dataset:
    """DOORS - Dataset fOr bOuldeRs Segmentation, subset DS1 (one boulder per image).

    Obtain: https://doi.org/10.5281/zenodo.7107409 (DOORS.zip). Layout (as read by
    dataset-ninja/doors, src/convert.py; DS1 holds about 45k renders, one boulder each):
        DOORS/Segmentation/DS1/DS/img/<name>.png
        DOORS/Segmentation/DS1/DS/mask/<name>.png   (boulder = 255)
    """
    img_dir = _require(
        _first_dir(root, ["Segmentation/DS1/DS/img", "DS1/DS/img", "**/DS1/DS/img"]),
        "DS1/DS/img",
        root,
    )
    items, missing = [], []
    for image in sorted(p for p in img_dir.iterdir() if p.suffix.lower() in (".png", ".jpg")):
        mask = img_dir.parent / "mask" / image.name
        if mask.is_file():
            items.append((image.stem, image, [mask]))
        else:
            missing.append(f"no mask {mask}")
    ds = readers.mask_files("DOORS", items)
    for m in missing:
        ds.skip(m)
    return ds


def read_timberseg(root: Path) -> Dataset:
    """TimberSeg 1.0 - logs in timber piles (COCO polygons).

    Obtain: https://data.mendeley.com/datasets/y5npsm3gkj (TimberSeg 1.0). Layout (as read
    by dataset-ninja/timber-seg, src/convert.py; `file_name`s carry a folder prefix, so
    pictures are also found by base name):
        TimberSeg/original/coco_annotation.json + TimberSeg/original/images/*
    (`prescaled/` with the same structure is used when `original/` is absent.)
    """
    return _coco(
        "TimberSeg",
        root,
        ["**/original/coco_annotation.json", "**/prescaled/coco_annotation.json"],
        lambda f: [f.parent / "images", f.parent],
    )


def read_ndd20(root: Path) -> Dataset:
    """NDD20 - Northumberland Dolphin Dataset 2020, above- and below-water images.

    Obtain: https://data.ncl.ac.uk/articles/dataset/The_Northumberland_Dolphin_Dataset_2020/
    (the zip has no top folder). Layout (VIA 1.x polygon JSON per set; polylines for the
    fins above water), also at any depth:
        NDD20/ABOVE/*.jpg  NDD20/ABOVE_LABELS.json
        NDD20/BELOW/*.jpg  NDD20/BELOW_LABELS.json
    """
    ds = Dataset("NDD20", [])
    found = False
    for part in ("ABOVE", "BELOW"):
        ann = next(
            iter(readers.find_coco_files(root, [f"{part}_LABELS.json", f"**/{part}_LABELS.json"])),
            None,
        )
        if ann is None:
            continue
        found = True
        sub = readers.via_json("NDD20", ann, ann.parent / part)
        for s in sub.samples:
            s.image_id = f"{part}/{s.image_id}"
        ds.samples.extend(sub.samples)
        ds.skipped += sub.skipped
        ds.problems.extend(sub.problems)
    if not found:
        raise DataError(f"NDD20: neither ABOVE_LABELS.json nor BELOW_LABELS.json under {root}")
    return ds


def read_lvis(root: Path) -> Dataset:
    """LVIS v0.5 validation (instance polygons on COCO 2017 images).

    Obtain: https://www.lvisdataset.org/dataset (lvis_v0.5_val.json.zip) and the COCO 2017
    val images from https://cocodataset.org. Layout:
        LVIS/lvis_v0.5_val.json   (or LVIS/annotations/lvis_v0.5_val.json)
        LVIS/val2017/000000001268.jpg
    The JSON's image entries name COCO-2014 files (`COCO_val2014_000000001268.jpg`) beside a
    `coco_url` into val2017; the pictures are found by the URL's `val2017/<name>`, or by the
    last 16 characters of the 2014 name (see `readers.image_file_names`). Annotations have
    no `iscrowd`: every one is read.
    """
    ds = _coco(
        "LVIS",
        root,
        ["lvis_v0.5_val.json", "**/lvis_v0.5_val.json"],
        lambda f: [
            root,
            f.parent,
            *(p for p in (root / "val2017", root / "train2017") if p.is_dir()),
        ],
    )
    ds.layout += " + val2017/"
    return ds


def read_streets(root: Path) -> Dataset:
    """STREETS - traffic camera images with vehicle masks (VIA 1.x polygon JSON).

    Obtain: https://databank.illinois.edu/datasets/IDB-3671567 (Snyder and Do, NeurIPS
    2019; cited as [91] in the SAM paper), the `vehicleannotations` element. Layout (the
    authors' corey-snyder/STREETS, benchmark/vehiclecounting/mrcnn_retrained_benchmarking.py,
    reads these paths):
        STREETS/vehicleannotations/annotations/vehicle-annotations.json
        STREETS/vehicleannotations/images/<camera view>-<k>.jpg
    The JSON is VIA 1.x: `{key: {"filename", "regions": {"0": {"shape_attributes":
    {"name": "polygon", "all_points_x", "all_points_y"}, "region_attributes":
    {"vehicle_type": "car"}}}}}`. Every vehicle region is a mask, whatever its type: the
    paper speaks of cars, and the release's own ground truth counts every vehicle polygon;
    the counts cannot tell the two apart, since the ~2950 annotated images hold far more than
    15k masks and the paper's 819 images are its ~10k-mask subsample. The stray VIA project
    `via_region_data.json` in images/ is not read.
    """
    ann = next(
        iter(
            readers.find_coco_files(
                root,
                [
                    "vehicleannotations/annotations/vehicle-annotations.json",
                    "**/vehicle-annotations.json",
                ],
            )
        ),
        None,
    )
    ann = _require(ann, "vehicleannotations/annotations/vehicle-annotations.json", root)
    ds = readers.via_json("STREETS", ann, ann.parent.parent / "images")
    ds.layout = f"{ann.relative_to(root)} (VIA 1.x) + images/"
    return ds


def read_zerowaste(root: Path) -> Dataset:
    """ZeroWaste-f - cluttered recycling scenes, split train.

    Obtain: https://github.com/dbash/zerowaste (zerowaste-f-final.zip, whose top folder is
    splits_final_deblurred/, as blumenstiel/MESS mess/prepare_datasets/prepare_zerowaste.py
    unpacks it). Layout:
        ZeroWaste-f/splits_final_deblurred/train/labels.json
        ZeroWaste-f/splits_final_deblurred/train/data/*.PNG
    """
    return _coco(
        "ZeroWaste-f",
        root,
        ["**/splits_final_deblurred/train/labels.json", "**/train/labels.json"],
        lambda f: [f.parent / "data", f.parent],
    )


def read_ishape(root: Path) -> Dataset:
    """iShape - irregular shapes (antenna, branch, fence, hanger, log, wire), split val.

    Obtain: https://ishape.github.io (ishape_dataset.tar). Layout, as the tar extracts
    (the dataset README; the generator in iShape/build_synthetic_ishape writes
    `instance_map` with cv2 as uint16), with or without the tar's own top folder:
        iShape/ishape_dataset/<subset>/val/image/<name>.jpg
        iShape/ishape_dataset/<subset>/val/instance_map/<name>.png   (16-bit instance ids,
            category * 1000 + k; 0 = background)
    One mask per id: fence and wire instances are several pieces each, so no splitting
    into connected components. The COCO JSONs beside them hold the same masks and are not
    read; neither is train/.
    """
    base = root / "ishape_dataset" if (root / "ishape_dataset").is_dir() else root
    exts = (".jpg", ".jpeg", ".png")
    images = [p for p in base.glob("*/val/image/*") if p.suffix.lower() in exts]
    if not images:
        images = [p for p in root.glob("**/val/image/*") if p.suffix.lower() in exts]
    items, missing = readers.pair_by_stem(
        images, lambda p: p.parent.parent / "instance_map" / (p.stem + ".png"), root
    )
    if not items and not missing:
        raise DataError(f"iShape: expected ishape_dataset/<subset>/val/image/*.jpg under {root}")
    ds = readers.label_maps("iShape", items, readers.decode_instance_png())
    ds.layout = (
        f"{base.relative_to(root) if base != root else '.'}/<subset>/val/{{image,instance_map}}"
    )
    for m in missing:
        ds.skip(m)
    return ds


def read_ade20k(root: Path) -> Dataset:
    """ADE20K validation, full release: object and part instances.

    Obtain: https://ade20k.csail.mit.edu (ADE20K_2021_17_01; the 2016 full release has the
    same file convention). Layout (CSAILVision/ADE20K, utils/utils_ade20k.py reads it):
        ADE20K/ADE20K_2021_17_01/images/ADE/validation/<scene>/.../ADE_val_00000001.jpg
        .../ADE_val_00000001_seg.png      (class = R/10*256 + G, instance = B)
        .../ADE_val_00000001_parts_1.png  (part levels 1, 2, ..., same encoding)
    Only validation images are read, each name once (if two releases are extracted side by
    side, the first in path order is kept). The per-image amodal instance folders are not
    used: they include occluded parts.
    """
    images = [p for p in root.rglob("ADE_val_*.jpg") if "validation" in p.parts]
    unique: dict[str, Path] = {}
    for p in sorted(images):
        unique.setdefault(p.name, p)
    if not unique:
        raise DataError(f"ADE20K: no images/ADE/validation/**/ADE_val_*.jpg under {root}")
    return readers.paired_label_maps(
        "ADE20K",
        unique.values(),
        lambda p: p.with_name(p.stem + "_seg.png"),
        root,
        readers.decode_ade20k,
        layout="images/ADE/validation/**/ADE_val_*.jpg + _seg.png / _parts_N.png",
    )


def read_ovis(root: Path) -> Dataset:
    """OVIS - Occluded Video Instance Segmentation, split train.

    Obtain: https://songbai.site/ovis/ (annotations_train.json, train.zip; "COCO-style,
    like YouTube-VIS", qjy981010/OVIS-project-page). Layout:
        OVIS/annotations_train.json   (or OVIS/annotations/annotations_train.json)
        OVIS/train/<video>/img_0000001.jpg   (or OVIS/Images/train/...)
    Every annotated frame is an image; its masks are the per-frame RLEs.
    """
    ann = next(
        iter(
            readers.find_coco_files(root, ["annotations_train.json", "**/annotations_train.json"])
        ),
        None,
    )
    ann = _require(ann, "annotations_train.json", root)
    frames = next(
        (
            d
            for d in (root / "train", root / "Images" / "train", ann.parent / "train")
            if d.is_dir()
        ),
        root / "train",
    )
    ds = readers.youtube_vis_json("OVIS", ann, frames)
    ds.layout = f"{ann.relative_to(root)} + {frames.relative_to(root)}/"
    return ds


_HYPERSIM_EXCLUDED_VOLUMES = {20, 25, 40, 49}


def read_hypersim(root: Path) -> Dataset:
    """Hypersim - photorealistic indoor scenes; Evermotion volumes 1-55 except 20, 25, 40, 49.

    Obtain: https://github.com/apple/ml-hypersim (code/python/tools/
    dataset_download_images.py; one zip per scene, each holding ai_VVV_NNN/; the README
    extracts them into evermotion_dataset/scenes/). Layout, scene folders at any depth:
        Hypersim/.../ai_001_001/images/scene_cam_00_final_preview/frame.0000.tonemap.jpg
        Hypersim/.../ai_001_001/images/scene_cam_00_geometry_hdf5/frame.0000.semantic_instance.hdf5
    The HDF5 dataset "dataset" holds an instance id per pixel (-1 = none).
    """
    images = []
    scenes = {}
    for scene in sorted(root.glob("**/ai_[0-9][0-9][0-9]_[0-9][0-9][0-9]")):
        if scene.is_dir() and (scene / "images").is_dir():
            scenes.setdefault(scene.name, scene)  # a scene extracted twice counts once
    for name, scene in sorted(scenes.items()):
        volume = int(name.split("_")[1])
        if not 1 <= volume <= 55 or volume in _HYPERSIM_EXCLUDED_VOLUMES:
            continue
        images.extend(scene.glob("images/scene_cam_*_final_preview/frame.*.tonemap.jpg"))
    if not scenes:
        raise DataError(f"Hypersim: no ai_VVV_NNN/images/ scene folder under {root}")

    def label_for(p: Path) -> Path:
        cam = p.parent.name.replace("_final_preview", "_geometry_hdf5")
        frame = p.name.replace(".tonemap.jpg", ".semantic_instance.hdf5")
        return p.parent.parent / cam / frame

    return readers.paired_label_maps(
        "Hypersim",
        images,
        label_for,
        root,
        readers.decode_hypersim,
        layout=f"{len(scenes)} scene folders ai_VVV_NNN/images/",
    )


def read_ndispark(root: Path) -> Dataset:
    """NDISPark - Night and Day Instance Segmented Park, split train (COCO-format JSON).

    Obtain: https://doi.org/10.5281/zenodo.6560823 (Ciampi et al.; cited as [22, 23] in
    the SAM paper). Layout (hkxiao/ASAM, sam_continue_learning/dat.py), at any depth:
        NDISPark/.../train/train_coco_annotations.json   (112 images, 2577 instances)
        NDISPark/.../train/imgs/<camera>_<time>.jpg
    The validation split (night) is not read.
    """
    return _coco(
        "NDISPark",
        root,
        ["**/train/*coco*.json", "**/*train*coco*.json"],
        lambda f: [f.parent / "imgs", f.parent, root],
    )


def read_visor(root: Path) -> Dataset:
    """EPIC-KITCHENS VISOR, sparse annotations, split val.

    Obtain: https://epic-kitchens.github.io/VISOR (GroundTruth-SparseAnnotations; the
    download may wrap it in a folder named after its DOI). Layout (epic-kitchens/VISOR-HOS,
    data_preparation/gen_coco_format.py, reads it so):
        VISOR/.../GroundTruth-SparseAnnotations/annotations/val/P01_107.json ...
        VISOR/.../GroundTruth-SparseAnnotations/rgb_frames/val/P01/P01_107.zip
    (frames may also be extracted to .../rgb_frames/val/P01/P01_107/<frame>.jpg).
    """
    base = _first_dir(root, ["GroundTruth-SparseAnnotations", "**/GroundTruth-SparseAnnotations"])
    base = base or root
    ann_dir = _require(
        base / "annotations" / "val", "GroundTruth-SparseAnnotations/annotations/val", root
    )
    ds = readers.visor_json("VISOR", sorted(ann_dir.glob("*.json")), base / "rgb_frames" / "val")
    ds.layout = f"{ann_dir.relative_to(root)}/*.json + rgb_frames/val/"
    return ds


def read_plittersdorf(root: Path) -> Dataset:
    """Plittersdorf - wildlife in SOCRATES stereo camera-trap images, all splits.

    Obtain: https://doi.org/10.5281/zenodo.7035934 (github timmh/socrates; its
    utils/ritm_to_coco*.py write the JSONs). Layout, at any depth:
        Plittersdorf/plittersdorf_instance_segmentation_coco/train.json, val.json, test.json
        Plittersdorf/plittersdorf_instance_segmentation_coco/images/<video>_<frame>.jpg
    The splits list some frames more than once (image ids restart per file, and the
    cross-validation fold files repeat the training frames), so each image file is read
    once. Fold files are read only when there is no train/val/test.json.
    """
    splits = ("train.json", "val.json", "test.json")
    files = sorted(
        (f for f in readers.find_coco_files(root, ["**/*.json"]) if f.name in splits),
        key=lambda f: (f.parent, splits.index(f.name)),
    )
    if not files:
        files = readers.find_coco_files(root, ["**/*fold*.json"])
    if not files:
        raise DataError(
            f"Plittersdorf: expected plittersdorf_instance_segmentation_coco/train.json, "
            f"val.json and test.json under {root}"
        )
    roots = sorted({f.parent / "images" for f in files}) + [root]
    ds = readers.coco_json("Plittersdorf", files, roots, unique_file_names=True)
    ds.layout = ", ".join(str(f.relative_to(root)) for f in files) + " + images/"
    return ds


def read_egohos(root: Path, prefixes: tuple[str, ...] = ("ego4d", "thu")) -> Dataset:
    """EgoHOS - egocentric hand-object segmentation, split train, Ego4D and THU-READ frames.

    Obtain: https://github.com/owenzlz/EgoHOS (download_datasets.sh: egohos_dataset.zip,
    which extracts under data/). Layout (its mmsegmentation config reads `train/image`
    with `train/label`), at any depth:
        EgoHOS/.../train/image/<source>_<name>.jpg
        EgoHOS/.../train/label/<source>_<name>.png   (0 background, 1 left hand, 2 right
            hand, 3-5 objects touched by the left, right or both hands, 6-8 second-order)
    Each label value is one mask. Only frames whose name starts with one of `prefixes`
    (the Ego4D and THU-READ sources, as in the paper) are read; a copy without any such
    frame is an error naming the prefixes it has.
    """
    split = next(
        (d for d in [root / "train" / "image", *sorted(root.glob("**/train/image"))] if d.is_dir()),
        None,
    )
    if split is None:
        raise DataError(f"EgoHOS: expected train/image/*.jpg (and train/label/) under {root}")
    images = sorted(p for p in split.iterdir() if p.suffix.lower() in (".jpg", ".png"))
    chosen = [p for p in images if p.name.lower().startswith(prefixes)]
    if not chosen:
        found = sorted({p.name.split("_")[0] for p in images[:2000]})
        raise DataError(
            f"EgoHOS: no frame in {split} starts with {'/'.join(prefixes)} (the Ego4D and "
            f"THU-READ frames); names there start with: {', '.join(found[:10]) or 'nothing'}"
        )
    return readers.paired_label_maps(
        "EgoHOS",
        chosen,
        lambda p: split.parent / "label" / (p.stem + ".png"),
        root,
        readers.decode_instance_png(),
        layout=f"{split.relative_to(root)} + label/ ({len(chosen)} of {len(images)} frames)",
    )


def read_ibd(root: Path) -> Dataset:
    """IBD - InstanceBuilding 2D, roof instances in drone images (RGB + height), split train.

    Obtain: https://californiachen.github.io/datasets/InstanceBuilding (Chen et al., "3D
    Instance Segmentation of MVS Buildings", TGRS 2022; cited as [17] in the SAM paper):
    608 images, 524 train and 84 val. Layout (the 2D part, at any depth under IBD/; as read
    by hkxiao/ASAM, sam_continue_learning/main.py, which evaluates on the paper's suite):
        IBD/.../train/<name>.png          RGBA: RGB plus the height map (alpha is dropped)
        IBD/.../train_labels/<name>.png   instance ids, 0 = background (8- or 16-bit)
    A COCO export (`*train*.json` with its images beside it) is read too. The val split is
    never read; without either layout the reader stops and says what it looked for.
    """
    train = sorted(
        d
        for d in [root / "train", *root.glob("**/train")]
        if d.is_dir() and (d.parent / "train_labels").is_dir()
    )
    if train:
        img_dir = train[0]
        images = [p for p in img_dir.iterdir() if p.suffix.lower() in readers.IMAGE_EXTENSIONS]
        return readers.paired_label_maps(
            "IBD",
            images,
            lambda p: img_dir.parent / "train_labels" / (p.stem + ".png"),
            root,
            readers.decode_instance_png(),
            layout=f"{img_dir.relative_to(root)}/ + train_labels/ instance-id PNGs",
        )
    if readers.find_coco_files(root, ["**/*train*.json"]):
        ds = _coco("IBD", root, ["**/*train*.json"])
        ds.layout = "COCO JSON *train*.json"
        return ds
    raise DataError(
        f"IBD: expected train/ beside train_labels/ (instance-id PNGs) or a COCO "
        f"*train*.json under {root}"
    )


def read_woodscape(root: Path) -> Dataset:
    """WoodScape - fisheye surround-view driving, set 1 instance annotations.

    Obtain: https://woodscape.valeo.com/download (github valeoai/WoodScape; set 1 is the
    8234 images of omnidet/data/train.txt and val.txt). Layout, at any depth under
    WoodScape/:
        WoodScape/rgb_images/00000_FV.png
        WoodScape/instance_annotations/00000_FV.json
    Each JSON is `{"00000_FV.json": {"image_width", "image_height", "annotation": [{"tags":
    [class], "segmentation": [[x, y], ...], "group_id"?}]}}` (WoodScape's
    scripts/parsers read the single value).
    """
    ann_dir = _first_dir(root, ["instance_annotations", "**/instance_annotations"])
    ann_dir = _require(ann_dir, "instance_annotations/", root)
    ds = readers.woodscape_json("WoodScape", ann_dir, ann_dir.parent / "rgb_images")
    ds.layout = f"{ann_dir.relative_to(root)}/ + rgb_images/"
    return ds


def read_cityscapes(root: Path) -> Dataset:
    """Cityscapes validation, panoptic segments (thing instances + one segment per stuff
    class, the 19 evaluated classes).

    Obtain: https://www.cityscapes-dataset.com (leftImg8bit_trainvaltest.zip,
    gtFine_trainvaltest.zip). Layout (the conventions of mcordts/cityscapesScripts,
    preparation/createPanopticImgs.py: labelId * 1000 + k for instances):
        Cityscapes/leftImg8bit/val/<city>/<city>_<seq>_<frame>_leftImg8bit.png
        Cityscapes/gtFine/val/<city>/<city>_<seq>_<frame>_gtFine_instanceIds.png
    """
    images = list((root / "leftImg8bit" / "val").glob("*/*_leftImg8bit.png"))
    if not images:
        raise DataError(f"Cityscapes: no leftImg8bit/val/*/*_leftImg8bit.png under {root}")

    def label_for(p: Path) -> Path:
        stem = p.name[: -len("_leftImg8bit.png")]
        return root / "gtFine" / "val" / p.parent.name / f"{stem}_gtFine_instanceIds.png"

    return readers.paired_label_maps(
        "Cityscapes", images, label_for, root, readers.decode_cityscapes_panoptic
    )


def read_pidray(root: Path) -> Dataset:
    """PIDray - prohibited items in X-ray baggage scans, split test (hard).

    Obtain: https://github.com/bywang2018/security-dataset (PIDray; its mmdetection configs
    read `annotations/xray_*.json` with images in a folder per split). Layout, the
    annotation file at any depth (copies often hold a second `pidray/` level):
        PIDRay/annotations/xray_test_hard.json
        PIDRay/hard/*.png
    """
    return _coco(
        "PIDRay",
        root,
        ["annotations/xray_test_hard.json", "**/xray_test_hard.json"],
        lambda f: [f.parent.parent / "hard", root / "hard", root],
    )


def read_dram(root: Path) -> Dataset:
    """DRAM - Diverse Realism in Art Movements, split test, semantic labels.

    Obtain: https://github.com/Nadavc220/SemanticSegmentationInArtPaintings ("DRAM
    Processed": DRAM_processed.zip holds DRAM_processed.rar). Layout (the authors'
    core/datasets/dram.py reads `test/<f>.jpg` with `labels/<f>.png`; blumenstiel/MESS,
    mess/prepare_datasets/prepare_dram.py, the same), directly under DRAM/ or under
    DRAM/DRAM_processed/:
        DRAM/test/<movement>/<artist>/<name>.jpg          (unseen: test/unseen/<movement>/...)
        DRAM/labels/<movement>/<artist>/<name>.png        (no test/ level under labels/)
    Labels are PASCAL VOC class ids per pixel (0 background, 255 ignore). One mask per class
    present in an image: Table 7's 1179 masks on 718 images (1.6 per image) fit one mask
    per class (mostly person, sometimes a horse, dog or boat beside it); splitting classes
    into connected components would give several masks for every group of figures.
    """
    base = root
    if not (root / "test").is_dir():
        nested = [d for d in (root / "DRAM_processed", root / "DRAM_500") if (d / "test").is_dir()]
        base = nested[0] if nested else root
    test, labels = base / "test", base / "labels"
    if not test.is_dir() or not labels.is_dir():
        raise DataError(f"DRAM: expected test/ and labels/ under {root} (or DRAM_processed/)")
    images = [p for p in test.rglob("*") if p.suffix.lower() in (".jpg", ".jpeg", ".png")]
    if not images:
        raise DataError(f"DRAM: no images under {test}")
    return readers.paired_label_maps(
        "DRAM",
        images,
        lambda p: labels / p.relative_to(test).with_suffix(".png"),
        root,
        readers.decode_instance_png(background=(0, 255)),
        layout=f"{test.relative_to(root) if test != root / 'test' else 'test'}/ + labels/",
    )


def read_trashcan(root: Path) -> Dataset:
    """TrashCan 1.0 - underwater trash, instance version, split train.

    Obtain: https://conservancy.umn.edu/handle/11299/214865 (dataset.zip; hkxiao/ASAM,
    sam_continue_learning/main.py, reads instance_version/instances_*_trashcan.json with
    the split's folder). Layout:
        TrashCan/dataset/instance_version/instances_train_trashcan.json
        TrashCan/dataset/instance_version/train/*.jpg
    """
    return _coco(
        "TrashCan",
        root,
        [
            "dataset/instance_version/instances_train_trashcan.json",
            "**/instance_version/instances_train_trashcan.json",
        ],
        lambda f: [f.parent / "train", f.parent],
    )


def read_gtea(root: Path) -> Dataset:
    """GTEA - Georgia Tech Egocentric Activity, hand masks (segmenting-hands task).

    Obtain: http://cbs.ic.gatech.edu/fpv/ ("Hand masks": hand2K_dataset.zip, which holds
    GTEA/ and GTEA_GAZE_PLUS/). Layout, the GTEA part only, directly under GTEA/ or at any
    depth below it (e.g. GTEA/hand2K_dataset/GTEA/):
        GTEA/Images/<name>.jpg
        GTEA/Masks/<name>.png    (a label image: left hand, right hand and intersecting
                                  hands carry distinct values, 0 = background)
    `oldImages/`, `Annotations/` (LabelMe XML) and the GTEA_GAZE_PLUS frames are not read.
    Each label value is one mask; frames without a hand have no masks and are left out.
    """
    candidates = [root] + sorted(
        d.parent for d in root.glob("**/Images") if d.parent.name.lower() == "gtea"
    )
    base = next((d for d in candidates if (d / "Images").is_dir() and (d / "Masks").is_dir()), None)
    if base is None:
        raise DataError(
            f"GTEA: expected Images/ beside Masks/ (the GTEA part of hand2K) under {root}"
        )
    images = [p for p in (base / "Images").iterdir() if p.suffix.lower() in (".jpg", ".png")]
    return readers.paired_label_maps(
        "GTEA",
        images,
        lambda p: base / "Masks" / (p.stem + ".png"),
        root,
        readers.decode_instance_png(),
        layout=f"{base.relative_to(root) / 'Images' if base != root else 'Images'}/ + Masks/",
    )


# --------------------------------------------------------------------------- registry
_I, _C, _S = "instance-id PNG", "COCO JSON", "semantic PNG, one mask per class"

DATASETS: dict[str, DatasetSpec] = {
    s.name: s
    for s in [
        DatasetSpec("PPDLS", "plants", 46.9, "N/A", 182, 2347, _I, read_ppdls),
        DatasetSpec(
            "BBBC038v1",
            "microscopy",
            44.7,
            "train",
            227,
            10506,
            "per-instance mask PNGs",
            read_bbbc038,
        ),
        DatasetSpec(
            "DOORS", "boulders", 41.1, "DS1", 10000, 10000, "per-instance mask PNGs", read_doors
        ),
        DatasetSpec("TimberSeg", "logs", 28.9, "N/A", 220, 2487, _C, read_timberseg),
        DatasetSpec(
            "NDD20", "underwater", 21.1, "N/A", 4402, 6100, "polygon JSON (VIA)", read_ndd20
        ),
        DatasetSpec(
            "LVIS", "scenes", 18.5, "validation (v0.5)", 945, 9642, "COCO JSON (LVIS)", read_lvis
        ),
        DatasetSpec(
            "STREETS", "traffic camera", 17.3, "N/A", 819, 9854, "polygon JSON (VIA)", read_streets
        ),
        DatasetSpec("ZeroWaste-f", "recycling", 9.1, "train", 2947, 6155, _C, read_zerowaste),
        DatasetSpec("iShape", "irregular shapes", 8.8, "validation", 754, 9742, _I, read_ishape),
        DatasetSpec(
            "ADE20K",
            "scenes",
            7.8,
            "validation",
            302,
            10128,
            "ADE20K full-release seg/parts PNGs",
            read_ade20k,
        ),
        DatasetSpec(
            "OVIS",
            "occlusions",
            7.0,
            "train",
            2044,
            10011,
            "video-frame JSON (YouTube-VIS RLE)",
            read_ovis,
        ),
        DatasetSpec(
            "Hypersim",
            "simulation",
            6.1,
            "Evermotion volumes 1-55 except 20,25,40,49",
            338,
            9445,
            "HDF5 instance maps",
            read_hypersim,
        ),
        DatasetSpec("NDISPark", "parking lots", 2.7, "train", 111, 2577, _C, read_ndispark),
        DatasetSpec(
            "VISOR",
            "egocentric",
            1.8,
            "validation",
            1864,
            10141,
            "video-frame JSON (VISOR polygons)",
            read_visor,
        ),
        DatasetSpec(
            "Plittersdorf",
            "stereo images",
            1.5,
            "train, validation, test",
            187,
            546,
            _C,
            read_plittersdorf,
        ),
        DatasetSpec(
            "EgoHOS", "egocentric", 0.8, "train (Ego4D, THU-READ)", 2940, 9961, _I, read_egohos
        ),
        DatasetSpec("IBD", "drones", -0.3, "train (2D annotations)", 467, 11953, _I, read_ibd),
        DatasetSpec(
            "WoodScape",
            "fisheye driving",
            -0.6,
            "set 1",
            107,
            10266,
            "polygon JSON (WoodScape)",
            read_woodscape,
        ),
        DatasetSpec(
            "Cityscapes",
            "driving",
            -2.0,
            "validation (panoptic)",
            293,
            9973,
            "instance-id PNG (Cityscapes instanceIds)",
            read_cityscapes,
        ),
        DatasetSpec("PIDRay", "x-ray", -5.8, "test (hard)", 3733, 8892, _C, read_pidray),
        DatasetSpec("DRAM", "paintings", -6.5, "test (semantic)", 718, 1179, _S, read_dram),
        DatasetSpec(
            "TrashCan", "underwater", -15.0, "train (instance task)", 5936, 9540, _C, read_trashcan
        ),
        DatasetSpec(
            "GTEA",
            "egocentric",
            -21.4,
            "train (segmenting hands)",
            652,
            1208,
            "hand label PNG, one mask per value",
            read_gtea,
        ),
    ]
}


# ------------------------------------------------------------- downstream task datasets
def locate_coco2017(root: Path) -> tuple[Path, list[Path]]:
    """(annotation file, image folders) of COCO 2017 val under root."""
    files = readers.find_coco_files(
        root,
        [
            "annotations/instances_val2017.json",
            "instances_val2017.json",
            "**/instances_val2017.json",
        ],
    )
    if not files:
        raise DataError(f"COCO2017: annotations/instances_val2017.json not found under {root}")
    images = _first_dir(root, ["val2017", "images/val2017", "**/val2017"])
    if images is None:
        raise DataError(f"COCO2017: image folder val2017/ not found under {root}")
    return files[0], [images]


def read_coco2017(root: Path) -> Dataset:
    """COCO 2017 validation: the instances task (paper 7.4) and text prompts (7.5).

    Obtain: https://cocodataset.org/#download (annotations_trainval2017.zip, val2017.zip).
    Layout, as the two zips extract:
        COCO2017/annotations/instances_val2017.json
        COCO2017/val2017/000000000139.jpg
    Crowd regions are not read as instances (they are ignored by COCOeval too).
    """
    ann, images = locate_coco2017(root)
    dataset = readers.coco_json("COCO2017", [ann], images)
    dataset.layout = f"COCO JSON {ann.relative_to(root)} + {images[0].relative_to(root)}/"
    return dataset


def locate_lvis_v1(root: Path) -> tuple[Path, list[Path]]:
    """(annotation file, image folders) of LVIS v1 val under root; its images are COCO
    2017 train and val pictures, found by each entry's `coco_url`."""
    files = readers.find_coco_files(
        root, ["lvis_v1_val.json", "annotations/lvis_v1_val.json", "**/lvis_v1_val.json"]
    )
    if not files:
        raise DataError(f"LVISv1: lvis_v1_val.json not found under {root}")
    folders = [
        p
        for name in ("val2017", "train2017")
        for p in (root / name, root / "images" / name, root.parent / "COCO2017" / name)
        if p.is_dir()
    ]
    if not folders:
        raise DataError(
            f"LVISv1: no COCO 2017 image folder (val2017/ or train2017/) under {root} or "
            f"{root.parent / 'COCO2017'}"
        )
    return files[0], folders


def read_lvis_v1(root: Path) -> Dataset:
    """LVIS v1 validation: the proposals (paper 7.3) and instances (7.4) tasks.

    Obtain: https://www.lvisdataset.org/dataset (lvis_v1_val.json.zip) and the COCO 2017
    train and val images (cocodataset.org): LVIS v1 val draws its pictures from both.
    Layout:
        LVISv1/lvis_v1_val.json
        LVISv1/val2017/000000397133.jpg  LVISv1/train2017/000000000009.jpg
    (or the image folders of a sibling COCO2017/). Images are found by the URL's
    `val2017/<name>` / `train2017/<name>` (LVIS v1 has no file_name).
    """
    ann, folders = locate_lvis_v1(root)
    dataset = readers.coco_json("LVISv1", [ann], [root, *folders])
    dataset.layout = f"LVIS JSON {ann.relative_to(root)} + " + ", ".join(
        f"{f.name}/" for f in folders
    )
    return dataset


def locate_bsds500(root: Path) -> tuple[Path, Path]:
    """(test image folder, test ground-truth folder) of BSDS500 under root."""
    for base in [root, *sorted(p.parent for p in root.glob("**/groundTruth") if p.is_dir())]:
        images, truth = base / "images" / "test", base / "groundTruth" / "test"
        if images.is_dir() and truth.is_dir():
            return images, truth
    raise DataError(
        f"BSDS500: no images/test/ beside groundTruth/test/ under {root} (extract "
        "BSR_bsds500.tgz there: BSR/BSDS500/data/...)"
    )


def read_bsds500(root: Path) -> Dataset:
    """BSDS500 test set: the edges task (paper 7.2), 200 images with 4-9 human boundary maps.

    Obtain: BSR_bsds500.tgz from the Berkeley segmentation resources page
    (https://www2.eecs.berkeley.edu/Research/Projects/CS/vision/grouping/resources.html).
    Layout, as the archive extracts:
        BSDS500/BSR/BSDS500/data/images/test/100007.jpg
        BSDS500/BSR/BSDS500/data/groundTruth/test/100007.mat
    Each .mat holds `groundTruth`, a cell array of structs with `Segmentation` and
    `Boundaries`; a sample's masks are the annotators' boundary maps.
    """
    from sam_jax.evaluation import bsds

    images, truth = locate_bsds500(root)
    dataset = Dataset("BSDS500", [], layout=f"{images.relative_to(root)}/ + groundTruth/test/*.mat")
    for path in sorted(images.iterdir()):
        if path.suffix.lower() not in readers.IMAGE_EXTENSIONS:
            continue
        mat = truth / (path.stem + ".mat")
        if not mat.is_file():
            dataset.skip(f"{path.name}: no ground-truth file {mat}")
            continue

        def read_masks(mat=mat, key=path.stem):
            maps = bsds.read_ground_truth(mat)
            return readers.Annotations([(f"{key}/{i + 1}", m) for i, m in enumerate(maps)])

        dataset.samples.append(
            readers.Sample(path.stem, lambda p=path: readers.read_rgb(p), read_masks)
        )
    return dataset


# The downstream datasets; their counts are the releases' (val / test splits).
DOWNSTREAM: dict[str, DatasetSpec] = {
    s.name: s
    for s in [
        DatasetSpec(
            "COCO2017", "objects", None, "val2017", 5000, 36781, "COCO JSON", read_coco2017
        ),
        DatasetSpec(
            "LVISv1", "objects", None, "val (v1)", 19809, 244707, "LVIS JSON", read_lvis_v1
        ),
        DatasetSpec(
            "BSDS500", "edges", None, "test", 200, None, "images + .mat boundaries", read_bsds500
        ),
    ]
}

# Averages over the 23 datasets for SAM ViT-H (SAM 2 paper), keyed by clicks.
PAPER_MEAN_MIOU = {1: 58.1, 5: 81.3}


def lookup(name: str) -> DatasetSpec | None:
    for spec in (*DATASETS.values(), *DOWNSTREAM.values()):
        if spec.name.lower() == name.lower():
            return spec
    return None


def open_dataset(
    entry: str,
    data_dir: str | Path | None,
    synthetic_images: int = 20,
    synthetic_options: dict | None = None,
) -> tuple[str, Dataset]:
    """(result name, indexed dataset) for one `--datasets` entry.

    `synthetic` draws `synthetic_images` held-out pictures; synthetic_options are the
    generator settings (`readers.synthetic`'s size, max_objects, classes).

    Registry names read `<data_dir>/<NAME>` (case-insensitive name match; the folder may
    use the registry spelling or lower case). Raises DataError when the data is not there.
    """
    entry = entry.strip()
    if entry == "synthetic":
        return "synthetic", readers.synthetic(
            "synthetic", synthetic_images, **(synthetic_options or {})
        )
    if entry.startswith("sa1b:"):
        path = Path(entry[len("sa1b:") :])
        name = f"sa1b:{path.name}"
        return name, readers.sa1b(name, path)
    if entry.startswith("coco:"):
        parts = entry[len("coco:") :].split(":", 1)
        if len(parts) != 2 or not all(parts):
            raise DataError(f"expected coco:ANN_JSON:IMAGE_DIR, got {entry!r}")
        ann, images = Path(parts[0]), Path(parts[1])
        if not ann.is_file():
            raise DataError(f"COCO annotation file not found: {ann}")
        if not images.is_dir():
            raise DataError(f"COCO image directory not found: {images}")
        name = f"coco:{ann.stem}"
        return name, readers.coco_json(name, [ann], images)
    spec = lookup(entry)
    if spec is None:
        raise DataError(
            f"unknown dataset {entry!r}; choose from {', '.join([*DATASETS, *DOWNSTREAM])}, "
            "synthetic, sa1b:DIR or coco:ANN_JSON:IMAGE_DIR"
        )
    if data_dir is None:
        raise DataError(f"{spec.name} needs --data_dir (expected <data_dir>/{spec.name}/)")
    root = Path(data_dir) / spec.name
    if not root.is_dir() and (Path(data_dir) / spec.name.lower()).is_dir():
        root = Path(data_dir) / spec.name.lower()
    if not root.is_dir():
        raise DataError(
            f"{spec.name}: folder {root} not found; extract the release there (the layout "
            f"is in README's dataset table and registry.{spec.read.__name__})"
        )
    try:
        dataset = spec.read(root)
    except DataError as e:  # every message names its dataset
        message = str(e)
        raise DataError(
            message if message.startswith(spec.name) else f"{spec.name}: {message}"
        ) from None
    if not dataset.samples and not dataset.skipped:
        raise DataError(f"{spec.name}: no annotated image found under {root}")
    dataset.name = spec.name
    return spec.name, dataset
