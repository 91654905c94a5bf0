"""The zero-shot transfer tasks beyond clicks (SAM paper section 7), with resume.

    run_task(TaskSettings(task="instances", datasets=["COCO2017"], boxes="dets.json", ...), model)

Tasks and what they write under `output_dir`:
- instances (7.4): each detector box prompts one mask; `instances/<dataset>.json` (COCO
  results with RLE masks, the box's score and category) and mask AP by pycocotools
  (COCO) or the lvis API (LVIS: also APr / APc / APf).
- proposals (7.3): automatic mask generation with the paper's proposal settings, at most
  `max_proposals` masks per image; `proposals/<dataset>.json` and class-agnostic AR@1000
  by size and (LVIS) category frequency.
- edges (7.2): BSDS500 edge maps by `edges.edge_map` (`edges/<dataset>/<id>.png`, 16-bit)
  and ODS / OIS / AP / R50 by `bsds`.
- text (7.5): every instance prompted by the CLIP text embedding of its category name; the
  mIoU of the chosen mask beside the 1-click mIoU of the same instances.

Every task keeps `<task>/<dataset>.records.jsonl`, one line per finished image (appended
and fsynced), and `<task>/run.json` (its settings): rerunning the same command resumes
after the last finished image; other settings in the same folder are refused unless
`overwrite`. An unreadable image is skipped and counted, never the end of the run. Results
go to `results.json` under `datasets.<name>.<task>` (other tasks' entries are kept) and to
`results.md` beside the paper's figures.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import time
from pathlib import Path

import numpy as np
from tqdm import tqdm

from sam_jax.data.sources import DataError
from sam_jax.evaluation import bsds, coco_tasks, interactive, protocol, readers, registry, report
from sam_jax.evaluation.edges import EdgeSettings, edge_map

log = logging.getLogger(__name__)

TASKS = ("points", "instances", "proposals", "edges", "text")
DEFAULT_DATASETS = {
    "instances": ["COCO2017"],
    "proposals": ["LVISv1"],
    "edges": ["BSDS500"],
    "text": ["COCO2017"],
}

# The paper's figures (SAM ViT-H), as fractions, by task and dataset.
PAPER = {
    "instances": {
        "COCO2017": {"AP": 0.465, "APs": 0.308, "APm": 0.510, "APl": 0.617},
        "LVISv1": {"AP": 0.447, "APs": 0.325, "APm": 0.576, "APl": 0.655},
    },
    "proposals": {
        "LVISv1": {"AR@1000": 0.593, "ARs": 0.455, "ARm": 0.816, "ARl": 0.869, "ARr": 0.658}
    },
    "edges": {"BSDS500": {"ODS": 0.768, "OIS": 0.786, "AP": 0.794, "R50": 0.928}},
    "text": {},
}
PAPER_NOTES = {
    "instances": "ViTDet-H boxes as prompts (paper Table 5; size breakdowns from a "
    "third-party extraction of the paper)",
    "proposals": "paper Table 4, mask AR@1000 on LVIS v1",
    "edges": "paper Table 3, BSDS500 test",
    "text": "the paper reports text-to-mask qualitatively only",
}


@dataclasses.dataclass
class TaskSettings:
    task: str
    datasets: list[str]
    output_dir: str
    data_dir: str | None = None
    boxes: str | None = None  # instances: detections in COCO results format
    batch_size: int = 64
    max_images: int = 0  # 0: all; otherwise the first N images (a quick look)
    checkpoint: str | None = None
    model_type: str | None = None
    overwrite: bool = False
    # proposals: the paper's 64 x 64 grid and NMS 0.9, masks ranked by the mean of
    # predicted IoU and stability score; the IoU and stability filters are off (our
    # reading: the paper names no filter, and with them far fewer than 1000 masks remain)
    points_per_side: int = 64
    box_nms_thresh: float = 0.9
    pred_iou_thresh: float = 0.0
    stability_score_thresh: float = 0.0
    max_proposals: int = 1000
    # text: the phrase given to CLIP for a category name
    text_template: str = "{}"

    def __post_init__(self):
        if self.task not in TASKS:
            raise ValueError(f"unknown task {self.task!r}; choose from {', '.join(TASKS)}")
        if self.task == "points":
            raise ValueError("the points task runs through runner.run_evaluation")
        if self.task == "instances" and not self.boxes:
            raise ValueError("--task=instances needs --boxes=DETECTIONS.json (COCO results format)")
        if self.boxes and self.task != "instances":
            raise ValueError(f"--boxes is for --task=instances, not {self.task}")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")
        if self.max_images < 0:
            raise ValueError(f"max_images must be >= 0, got {self.max_images}")
        if "{}" not in self.text_template:
            raise ValueError(f"text_template must contain {{}}, got {self.text_template!r}")
        if not self.datasets:
            self.datasets = list(DEFAULT_DATASETS[self.task])

    def identity(self) -> dict:
        d = dataclasses.asdict(self)
        for k in ("output_dir", "data_dir", "batch_size", "overwrite"):
            d.pop(k)
        if self.boxes:
            d["boxes"] = os.path.abspath(self.boxes)
        return d


# ------------------------------------------------------------------------------ store
class _Store:
    """One task's per-image records in one output folder, with resume."""

    def __init__(self, settings: TaskSettings):
        self.dir = Path(settings.output_dir) / settings.task
        self.dir.mkdir(parents=True, exist_ok=True)
        run_file = self.dir / "run.json"
        identity = settings.identity()
        if run_file.exists():
            try:
                previous = json.loads(run_file.read_text())
            except (OSError, json.JSONDecodeError):
                previous = None
            if previous != identity:
                if not settings.overwrite:
                    raise ValueError(
                        f"{self.dir} holds a {settings.task} run with other settings "
                        f"({run_file}); use another --output_dir or pass --overwrite"
                    )
                for f in self.dir.glob("*.records.jsonl"):
                    f.unlink()
        report.write_atomic(run_file, json.dumps(identity, indent=2))

    def path(self, dataset: str) -> Path:
        return self.dir / f"{_safe(dataset)}.records.jsonl"

    def load(self, dataset: str) -> dict[str, dict]:
        done = {}
        path = self.path(dataset)
        if path.exists():
            with open(path, encoding="utf-8") as f:
                for line in f:
                    try:
                        rec = json.loads(line)
                    except json.JSONDecodeError:
                        continue  # torn by a crash: that image is done again
                    done[rec["image_id"]] = rec
            # rewrite without a torn last line before appending
            report.write_atomic(path, "".join(json.dumps(r) + "\n" for r in done.values()))
        return done

    def open(self, dataset: str):
        return open(self.path(dataset), "a", encoding="utf-8")


