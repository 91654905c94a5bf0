"""The 23 datasets of the SAM paper's single-point evaluation (appendix D.1, Table 7).

Each entry reads its dataset from `<data_dir>/<NAME>/` holding the release as extracted,
in the layout its docstring gives. `paper_delta` is SAM minus RITM mIoU at one click
(paper Fig. 9a); `split`, `paper_images` and `paper_masks` are Table 7's source split and
sample sizes. None of the data can be fetched by this code: download each release from
the address in its docstring (most need a licence agreement or a form).

Entries besides the registry names (see `open_dataset`): `synthetic`, `sa1b:DIR` and
`coco:ANN_JSON:IMAGE_DIR`.
"""

from __future__ import annotations

import dataclasses
import logging
import re
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
    paper_delta: float
    split: str
    paper_images: int
    paper_masks: int
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
    return dataset


# ---------------------------------------------------------------------------- readers
def read_ppdls(root: Path) -> Dataset:
    """PPDLS - Plant Phenotyping Datasets, leaf segmentation (CVPPP LSC).

    Obtain: https://www.plant-phenotyping.org/datasets (Plant Phenotyping Datasets, or the
    CVPPP 2017 LSC training data). Layout, searched recursively:
        PPDLS/A1/plant001_rgb.png + A1/plant001_label.png      (CVPPP 2017 A1..A4)
        PPDLS/Plant/Ara2012/ara2012_plant001_rgb.png + ..._label.png   (2014 release)
    `*_label.png` is an indexed PNG whose palette index is the leaf id (0 = background).
    """
    items, missing = readers.pair_by_stem(
        root.rglob("*_rgb.png"),
        lambda p: p.with_name(p.name[: -len("_rgb.png")] + "_label.png"),
        root,
    )
    ds = readers.label_maps("PPDLS", items, readers.decode_instance_png())
    for m in missing:
        ds.skip(m)
    return ds


def read_bbbc038(root: Path) -> Dataset:
    """BBBC038v1 - Kaggle 2018 Data Science Bowl nuclei, split stage1_train.

    Obtain: https://bbbc.broadinstitute.org/BBBC038 (stage1_train.zip). Layout:
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

    Obtain: https://doi.org/10.5281/zenodo.7107409 (Segmentation archive). Layout:
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

    Obtain: https://data.mendeley.com/datasets/y5npsm3gkj (TimberSeg 1.0). Layout:
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
    Layout (VIA polygon JSON per set):
        NDD20/ABOVE/*.jpg  NDD20/ABOVE_LABELS.json
        NDD20/BELOW/*.jpg  NDD20/BELOW_LABELS.json
    """
    ds = Dataset("NDD20", [])
    found = False
    for part in ("ABOVE", "BELOW"):
        ann = root / f"{part}_LABELS.json"
        if not ann.is_file():
            continue
        found = True
        sub = readers.via_json("NDD20", ann, root / part)
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

    Obtain: https://www.lvisdataset.org/dataset (lvis_v0.5_val.json) and the COCO 2017
    images from https://cocodataset.org. Layout:
        LVIS/lvis_v0.5_val.json
        LVIS/val2017/*.jpg  (and/or LVIS/train2017/*.jpg; images are found by file name)
    """
    return _coco(
        "LVIS",
        root,
        ["lvis_v0.5_val.json", "**/lvis_v0.5_val.json"],
        lambda f: [p for p in (root / "val2017", root / "train2017") if p.is_dir()] or [root],
    )


def read_streets(root: Path) -> Dataset:
    """STREETS - traffic camera images with car masks (COCO-format JSON).

    Obtain: the STREETS release (Snyder and Do, NeurIPS 2019; cited as [91] in the SAM
    paper). Layout: the
    release extracted under STREETS/; every COCO instance JSON found under it is read, and
    images are looked up by file name anywhere under STREETS/.
    """
    return _coco("STREETS", root, ["**/*.json"])


def read_zerowaste(root: Path) -> Dataset:
    """ZeroWaste-f - cluttered recycling scenes, split train.

    Obtain: https://github.com/dbash/zerowaste (zerowaste-f-final.zip). Layout:
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

    Obtain: https://ishape.github.io. Layout, one folder per sub-dataset:
        iShape/<subset>/val/image/<name>.jpg
        iShape/<subset>/val/instance_map/<name>.png   (one id per instance, 0 = background)
    """
    images = [p for p in root.glob("*/val/image/*") if p.suffix.lower() in (".jpg", ".png")]
    items, missing = readers.pair_by_stem(
        images, lambda p: p.parent.parent / "instance_map" / (p.stem + ".png"), root
    )
    if not items and not missing:
        raise DataError(f"iShape: no <subset>/val/image/* under {root}")
    ds = readers.label_maps("iShape", items, readers.decode_instance_png())
    for m in missing:
        ds.skip(m)
    return ds


