"""The optimizer: schedules equal to their formulas, float32 moments for any parameter dtype."""

import math

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest
from flax import nnx

from neft_jax import optim
from neft_jax.models import ModelConfig, Transformer


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


def adam_state(opt_state):
  """The one ScaleByAdamState (mu, nu) in an optimizer state."""
  found = [s for s in jax.tree.leaves(opt_state, is_leaf=lambda s: hasattr(s, "nu"))
           if hasattr(s, "nu")]
  assert len(found) == 1
  return found[0]


def dtypes(tree) -> set:
  return {x.dtype for x in jax.tree.leaves(tree)}


@pytest.mark.parametrize("weight_decay", [0.0, 0.1])
def test_moments_are_float32_for_bfloat16_parameters(weight_decay):
  cfg = ModelConfig(family="llama", vocab_size=64, embed_dim=16, num_layers=1, num_heads=2,
                    num_kv_heads=2, head_dim=8, mlp_dim=32, max_positions=32, param_dtype="bfloat16")
  params = nnx.state(Transformer(cfg, rngs=nnx.Rngs(0)), nnx.Param)
  assert dtypes(params) == {jnp.dtype(jnp.bfloat16)}
  optimizer, _ = optim.optimizer(optim_config(weight_decay=weight_decay, warmup_ratio=0.5), 4)
  opt_state = jax.jit(optimizer.init)(params)
  float32 = {jnp.dtype(jnp.float32)}
  assert dtypes(adam_state(opt_state).mu) == float32 and dtypes(adam_state(opt_state).nu) == float32

  gradient = 1e-3

  @jax.jit  # one compiled program: op by op, each leaf's shape would compile on its own
  def three_steps(params, opt_state):
    grads = jax.tree.map(lambda p: jnp.full_like(p, gradient), params)  # bfloat16, as the step's
    for _ in range(3):
      updates, opt_state = optimizer.update(grads, opt_state, params)
      params = optax.apply_updates(params, updates)
    return params, opt_state

  params, opt_state = three_steps(params, opt_state)
  assert dtypes(adam_state(opt_state).mu) == float32 and dtypes(adam_state(opt_state).nu) == float32
  assert dtypes(params) == {jnp.dtype(jnp.bfloat16)}
  # The second moment holds the squared gradients to float32 precision (bfloat16: ~3 digits).
  g = float(jnp.bfloat16(gradient))
  for nu in jax.tree.leaves(adam_state(opt_state).nu):
    np.testing.assert_allclose(np.asarray(nu), (1 - 0.999 ** 3) * g * g, rtol=1e-5)
