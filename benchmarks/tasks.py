"""Throughput of the zero-shot transfer tasks (`evaluate.py --task=...`) on this machine.

    python benchmarks/tasks.py --model-type vit_b --output benchmarks/results/tasks_cpu.json

Builds small sets in the released layouts from scikit-image's photographs (COCO 2017 val
with box annotations and detections around them, LVIS v1, BSDS500 with one synthetic
annotator) and runs each task through `tasks.run_task` with random weights of the chosen
model, twice: the first pass compiles, the second (in a fresh output folder, the same
compiled functions) is the figure reported. Random weights make the masks meaningless;
the time per image and per mask is what is measured (for proposals and edges the work per
image does not depend on the weights: every grid point is decoded).
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def _pictures():
    from skimage import data

    return {
        1: data.astronaut(),  # 512 x 512
        2: data.coffee(),  # 400 x 600
        3: data.chelsea(),  # 300 x 451
    }


def _coco(root: Path, lvis: bool, boxes_per_image: int) -> tuple[str, Path]:
    from PIL import Image

    name = "LVISv1" if lvis else "COCO2017"
    folder = root / name / "val2017"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    images, anns, dets = [], [], []
    for i, pic in _pictures().items():
        file_name = f"{i:012d}.jpg"
        Image.fromarray(pic).save(folder / file_name, quality=95)
        h, w = pic.shape[:2]
        entry = {"id": i, "height": h, "width": w}
        if lvis:
            entry.update(
                coco_url=f"http://images.cocodataset.org/val2017/{file_name}",
                neg_category_ids=[],
                not_exhaustive_category_ids=[],
            )
        else:
            entry["file_name"] = file_name
        images.append(entry)
        for _ in range(boxes_per_image):
            bw, bh = rng.uniform(0.1, 0.5) * w, rng.uniform(0.1, 0.5) * h
            x, y = rng.uniform(0, w - bw), rng.uniform(0, h - bh)
            seg = [[x, y, x + bw, y, x + bw, y + bh, x, y + bh]]
            cat = int(rng.integers(1, 4))
            anns.append(
                {
                    "id": len(anns) + 1,
                    "image_id": i,
                    "category_id": cat,
                    "segmentation": seg,
                    "area": bw * bh,
                    "bbox": [x, y, bw, bh],
                    "iscrowd": 0,
                }
            )
            dets.append({"image_id": i, "category_id": cat, "bbox": [x, y, bw, bh], "score": 0.9})
    cats = [{"id": c, "name": n} for c, n in [(1, "person"), (2, "cup"), (3, "cat")]]
    if lvis:
        for c, f in zip(cats, "rcf", strict=True):
            c.update(frequency=f, image_count=1, instance_count=1)
        for a in anns:
            a.pop("iscrowd")
    gt = {"images": images, "annotations": anns, "categories": cats}
    ann_file = root / name / ("lvis_v1_val.json" if lvis else "annotations/instances_val2017.json")
    ann_file.parent.mkdir(parents=True, exist_ok=True)
    ann_file.write_text(json.dumps(gt))
    det_file = root / f"{name}_detections.json"
    det_file.write_text(json.dumps(dets))
    return name, det_file


def _bsds(root: Path, count: int) -> None:
    from PIL import Image
    from scipy.io import savemat
    from skimage import data

    base = root / "BSDS500" / "BSR" / "BSDS500" / "data"
    (base / "images" / "test").mkdir(parents=True)
    (base / "groundTruth" / "test").mkdir(parents=True)
    pics = [data.astronaut(), data.coffee(), data.chelsea(), data.rocket()]
    for k in range(count):
        pic = np.ascontiguousarray(pics[k % len(pics)][:321, :481])
        h, w = pic.shape[:2]
        Image.fromarray(pic).save(base / "images" / "test" / f"{k}.jpg", quality=95)
        cells = np.empty((1, 5), dtype=object)
        for j in range(5):
            bnd = np.zeros((h, w), np.uint8)
            bnd[h // 3 + 7 * j, :] = 1
            bnd[:, w // 2 + 5 * j] = 1
            cells[0, j] = {"Segmentation": np.ones((h, w), np.uint16), "Boundaries": bnd}
        savemat(base / "groundTruth" / "test" / f"{k}.mat", {"groundTruth": cells})


class _RandomTextEncoder:
    """CLIP's part: a random unit vector per phrase."""

    def __init__(self, dim: int):
        self.dim = dim
        self.rng = np.random.default_rng(0)

    def encode_texts(self, texts):
        v = self.rng.normal(size=(len(texts), self.dim)).astype(np.float32)
        return v / np.linalg.norm(v, axis=1, keepdims=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-type", default="vit_b")
    parser.add_argument("--tasks", default="instances,proposals,edges,text")
    parser.add_argument("--boxes-per-image", type=int, default=20)
    parser.add_argument("--proposal-images", type=int, default=1)
    parser.add_argument("--output", default=None, help="Write the figures as JSON here.")
    args = parser.parse_args()

    from sam_jax.evaluation import tasks
    from sam_jax.evaluation.model import load_model
    from sam_jax.inference.predictor import SamPredictor
    from sam_jax.modeling.configs import model_config

    wanted = [t.strip() for t in args.tasks.split(",") if t.strip()]
    figures = {}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        coco, coco_dets = _coco(root, lvis=False, boxes_per_image=args.boxes_per_image)
        lvis, _ = _coco(root, lvis=True, boxes_per_image=args.boxes_per_image)
        _bsds(root, 3)
        cfg = model_config(args.model_type)
        model = load_model(cfg, None, seed=0)
        predictor = SamPredictor(model, max_batch=64)
        for task in wanted:
            kwargs = {}
            text_encoder = None
            run_model, run_predictor = model, predictor
            if task == "instances":
                kwargs = {"datasets": [coco], "boxes": str(coco_dets)}
            elif task == "proposals":
                kwargs = {"datasets": [lvis], "max_images": args.proposal_images}
            elif task == "edges":
                kwargs = {"datasets": ["BSDS500"]}
            elif task == "text":
                text_cfg = model_config(args.model_type)
                text_cfg.text_embed_dim = 768
                run_model = load_model(text_cfg, None, seed=0)
                run_predictor = SamPredictor(run_model, max_batch=64)
                kwargs = {"datasets": [coco]}
                text_encoder = _RandomTextEncoder(768)
            passes = []
            for attempt in range(2):
                settings = tasks.TaskSettings(
                    task=task,
                    output_dir=str(root / f"out_{task}_{attempt}"),
                    data_dir=str(root),
                    **kwargs,
                )
                start = time.perf_counter()
                results = tasks.run_task(
                    settings, run_model, predictor=run_predictor, text_encoder=text_encoder
                )
                seconds = time.perf_counter() - start
                name = next(iter(results["datasets"]))
                summary = results["datasets"][name][task]
                images = summary.get("num_images") or 1
                passes.append(
                    {
                        "seconds": round(seconds, 2),
                        "images": images,
                        "seconds_per_image": round(seconds / images, 3),
                        "masks": summary.get("num_masks"),
                        "masks_per_second": summary.get("masks_per_second"),
                        "images_per_second": summary.get("images_per_second"),
                    }
                )
            figures[task] = {"first_pass_compiles": passes[0], "measured": passes[1]}
            print(f"{task}: {json.dumps(passes[1])}", flush=True)
    out = {
        "model_type": args.model_type,
        "machine": platform.processor() or platform.machine(),
        "tasks": figures,
    }
    if args.output:
        Path(args.output).parent.mkdir(parents=True, exist_ok=True)
        Path(args.output).write_text(json.dumps(out, indent=2) + "\n")


if __name__ == "__main__":
    main()
