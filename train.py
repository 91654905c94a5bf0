"""Train SAM: `python train.py` runs configs/tiny.py on generated synthetic data, then
prints held-out mIoU. See the README's Training section for TPU/GPU launches.

    python train.py --config=configs/vit_h.py --workdir=/shared/vit_h --config.data.path=...

A mistake in the flags or the config (an unknown key, a value out of range, a missing
data path) is reported as one `error: ...` line before any work, and so is a run that
cannot go on (no readable checkpoint, unusable data): exit status 1. A NaN/Inf loss stops
with status 2.
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

from absl import app, flags
from ml_collections import config_flags

from sam_jax.training.config import override_error


def _error(message, code: int):
    print(f"error: {message}", file=sys.stderr, flush=True)
    sys.exit(code)


# New attributes are accepted here so that an unknown --config.KEY reaches
# `validate_config`, which names it with a "did you mean" (instead of a traceback). Without
# --config, the default file is read and the overrides applied right here.
try:
    config_flags.DEFINE_config_file(
        "config",
        "configs/tiny.py",
        "Training config file.",
        lock_config=False,
        accept_new_attributes=True,
    )
except (AttributeError, KeyError, TypeError, ValueError) as e:
    _error(override_error(e, sys.argv), 1)
flags.DEFINE_string("workdir", None, "Output directory (default: workdir/<config name>).")
flags.DEFINE_string("coordinator_address", None, "host:port of process 0 (multi-process).")
flags.DEFINE_integer("num_processes", None, "Number of processes (multi-process).")
flags.DEFINE_integer("process_id", None, "This process's index (multi-process).")
FLAGS = flags.FLAGS


def parse_flags(argv: list[str]) -> list[str]:
    """absl's flag parsing, with its errors (and ml_collections' override errors) as one
    `error:` line and exit status 1 (absl's own status for them)."""
    try:
        return FLAGS(argv)
    except flags.Error as e:
        _error(e, 1)
    except (AttributeError, KeyError, TypeError, ValueError) as e:  # --config.X overrides
        _error(override_error(e, sys.argv), 1)


def main(argv):
    if len(argv) > 1:
        _error(f"unexpected arguments: {' '.join(argv[1:])}", 1)
    import jax

    from sam_jax.data.sources import DataError
    from sam_jax.io.checkpoint import CheckpointError
    from sam_jax.training.config import ConfigError, validate_config

    config_path = config_flags.get_config_filename(FLAGS["config"])
    config = FLAGS.config
    try:
        validate_config(config)  # the device-independent part, before jax starts
    except ConfigError as e:
        _error(e, 1)
    except OSError as e:  # the config file did not load (raised on first use)
        reason = str(e).strip().splitlines()[-1].strip()
        _error(f"cannot load --config {config_path}: {reason}", 1)

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    logging.getLogger("absl").setLevel(logging.WARNING)
    if FLAGS.num_processes and FLAGS.num_processes > 1 or FLAGS.coordinator_address:
        # Only affects the CPU backend (local multi-process runs and tests).
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
        jax.distributed.initialize(
            coordinator_address=FLAGS.coordinator_address,
            num_processes=FLAGS.num_processes,
            process_id=FLAGS.process_id,
        )
    elif any(v in os.environ for v in ("JAX_COORDINATOR_ADDRESS", "TPU_WORKER_HOSTNAMES")):
        jax.distributed.initialize()
    logging.getLogger(__name__).info(
        "process %d of %d: %d local device(s), %d in all",
        jax.process_index(),
        jax.process_count(),
        jax.local_device_count(),
        jax.device_count(),
    )

    from sam_jax.training.trainer import NonFiniteLossError, train_and_evaluate

    workdir = FLAGS.workdir or str(Path("workdir") / Path(config_path).stem)
    try:
        train_and_evaluate(config, workdir)
    except NonFiniteLossError as e:
        _error(e, 2)
    except (ConfigError, CheckpointError, DataError) as e:  # ConfigError: mesh vs devices
        _error(e, 1)


if __name__ == "__main__":
    app.run(main, flags_parser=parse_flags)