def read_ade20k(root: Path) -> Dataset:
    """ADE20K validation, full release: object and part instances.

    Obtain: https://groups.csail.mit.edu/vision/datasets/ADE20K/ (ADE20K_2021_17_01; the
    2016 full release has the same file convention). Layout, searched recursively:
        ADE20K/images/ADE/validation/<scene>/ADE_val_00000001.jpg
        .../ADE_val_00000001_seg.png      (class = R/10*256 + G, instance = B)
        .../ADE_val_00000001_parts_1.png  (part levels 1, 2, ..., same encoding)
    """
    items, missing = readers.pair_by_stem(
        root.rglob("ADE_val_*.jpg"), lambda p: p.with_name(p.stem + "_seg.png"), root
    )
    ds = readers.label_maps("ADE20K", items, readers.decode_ade20k)
    for m in missing:
        ds.skip(m)
    return ds


def read_ovis(root: Path) -> Dataset:
    """OVIS - Occluded Video Instance Segmentation, split train.

    Obtain: https://songbai.site/ovis/ (annotations_train.json, train.zip). Layout:
        OVIS/annotations_train.json   (or OVIS/annotations/annotations_train.json)
        OVIS/train/<video>/<frame>.jpg
    Every annotated frame is an image; its masks are the per-frame RLEs.
    """
    ann = next(
        (
            p
            for p in (
                root / "annotations_train.json",
                root / "annotations" / "annotations_train.json",
            )
            if p.is_file()
        ),
        None,
    )
    ann = _require(ann, "annotations_train.json", root)
    return readers.youtube_vis_json("OVIS", ann, root / "train")


_HYPERSIM_EXCLUDED_VOLUMES = {20, 25, 40, 49}


def read_hypersim(root: Path) -> Dataset:
    """Hypersim - photorealistic indoor scenes; Evermotion volumes 1-55 except 20, 25, 40, 49.

    Obtain: https://github.com/apple/ml-hypersim (download script; needs the tonemapped
    `final_preview` JPEGs and the `geometry_hdf5` semantic_instance files). Layout:
        Hypersim/ai_001_001/images/scene_cam_00_final_preview/frame.0000.tonemap.jpg
        Hypersim/ai_001_001/images/scene_cam_00_geometry_hdf5/frame.0000.semantic_instance.hdf5
    The HDF5 dataset "dataset" holds an instance id per pixel (-1 = none).
    """
    images = []
    for scene in sorted(root.glob("ai_*_*")):
        m = re.fullmatch(r"ai_(\d+)_\d+", scene.name)
        if not m or not 1 <= int(m.group(1)) <= 55:
            continue
        if int(m.group(1)) in _HYPERSIM_EXCLUDED_VOLUMES:
            continue
        images.extend(scene.glob("images/scene_cam_*_final_preview/frame.*.tonemap.jpg"))

    def label_for(p: Path) -> Path:
        cam = p.parent.name.replace("_final_preview", "_geometry_hdf5")
        frame = p.name.replace(".tonemap.jpg", ".semantic_instance.hdf5")
        return p.parent.parent / cam / frame

    items, missing = readers.pair_by_stem(images, label_for, root)
    ds = readers.label_maps("Hypersim", items, readers.decode_hypersim)
    for m in missing:
        ds.skip(m)
    return ds


def read_ndispark(root: Path) -> Dataset:
    """NDISPark - Night and Day Instance Segmented Park, split train (COCO-format JSON).

    Obtain: the NDISPark release on Zenodo (Ciampi et al., 2021-2022; cited as [22, 23] in
    the SAM paper). Layout: the release extracted
    under NDISPark/; COCO JSONs under a `train` folder (or named `*train*.json`) are read,
    images are looked up by file name anywhere under NDISPark/.
    """
    return _coco("NDISPark", root, ["**/train/**/*.json", "**/*train*.json"])


