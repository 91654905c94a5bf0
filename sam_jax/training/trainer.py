"""The training loop: `train_and_evaluate(config, workdir)`.

config -> mesh -> sharded TrainState (fresh, `init_from`, or resumed from the newest
checkpoint in `<workdir>/checkpoints`) -> grain batches as global arrays -> jitted
`train_step` -> metrics (`metrics.jsonl`, TensorBoard in `tb/`, a progress bar), checkpoints,
and at the end a quick held-out click evaluation (`eval.json`).
"""

from __future__ import annotations

import functools
import json
import logging
import math
import os
import signal
import sys
import tempfile
import time
from pathlib import Path

import flax
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
from jax.sharding import NamedSharding, PartitionSpec

from sam_jax.data import synthetic
from sam_jax.data.decode import ExampleSpec
from sam_jax.data.mask_embeddings import make_embedder
from sam_jax.data.pipeline import make_dataset
from sam_jax.io.checkpoint import CheckpointError, abstract_params
from sam_jax.modeling import sharding as shd
from sam_jax.modeling.configs import build_sam
from sam_jax.training import checkpoints
from sam_jax.training.config import validate_config
from sam_jax.training.optimizer import make_optimizer
from sam_jax.training.step import TrainState, train_step

log = logging.getLogger(__name__)

PREEMPTED = "preempted"
FINISHED = "finished"


class NonFiniteLossError(FloatingPointError):
    """Training produced a NaN/Inf loss; the last checkpoint on disk is still good."""


# ---------------------------------------------------------------------------- data
def make_source(config: ml_collections.ConfigDict, workdir: Path):
    """The training data source named by `config.data`."""
    from sam_jax.data import sources

    d = config.data
    if d.source == "synthetic":
        root = Path(d.path) if d.path else workdir / "data"
        done = root / "COMPLETE"
        # Written once and marked complete, so a restarted run reads identical data.
        if jax.process_index() == 0 and not done.exists():
            log.info("writing %d synthetic training images to %s", d.synthetic_images, root)
            synthetic.write_sa1b(
                root,
                d.synthetic_images,
                seed=config.seed,
                size=tuple(d.synthetic_size),
                max_objects=d.synthetic_max_objects,
                num_workers=min(os.cpu_count() or 1, 16),
                classes=d.synthetic_classes,
            )
            done.write_text("ok\n")
        _sync("synthetic-data")
        return sources.SA1BTarSource(root)
    if d.source == "sa1b":
        root = Path(d.path)
        if root.is_dir() and not any(root.glob("*.tar")):
            return sources.SA1BDirectorySource(root)
        return sources.SA1BTarSource(root)
    if d.source == "coco":
        ann, images = d.path.split(":", 1)
        return sources.CocoSource(ann, images)
    if d.source == "tfds":
        return sources.TfdsSource(data_dir=d.path or None)
    raise ValueError(f"unknown data.source {d.source!r} (sa1b | coco | tfds | synthetic)")


def _sync(name: str) -> None:
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(name)


def _stop_before(step: int, stop: dict) -> bool:
    """Whether to stop before `step` (0-based). One process stops as soon as it got SIGTERM.
    Several must stop at the same step, or the rest wait forever in that step's collectives:
    jax.distributed's preemption service catches SIGTERM in any of them and picks a step all
    reach (every process calls this at every step)."""
    if jax.process_count() == 1:
        return stop["signal"] is not None
    from jax.experimental import multihost_utils

    if multihost_utils.reached_preemption_sync_point(step):
        stop["signal"] = stop["signal"] or int(signal.SIGTERM)
        return True
    return False


# ---------------------------------------------------------------------------- sharding
def _opt_state_shardings(abstract_opt_state, param_shardings, mesh):
    """Optimizer-state leaves shaped like a parameter get that parameter's sharding (matched
    by the trailing dict keys of their path); everything else is replicated."""
    by_path = flax.traverse_util.flatten_dict(param_shardings)
    replicated = NamedSharding(mesh, PartitionSpec())

    def pick(path, leaf):
        names = tuple(getattr(k, "key", None) for k in path)
        for start in range(len(names)):
            tail = names[start:]
            if tail in by_path and None not in tail:
                spec = by_path[tail].spec
                if len(spec) <= len(getattr(leaf, "shape", ())):
                    return by_path[tail]
        return replicated

    return jax.tree_util.tree_map_with_path(pick, abstract_opt_state)