def _append(f, record: dict) -> None:
    f.write(json.dumps(record) + "\n")
    f.flush()
    os.fsync(f.fileno())


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name)


# ---------------------------------------------------------------------------- datasets
@dataclasses.dataclass
class CocoSet:
    name: str
    annotation_file: Path
    image_roots: list[Path]
    ground_truth: dict

    def read_image(self, img: dict) -> np.ndarray:
        return readers.coco_image(img, self.image_roots)


def open_coco_set(entry: str, data_dir) -> CocoSet:
    """COCO2017, LVISv1 (under data_dir) or coco:ANN_JSON:IMAGE_DIR."""
    if entry.startswith("coco:"):
        parts = entry[len("coco:") :].split(":", 1)
        if len(parts) != 2 or not all(parts):
            raise DataError(f"expected coco:ANN_JSON:IMAGE_DIR, got {entry!r}")
        ann, images = Path(parts[0]), Path(parts[1])
        if not images.is_dir():
            raise DataError(f"COCO image directory not found: {images}")
        name, roots = f"coco:{ann.stem}", [images]
    else:
        root = _dataset_root(entry, data_dir, ("COCO2017", "LVISv1"))
        if root.name.lower() == "lvisv1":
            ann, roots = registry.locate_lvis_v1(root)
            name = "LVISv1"
        else:
            ann, roots = registry.locate_coco2017(root)
            name = "COCO2017"
    gt = coco_tasks.load_ground_truth(ann)
    return CocoSet(name, ann, roots, gt)