def read_visor(root: Path) -> Dataset:
    """EPIC-KITCHENS VISOR, sparse annotations, split val.

    Obtain: https://epic-kitchens.github.io/VISOR (GroundTruth-SparseAnnotations). Layout:
        VISOR/GroundTruth-SparseAnnotations/annotations/val/P01_107.json ...
        VISOR/GroundTruth-SparseAnnotations/rgb_frames/val/P01/P01_107.zip
    (frames may also be extracted to .../rgb_frames/val/P01/P01_107/<frame>.jpg).
    """
    base = root / "GroundTruth-SparseAnnotations"
    base = base if base.is_dir() else root
    ann_dir = _require(base / "annotations" / "val", "annotations/val", root)
    return readers.visor_json("VISOR", sorted(ann_dir.glob("*.json")), base / "rgb_frames" / "val")


def read_plittersdorf(root: Path) -> Dataset:
    """Plittersdorf - wildlife in SOCRATES stereo camera-trap images, all splits.

    Obtain: https://github.com/timmh/socrates (Plittersdorf instance segmentation
    dataset). Layout: the release extracted under Plittersdorf/; every COCO instance JSON
    under it (train, val, test) is read; images are looked up by file name.
    """
    return _coco("Plittersdorf", root, ["**/*.json"])


def read_egohos(root: Path, prefixes: tuple[str, ...] = ("ego4d", "thu")) -> Dataset:
    """EgoHOS - egocentric hand-object segmentation, split train, Ego4D and THU-READ frames.

    Obtain: https://github.com/owenzlz/EgoHOS (data download script). Layout:
        EgoHOS/train/image/<name>.jpg
        EgoHOS/train/label/<name>.png   (1 left hand, 2 right hand, 3-8 hand objects)
    Each label value is one instance. Only frames whose name starts with one of `prefixes`
    (the Ego4D and THU-READ sources) are used; if none does, all frames are used.
    """
    images = sorted((root / "train" / "image").glob("*.jpg"))
    if not images:
        raise DataError(f"EgoHOS: no train/image/*.jpg under {root}")
    chosen = [p for p in images if p.name.lower().startswith(prefixes)]
    if not chosen:
        log.warning("EgoHOS: no frame named %s*; using all %d frames", prefixes, len(images))
        chosen = images
    items, missing = readers.pair_by_stem(
        chosen, lambda p: root / "train" / "label" / (p.stem + ".png"), root
    )
    ds = readers.label_maps("EgoHOS", items, readers.decode_instance_png())
    for m in missing:
        ds.skip(m)
    return ds


def read_ibd(root: Path) -> Dataset:
    """IBD - InstanceBuilding 2D, roof instances in drone images, split train.

    Obtain: the InstanceBuilding release (cited as [17] in the SAM paper). Layout: the
    release extracted
    under IBD/; COCO JSONs named `*train*.json` are read (any COCO JSON if none is), images
    looked up by file name anywhere under IBD/.
    """
    return _coco("IBD", root, ["**/*train*.json", "**/*.json"])


def read_woodscape(root: Path) -> Dataset:
    """WoodScape - fisheye surround-view driving, set 1 instance annotations.

    Obtain: https://woodscape.valeo.com/download. Layout:
        WoodScape/rgb_images/00000_FV.png
        WoodScape/instance_annotations/00000_FV.json   (polygons per object)
    """
    ann_dir = _require(root / "instance_annotations", "instance_annotations/", root)
    return readers.woodscape_json("WoodScape", ann_dir, root / "rgb_images")


def read_cityscapes(root: Path) -> Dataset:
    """Cityscapes validation, panoptic segments (thing instances + one segment per stuff
    class, the 19 evaluated classes).

    Obtain: https://www.cityscapes-dataset.com (leftImg8bit_trainvaltest.zip,
    gtFine_trainvaltest.zip). Layout:
        Cityscapes/leftImg8bit/val/<city>/<city>_<seq>_<frame>_leftImg8bit.png
        Cityscapes/gtFine/val/<city>/<city>_<seq>_<frame>_gtFine_instanceIds.png
    """
    images = list((root / "leftImg8bit" / "val").glob("*/*_leftImg8bit.png"))
    if not images:
        raise DataError(f"Cityscapes: no leftImg8bit/val/*/*_leftImg8bit.png under {root}")

    def label_for(p: Path) -> Path:
        stem = p.name[: -len("_leftImg8bit.png")]
        return root / "gtFine" / "val" / p.parent.name / f"{stem}_gtFine_instanceIds.png"

    items, missing = readers.pair_by_stem(images, label_for, root)
    ds = readers.label_maps("Cityscapes", items, readers.decode_cityscapes_panoptic)
    for m in missing:
        ds.skip(m)
    return ds


