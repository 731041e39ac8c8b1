"""The optimizer: global-norm clipping, then AdamW on a warmup + decay schedule.

Weight decay (when not 0) applies to matrices only, not to norm scales and
biases. Both Adam moments are float32 whatever the parameter dtype
(`float32_moments`): optax's adam keeps only the first moment in its
`mu_dtype` and makes the second in the parameters' dtype, and a bfloat16
second moment loses the small squared gradients it averages.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_collections
import optax

from neft_jax.errors import UserError

SCHEDULES = ("cosine", "linear", "constant")


def schedule(config: ml_collections.ConfigDict, total_steps: int) -> optax.Schedule:
  """Linear warmup from 0 over warmup_ratio of the steps, then cosine or linear decay to 0
  at `total_steps`, or the peak held (optax's schedules)."""
  peak = config.learning_rate
  warmup = int(round(config.warmup_ratio * total_steps))
  decay_steps = max(total_steps - warmup, 1)
  if config.schedule not in SCHEDULES:
    raise UserError(f"optim.schedule={config.schedule!r} is not one of {list(SCHEDULES)}")
  # optax's warmup of 0 steps holds its initial value, so warmup 0 takes the decay alone.
  if config.schedule == "cosine":
    if not warmup:
      return optax.cosine_decay_schedule(peak, decay_steps)
    return optax.warmup_cosine_decay_schedule(0.0, peak, warmup, warmup + decay_steps)
  if config.schedule == "constant":
    return optax.warmup_constant_schedule(0.0, peak, warmup) if warmup else optax.constant_schedule(peak)
  decay = optax.linear_schedule(peak, 0.0, decay_steps)
  if not warmup:
    return decay
  return optax.join_schedules([optax.linear_schedule(0.0, peak, warmup), decay], [warmup])


def _decay_mask(params):
  """True for kernels and embeddings; False for norm scales and biases."""
  def decays(path, _):
    names = [k.key for k in path if isinstance(k, jax.tree_util.DictKey)]
    return names[-1] not in ("scale", "bias")
  return jax.tree_util.tree_map_with_path(decays, params)


def float32_moments(inner: optax.GradientTransformation) -> optax.GradientTransformation:
  """`inner` run in float32: its state initialized from float32 copies of the
  parameters, and the gradients cast to float32 before each update (so a
  squared bfloat16 gradient is not rounded to bfloat16). The updates come out
  float32, and `optax.apply_updates` casts each to its parameter's dtype.
  """
  def to_float32(tree):
    return jax.tree.map(lambda x: x.astype(jnp.float32), tree)

  def init(params):
    return inner.init(to_float32(params))

  def update(grads, state, params=None):
    return inner.update(to_float32(grads), state, params)

  return optax.GradientTransformation(init, update)


def optimizer(config: ml_collections.ConfigDict, total_steps: int) -> tuple[optax.GradientTransformation, optax.Schedule]:
  lr = schedule(config, total_steps)
  chain = []
  if config.grad_clip_norm:
    chain.append(optax.clip_by_global_norm(config.grad_clip_norm))
  if config.weight_decay:
    chain.append(optax.adamw(lr, b1=config.b1, b2=config.b2, eps=config.eps,
                             mu_dtype=jnp.float32, weight_decay=config.weight_decay,
                             mask=_decay_mask))
  else:  # the same update, without a pass that adds 0 * params
    chain.append(optax.adam(lr, b1=config.b1, b2=config.b2, eps=config.eps, mu_dtype=jnp.float32))
  return float32_moments(optax.chain(*chain)), lr
