"""Where training metrics go: metrics.jsonl, TensorBoard, and the progress bar.

Only process 0 writes; other processes get a writer that does nothing.
"""

from __future__ import annotations

import json
import os

import jax


class MetricsWriter:
  def __init__(self, workdir: str, *, enabled: bool | None = None):
    self.enabled = jax.process_index() == 0 if enabled is None else enabled
    self._jsonl = None
    self._tensorboard = None
    if self.enabled:
      from tensorboardX import SummaryWriter
      self._jsonl = open(os.path.join(workdir, "metrics.jsonl"), "a")
      self._tensorboard = SummaryWriter(os.path.join(workdir, "tensorboard"))

  def write(self, step: int, metrics: dict) -> None:
    if not self.enabled:
      return
    values = {k: float(v) for k, v in metrics.items()}
    self._jsonl.write(json.dumps({"step": int(step), **values}) + "\n")
    self._jsonl.flush()
    for name, value in values.items():
      self._tensorboard.add_scalar(name, value, int(step))
    self._tensorboard.flush()

  def close(self) -> None:
    if self.enabled:
      self._jsonl.close()
      self._tensorboard.close()