def _put_global(value, sharding):
    """A host array (identical on every process) -> a global array with `sharding`."""
    value = np.asarray(value)
    return jax.make_array_from_callback(value.shape, sharding, lambda idx: value[idx])


class Trainer:
    """Everything the loop needs, built from a config; also used by tests and benchmarks."""

    def __init__(self, config: ml_collections.ConfigDict, mesh=None):
        self.config = config
        m = config.mesh
        self.mesh = mesh if mesh is not None else shd.make_mesh(m.data, m.fsdp, m.tensor)
        self.module = build_sam(config.model)
        abstract = abstract_params(config.model)
        self.tx, self.schedule = make_optimizer(config, abstract, config.model.encoder_depth)
        self.param_shardings = shd.param_shardings(abstract, self.mesh)
        abstract_opt = jax.eval_shape(self.tx.init, abstract)
        replicated = NamedSharding(self.mesh, PartitionSpec())
        self.state_shardings = TrainState(
            step=replicated,
            params=self.param_shardings,
            opt_state=_opt_state_shardings(abstract_opt, self.param_shardings, self.mesh),
        )
        self.abstract_state = jax.tree_util.tree_map(
            lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
            TrainState(jax.ShapeDtypeStruct((), jnp.int32), abstract, abstract_opt),
            self.state_shardings,
        )
        self.replicated = replicated
        self.batch_shardings = {
            "image": shd.batch_sharding(self.mesh, 4),
            "input_size": shd.batch_sharding(self.mesh, 2),
            "masks": shd.batch_sharding(self.mesh, 4),
            "mask_valid": shd.batch_sharding(self.mesh, 2),
        }
        if config.text.source:
            if not config.model.text_embed_dim:
                raise ValueError(
                    f"text.source={config.text.source!r} needs model.text_embed_dim > 0 (the "
                    "size of the prompt embeddings)"
                )
            self.batch_shardings["text_embedding"] = shd.batch_sharding(self.mesh, 3)
            self.batch_shardings["text_valid"] = shd.batch_sharding(self.mesh, 2)
        self.step_fn = jax.jit(
            functools.partial(
                train_step, module=self.module, tx=self.tx, schedule=self.schedule, config=config
            ),
            in_shardings=(self.state_shardings, self.batch_shardings, replicated),
            out_shardings=(self.state_shardings, replicated),
            donate_argnums=0,
        )

    def init_state(self, params) -> TrainState:
        """Sharded TrainState from host params (the optimizer state is created sharded)."""
        params = jax.tree_util.tree_map(_put_global, params, self.param_shardings)
        opt_state = jax.jit(self.tx.init, out_shardings=self.state_shardings.opt_state)(params)
        step = _put_global(np.int32(0), self.replicated)
        return TrainState(step, params, opt_state)

    def global_batch(self, local_batch: dict) -> dict:
        return {
            k: jax.make_array_from_process_local_data(self.batch_shardings[k], np.asarray(v))
            for k, v in local_batch.items()
        }


