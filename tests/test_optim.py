"""The optimizer: schedules equal to their formulas."""

import math

import jax
import ml_collections
import numpy as np
import pytest

from neft_jax import optim


def optim_config(**overrides):
  return ml_collections.ConfigDict(dict(
      learning_rate=3e-4, schedule="cosine", warmup_ratio=0.0, weight_decay=0.0, b1=0.9,
      b2=0.999, eps=1e-8, grad_clip_norm=1.0) | overrides)


def expected_learning_rate(schedule: str, step: int, *, peak: float, warmup: int, total: int) -> float:
  """Linear warmup from 0 to the peak over `warmup` steps, then decay to 0 at `total`."""
  if step < warmup:
    return peak * step / warmup
  progress = min((step - warmup) / max(total - warmup, 1), 1.0)
  if schedule == "cosine":
    return peak * 0.5 * (1 + math.cos(math.pi * progress))
  if schedule == "linear":
    return peak * (1 - progress)
  return peak


@pytest.mark.parametrize("schedule", optim.SCHEDULES)
@pytest.mark.parametrize("warmup_ratio", [0.0, 0.3])
def test_schedule_equals_the_formula_at_every_step(schedule, warmup_ratio):
  total = 20
  warmup = round(warmup_ratio * total)
  lr = optim.schedule(optim_config(schedule=schedule, warmup_ratio=warmup_ratio), total)
  steps = np.arange(total + 3)  # past the end too
  got = np.asarray(jax.jit(jax.vmap(lr))(steps))  # as the jitted step evaluates it
  want = [expected_learning_rate(schedule, int(s), peak=3e-4, warmup=warmup, total=total)
          for s in steps]
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-10)  # float32
  assert got[0] == (0.0 if warmup else 3e-4)
