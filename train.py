"""Train SAM: `python train.py` runs configs/tiny.py on generated synthetic data, then
prints held-out mIoU. See the README's Training section for TPU/GPU launches.

    python train.py --config=configs/vit_h.py --workdir=/shared/vit_h --config.data.path=...
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

from absl import app, flags
from ml_collections import config_flags

config_flags.DEFINE_config_file("config", "configs/tiny.py", "Training config file.")
flags.DEFINE_string("workdir", None, "Output directory (default: workdir/<config name>).")
flags.DEFINE_string("coordinator_address", None, "host:port of process 0 (multi-process).")
flags.DEFINE_integer("num_processes", None, "Number of processes (multi-process).")
flags.DEFINE_integer("process_id", None, "This process's index (multi-process).")
FLAGS = flags.FLAGS


def main(argv):
    del argv
    import jax

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

    config_path = config_flags.get_config_filename(FLAGS["config"])
    workdir = FLAGS.workdir or str(Path("workdir") / Path(config_path).stem)
    try:
        train_and_evaluate(FLAGS.config, workdir)
    except NonFiniteLossError as e:
        print(f"error: {e}", file=sys.stderr, flush=True)
        sys.exit(2)


if __name__ == "__main__":
    app.run(main)
