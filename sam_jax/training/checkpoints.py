"""Training checkpoints: orbax steps under `<workdir>/checkpoints/` (TrainState + the data
iterator's state) and `<workdir>/sam_config.json`; saving a step, restoring the newest
readable one (a damaged step is set aside, never deleted), and the initial weights of a run
(`init_from`: any checkpoint `sam_jax.io.resolve` reads, for fine-tuning, or
`mae:PATH` for an MAE-pretrained encoder). Reading a workdir's parameters for inference
is `sam_jax.io.workdir`'s.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from pathlib import Path

import jax
import ml_collections
import numpy as np
import orbax.checkpoint as ocp

from sam_jax.io import checkpoint as ckpt
from sam_jax.io import mae, resolve
from sam_jax.io.workdir import (
    CHECKPOINT_DIR,
    UNREADABLE_DIR,
    NoReadableCheckpointError,
    UnreadableCheckpointError,
    describe_restore_error,
    quiet_failed_restore,
)

log = logging.getLogger(__name__)


def set_aside(directory, step: int) -> Path:
    """Move step directory `<directory>/<step>` to `<directory>/../checkpoints_unreadable/
    <step>[-n]` (never deleting it) and return where it went."""
    directory = Path(directory)
    target_root = directory.parent / UNREADABLE_DIR
    target_root.mkdir(exist_ok=True)
    target, n = target_root / str(step), 1
    while target.exists():
        n += 1
        target = target_root / f"{step}-{n}"
    os.rename(directory / str(step), target)
    return target


def make_manager(workdir, keep: int = 3, async_save: bool = True) -> ocp.CheckpointManager:
    options = ocp.CheckpointManagerOptions(
        max_to_keep=keep,
        create=True,
        enable_async_checkpointing=async_save,
    )
    return ocp.CheckpointManager(Path(workdir).absolute() / CHECKPOINT_DIR, options=options)


def write_model_config(workdir, model_config: ml_collections.ConfigDict) -> None:
    path = Path(workdir) / ckpt.CONFIG_FILE
    path.write_text(json.dumps(model_config.to_dict(), indent=2, default=list))


# ---------------------------------------------------------------------------- init_from
# ------------------------------------------------------------------ save and restore
def save_step(mngr, step: int, state, it, force: bool = False) -> None:
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
        raise ckpt.CheckpointError(
            f"checkpoint step {step} in {mngr.directory} was written by {by}, and this run "
            f"has {jax.process_count()}: the data-iterator states do not carry over. Resume "
            "with the same number of processes, or train into a new workdir with "
            "--config.init_from pointing at this one"
        )
    return record["iterator"] if written_by else record  # unwrapped: an older layout


def _restore(mngr, step: int, trainer, it):
    data_state = None if jax.process_count() == 1 else _process_data_state(mngr, step)
    if jax.process_count() == 1 and not (Path(mngr.directory) / str(step) / "data").is_dir():
        raise ckpt.CheckpointError(
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
        file, reason = describe_restore_error(step_dir, e)
        raise UnreadableCheckpointError(mngr.directory, step, file, reason) from e
    return restored["state"]


def restore_newest_readable(mngr, trainer, it, primary: bool):
    """(step, state) of the newest checkpoint that restores, or (None, None) when there is
    none. Unreadable newer steps are moved to `checkpoints_unreadable/` (never deleted),
    with a line naming the step and the damaged file, once an older one restored. When no
    step restores, nothing is moved and NoReadableCheckpointError lists every step's
    problem. A multi-process run stops at the first unreadable step instead (its processes
    could disagree on which steps they can read)."""
    # Around all attempts: a failed one's abandoned reads report themselves later on.
    with quiet_failed_restore():
        return _try_steps_newest_first(mngr, trainer, it, primary)


def _try_steps_newest_first(mngr, trainer, it, primary: bool):
    failures = []
    for step in sorted(mngr.all_steps(), reverse=True):
        try:
            state = _restore(mngr, step, trainer, it)
        except UnreadableCheckpointError as e:
            log.debug("%s", e)
            if jax.process_count() > 1:
                raise UnreadableCheckpointError(
                    e.directory,
                    e.step,
                    e.file,
                    f"{e.reason}. Move {e.directory / str(e.step)} out of the way (e.g. to "
                    f"{UNREADABLE_DIR}/) to resume from the step before it",
                ) from e
            failures.append(e)
            continue
        for bad in failures:
            moved = set_aside(mngr.directory, bad.step)
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
        raise NoReadableCheckpointError(
            f"no checkpoint in {mngr.directory} is readable ({listed}). Nothing was moved or "
            "deleted: move the step directories elsewhere to start afresh, or train into a "
            "new workdir"
        )
    return None, None


# ---------------------------------------------------------------------------- init_from
def initial_params(config: ml_collections.ConfigDict) -> dict:
    """Host (numpy-backed) parameters for the start of a run, from `config.init_from`."""
    model = config.model
    source = str(config.init_from or "")
    if source.startswith("mae:"):
        path = source[len("mae:") :]
        state_dict = ckpt.load_torch_state_dict(path)
        fresh = ckpt.init_params(model, config.seed)
        params, unused = mae.mae_to_encoder(state_dict, fresh, model.encoder_depth)
        log.info("initialised the image encoder from MAE %s", path)
        if unused:
            log.warning("%d MAE key(s) not used: %s", len(unused), ", ".join(unused))
        return params
    _, loaded = resolve.resolve(source or None, config=model, seed=config.seed)
    if not source:
        return loaded
    fresh = ckpt.init_params(model, config.seed)
    loaded = _match_text_prompt(loaded, fresh, model.text_embed_dim, source)
    log.info("initialised parameters from %s", source)
    return jax.tree_util.tree_map(np.asarray, loaded)


def _match_text_prompt(loaded: dict, fresh: dict, text_embed_dim: int, source) -> dict:
    """Fine-tuning a released (text-free) SAM with text prompts on keeps the fresh text
    projection; a checkpoint whose text projection does not fit the config is an error."""
    have = loaded["prompt_encoder"].get("text_projection")
    want = fresh["prompt_encoder"].get("text_projection")
    if have is None and want is None:
        return loaded
    if want is None:
        raise ckpt.CheckpointError(
            f"init_from {source} takes {have['kernel'].shape[0]}-d text prompts; set "
            "model.text_embed_dim to that to keep them"
        )
    if have is None:
        log.info("init_from %s has no text prompt: text projection initialised fresh", source)
        return {**loaded, "prompt_encoder": {**loaded["prompt_encoder"], "text_projection": want}}
    if have["kernel"].shape != want["kernel"].shape:
        raise ckpt.CheckpointError(
            f"init_from {source} takes {have['kernel'].shape[0]}-d text prompts, config "
            f"model.text_embed_dim is {text_embed_dim}"
        )
    return loaded
