"""metrics.jsonl written through epath (appended, or rewritten as on a bucket); MFU."""

import json
import os

import numpy as np
import pytest
from etils import epath

from neft_jax import metrics, run
from neft_jax.models import ModelConfig

LLAMA2_7B = ModelConfig(family="llama", vocab_size=32000, embed_dim=4096, num_layers=32,
                        num_heads=32, num_kv_heads=32, head_dim=128, mlp_dim=11008,
                        max_positions=4096)


def test_train_flops_per_token_of_llama2_7b():
  # 6 per matmul weight: the attention and MLP kernels and the head.
  matmul = 32 * (4 * 4096**2 + 3 * 4096 * 11008) + 32000 * 4096
  attention = 12 * 32 * 32 * 128 * 512
  assert metrics.train_flops_per_token(LLAMA2_7B, 512) == 6 * matmul + attention
  assert 6 * matmul == pytest.approx(6 * 6.6e9, rel=0.02)  # ~6.6B matmul weights


@pytest.mark.parametrize("kind, peak", [
    ("TPU v4", 275e12), ("TPU v5 lite", 197e12), ("TPU v5p", 459e12), ("TPU v6 lite", 918e12),
    ("NVIDIA H100 80GB HBM3", 989e12), ("NVIDIA H200", 989e12), ("cpu", None)])
def test_peak_table(kind, peak):
  assert metrics.peak_flops_per_device(kind) == peak


def test_peak_override():
  assert metrics.peak_flops_per_device("cpu", 0.5) == 0.5e12


def rows(path):
  return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.mark.parametrize("append", [True, False])  # False: as on a bucket, which has no append
def test_metrics_jsonl_round_trip_and_resume(tmp_path, append):
  workdir = epath.Path(tmp_path)
  writer = metrics.MetricsWriter(workdir, enabled=True, append=append, flush_every_s=3600)
  writer.write(0, {"eval_loss": 2.5})
  writer.write(1, {"loss": 2.0, "learning_rate": np.float32(1e-4)})
  if not append:  # the first row at once, the next only after flush_every_s or at close
    assert rows(workdir / "metrics.jsonl") == [{"step": 0, "eval_loss": 2.5}]
  writer.close()
  resumed = metrics.MetricsWriter(str(workdir), enabled=True, append=append, flush_every_s=0)
  resumed.write(2, {"loss": 1.5})
  assert rows(workdir / "metrics.jsonl")[-1] == {"step": 2, "loss": 1.5}
  resumed.close()
  assert rows(workdir / "metrics.jsonl") == [
      {"step": 0, "eval_loss": 2.5}, {"step": 1, "loss": 2.0, "learning_rate": pytest.approx(1e-4)},
      {"step": 2, "loss": 1.5}]
  assert any(name.startswith("events") for name in os.listdir(tmp_path / "tensorboard"))


def test_bucket_paths_are_rewritten_local_paths_appended(tmp_path):
  assert run.in_bucket("gs://bucket/run/metrics.jsonl") and not run.in_bucket(tmp_path)
  writer = metrics.MetricsWriter(tmp_path, enabled=True)
  assert writer.append
  writer.close()