def _dataset_root(entry: str, data_dir, allowed: tuple[str, ...]) -> Path:
    spec = registry.lookup(entry)
    if spec is None or spec.name not in allowed:
        raise DataError(
            f"this task reads {', '.join(allowed)}"
            + (" or coco:ANN_JSON:IMAGE_DIR" if "COCO2017" in allowed else "")
            + f", not {entry!r}"
        )
    if data_dir is None:
        raise DataError(f"{spec.name} needs --data_dir (expected <data_dir>/{spec.name}/)")
    for candidate in (Path(data_dir) / spec.name, Path(data_dir) / spec.name.lower()):
        if candidate.is_dir():
            return candidate
    raise DataError(
        f"{spec.name}: folder {Path(data_dir) / spec.name} not found; extract the release "
        f"there (layout: registry.{spec.read.__name__})"
    )


# ------------------------------------------------------------------------------- tasks
def run_task(settings: TaskSettings, model, predictor=None, text_encoder=None) -> dict:
    """Run one task on its datasets; returns the results.json content."""
    from sam_jax.inference.predictor import SamPredictor

    opened = open_all(settings)  # data mistakes surface before any model work
    store = _Store(settings)
    if predictor is None:
        predictor = SamPredictor(model, max_batch=settings.batch_size)
    if settings.task == "text":
        if not model.module.text_embed_dim:
            raise ValueError(
                "--task=text needs a model trained with text prompts (its config's "
                "model.text_embed_dim is 0)"
            )
        if text_encoder is None:
            raise ValueError("--task=text needs a CLIP text encoder (--clip_checkpoint)")
    summaries = {}
    for name, data in opened.items():
        start = time.monotonic()
        runner = {
            "instances": _instances,
            "proposals": _proposals,
            "edges": _edges,
            "text": _text,
        }[settings.task]
        summary = runner(settings, store, predictor, name, data, model, text_encoder)
        summary["seconds"] = round(time.monotonic() - start, 2)
        summaries[name] = summary
        results = _write_results(settings, summaries)
    return results


def open_all(settings: TaskSettings) -> dict:
    """Index each dataset of the task (and read its detections): DataError on mistakes."""
    opened = {}
    for entry in settings.datasets:
        if settings.task == "edges":
            root = _dataset_root(entry, settings.data_dir, ("BSDS500",))
            images, truth = registry.locate_bsds500(root)
            pairs = []
            for p in sorted(images.iterdir()):
                if p.suffix.lower() in readers.IMAGE_EXTENSIONS:
                    pairs.append((p.stem, p, truth / (p.stem + ".mat")))
            if not pairs:
                raise DataError(f"BSDS500: no images in {images}")
            missing = [str(g) for _, _, g in pairs if not g.is_file()]
            if missing:
                raise DataError(
                    f"BSDS500: {len(missing)} ground-truth file(s) missing, e.g. {missing[0]}"
                )
            data = pairs[: settings.max_images or None]
            opened["BSDS500"] = data
        else:
            coco = open_coco_set(entry, settings.data_dir)
            detections = None
            if settings.task == "instances":
                detections = coco_tasks.read_detections(settings.boxes, coco.ground_truth)
                if not detections:
                    raise DataError(f"detections file {settings.boxes} holds no detection")
            opened[coco.name] = (coco, detections)
    return opened


def _images(settings, coco: CocoSet, wanted=None) -> list[dict]:
    """Image entries to process: those with annotations (or detections), in id order."""
    has = {a["image_id"] for a in coco.ground_truth["annotations"]}
    if wanted is not None:
        has = set(wanted)
    images = sorted(
        (img for img in coco.ground_truth["images"] if img["id"] in has), key=lambda i: i["id"]
    )
    return images[: settings.max_images or None]


def _loop(store, name, task, items, done, key, work, counters) -> float:
    """Run `work(item)` -> record for each item not in `done`, appending each to the
    dataset's records; one bad item is a skip. Returns the seconds spent."""
    start = time.monotonic()
    with store.open(name) as out_file:
        _run_items(f"{name} {task}", items, done, key, work, out_file, counters)
    return time.monotonic() - start