# ---------------------------------------------------------------------------- observability
class _MetricWriter:
    def __init__(self, workdir: Path, enabled: bool):
        self.enabled = enabled
        self.tb = None
        if not enabled:
            return
        self.path = workdir / "metrics.jsonl"
        self.jsonl = open(self.path, "a")  # noqa: SIM115 (closed in close())
        try:
            from tensorboardX import SummaryWriter

            self.tb = SummaryWriter(str(workdir / "tb"))
        except ImportError:
            log.warning("tensorboardX not installed: no TensorBoard scalars")

    def keep_until(self, step: int) -> None:
        """Drop the lines of steps after `step` (and a line torn by a crash): a run resumed
        from checkpoint `step` writes those steps again. The file is replaced atomically."""
        if not self.enabled:
            return
        self.jsonl.close()
        kept, dropped = [], 0
        for line in self.path.read_text().splitlines():
            try:
                keep = int(json.loads(line)["step"]) <= step
            except (ValueError, KeyError, TypeError):
                keep = False
            if keep:
                kept.append(line + "\n")
            else:
                dropped += 1
        if dropped:
            fd, tmp = tempfile.mkstemp(prefix=".metrics.jsonl.", dir=self.path.parent)
            with os.fdopen(fd, "w") as f:
                f.write("".join(kept))
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.path)
            log.info("dropped %d metrics line(s) after step %d from %s", dropped, step, self.path)
        self.jsonl = open(self.path, "a")  # noqa: SIM115 (closed in close())

    def write(self, record: dict) -> None:
        if not self.enabled:
            return
        self.jsonl.write(json.dumps(record) + "\n")
        self.jsonl.flush()
        if self.tb is not None:
            step = record["step"]
            for k, v in record.items():
                if k == "step":
                    continue
                if isinstance(v, list):
                    for i, x in enumerate(v):
                        self.tb.add_scalar(f"{k}/{i}", x, step)
                elif isinstance(v, (int, float)):
                    self.tb.add_scalar(k, v, step)
            self.tb.flush()

    def close(self) -> None:
        if self.enabled:
            self.jsonl.close()
            if self.tb is not None:
                self.tb.close()


