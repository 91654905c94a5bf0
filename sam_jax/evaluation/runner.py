"""The evaluation loop: datasets -> subsampling -> click protocol -> incremental outputs.

Output folder:
- records.jsonl: one line per evaluated mask, appended (and fsynced) once its image is done;
- progress.jsonl: one line per finished image (its mask and skip counts), written after
  that image's records, so a record without a progress line belongs to an image that was
  interrupted and is dropped on resume;
- results.json, results.md, miou_vs_clicks.png: replaced atomically as results come in;
- run.json: the settings. Rerunning the same command in the same folder resumes after the
  last finished image; different settings there are refused unless overwrite is set.

A dataset that yields no evaluated mask (a malformed annotation file, images that all fail
to read) is an error, not a result: it is refused before any model work when indexing
found no masks (see `inventory`), and otherwise the run finishes the other datasets, writes their
results without `"complete": true` and raises EmptyDatasetError; `allow_empty` accepts
such datasets instead.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import time
import zlib
from pathlib import Path

import numpy as np
from tqdm import tqdm

from sam_jax.data.sources import DataError
from sam_jax.evaluation import interactive, inventory, registry, report, tasks
from sam_jax.evaluation.readers import Dataset, Sample
from sam_jax.inference.build import SamModel
from sam_jax.inference.predictor import SamPredictor

log = logging.getLogger(__name__)


class EmptyDatasetError(DataError):
    """A dataset yielded no evaluated mask (and `allow_empty` is off)."""


RECORDS = "records.jsonl"
PROGRESS = "progress.jsonl"
RESULTS = "results.json"
REPORT = "results.md"
PLOT = "miou_vs_clicks.png"
RUN = "run.json"


@dataclasses.dataclass
class EvalSettings:
    datasets: list[str]
    output_dir: str
    data_dir: str | None = None
    num_clicks: tuple[int, ...] = (1, 2, 3, 5, 9)
    # The paper: datasets with more than 15k masks were subsampled by image to ~10k masks.
    max_masks_per_dataset: int = 10000
    subsample_above: int | None = None  # None: 1.5 x max_masks_per_dataset
    seed: int = 0
    batch_size: int = 16
    synthetic_images: int = 20
    # The `synthetic` entry's pictures: a config's data.synthetic_size / _max_objects /
    # _classes, so a model is scored on held-out pictures of the kind it was trained on.
    synthetic_size: tuple[int, int] = (256, 320)
    synthetic_max_objects: int = 8
    synthetic_classes: bool = False
    synthetic_seed: int = 0  # the training seed: its held-out stream (`readers.synthetic`)
    multimask_all_clicks: bool = False
    fixed_batch_shape: bool = False  # see interactive.evaluate_masks
    checkpoint: str | None = None
    model_type: str | None = None
    overwrite: bool = False
    # Go on with a dataset in which no masks were found, or none were evaluated (by
    # default a run refuses to start on it, or fails at the end).
    allow_empty: bool = False
    # Label-map datasets: decode at most this many label images to count their masks
    # before the run (the rest is extrapolated); 0 counts them all.
    inventory_sample: int = 300

    def __post_init__(self):
        self.num_clicks = tuple(sorted({int(n) for n in self.num_clicks}))
        if not self.num_clicks or self.num_clicks[0] < 1:
            raise ValueError(f"num_clicks must be positive integers, got {self.num_clicks}")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")
        if self.max_masks_per_dataset < 1:
            raise ValueError("max_masks_per_dataset must be >= 1")
        if not self.datasets:
            raise ValueError("no datasets given")

    @property
    def threshold(self) -> int:
        if self.subsample_above is None or self.subsample_above < 0:
            return int(1.5 * self.max_masks_per_dataset)
        return self.subsample_above

    def identity(self) -> dict:
        """What decides the results (batch size and the output folder do not)."""
        d = dataclasses.asdict(self)
        for k in (
            "output_dir",
            "batch_size",
            "overwrite",
            "data_dir",
            "fixed_batch_shape",
            "allow_empty",
            "inventory_sample",
        ):
            d.pop(k)
        d["num_clicks"] = list(self.num_clicks)
        d["synthetic_size"] = list(self.synthetic_size)
        return d


def select_samples(
    samples: list[Sample], max_masks: int, threshold: int, seed: int, name: str
) -> tuple[list[Sample], bool]:
    """The paper's subsampling: when a dataset has more than `threshold` masks, images are
    picked in a seeded random order until they hold at least `max_masks` masks.

    Returns (samples in dataset order, whether it subsampled). Counting stops as soon as
    the threshold is passed, so a large dataset is not read in full just to be counted.
    """
    rng = np.random.default_rng([seed, zlib.crc32(name.encode())])
    order = rng.permutation(len(samples))
    total = 0
    for idx in order:
        try:
            total += samples[idx].count_masks()
        except Exception:
            pass  # read again, and counted as skipped, when evaluated
        if total > threshold:
            break
    else:
        return list(samples), False
    chosen, total = [], 0
    for idx in order:
        if total >= max_masks:
            break
        chosen.append(int(idx))
        try:
            total += samples[idx].count_masks()
        except Exception:
            pass
    return [samples[i] for i in sorted(chosen)], True


@dataclasses.dataclass
class _DatasetState:
    ious: list = dataclasses.field(default_factory=list)
    oracle: list = dataclasses.field(default_factory=list)
    # (actual IoUs, predicted IoUs) of the first click's outputs, per mask that has them
    first_outputs: list = dataclasses.field(default_factory=list)
    images: int = 0
    skipped: int = 0
    problems: list = dataclasses.field(default_factory=list)

    def add(self, record: dict) -> None:
        self.ious.append(record["ious"])
        self.oracle.append(record["oracle_ious"])
        if record.get("first_output_ious"):  # records of older runs lack them
            self.first_outputs.append((record["first_output_ious"], record["first_pred_ious"]))

    def skip(self, n: int, messages: list[str]) -> None:
        self.skipped += n
        self.problems.extend(messages[: max(0, 20 - len(self.problems))])


class _Outputs:
    """The files of one run, with resume."""

    def __init__(self, settings: EvalSettings):
        self.dir = Path(settings.output_dir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.settings = settings
        run_file = self.dir / RUN
        identity = settings.identity()
        if run_file.exists() and not settings.overwrite:
            try:
                previous = json.loads(run_file.read_text())
            except (OSError, json.JSONDecodeError):
                previous = None
            if previous != identity:
                raise ValueError(
                    f"{self.dir} holds a run with other settings ({run_file}); use another "
                    "--output_dir or pass --overwrite"
                )
        elif settings.overwrite:
            for name in (RECORDS, PROGRESS, RESULTS, REPORT, PLOT):
                (self.dir / name).unlink(missing_ok=True)
        report.write_atomic(run_file, json.dumps(identity, indent=2))
        self.done: dict[tuple[str, str], dict] = {}
        self.previous_records: dict[str, list[dict]] = {}
        self._load_previous()
        self._records = open(self.dir / RECORDS, "a", encoding="utf-8")
        self._progress = open(self.dir / PROGRESS, "a", encoding="utf-8")

    def _load_previous(self):
        for line in _read_lines(self.dir / PROGRESS):
            self.done[(line["dataset"], line["image_id"])] = line
        kept = []
        for rec in _read_lines(self.dir / RECORDS):
            if (rec.get("dataset"), rec.get("image_id")) in self.done:
                kept.append(rec)
                self.previous_records.setdefault(rec["dataset"], []).append(rec)
        # Drop records of an interrupted image (and a torn last line) before appending.
        report.write_atomic(self.dir / RECORDS, "".join(json.dumps(r) + "\n" for r in kept))
        report.write_atomic(
            self.dir / PROGRESS, "".join(json.dumps(p) + "\n" for p in self.done.values())
        )

    def add_image(self, dataset: str, image_id: str, records: list[dict], skipped: int, problems):
        self._records.write("".join(json.dumps(r) + "\n" for r in records))
        self._records.flush()
        os.fsync(self._records.fileno())
        line = {
            "dataset": dataset,
            "image_id": image_id,
            "masks": len(records),
            "skipped": skipped,
            "problems": problems[:5],
        }
        self._progress.write(json.dumps(line) + "\n")
        self._progress.flush()
        os.fsync(self._progress.fileno())
        self.done[(dataset, image_id)] = line

    def close(self):
        self._records.close()
        self._progress.close()


def _read_lines(path: Path) -> list[dict]:
    if not path.exists():
        return []
    out = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:
                continue  # a line torn by a crash
    return out


def open_datasets(settings: EvalSettings) -> dict[str, Dataset]:
    """Index every requested dataset before any model work, so a missing folder fails the
    run at once rather than after hours on the datasets before it."""
    opened: dict[str, Dataset] = {}
    for entry in inventory.expand_entries(settings.datasets):
        name, dataset = registry.open_dataset(
            entry,
            settings.data_dir,
            settings.synthetic_images,
            synthetic_options={
                "seed": settings.synthetic_seed,
                "size": tuple(settings.synthetic_size),
                "max_objects": settings.synthetic_max_objects,
                "classes": settings.synthetic_classes,
            },
        )
        if name in opened:
            continue
        dataset.name = name
        if entry == "synthetic":  # generated: nothing to check
            opened[name] = dataset
            continue
        row = inventory.inventory_row(dataset, 0.0, settings.inventory_sample)
        if row.masks == 0 and not settings.allow_empty:
            reasons = "; ".join(row.problems[1:3]) or "no annotated image in its folder"
            raise EmptyDatasetError(
                f"{name}: no masks found ({reasons}); run `evaluate.py --inventory` to see "
                "what was read, or pass --allow_empty to go on without it"
            )
        warning = inventory.count_warning(row)
        if warning:
            log.warning("%s; check the copy with `evaluate.py --inventory`", warning)
        # Records and resume are keyed by image id: make ids unique within the dataset.
        seen: dict[str, int] = {}
        for sample in dataset.samples:
            n = seen[sample.image_id] = seen.get(sample.image_id, 0) + 1
            if n > 1:
                sample.image_id = f"{sample.image_id}#{n}"
        opened[name] = dataset
    return opened


def run_evaluation(
    settings: EvalSettings,
    model: SamModel,
    predictor: SamPredictor | None = None,
    datasets: dict[str, Dataset] | None = None,
) -> dict:
    """Evaluate `model` on the datasets of `settings`; returns the results.json content.

    predictor: an existing `SamPredictor` of `model` to reuse (its compiled functions).
    datasets: `open_datasets(settings)` if the caller already opened them (to find data
    problems before loading a model).
    """
    if datasets is None:
        datasets = open_datasets(settings)
    outputs = _Outputs(settings)
    if predictor is None:
        predictor = SamPredictor(model, max_batch=settings.batch_size)
    elif predictor.model is not model:
        raise ValueError("predictor belongs to another model")
    max_clicks = max(settings.num_clicks)
    states: dict[str, _DatasetState] = {}
    results: dict = {}
    last_write = 0.0
    try:
        for name, dataset in datasets.items():
            state = states[name] = _DatasetState()
            state.skip(dataset.skipped, dataset.problems)
            for rec in outputs.previous_records.get(name, []):
                state.add(rec)
            samples, subsampled = select_samples(
                dataset.samples,
                settings.max_masks_per_dataset,
                settings.threshold,
                settings.seed,
                name,
            )
            if subsampled:
                log.info("%s: subsampled to %d images", name, len(samples))
            bar = tqdm(samples, desc=name, unit="img", dynamic_ncols=True)
            for sample in bar:
                done = outputs.done.get((name, sample.image_id))
                if done is not None:
                    state.images += 1 if done.get("masks") else 0
                    state.skip(done.get("skipped", 0), done.get("problems", []))
                    continue
                records, skipped, problems = _evaluate_sample(
                    predictor, sample, name, max_clicks, settings
                )
                outputs.add_image(name, sample.image_id, records, skipped, problems)
                state.images += 1 if records else 0  # images scored, as masks are
                state.skip(skipped, problems)
                for r in records:
                    state.add(r)
                if state.ious:
                    bar.set_postfix(
                        masks=len(state.ious), miou1=f"{np.mean([i[0] for i in state.ious]):.3f}"
                    )
                if time.monotonic() - last_write > 10:
                    results = _write_results(outputs.dir, states, settings, final=False)
                    last_write = time.monotonic()
            bar.close()
            results = _write_results(outputs.dir, states, settings, final=False)
        results = _write_results(outputs.dir, states, settings, final=True)
    finally:
        outputs.close()
    empty = results.get("empty_datasets", [])
    if empty and not settings.allow_empty:
        described = "; ".join(
            f"{name}: 0 masks ({_skips(states[name].skipped, states[name].problems)})"
            for name in empty
        )
        raise EmptyDatasetError(
            f"{described}. The other datasets' results are in {outputs.dir / RESULTS} (not "
            "marked complete); fix the data, or pass --allow_empty to accept empty datasets"
        )
    return results


def _skips(skipped: int, problems: list[str]) -> str:
    if not skipped:
        return "nothing was skipped: no annotation to evaluate"
    first = f": {problems[0]}" if problems else ""
    return f"{skipped} skipped{first}"


def _evaluate_sample(predictor, sample: Sample, dataset: str, max_clicks: int, settings):
    """(records, skipped count, problem messages) for one image. Reading problems become
    skips; errors of the model itself propagate."""
    try:
        image = sample.read_image()
        annotations = sample.read_masks()
    except Exception as e:  # any unreadable input is a skip, never the end of the run
        message = str(e) if isinstance(e, DataError) else f"{type(e).__name__}: {e}"
        log.warning("%s: skipping image %s: %s", dataset, sample.image_id, message)
        return [], 1, [f"{sample.image_id}: {message}"]
    problems = list(annotations.problems)
    pairs = []
    for ann_id, mask in annotations.instances:
        if mask.shape != image.shape[:2]:
            problems.append(
                f"{sample.image_id} annotation {ann_id}: mask {mask.shape} vs image "
                f"{image.shape[:2]}"
            )
            continue
        pairs.append((ann_id, mask))
    if not pairs:
        return [], len(problems), problems
    predictor.set_image(image)
    results = interactive.evaluate_masks(
        predictor,
        [m for _, m in pairs],
        [a for a, _ in pairs],
        max_clicks,
        batch_size=settings.batch_size,
        multimask_all_clicks=settings.multimask_all_clicks,
        fixed_batch_shape=settings.fixed_batch_shape,
    )
    records = [
        {
            "dataset": dataset,
            "image_id": sample.image_id,
            "annotation_id": r.annotation_id,
            "clicks": [list(c) for c in r.clicks],
            "ious": r.ious,
            "oracle_ious": r.oracle_ious,
            "first_output_ious": r.first_output_ious,
            "first_pred_ious": r.first_pred_ious,
        }
        for r in results
    ]
    return records, len(problems), problems


def _write_results(out_dir: Path, states, settings: EvalSettings, final: bool) -> dict:
    datasets = {
        name: report.dataset_summary(
            s.ious,
            s.oracle,
            settings.num_clicks,
            s.images,
            s.skipped,
            s.problems,
            first_outputs=s.first_outputs,
        )
        for name, s in states.items()
    }
    for name, d in datasets.items():
        spec = registry.lookup(name)
        d["paper_sam_minus_ritm"] = spec.paper_delta if spec else None
    empty = [name for name, d in datasets.items() if d["num_masks"] == 0]
    results = {
        "datasets": datasets,
        "mean_over_datasets": report.mean_over_datasets(datasets, settings.num_clicks),
        # Complete only when every dataset was scored (or empty ones were accepted).
        "complete": final and (not empty or settings.allow_empty),
        "settings": settings.identity(),
    }
    if final and empty:
        results["empty_datasets"] = empty
    text = report.markdown(results, settings.num_clicks)
    plotted = {**results, "datasets": dict(datasets)}
    if _keep_other_tasks(out_dir / RESULTS, results):
        text += "\n" + tasks.task_markdown(results)
    report.write_atomic(out_dir / RESULTS, report.dumps(results))
    report.write_atomic(out_dir / REPORT, text)
    if final:
        try:
            report.plot(plotted, settings.num_clicks, out_dir / PLOT)
        except Exception as e:  # a plotting problem must not cost the run its results
            log.warning("could not draw %s: %s", PLOT, e)
    return results


def _keep_other_tasks(path: Path, results: dict) -> bool:
    """Carry what the other tasks (`tasks`) wrote into the same results.json over to its
    new version; whether there was any."""
    try:
        previous = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return False
    if not isinstance(previous, dict) or "tasks" not in previous:
        return False
    for name, entry in (previous.get("datasets") or {}).items():
        kept = {k: v for k, v in entry.items() if k in tasks.TASKS[1:]}
        if kept:
            results["datasets"].setdefault(name, {}).update(kept)
    results["tasks"] = previous["tasks"]
    return True
