"""Where training metrics go: metrics.jsonl, TensorBoard, and the progress bar.

Only process 0 writes; other processes get a writer that does nothing.

metrics.jsonl holds one JSON object per logged step, written through
`etils.epath`, so the workdir may be a local folder or a bucket (gs://...).
A local file is appended to and flushed at every row, as a log is. A bucket's
objects cannot be appended to, so there the writer keeps the file's text in
memory (a resumed run first reads the rows already there) and writes the
whole object: at the first row, then at most every `flush_every_s` seconds,
and at close. A row is about 250 bytes, so even 10,000 logged steps rewrite
only 2.5 MB per interval; a run killed without closing its writer loses at
most the last interval's rows (preemption by SIGTERM closes it).
TensorBoard (tensorboardX) writes to buckets itself.
"""

from __future__ import annotations

import json
import time

import jax
from etils import epath

from neft_jax.run import in_bucket

METRICS_FILE = "metrics.jsonl"


class MetricsWriter:
  def __init__(self, workdir, *, enabled: bool | None = None, append: bool | None = None,
               flush_every_s: float = 30.0):
    """`append`: append to metrics.jsonl (default: where the path allows it),
    or rewrite it whole at most every `flush_every_s` seconds."""
    self.enabled = jax.process_index() == 0 if enabled is None else enabled
    self.path = epath.Path(workdir) / METRICS_FILE
    self.append = not in_bucket(self.path) if append is None else append
    self.flush_every_s = flush_every_s
    self._file = None
    self._text = ""  # when rewriting: the whole file
    self._last_flush: float | None = None
    self._tensorboard = None
    if self.enabled:
      from tensorboardX import SummaryWriter
      if self.append:
        self._file = self.path.open("a")
      elif self.path.exists():
        self._text = self.path.read_text()
        if self._text and not self._text.endswith("\n"):
          self._text += "\n"
      self._tensorboard = SummaryWriter(str(epath.Path(workdir) / "tensorboard"))

  def write(self, step: int, metrics: dict) -> None:
    if not self.enabled:
      return
    values = {k: float(v) for k, v in metrics.items()}
    row = json.dumps({"step": int(step), **values}) + "\n"
    for name, value in values.items():
      self._tensorboard.add_scalar(name, value, int(step))
    if self.append:
      self._file.write(row)
      self.flush()
    else:
      self._text += row
      if self._last_flush is None or time.monotonic() - self._last_flush >= self.flush_every_s:
        self.flush()

  def flush(self) -> None:
    """Puts every row written so far into metrics.jsonl, and TensorBoard's events on disk."""
    if not self.enabled:
      return
    if self.append:
      self._file.flush()
    else:
      self.path.write_text(self._text)
    self._tensorboard.flush()
    self._last_flush = time.monotonic()

  def close(self) -> None:
    if self.enabled:
      self.flush()
      if self._file is not None:
        self._file.close()
      self._tensorboard.close()


# Model FLOPs utilization ------------------------------------------------------

# Dense bfloat16 peak FLOP/s of one chip, by a fragment of jax's device_kind.
PEAK_FLOPS = (
    ("TPU v6 lite", 918e12),  # v6e (Trillium)
    ("TPU v6e", 918e12),
    ("TPU v5 lite", 197e12),  # v5e
    ("TPU v5e", 197e12),
    ("TPU v5p", 459e12),
    ("TPU v5", 459e12),
    ("TPU v4", 275e12),
    ("H200", 989e12),
    ("H100", 989e12),
    ("A100", 312e12),
)


def peak_flops_per_device(device_kind: str, override_tflops: float = 0.0) -> float | None:
  """The peak for this device (or the configured override); None when unknown."""
  if override_tflops:
    return override_tflops * 1e12
  for fragment, peak in PEAK_FLOPS:
    if fragment.lower() in device_kind.lower():
      return peak
  return None


def train_flops_per_token(cfg, length: int) -> float:
  """Training FLOPs per token: 6 per matmul weight, plus attention.

  Matmul weights are the attention and MLP kernels and the output head (a
  matmul even when tied to the embeddings); embedding lookups, norms and
  biases are left out. Attention adds 12 * layers * heads * head_dim * length
  per token (PaLM's count, which ignores the causal half).
  """
  attention_kernels = cfg.embed_dim * cfg.head_dim * 2 * (cfg.num_heads + cfg.num_kv_heads)
  mlp_kernels = (3 if cfg.mlp == "gated" else 2) * cfg.embed_dim * cfg.mlp_dim
  matmul_weights = cfg.num_layers * (attention_kernels + mlp_kernels) + cfg.vocab_size * cfg.embed_dim
  attention = 12 * cfg.num_layers * cfg.num_heads * cfg.head_dim * length
  return 6 * matmul_weights + attention
