"""What a run reports: `metrics.jsonl` (one JSON line per logged step, trimmed to the
resumed step on resume), TensorBoard scalars in `tb/`, and a progress bar or log lines.

Besides the losses, each line says how the first round's three outputs and the IoU head did
on the training grid (`step.ranking_sums`): output_iou and output_wins (per output: mean IoU,
share of min-loss wins), iou_head_top1 (the head's argmax is a truly best output),
iou_head_abs_err (mean |predicted - actual| IoU), picked_iou and oracle_iou (the head's
pick, the best of the three). The held-out check reports the same at full resolution.
"""

from __future__ import annotations

import json
import logging
import math
import os
import sys
import tempfile
from pathlib import Path

import jax
import numpy as np

log = logging.getLogger(__name__)


class MetricWriter:
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


class Progress:
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
            f"head top-1 {record.get('iou_head_top1', float('nan')):.2f} "
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


def finite(record: dict) -> bool:
    return all(math.isfinite(record[k]) for k in ("loss", "grad_norm", "update_norm"))


def to_record(step: int, metrics: dict) -> dict:
    out = {"step": step}
    for k, v in jax.device_get(metrics).items():
        v = np.asarray(v)
        out[k] = v.tolist() if v.ndim else v.item()
    return out