def _run_items(desc, items, done, key, work, out_file, counters):
    bar = tqdm(items, desc=desc, unit="img", dynamic_ncols=True)
    for item in bar:
        k = str(key(item))
        if k in done:
            continue
        try:
            record = work(item)
        except DataError as e:
            log.warning("%s: skipping image %s: %s", desc, k, e)
            record = {"skipped": str(e)}
        record["image_id"] = k
        _append(out_file, record)
        done[k] = record
        counters["new"] += 1
    bar.close()


def _skips(done: dict) -> tuple[int, list[str]]:
    problems = [f"{k}: {r['skipped']}" for k, r in done.items() if "skipped" in r]
    return len(problems), problems[:20]


def _instances(settings, store, predictor, name, data, model, text_encoder) -> dict:
    coco, detections = data
    images = _images(settings, coco, detections)
    done = store.load(name)
    counters = {"new": 0}

    def work(img):
        image = coco.read_image(img)
        if image.shape[:2] != (img["height"], img["width"]):
            raise DataError(
                f"image {img['id']} is {image.shape[1]}x{image.shape[0]}, the annotation file "
                f"says {img['width']}x{img['height']}"
            )
        dets = detections[img["id"]]
        predictor.set_image(image)
        _, rles = coco_tasks.box_masks(predictor, dets.boxes, settings.batch_size)
        return {
            "results": [
                {
                    "image_id": img["id"],
                    "category_id": int(c),
                    "segmentation": rle,
                    "score": float(s),
                }
                for rle, s, c in zip(rles, dets.scores, dets.category_ids, strict=True)
            ],
            "clipped": dets.clipped,
        }

    elapsed = _loop(store, name, "instances", images, done, lambda i: i["id"], work, counters)
    results, scored, scope = _coco_results(settings, store, name, images, done)
    metrics = coco_tasks.instance_metrics(coco.ground_truth, results, scope)
    skipped, problems = _skips(done)
    n_masks = len(results)
    return {
        **metrics,
        "num_images": len(scored),
        "num_masks": n_masks,
        "skipped": skipped,
        "problems": problems,
        "boxes_clipped": int(sum(r.get("clipped", 0) for r in done.values())),
        "masks_per_second": _rate(n_masks, counters, elapsed, len(done)),
    }


def _coco_results(settings, store, name, images, done):
    """The COCO results of the finished images, written to `<task>/<dataset>.json` ->
    (results, ids of the images scored, the image ids to evaluate over). The evaluation
    covers every image of the ground truth, as the evaluators do by default (images without
    detections, and skipped ones, count as all missed), unless --max_images limited the run."""
    results = [r for rec in done.values() for r in rec.get("results", [])]
    report.write_atomic(store.dir / f"{_safe(name)}.json", json.dumps(results))
    scored = [img["id"] for img in images if "results" in done.get(str(img["id"]), {})]
    return results, scored, (scored if settings.max_images else None)


def _rate(total, counters, elapsed, n_done):
    """Throughput of this session's work (None when everything was resumed)."""
    if not counters["new"] or elapsed <= 0:
        return None
    return round(total * counters["new"] / max(n_done, 1) / elapsed, 3)


def _proposals(settings, store, predictor, name, data, model, text_encoder) -> dict:
    from sam_jax.inference.automatic_mask_generator import SamAutomaticMaskGenerator

    coco, _ = data
    images = _images(settings, coco)
    done = store.load(name)
    counters = {"new": 0}
    generator = SamAutomaticMaskGenerator(
        model,
        points_per_side=settings.points_per_side,
        pred_iou_thresh=settings.pred_iou_thresh,
        stability_score_thresh=settings.stability_score_thresh,
        box_nms_thresh=settings.box_nms_thresh,
        output_mode="coco_rle",
    )
    generator.predictor = predictor  # the same model: share its compiled image encoder

    def work(img):
        image = coco.read_image(img)
        records = generator.generate(image)
        score = np.array([(r["predicted_iou"] + r["stability_score"]) / 2 for r in records])
        order = np.argsort(-score, kind="stable")[: settings.max_proposals]
        return {
            "results": [
                {
                    "image_id": img["id"],
                    "category_id": 1,
                    "segmentation": _json_rle(records[i]["segmentation"]),
                    "score": float(score[i]),
                }
                for i in order
            ],
            "generated": len(records),
        }

    elapsed = _loop(store, name, "proposals", images, done, lambda i: i["id"], work, counters)
    results, scored, scope = _coco_results(settings, store, name, images, done)
    metrics = coco_tasks.proposal_metrics(coco.ground_truth, results, scope, settings.max_proposals)
    skipped, problems = _skips(done)
    return {
        **metrics,
        "num_images": len(scored),
        "mean_proposals_per_image": float(len(results) / max(len(scored), 1)),
        "skipped": skipped,
        "problems": problems,
        "images_per_second": _rate(len(scored), counters, elapsed, len(done)),
    }


