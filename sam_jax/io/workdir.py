"""Training workdirs read as checkpoints: `<workdir>/sam_config.json` beside orbax steps in
`<workdir>/checkpoints/` (written by the training loop, `sam_jax.training.checkpoints`).
`load_params_from_workdir` reads the newest readable step's parameters for inference or
fine-tuning; a damaged step is named by its file (`describe_restore_error`), and the
hundreds of lines orbax prints from a failed restore are kept to its one exception
(`quiet_failed_restore`).
"""

from __future__ import annotations

import contextlib
import gc
import json
import logging
import re
import sys
from pathlib import Path

import jax
import orbax.checkpoint as ocp

from sam_jax.io import checkpoint as ckpt

log = logging.getLogger(__name__)

CHECKPOINT_DIR = "checkpoints"
# Damaged steps are moved here (beside CHECKPOINT_DIR, so orbax no longer lists them).
UNREADABLE_DIR = "checkpoints_unreadable"


class UnreadableCheckpointError(ckpt.CheckpointError):
    """A checkpoint step that exists but cannot be restored; `file` names the damaged file
    as closely as the error allows."""

    def __init__(self, directory, step: int, file: str, reason: str):
        self.directory, self.step, self.file, self.reason = Path(directory), step, file, reason
        super().__init__(f"checkpoint step {step} is unreadable: {file}: {reason}")


class NoReadableCheckpointError(ckpt.CheckpointError):
    """Checkpoints exist, and none of them restores."""


def describe_restore_error(step_dir, error: BaseException) -> tuple[str, str]:
    """(the damaged file, relative to the workdir, and a one-line reason) for a
    failed restore of `step_dir`. Orbax and TensorStore name the file in some errors, the
    OCDBT database and the size of a truncated data file in others, and no file at all for
    unparsable JSON; each case is traced back to a file here."""
    step_dir = Path(step_dir)
    chain, e = [], error
    while e is not None and len(chain) < 10:
        chain.append(e)
        e = e.__cause__ if e.__cause__ is not None else e.__context__
    text = "\n".join(str(x) for x in chain)
    candidates = [Path(f) for f in re.findall(r'local file "([^"]+)"', text)]
    files = [f for f in candidates if f.is_file()]
    for size in re.findall(r"value of size (\d+)", text):  # a truncated OCDBT data file
        files += [
            f
            for f in sorted(step_dir.rglob("*"))
            if f.parent.name == "d" and f.is_file() and f.stat().st_size == int(size)
        ]
    if any(isinstance(x, json.JSONDecodeError) for x in chain):
        files += [f for f in sorted(step_dir.rglob("*")) if _is_bad_json(f)]
    where = files[0] if files else (candidates[0] if candidates else step_dir)
    try:  # relative to the workdir: checkpoints/<step>/...
        shown = str(Path(where).relative_to(step_dir.parent.parent))
    except ValueError:
        shown = str(where)
    # The innermost message says what is wrong (TensorStore's outer ones print a whole
    # spec), but json's own StopIteration context says nothing.
    innermost = [x for x in chain if not isinstance(x, StopIteration) and str(x).strip()]
    cause = innermost[-1] if innermost else error
    reason = " ".join(str(cause).split())
    if len(reason) > 300:
        reason = reason[:297] + "..."
    return shown, f"{type(cause).__name__}: {reason}"


def _is_bad_json(path: Path) -> bool:
    """Whether `path` is one of orbax's JSON files (metadata, array metadata, JSON items)
    and does not parse."""
    if not path.is_file() or path.suffix not in ("", ".json") or path.stat().st_size > 50e6:
        return False
    if path.parent.name == "d":  # OCDBT data files are binary
        return False
    try:
        json.loads(path.read_bytes())
    except (UnicodeDecodeError, json.JSONDecodeError):
        return True
    return False


# What the reports of an abandoned orbax read mention.
_ABANDONED_READ_MARKERS = (
    "_read_array_index_and_device_put",
    "TensorStore",
    "OCDBT",
    "Event loop is closed",
)


def _is_abandoned_read(text: str) -> bool:
    return any(marker in text for marker in _ABANDONED_READ_MARKERS)


class _DropAbandonedReads(logging.Filter):
    """asyncio's 'exception was never retrieved' records of abandoned checkpoint reads."""

    def __init__(self):
        super().__init__()
        self.dropped = 0

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if "exception was never retrieved" in message and _is_abandoned_read(message):
            self.dropped += 1
            return False
        return True


