"""Where the IoU head's ranking goes wrong: the first click's three outputs of a trained
workdir on its held-out synthetic pictures, each scored three ways.

    python benchmarks/iou_head.py --config=configs/tiny.py --workdir=workdir/tiny

- full: the predictor's mask at the image's resolution against the ground truth (what
  evaluate.py scores);
- grid: the low-res logits > 0 on the whole L x L grid against the ground truth pooled to
  that grid as the training pipeline pools it (what the training step's IoU target is);
- grid, image only: the same inside the image, without the padding below or right of it
  (the only part of the grid that the full-resolution mask is cut from).

For each, the mean IoU of every output, how often the IoU head's argmax is a best output
(ties count as right), the head's mean |predicted - actual| and how often that scoring's
best output is also a best output at full resolution.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def pooled(mask: np.ndarray, s: int, low: int) -> tuple[np.ndarray, tuple[int, int]]:
    """A full-resolution mask on the padded L x L training grid, as `prepare_example` makes
    it -> (mask (L, L) bool, (rows, cols) of the grid that the image covers)."""
    from sam_jax.inference.transforms import get_preprocess_shape

    h, w = mask.shape
    nh, nw = get_preprocess_shape(h, w, s)
    full = np.zeros((s, s), np.uint8)
    full[:nh, :nw] = np.asarray(
        Image.fromarray(mask.astype(np.uint8) * 255).resize((nw, nh), Image.BILINEAR)
    )
    f = s // low
    grid = full.reshape(low, f, low, f).mean(axis=(1, 3), dtype=np.float32) >= 127.5
    return grid, (-(-nh // f), -(-nw // f))


def ious(pred: np.ndarray, gt: np.ndarray) -> np.ndarray:
    """pred (M, H, W) bool, gt (H, W) bool -> (M,) IoU (1 when both are empty)."""
    inter = np.count_nonzero(pred & gt, axis=(1, 2))
    union = np.count_nonzero(pred | gt, axis=(1, 2))
    return np.where(union > 0, inter / np.maximum(union, 1), 1.0)


def summary(actual: np.ndarray, pred: np.ndarray, full: np.ndarray) -> dict:
    rows = np.arange(len(actual))
    best = actual >= actual.max(1, keepdims=True) - 1e-9
    full_best = full >= full.max(1, keepdims=True) - 1e-9
    own_pick = actual.argmax(1)
    return {
        "output_miou": actual.mean(0).round(4).tolist(),
        "head_top1": round(float(best[rows, pred.argmax(1)].mean()), 4),
        "head_abs_err": round(float(np.abs(pred - actual).mean()), 4),
        "best_is_full_best": round(float(full_best[rows, own_pick].mean()), 4),
        "full_miou_of_this_best": round(float(full[rows, own_pick].mean()), 4),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="configs/tiny.py")
    parser.add_argument("--workdir", required=True)
    parser.add_argument(
        "--images", type=int, default=0, help="0: the config's eval.synthetic_images"
    )
    args = parser.parse_args()

    import importlib.util

    spec = importlib.util.spec_from_file_location("config", args.config)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    config = module.get_config()

    from sam_jax import SamPredictor, load_sam
    from sam_jax.evaluation import protocol
    from sam_jax.evaluation.runner import EvalSettings, open_datasets

    d = config.data
    settings = EvalSettings(
        datasets=["synthetic"],
        output_dir="/nonexistent",
        synthetic_images=args.images or config.eval.synthetic_images,
        synthetic_size=tuple(d.synthetic_size),
        synthetic_max_objects=d.synthetic_max_objects,
        synthetic_seed=config.seed,
    )
    dataset = open_datasets(settings)["synthetic"]
    model = load_sam(config.model.model_type, checkpoint=args.workdir)
    predictor = SamPredictor(model, max_batch=16)
    s, low = model.image_size, predictor.low_res_size
    rec = {"full": [], "grid": [], "grid_image": [], "pred": []}
    for sample in dataset.samples:
        image = sample.read_image()
        predictor.set_image(image)
        for _, gt in sample.read_masks().instances:
            click = protocol.first_click(gt)
            masks, iou_pred, low_res = predictor.predict_batch(
                point_coords=np.array([[[click.x, click.y]]], np.float64),
                point_labels=np.array([[1]], np.int32),
                multimask_output=True,
            )
            grid_gt, (rh, rw) = pooled(gt, s, low)
            logits = low_res[0] > 0
            rec["full"].append(ious(masks[0], gt))
            rec["grid"].append(ious(logits, grid_gt))
            rec["grid_image"].append(ious(logits[:, :rh, :rw], grid_gt[:rh, :rw]))
            rec["pred"].append(iou_pred[0])
    arr = {k: np.asarray(v, np.float64) for k, v in rec.items()}
    out = {"num_masks": len(arr["full"])}
    for k in ("full", "grid", "grid_image"):
        out[k] = summary(arr[k], arr["pred"], arr["full"])
    rows = np.arange(len(arr["full"]))
    out["picked_full_miou"] = round(float(arr["full"][rows, arr["pred"].argmax(1)].mean()), 4)
    out["oracle_full_miou"] = round(float(arr["full"].max(1).mean()), 4)
    out["mean_pred_iou"] = arr["pred"].mean(0).round(4).tolist()
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
