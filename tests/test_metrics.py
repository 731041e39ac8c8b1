"""MFU: the FLOP count per token and the peak table."""

import pytest

from neft_jax import metrics
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