class _Progress:
    """tqdm with ETA on a terminal; plain log lines otherwise."""

    def __init__(self, start: int, total: int, enabled: bool):
        self.bar = None
        if enabled and sys.stderr.isatty():
            from tqdm import tqdm

            self.bar = tqdm(total=total, initial=start, unit="step", dynamic_ncols=True)
        self.enabled = enabled

    def update(self, n: int = 1) -> None:
        if self.bar is not None:
            self.bar.update(n)

    def report(self, record: dict) -> None:
        if not self.enabled:
            return
        text = (
            f"step {record['step']}: loss {record['loss']:.4f} "
            f"iou(first/last round) {record['round_iou'][0]:.3f}/{record['round_iou'][-1]:.3f} "
            f"lr {record['lr']:.2e} {record['images_per_sec']:.1f} img/s"
        )
        if self.bar is not None:
            self.bar.set_postfix_str(f"loss {record['loss']:.3f}")
            self.bar.write(text)
        else:
            print(text, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _finite(record: dict) -> bool:
    return all(math.isfinite(record[k]) for k in ("loss", "grad_norm", "update_norm"))


def _to_record(step: int, metrics: dict) -> dict:
    out = {"step": step}
    for k, v in jax.device_get(metrics).items():
        v = np.asarray(v)
        out[k] = v.tolist() if v.ndim else v.item()
    return out


# ---------------------------------------------------------------------------- checkpoints
def _save(mngr, step: int, state: TrainState, it, force: bool = False) -> None:
    data_state = it.get_state()
    items = {"state": ocp.args.StandardSave(state)}
    if jax.process_count() == 1:
        items["data"] = ocp.args.JsonSave(data_state)
    else:
        # orbax writes JSON items from the primary process only; every process keeps its own.
        path = _data_state_path(mngr, step)
        path.parent.mkdir(parents=True, exist_ok=True)
        record = {"process_count": jax.process_count(), "iterator": data_state}
        path.write_text(json.dumps(record))
    mngr.save(step, args=ocp.args.Composite(**items), force=force)
    if jax.process_count() > 1:
        # Drop this process's data states of checkpoints the manager no longer keeps.
        kept = set(mngr.all_steps()) | {step}
        for old in path.parent.glob(f"*.p{jax.process_index()}.json"):
            old_step = old.name.split(".")[0]
            if old_step.isdigit() and int(old_step) < step and int(old_step) not in kept:
                old.unlink(missing_ok=True)


def _data_state_path(mngr, step: int) -> Path:
    return Path(mngr.directory) / "data_state" / f"{step}.p{jax.process_index()}.json"


def _process_data_state(mngr, step: int) -> dict:
    """This process's data-iterator state of checkpoint `step` in a multi-process run; read
    before the collective restore, so that a run with another process count fails on every
    process alike (each iterator state covers its process's share of the data)."""
    path = _data_state_path(mngr, step)
    record = json.loads(path.read_text()) if path.is_file() else None
    written_by = record.get("process_count") if isinstance(record, dict) else None
    if record is None or written_by not in (None, jax.process_count()):
        by = f"{written_by} processes" if written_by else "a different number of processes"
        raise CheckpointError(
            f"checkpoint step {step} in {mngr.directory} was written by {by}, and this run "
            f"has {jax.process_count()}: the data-iterator states do not carry over. Resume "
            "with the same number of processes, or train into a new workdir with "
            "--config.init_from pointing at this one"
        )
    return record["iterator"] if written_by else record  # unwrapped: an older layout


def _restore(mngr, step: int, trainer: Trainer, it):
    data_state = None if jax.process_count() == 1 else _process_data_state(mngr, step)
    if jax.process_count() == 1 and not (Path(mngr.directory) / str(step) / "data").is_dir():
        raise CheckpointError(
            f"checkpoint step {step} in {mngr.directory} was written by a multi-process run "
            "(its data-iterator states are per process) and this run has one process. Resume "
            "with the same number of processes, or train into a new workdir with "
            "--config.init_from pointing at this one"
        )
    items = {"state": ocp.args.StandardRestore(trainer.abstract_state)}
    if jax.process_count() == 1:
        items["data"] = ocp.args.JsonRestore()
    try:
        restored = mngr.restore(step, args=ocp.args.Composite(**items))
        if jax.process_count() == 1:
            data_state = restored["data"]
        it.set_state(data_state)
    except Exception as e:  # orbax, TensorStore and JSON raise many types for damaged files
        step_dir = Path(mngr.directory) / str(step)
        file, reason = checkpoints.describe_restore_error(step_dir, e)
        raise checkpoints.UnreadableCheckpointError(mngr.directory, step, file, reason) from e
    return restored["state"]


def _restore_newest_readable(mngr, trainer: Trainer, it, primary: bool):
    """(step, state) of the newest checkpoint that restores, or (None, None) when there is
    none. Unreadable newer steps are moved to `checkpoints_unreadable/` (never deleted),
    with a line naming the step and the damaged file, once an older one restored. When no
    step restores, nothing is moved and NoReadableCheckpointError lists every step's
    problem. A multi-process run stops at the first unreadable step instead (its processes
    could disagree on which steps they can read)."""
    # Around all attempts: a failed one's abandoned reads report themselves later on.
    with checkpoints.quiet_failed_restore():
        return _try_steps_newest_first(mngr, trainer, it, primary)


def _try_steps_newest_first(mngr, trainer: Trainer, it, primary: bool):
    failures = []
    for step in sorted(mngr.all_steps(), reverse=True):
        try:
            state = _restore(mngr, step, trainer, it)
        except checkpoints.UnreadableCheckpointError as e:
            log.debug("%s", e)
            if jax.process_count() > 1:
                raise checkpoints.UnreadableCheckpointError(
                    e.directory,
                    e.step,
                    e.file,
                    f"{e.reason}. Move {e.directory / str(e.step)} out of the way (e.g. to "
                    f"{checkpoints.UNREADABLE_DIR}/) to resume from the step before it",
                ) from e
            failures.append(e)
            continue
        for bad in failures:
            moved = checkpoints.set_aside(mngr.directory, bad.step)
            if primary:
                print(
                    f"warning: {bad}; moved it to {moved} and resuming from step {step}",
                    file=sys.stderr,
                    flush=True,
                )
        if failures:
            mngr.reload()  # forget the moved steps, so that they are saved afresh
        return step, state
    if failures:
        listed = "; ".join(f"step {e.step}: {e.file}: {e.reason}" for e in failures)
        raise checkpoints.NoReadableCheckpointError(
            f"no checkpoint in {mngr.directory} is readable ({listed}). Nothing was moved or "
            "deleted: move the step directories elsewhere to start afresh, or train into a "
            "new workdir"
        )
    return None, None


# ---------------------------------------------------------------------------- the loop
def train_and_evaluate(config: ml_collections.ConfigDict, workdir) -> dict:
    """Train (resuming from `<workdir>/checkpoints` when possible), then evaluate.

    Returns {"status": "finished" | "preempted", "step": int, "eval": dict | None}.
    Raises ConfigError (before any work) for a config mistake, CheckpointError when no
    checkpoint in the workdir restores, DataError for unusable data, and
    NonFiniteLossError when the loss becomes NaN/Inf (nothing is saved after it).
    """
    if "://" in str(workdir):
        raise ValueError(
            f"workdir {workdir} is a URL; it must be a filesystem path that every process sees "
            "(local disk for one host; NFS, Filestore or a gcsfuse-mounted bucket for several)"
        )
    # The whole config, before anything is created or generated (ConfigError).
    validate_config(config, num_devices=jax.device_count(), num_processes=jax.process_count())
    workdir = Path(workdir).absolute()
    workdir.mkdir(parents=True, exist_ok=True)
    primary = jax.process_index() == 0
    trainer = Trainer(config)
    mesh = trainer.mesh
    if primary:
        checkpoints.write_model_config(workdir, config.model)
        (workdir / "config.json").write_text(config.to_json_best_effort(indent=2))

    source = make_source(config, workdir)
    spec = ExampleSpec(
        image_size=config.model.image_size,
        low_res_size=4 * (config.model.image_size // config.model.patch_size),
        max_masks=config.train.masks_per_image,
        max_area_fraction=config.data.max_area_fraction,
    )
    ds = make_dataset(
        source,
        spec,
        batch_size=config.batch_size // jax.process_count(),
        seed=config.seed,
        num_threads=config.data.num_threads,
        embedder=make_embedder(config, workdir),
    )
    it = iter(ds)

    mngr = checkpoints.make_manager(workdir, keep=config.keep_checkpoints)
    stop = {"signal": None}
    previous_handler = signal.getsignal(signal.SIGTERM)

    def on_sigterm(signum, frame):
        stop["signal"] = signum

    own_handler = jax.process_count() == 1  # else the preemption service's (`_stop_before`)
    if own_handler:
        signal.signal(signal.SIGTERM, on_sigterm)
    writer = _MetricWriter(workdir, primary)
    progress = None
    status = FINISHED
    try:
        with jax.set_mesh(mesh):
            latest, state = _restore_newest_readable(mngr, trainer, it, primary)
            if latest is not None:
                log.info("resumed from %s at step %d", mngr.directory, latest)
                if primary:
                    print(f"resuming from checkpoint at step {latest}", flush=True)
            else:
                state = trainer.init_state(checkpoints.initial_params(config))
            start = int(jax.device_get(state.step))
            writer.keep_until(start)
            key = jax.random.key(config.seed)
            progress = _Progress(start, config.num_train_steps, primary)
            last_saved = latest
            t0, t0_step = time.perf_counter(), start
            for step in range(start, config.num_train_steps):
                if _stop_before(step, stop):
                    break
                batch = trainer.global_batch(next(it))
                state, metrics = trainer.step_fn(state, batch, key)
                done = step + 1
                progress.update()
                log_now = done % config.log_every_steps == 0 or done == config.num_train_steps
                save_now = (
                    done % config.checkpoint_every_steps == 0 or done == config.num_train_steps
                )
                if log_now or save_now:
                    record = _to_record(done, metrics)
                    if not _finite(record):
                        raise NonFiniteLossError(
                            f"loss {record['loss']} / update norm {record['update_norm']} at "
                            f"step {done}; stopping. The last good checkpoint (step "
                            f"{last_saved}) in {mngr.directory} is untouched."
                        )
                    if log_now:
                        elapsed = time.perf_counter() - t0
                        record["images_per_sec"] = (
                            (done - t0_step) * config.batch_size / max(elapsed, 1e-9)
                        )
                        record["skipped_examples"] = ds.skip_counter.skipped
                        writer.write(record)
                        progress.report(record)
                        t0, t0_step = time.perf_counter(), done
                    if save_now:
                        _save(mngr, done, state, it)
                        last_saved = done
            step_now = int(jax.device_get(state.step))
            if stop["signal"] is not None:
                status = PREEMPTED
                record = _to_record(step_now, metrics) if step_now > start else None
                if record is not None and not _finite(record):
                    raise NonFiniteLossError(
                        f"loss {record['loss']} at step {step_now}; the last good checkpoint "
                        f"(step {last_saved}) is untouched"
                    )
                if last_saved != step_now:
                    _save(mngr, step_now, state, it, force=True)
                mngr.wait_until_finished()
                if primary:
                    print(
                        f"received signal {stop['signal']}: saved a checkpoint at step "
                        f"{step_now} in {mngr.directory}; re-run the same command to resume",
                        flush=True,
                    )
                return {"status": status, "step": step_now, "eval": None}
            mngr.wait_until_finished()
            params = state.params
    finally:
        if own_handler:
            signal.signal(signal.SIGTERM, previous_handler)
        if progress is not None:
            progress.close()
        writer.close()
        mngr.close()

    result = None
    if config.eval.synthetic_images > 0:
        if jax.process_count() > 1:  # parameter shards may live on other processes
            from jax.experimental import multihost_utils

            params = multihost_utils.process_allgather(params, tiled=True)
        else:
            params = jax.device_get(params)
        if primary:
            result = evaluate_held_out(config, params)
            (workdir / "eval.json").write_text(json.dumps(result, indent=2))
            clicks = ", ".join(f"{k} click(s) {v:.3f}" for k, v in result["miou"].items())
            if "1" in result["oracle_miou"]:
                clicks += f" (1 click, best of the three outputs: {result['oracle_miou']['1']:.3f})"
            print(f"held-out synthetic mIoU ({result['num_masks']} masks): {clicks}", flush=True)
            if "text" in result:
                t = result["text"]
                kinds = ", ".join(f"{k.replace('_', ' ')} {v:.3f}" for k, v in t["miou"].items())
                print(f"held-out text-prompt mIoU ({t['num_masks']} masks): {kinds}", flush=True)
    return {"status": status, "step": step_now, "eval": result}


# ---------------------------------------------------------------------------- held-out eval
def evaluate_held_out(config: ml_collections.ConfigDict, params) -> dict:
    """Interactive mIoU after k clicks on synthetic images drawn with another seed.

    The evaluation harness's click loop (`sam_jax.evaluation.interactive`): the first at the
    mask's interior-most pixel with three outputs, scored by the highest predicted IoU
    (`oracle_miou`: the best of the three against the ground truth); later ones on the
    larger error region, added to the prompt with the previous low-res logits as mask input
    and the single output. With text prompts on synthetic named objects, also the
    text-prompt evaluation (`evaluation.text_prompts`).
    """
    from sam_jax.evaluation.interactive import evaluate_masks
    from sam_jax.evaluation.report import dataset_summary
    from sam_jax.inference.build import SamModel
    from sam_jax.inference.predictor import SamPredictor

    e = config.eval
    num_clicks = sorted(int(k) for k in e.num_clicks)
    model = SamModel(build_sam(config.model), params, config.model)
    predictor = SamPredictor(model)
    seed = config.seed + 1_000_003
    ious, oracle = [], []  # per mask, after 1..max clicks
    for index in range(e.synthetic_images):
        image, masks, _ = synthetic.make_picture(
            index,
            seed,
            tuple(config.data.synthetic_size),
            config.data.synthetic_max_objects,
            config.data.synthetic_classes,
        )
        predictor.set_image(image)
        ids = [str(i) for i in range(len(masks))]
        for r in evaluate_masks(predictor, masks, ids, num_clicks[-1]):
            ious.append(r.ious)
            oracle.append(r.oracle_ious)
    result = dataset_summary(ious, oracle, num_clicks, e.synthetic_images, 0, [])
    result["seed"] = seed
    if config.data.synthetic_classes and config.model.text_embed_dim:
        from sam_jax.evaluation.text_prompts import evaluate_text_prompts

        result["text"] = evaluate_text_prompts(
            model,
            e.synthetic_images,
            seed,
            tuple(config.data.synthetic_size),
            config.data.synthetic_max_objects,
        )
    return result
