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