def read_pidray(root: Path) -> Dataset:
    """PIDray - prohibited items in X-ray baggage scans, split test (hard).

    Obtain: https://github.com/bywang2018/security-dataset (PIDray). Layout:
        PIDRay/annotations/xray_test_hard.json
        PIDRay/hard/*.png
    """
    return _coco(
        "PIDRay",
        root,
        ["annotations/xray_test_hard.json", "**/xray_test_hard.json"],
        lambda f: [root / "hard", root],
    )


def read_dram(root: Path) -> Dataset:
    """DRAM - Diverse Realism in Art Movements, split test, semantic labels.

    Obtain: the DRAM release (Cohen et al., "Semantic segmentation in art paintings",
    cited as [24] in the SAM paper; DRAM_processed). Layout:
        DRAM/test/<movement>/<name>.jpg
        DRAM/labels/test/<movement>/<name>.png   (class per pixel, 0 background, 255 ignore)
    Following the paper, each connected component of a class is one mask.
    """
    images = [p for p in (root / "test").rglob("*") if p.suffix.lower() in (".jpg", ".png")]
    if not images:
        raise DataError(f"DRAM: no images under {root / 'test'}")
    items, missing = readers.pair_by_stem(
        images,
        lambda p: root / "labels" / p.relative_to(root).with_suffix(".png"),
        root,
    )
    ds = readers.label_maps("DRAM", items, readers.decode_semantic_png())
    for m in missing:
        ds.skip(m)
    return ds


def read_trashcan(root: Path) -> Dataset:
    """TrashCan 1.0 - underwater trash, instance version, split train.

    Obtain: https://conservancy.umn.edu/handle/11299/214865 (dataset.zip). Layout:
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

    Obtain: https://cbs.ic.gatech.edu/fpv/ (GTEA with the hand masks of Li et al.,
    "Delving into egocentric actions"). Layout, searched recursively:
        GTEA/.../Images/<name>.jpg
        GTEA/.../Masks/<name>.png    (binary hand mask)
    Each hand (connected component of the mask) is one instance.
    """
    images = [
        p
        for p in root.rglob("*")
        if p.parent.name.lower() == "images" and p.suffix.lower() in (".jpg", ".png")
    ]
    if not images:
        raise DataError(f"GTEA: no Images/ folder with frames under {root}")

    def label_for(p: Path) -> Path:
        for masks in ("Masks", "masks"):
            candidate = p.parent.parent / masks / (p.stem + ".png")
            if candidate.is_file():
                return candidate
        return p.parent.parent / "Masks" / (p.stem + ".png")

    items, missing = readers.pair_by_stem(images, label_for, root)
    ds = readers.label_maps("GTEA", items, readers.decode_binary_components())
    for m in missing:
        ds.skip(m)
    return ds


# --------------------------------------------------------------------------- registry
_I, _C, _S = "instance-id PNG", "COCO JSON", "semantic PNG -> connected components"

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
        DatasetSpec("STREETS", "traffic camera", 17.3, "N/A", 819, 9854, _C, read_streets),
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
        DatasetSpec("IBD", "drones", -0.3, "train (2D annotations)", 467, 11953, _C, read_ibd),
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
            "binary mask PNG -> connected components",
            read_gtea,
        ),
    ]
}

# Averages over the 23 datasets for SAM ViT-H (SAM 2 paper), keyed by clicks.
PAPER_MEAN_MIOU = {1: 58.1, 5: 81.3}


def lookup(name: str) -> DatasetSpec | None:
    for spec in DATASETS.values():
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
            f"unknown dataset {entry!r}; choose from {', '.join(DATASETS)}, synthetic, "
            "sa1b:DIR or coco:ANN_JSON:IMAGE_DIR"
        )
    if data_dir is None:
        raise DataError(f"{spec.name} needs --data_dir (expected <data_dir>/{spec.name}/)")
    root = Path(data_dir) / spec.name
    if not root.is_dir() and (Path(data_dir) / spec.name.lower()).is_dir():
        root = Path(data_dir) / spec.name.lower()
    if not root.is_dir():
        raise DataError(f"{spec.name}: directory {root} not found. {spec.layout}")
    dataset = spec.read(root)
    dataset.name = spec.name
    return spec.name, dataset
