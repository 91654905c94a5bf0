"""Automatic mask generation for an image or a folder of images.

    python -m sam_jax.cli.amg --checkpoint sam_vit_b_01ec64.pth --model-type vit_b \
        --input photos/ --output masks/ [--points-per-side 32 ...] [--convert-to-rle]

For each image, writes OUTPUT/<name>/ holding one 0/255 PNG per mask (0.png, 1.png, ...)
and metadata.csv (the columns of the reference's scripts/amg.py); with --convert-to-rle,
OUTPUT/<name>.json instead, in the SA-1B layout ({"image": ..., "annotations": [...]},
masks as COCO RLE). Rerunning into the same OUTPUT replaces these files. Files that
cannot be read as images are reported and skipped; the exit status is 1 if any were.
An image that yields no masks is reported with the filters that removed its candidates
(`photo.jpg: 0 masks (of 3072 candidates: 3072 below pred_iou_thresh=0.88 ...)`).
Without --checkpoint the model is randomly initialised (the masks then mean nothing).
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

import numpy as np
from PIL import Image

from sam_jax.modeling.configs import MODEL_TYPES

METADATA_HEADER = (
    "id,area,bbox_x0,bbox_y0,bbox_w,bbox_h,point_input_x,point_input_y,predicted_iou,"
    "stability_score,crop_box_x0,crop_box_y0,crop_box_w,crop_box_h"
)
_MASK_FILE = re.compile(r"\d+\.png")

# (flag, type, help) of the generator options; unset ones keep the generator's defaults.
_AMG_OPTIONS = [
    ("points-per-side", int, "points sampled along each side of the image"),
    ("points-per-batch", int, "points decoded together (bounds memory)"),
    ("pred-iou-thresh", float, "drop masks whose predicted IoU is not above this"),
    ("stability-score-thresh", float, "drop masks whose stability score is below this"),
    ("stability-score-offset", float, "logit shift used to measure stability"),
    ("box-nms-thresh", float, "box IoU above which a duplicate mask is dropped"),
    ("crop-n-layers", int, "extra layers of image crops (layer i: (2**i)^2 crops)"),
    ("crop-nms-thresh", float, "box IoU for dropping duplicates between crops"),
    ("crop-overlap-ratio", float, "overlap of first-layer crops, as a fraction of the image"),
    ("crop-n-points-downscale-factor", int, "points per side shrink by this per crop layer"),
    ("min-mask-region-area", int, "fill holes / drop islands smaller than this (pixels)"),
]


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m sam_jax.cli.amg",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--input", required=True, help="an image file or a folder of images")
    parser.add_argument("--output", required=True, help="folder to write the results to")
    parser.add_argument("--model-type", default="vit_b", choices=MODEL_TYPES)
    parser.add_argument("--checkpoint", help=".pth or converted directory (default: random)")
    parser.add_argument(
        "--convert-to-rle",
        action="store_true",
        help="write one SA-1B style JSON (COCO RLE masks) per image instead of PNGs",
    )
    group = parser.add_argument_group("mask generation")
    for flag, kind, text in _AMG_OPTIONS:
        group.add_argument(f"--{flag}", type=kind, default=None, help=text)
    return parser


def generator_kwargs(args: argparse.Namespace) -> dict:
    """The generator options given on the command line (others keep their defaults)."""
    kwargs = {}
    for flag, _, _ in _AMG_OPTIONS:
        key = flag.replace("-", "_")
        if getattr(args, key) is not None:
            kwargs[key] = getattr(args, key)
    return kwargs


def explain_no_masks(stats: dict) -> str:
    """Why an image gave no masks, naming the thresholds (and their flags) that removed the
    candidates."""
    from sam_jax.inference.automatic_mask_generator import describe_stats

    flags = [
        f"--{key.replace('_', '-')}"
        for key in ("pred_iou_thresh", "stability_score_thresh")
        if stats[f"below_{key}"]
    ]
    hint = f"; lower {' / '.join(flags)}" if flags else ""
    if stats["candidates"] == 0:
        hint = "; no point prompts were decoded"
    return describe_stats(stats) + hint


def list_inputs(path: Path) -> list[Path]:
    if path.is_dir():
        return sorted(p for p in path.iterdir() if not p.is_dir())
    return [path]


def write_masks_to_folder(records: list[dict], folder: Path) -> None:
    """One 0/255 PNG per mask and metadata.csv, replacing those of an earlier run."""
    folder.mkdir(parents=True, exist_ok=True)
    for old in folder.iterdir():
        if _MASK_FILE.fullmatch(old.name) or old.name == "metadata.csv":
            old.unlink()
    rows = [METADATA_HEADER]
    for i, rec in enumerate(records):
        mask = np.asarray(rec["segmentation"], dtype=np.uint8) * 255
        Image.fromarray(mask).save(folder / f"{i}.png")
        values = [
            i,
            rec["area"],
            *rec["bbox"],
            *rec["point_coords"][0],
            rec["predicted_iou"],
            rec["stability_score"],
            *rec["crop_box"],
        ]
        rows.append(",".join(str(v) for v in values))
    (folder / "metadata.csv").write_text("\n".join(rows) + "\n")


def sa1b_json(records: list[dict], file_name: str, image_id: int, size) -> dict:
    """Records with COCO RLE segmentations -> the per-image layout of SA-1B annotations."""
    h, w = size
    return {
        "image": {"image_id": image_id, "file_name": file_name, "height": h, "width": w},
        "annotations": [{"id": i, **rec} for i, rec in enumerate(records)],
    }


def _output_stem(path: Path, used: set[str]) -> str:
    # two inputs with one stem (a.jpg, a.png) must not overwrite each other's results
    stem = path.stem
    if stem in used:
        stem = path.name.replace(".", "_")
    used.add(stem)
    return stem


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    input_path, output = Path(args.input), Path(args.output)
    if not input_path.exists():
        print(f"error: --input {input_path} does not exist", file=sys.stderr)
        return 2
    targets = list_inputs(input_path)
    if not targets:
        print(f"error: no files in {input_path}", file=sys.stderr)
        return 2

    from tqdm import tqdm

    from sam_jax import SamAutomaticMaskGenerator, sam_model_registry
    from sam_jax.data.decode import decode_image
    from sam_jax.io.checkpoint import CheckpointError

    output_mode = "coco_rle" if args.convert_to_rle else "binary_mask"
    try:
        model = sam_model_registry[args.model_type](checkpoint=args.checkpoint)
        generator = SamAutomaticMaskGenerator(
            model, output_mode=output_mode, **generator_kwargs(args)
        )
    except (ValueError, CheckpointError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    if args.checkpoint is None:
        print(
            "warning: no --checkpoint, using random weights (masks are meaningless)",
            file=sys.stderr,
        )

    output.mkdir(parents=True, exist_ok=True)
    done, skipped, empty, used_stems = [], [], [], set()
    bar = tqdm(targets, desc="images", unit="image", file=sys.stderr)
    for image_id, path in enumerate(bar):
        bar.set_postfix_str(path.name)
        try:
            image = decode_image(path)
        except ValueError as e:
            tqdm.write(f"skipped {path}: {e}", file=sys.stderr)
            skipped.append(path)
            continue
        records = generator.generate(image)
        if not records:
            tqdm.write(f"{path.name}: {explain_no_masks(generator.last_stats)}", file=sys.stderr)
            empty.append(path)
        stem = _output_stem(path, used_stems)
        if args.convert_to_rle:
            doc = sa1b_json(records, path.name, image_id, image.shape[:2])
            (output / f"{stem}.json").write_text(json.dumps(doc))
        else:
            write_masks_to_folder(records, output / stem)
        done.append(path)
    bar.close()
    print(f"done: {len(done)} image(s), skipped: {len(skipped)}; results in {output}")
    if empty:
        print(f"  {len(empty)} image(s) gave no masks: " + ", ".join(p.name for p in empty))
    for path in skipped:
        print(f"  skipped {path}")
    return 1 if skipped else 0


if __name__ == "__main__":
    sys.exit(main())