def _json_rle(rle: dict) -> dict:
    counts = rle["counts"]
    return {
        "size": [int(v) for v in rle["size"]],
        "counts": counts.decode("ascii") if isinstance(counts, bytes) else counts,
    }


def _edges(settings, store, predictor, name, data, model, text_encoder) -> dict:
    from PIL import Image

    maps_dir = store.dir / _safe(name)
    maps_dir.mkdir(exist_ok=True)
    done = store.load(name)
    counters = {"new": 0}
    edge_settings = EdgeSettings(points_per_batch=settings.batch_size)

    def work(item):
        image_id, image_path, truth_path = item
        ground_truth = bsds.read_ground_truth(truth_path)
        image = readers.read_rgb(image_path)
        if image.shape[:2] != ground_truth[0].shape:
            raise DataError(
                f"{image_path.name} is {image.shape[:2]}, its ground truth {ground_truth[0].shape}"
            )
        out = edge_map(predictor, image, edge_settings)
        png = np.round(out["edges"] * 65535).astype(np.uint16)
        tmp = maps_dir / f".{image_id}.png.tmp"
        Image.fromarray(png).save(tmp, format="PNG")
        os.replace(tmp, maps_dir / f"{image_id}.png")
        counts = bsds.evaluate_image(out["edges"], ground_truth)
        return {"counts": counts.as_dict(), "masks_kept": out["masks_kept"]}

    elapsed = _loop(store, name, "edges", data, done, lambda item: item[0], work, counters)
    counts = [bsds.ImageCounts.from_dict(r["counts"]) for r in done.values() if "counts" in r]
    skipped, problems = _skips(done)
    if not counts:
        raise DataError(f"{name}: no image could be evaluated ({'; '.join(problems[:3])})")
    metrics = bsds.summarize(counts)
    curve = metrics.pop("curve")
    report.write_atomic(store.dir / f"{_safe(name)}.pr_curve.json", json.dumps(curve))
    return {
        **metrics,
        "skipped": skipped,
        "problems": problems,
        "images_per_second": _rate(len(counts), counters, elapsed, len(done)),
    }


def _text(settings, store, predictor, name, data, model, text_encoder) -> dict:
    coco, _ = data
    images = _images(settings, coco)
    done = store.load(name)
    counters = {"new": 0}
    cats = {c["id"]: c["name"] for c in coco.ground_truth["categories"]}
    phrases = {cid: settings.text_template.format(n.replace("_", " ")) for cid, n in cats.items()}
    cat_ids = sorted(phrases)
    table = dict(
        zip(cat_ids, text_encoder.encode_texts([phrases[c] for c in cat_ids]), strict=True)
    )
    anns_by_image: dict = {}
    for a in coco.ground_truth["annotations"]:
        if not a.get("iscrowd", 0):
            anns_by_image.setdefault(a["image_id"], []).append(a)

    def work(img):
        from sam_jax.data.decode import decode_segmentation

        image = coco.read_image(img)
        h, w = image.shape[:2]
        pairs = []
        for a in anns_by_image.get(img["id"], []):
            try:
                m = decode_segmentation(a["segmentation"], h, w, f"annotation {a.get('id')}")
            except DataError:
                continue
            if m.any():
                pairs.append((a, m))
        if not pairs:
            return {"instances": []}
        predictor.set_image(image)
        emb = np.stack([table[a["category_id"]] for a, _ in pairs])
        masks, iou, _ = predictor.predict_batch(text_embeddings=emb)
        text_ious = [
            protocol.mask_iou(m[int(np.argmax(p))], gt)
            for m, p, (_, gt) in zip(masks, iou, pairs, strict=True)
        ]
        clicks = interactive.evaluate_masks(
            predictor,
            [m for _, m in pairs],
            [str(a.get("id")) for a, _ in pairs],
            1,
            batch_size=settings.batch_size,
        )
        return {
            "instances": [
                {
                    "annotation_id": a.get("id"),
                    "category": cats.get(a["category_id"]),
                    "text_iou": float(t),
                    "point_iou": float(c.ious[0]),
                }
                for (a, _), t, c in zip(pairs, text_ious, clicks, strict=True)
            ]
        }

    elapsed = _loop(store, name, "text", images, done, lambda i: i["id"], work, counters)
    inst = [i for rec in done.values() for i in rec.get("instances", [])]
    skipped, problems = _skips(done)
    per_cat: dict = {}
    for i in inst:
        per_cat.setdefault(i["category"], []).append(i["text_iou"])
    return {
        "miou_text": float(np.mean([i["text_iou"] for i in inst])) if inst else float("nan"),
        "miou_points_1click": float(np.mean([i["point_iou"] for i in inst]))
        if inst
        else float("nan"),
        "num_masks": len(inst),
        "num_images": sum(1 for r in done.values() if r.get("instances")),
        "miou_text_per_category": {k: float(np.mean(v)) for k, v in sorted(per_cat.items())},
        "skipped": skipped,
        "problems": problems,
        "masks_per_second": _rate(len(inst), counters, elapsed, len(done)),
    }


