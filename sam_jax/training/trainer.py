"""The training loop: `train_and_evaluate(config, workdir)`.

config -> mesh -> sharded TrainState (`state`: fresh, `init_from`, or resumed from the
newest readable checkpoint, `checkpoints`) -> grain batches as global arrays -> jitted
`train_step` -> metrics (`metrics`: metrics.jsonl, TensorBoard, a progress bar),
checkpoints, and at the end the held-out click evaluation (`held_out`: eval.json).
"""

from __future__ import annotations

import json
import logging
import os
import signal
import time
from pathlib import Path

import jax
import ml_collections

from sam_jax.data import synthetic
from sam_jax.data.decode import ExampleSpec
from sam_jax.data.mask_embeddings import make_embedder
from sam_jax.data.pipeline import make_dataset
from sam_jax.training import checkpoints, held_out, metrics
from sam_jax.training.config import validate_config
from sam_jax.training.state import Trainer

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
    writer = metrics.MetricWriter(workdir, primary)
    progress = None
    status = FINISHED
    try:
        with jax.set_mesh(mesh):
            latest, state = checkpoints.restore_newest_readable(mngr, trainer, it, primary)
            if latest is not None:
                log.info("resumed from %s at step %d", mngr.directory, latest)
                if primary:
                    print(f"resuming from checkpoint at step {latest}", flush=True)
            else:
                state = trainer.init_state(checkpoints.initial_params(config))
            start = int(jax.device_get(state.step))
            writer.keep_until(start)
            key = jax.random.key(config.seed)
            progress = metrics.Progress(start, config.num_train_steps, primary)
            last_saved = latest
            t0, t0_step = time.perf_counter(), start
            for step in range(start, config.num_train_steps):
                if _stop_before(step, stop):
                    break
                batch = trainer.global_batch(next(it))
                state, step_metrics = trainer.step_fn(state, batch, key)
                done = step + 1
                progress.update()
                log_now = done % config.log_every_steps == 0 or done == config.num_train_steps
                save_now = (
                    done % config.checkpoint_every_steps == 0 or done == config.num_train_steps
                )
                if log_now or save_now:
                    record = metrics.to_record(done, step_metrics)
                    if not metrics.finite(record):
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
                        checkpoints.save_step(mngr, done, state, it)
                        last_saved = done
            step_now = int(jax.device_get(state.step))
            if stop["signal"] is not None:
                status = PREEMPTED
                record = metrics.to_record(step_now, step_metrics) if step_now > start else None
                if record is not None and not metrics.finite(record):
                    raise NonFiniteLossError(
                        f"loss {record['loss']} at step {step_now}; the last good checkpoint "
                        f"(step {last_saved}) is untouched"
                    )
                if last_saved != step_now:
                    checkpoints.save_step(mngr, step_now, state, it, force=True)
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
            result = held_out.evaluate_held_out(config, params, workdir)
            (workdir / "eval.json").write_text(json.dumps(result, indent=2))
            clicks = ", ".join(f"{k} click(s) {v:.3f}" for k, v in result["miou"].items())
            if "1" in result["oracle_miou"]:
                clicks += f" (1 click, best of the three outputs: {result['oracle_miou']['1']:.3f})"
            print(f"held-out synthetic mIoU ({result['num_masks']} masks): {clicks}", flush=True)
            if "first_click" in result:
                f = result["first_click"]
                print(
                    f"IoU head at the first click: top-1 {f['head_top1']:.3f}, mean |predicted -"
                    f" actual| {f['head_abs_err']:.3f}; per-output mIoU "
                    + " / ".join(f"{v:.3f}" for v in f["output_miou"]),
                    flush=True,
                )
            if "text" in result:
                t = result["text"]
                kinds = ", ".join(f"{k.replace('_', ' ')} {v:.3f}" for k, v in t["miou"].items())
                print(f"held-out text-prompt mIoU ({t['num_masks']} masks): {kinds}", flush=True)
    return {"status": status, "step": step_now, "eval": result}