class _UnraisableFilter:
    """An unraisable hook that drops the reports of abandoned checkpoint reads and passes
    every other one on to the hook it replaced."""

    def __init__(self, previous):
        self.previous = previous
        self.dropped = 0

    def __call__(self, unraisable) -> None:
        text = f"{unraisable.object!r} {unraisable.exc_value!r}"
        if _is_abandoned_read(text):
            self.dropped += 1
        else:
            self.previous(unraisable)


@contextlib.contextmanager
def quiet_failed_restore():
    """Keep a failed orbax restore to its one exception. When one array of a damaged
    checkpoint fails to read, orbax gives up on the other concurrent reads, which go on in
    TensorStore's threads and report themselves as they end (asyncio's 'exception was
    never retrieved', 'Event loop is closed' from TensorStore callbacks, coroutines
    finalised with an exception): hundreds of lines of TensorStore specs on stderr, some
    of them long after the restore returned. Inside this block, and after it once one of
    them was seen, exactly those reports are dropped (counted at debug level); any other
    unraisable exception or asyncio error is reported as before."""
    unraisable = _UnraisableFilter(sys.unraisablehook)
    records = _DropAbandonedReads()
    asyncio_log = logging.getLogger("asyncio")
    sys.unraisablehook = unraisable
    asyncio_log.addFilter(records)
    try:
        yield
    finally:
        gc.collect()
        if unraisable.dropped or records.dropped:
            # Stay installed: the rest of the abandoned reads may end at any later time.
            log.debug(
                "dropping reports of abandoned checkpoint reads (%d so far)",
                unraisable.dropped + records.dropped,
            )
        else:
            if sys.unraisablehook is unraisable:
                sys.unraisablehook = unraisable.previous
            asyncio_log.removeFilter(records)


def is_training_workdir(path) -> bool:
    path = Path(path)
    return (path / ckpt.CONFIG_FILE).is_file() and (path / CHECKPOINT_DIR).is_dir()


def load_params_from_workdir(workdir, step: int | None = None):
    """(model config, params) of the newest finished checkpoint of a training workdir.

    Only the `params` of the TrainState are read (no optimizer state), onto the default
    device. Unfinished (interrupted) saves are invisible to orbax and never chosen. A
    damaged newest step is skipped with a warning naming it and its file (and left where
    it is: `train.py` moves it aside when it resumes); with `step` given, that step or an
    error.
    """
    workdir = Path(workdir).absolute()
    if not is_training_workdir(workdir):
        raise ckpt.CheckpointError(
            f"{workdir} is not a training workdir (expected {ckpt.CONFIG_FILE} and "
            f"{CHECKPOINT_DIR}/ inside)"
        )
    config = ckpt.load_config(workdir)
    target = jax.tree_util.tree_map(
        lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), ckpt.abstract_params(config)
    )
    args = ocp.args.Composite(
        state=ocp.args.PyTreeRestore(
            item={"params": target},
            restore_args={
                "params": jax.tree_util.tree_map(
                    lambda x: ocp.ArrayRestoreArgs(
                        sharding=jax.sharding.SingleDeviceSharding(jax.devices()[0]),
                        global_shape=x.shape,
                        dtype=x.dtype,
                    ),
                    target,
                )
            },
            partial_restore=True,
        )
    )
    directory = workdir / CHECKPOINT_DIR
    with ocp.CheckpointManager(directory) as mngr, quiet_failed_restore():
        steps = sorted(mngr.all_steps(), reverse=True)
        if not steps:
            raise ckpt.CheckpointError(f"{directory} holds no finished checkpoint")
        if step is not None:
            if step not in steps:
                raise ckpt.CheckpointError(
                    f"{directory} has no finished step {step} (it has {sorted(steps)})"
                )
            steps = [step]
        failures = []
        for candidate in steps:
            try:
                restored = mngr.restore(candidate, args=args)
            except Exception as e:  # orbax, TensorStore and JSON raise many types
                file, reason = describe_restore_error(directory / str(candidate), e)
                failures.append(UnreadableCheckpointError(directory, candidate, file, reason))
                continue
            for bad in failures:
                log.warning("%s; using step %d", bad, candidate)
            return config, restored["state"]["params"]
    if len(failures) == 1:
        raise failures[0]
    listed = "; ".join(f"step {e.step}: {e.file}: {e.reason}" for e in failures)
    raise NoReadableCheckpointError(f"no checkpoint in {directory} is readable ({listed})")