# ----------------------------------------------------------------------------- results
def _write_results(settings: TaskSettings, summaries: dict) -> dict:
    out = Path(settings.output_dir)
    path = out / "results.json"
    results: dict = {}
    if path.exists():
        try:
            results = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError):
            results = {}
    datasets = results.setdefault("datasets", {})
    for name, summary in summaries.items():
        datasets.setdefault(name, {})[settings.task] = summary
    results.setdefault("tasks", {})[settings.task] = {
        "settings": settings.identity(),
        "paper": PAPER.get(settings.task, {}),
        "paper_source": PAPER_NOTES.get(settings.task),
    }
    text = task_markdown(results)
    if "mean_over_datasets" in results:  # a points run wrote here too: its table first
        points = {n: d for n, d in datasets.items() if "miou" in d}
        clicks = tuple((results.get("settings") or {}).get("num_clicks") or (1,))
        text = report.markdown({**results, "datasets": points}, clicks) + "\n" + text
    report.write_atomic(path, report.dumps(results))
    report.write_atomic(out / "results.md", text)
    return results


_KEYS = {
    "instances": coco_tasks.AP_KEYS + coco_tasks.LVIS_EXTRA_KEYS,
    "proposals": ("AR@1000", "ARs", "ARm", "ARl", "ARr", "ARc", "ARf"),
    "edges": ("ODS", "OIS", "AP", "R50"),
    "text": ("miou_text", "miou_points_1click"),
}


def task_markdown(results: dict) -> str:
    """A table per task: our figures (in %, or 0-1 for edges as the benchmark prints
    them) beside the paper's."""
    lines = ["# Zero-shot transfer tasks", ""]
    for task in TASKS[1:]:
        rows = [(n, d[task]) for n, d in results.get("datasets", {}).items() if task in d]
        if not rows:
            continue
        keys = [k for k in _KEYS[task] if any(k in s for _, s in rows)]
        lines += [f"## {task}", "", f"Paper: {PAPER_NOTES[task]}.", ""]
        lines.append("| dataset | images | " + " | ".join(keys) + " |")
        lines.append("|---" * (len(keys) + 2) + "|")
        for name, s in rows:
            paper = PAPER.get(task, {}).get(name, {})
            cells = []
            for k in keys:
                v = s.get(k)
                cell = "-" if v is None or (isinstance(v, float) and np.isnan(v)) else _fmt(task, v)
                if k in paper:
                    cell += f" ({_fmt(task, paper[k])})"
                cells.append(cell)
            lines.append(f"| {name} | {s.get('num_images', '')} | " + " | ".join(cells) + " |")
        lines += ["", "In parentheses: the paper's figure (SAM ViT-H).", ""]
    return "\n".join(lines) + "\n"


def _fmt(task, v) -> str:
    return f"{v:.3f}" if task == "edges" else f"{100 * v:.1f}"
