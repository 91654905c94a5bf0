"""Training checkpoints: orbax steps under `<workdir>/checkpoints/` (TrainState + the data
iterator's state) and `<workdir>/sam_config.json`, plus initial weights for a run
(`init_from`: a SAM checkpoint for fine-tuning or an MAE-pretrained ViT for the encoder).
"""

from __future__ import annotations

import contextlib
import gc
import json
import logging
import os
import re
import sys
from pathlib import Path

import flax
import jax
import ml_collections
import numpy as np
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


def is_training_workdir(path) -> bool:
    path = Path(path)
    return (path / ckpt.CONFIG_FILE).is_file() and (path / CHECKPOINT_DIR).is_dir()


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


# ---------------------------------------------------------------------------- init_from
_MAE_BLOCK = re.compile(r"^blocks\.(\d+)\.(.+)$")
_MAE_BLOCK_PARTS = {
    "norm1.weight": ("norm1", "scale"),
    "norm1.bias": ("norm1", "bias"),
    "attn.qkv.weight": ("attn", "qkv", "kernel"),
    "attn.qkv.bias": ("attn", "qkv", "bias"),
    "attn.proj.weight": ("attn", "proj", "kernel"),
    "attn.proj.bias": ("attn", "proj", "bias"),
    "norm2.weight": ("norm2", "scale"),
    "norm2.bias": ("norm2", "bias"),
    "mlp.fc1.weight": ("mlp", "lin1", "kernel"),
    "mlp.fc1.bias": ("mlp", "lin1", "bias"),
    "mlp.fc2.weight": ("mlp", "lin2", "kernel"),
    "mlp.fc2.bias": ("mlp", "lin2", "bias"),
}


def _resize_pos_embed(pos: np.ndarray, grid: tuple[int, int]) -> np.ndarray:
    """(1, [1 +] N, C) ViT table -> (1, h, w, C) at the encoder's grid (cls token dropped)."""
    import jax.numpy as jnp

    pos = np.asarray(pos, np.float32)
    n = pos.shape[1]
    side = int(round(np.sqrt(n)))
    if side * side != n:
        pos, side = pos[:, 1:], int(round(np.sqrt(n - 1)))
        if side * side != n - 1:
            raise ckpt.CheckpointError(f"MAE pos_embed with {n} tokens is not a square grid")
    table = pos.reshape(1, side, side, -1)
    if (side, side) != tuple(grid):
        table = np.asarray(
            jax.image.resize(
                jnp.asarray(table), (1, *grid, table.shape[-1]), "bicubic", antialias=False
            )
        )
    return table


def mae_to_encoder(state_dict, params: dict, depth: int) -> tuple[dict, list[str]]:
    """Copy an MAE/timm ViT state dict into `params["image_encoder"]` -> (params, unused keys).

    Blocks beyond the checkpoint's depth, the neck and relative position tables keep their
    fresh initialisation; a shape mismatch is an error.
    """
    flat = flax.traverse_util.flatten_dict(params)
    used, problems = set(), []
    enc = ("image_encoder",)

    def put(path, value, key):
        path = enc + path
        if path not in flat:
            problems.append(f"{key}: no parameter {'/'.join(path)}")
            return
        value = ckpt._to_flax_layout(path, ckpt._to_numpy(value))
        if value.shape != flat[path].shape:
            problems.append(f"{key}: shape {value.shape}, model expects {flat[path].shape}")
            return
        flat[path] = np.asarray(value, np.float32)
        used.add(key)

    for key, value in state_dict.items():
        if key in ("patch_embed.proj.weight", "patch_embed.proj.bias"):
            put(("patch_embed", "proj", "kernel" if key.endswith("weight") else "bias"), value, key)
        elif key == "pos_embed":
            grid = flat.get(enc + ("pos_embed",))
            if grid is None:
                continue
            put(("pos_embed",), _resize_pos_embed(ckpt._to_numpy(value), grid.shape[1:3]), key)
        else:
            m = _MAE_BLOCK.match(key)
            if m and m.group(2) in _MAE_BLOCK_PARTS and int(m.group(1)) < depth:
                put((f"blocks_{m.group(1)}", *_MAE_BLOCK_PARTS[m.group(2)]), value, key)
    if problems:
        raise ckpt.CheckpointError("MAE checkpoint does not fit:\n  " + "\n  ".join(problems))
    unused = sorted(set(state_dict) - used)
    return flax.traverse_util.unflatten_dict(flat), unused


def initial_params(config: ml_collections.ConfigDict) -> dict:
    """Host (numpy-backed) parameters for the start of a run, from `config.init_from`."""
    model = config.model
    params = ckpt.init_params(model, config.seed)
    source = str(config.init_from or "")
    if not source:
        return params
    if source.startswith("mae:"):
        path = source[len("mae:") :]
        state_dict = ckpt.load_torch_state_dict(path)
        params, unused = mae_to_encoder(state_dict, params, model.encoder_depth)
        log.info("initialised the image encoder from MAE %s", path)
        if unused:
            log.warning("%d MAE key(s) not used: %s", len(unused), ", ".join(unused))
        return params
    if is_training_workdir(source):
        loaded_config, loaded = load_params_from_workdir(source)
    elif ckpt.is_converted_checkpoint(source):
        loaded_config, loaded = ckpt.load_converted(source)
    else:
        state_dict = ckpt.load_torch_state_dict(source)
        loaded_config = model.copy_and_resolve_references()
        loaded_config.text_embed_dim = ckpt.text_embed_dim_of(state_dict)
        loaded = ckpt.convert_state_dict(state_dict, loaded_config)
    if loaded_config.model_type != model.model_type:
        raise ckpt.CheckpointError(
            f"init_from {source} is a {loaded_config.model_type!r} model, config wants "
            f"{model.model_type!r}"
        )
    loaded = _match_text_prompt(loaded, params, model.text_embed_dim, source)
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
