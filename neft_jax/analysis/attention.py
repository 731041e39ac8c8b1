"""Did attention move? Jensen-Shannon divergence and entropy of attention rows, per head.

All logarithms are natural: divergences and entropies are in nats, so the JS
divergence lies in [0, ln 2] and a row spread evenly over k keys has entropy
ln k. Keys with probability 0 (masked, future or padding) contribute nothing.

`attention_divergence` reduces one batch to per-head sums and a query count
(`AttentionStats`); stats of successive batches add with `+`, and the means
are taken at the end, so no batch's probabilities need to be kept. It is pure
jnp: it runs inside a jitted step, under `jax.vmap` over layers, on sharded
inputs.
"""

from __future__ import annotations

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np


@flax.struct.dataclass
class AttentionStats:
  """Per-head sums over real query positions (a pytree: jit can return it).

    js_sum [heads]:        sum of JS(p_row, q_row), nats
    entropy_p_sum [heads]: sum of H(p_row), nats
    entropy_q_sum [heads]: sum of H(q_row), nats
    count []:              number of real query positions summed
  """
  js_sum: jax.Array
  entropy_p_sum: jax.Array
  entropy_q_sum: jax.Array
  count: jax.Array

  def __add__(self, other: AttentionStats) -> AttentionStats:
    return jax.tree.map(jnp.add, self, other)

  def means(self) -> dict[str, np.ndarray]:
    """{"js", "entropy_p", "entropy_q"} -> the per-head means (numpy float64;
    nan where no query was counted)."""
    count = np.asarray(self.count, np.float64)[..., None]  # leading axes (e.g. vmapped layers)
    with np.errstate(invalid="ignore", divide="ignore"):
      return {"js": np.asarray(self.js_sum, np.float64) / count,
              "entropy_p": np.asarray(self.entropy_p_sum, np.float64) / count,
              "entropy_q": np.asarray(self.entropy_q_sum, np.float64) / count}


def _row_entropy(p_bhts: jax.Array) -> jax.Array:
  """-sum_s p log p: [batch, heads, query]."""
  return -jnp.sum(jax.scipy.special.xlogy(p_bhts, p_bhts), axis=-1)


def _row_js(p_bhts: jax.Array, q_bhts: jax.Array) -> jax.Array:
  """JS(p, q) = 1/2 sum_s [p log(2p / (p+q)) + q log(2q / (p+q))]: [batch, heads, query].

  Written with log1p((p - q) / (p + q)) so rows that barely differ keep their
  small divergence instead of rounding it away."""
  total = p_bhts + q_bhts
  safe_total = jnp.where(total > 0, total, 1.0)
  relative = (p_bhts - q_bhts) / safe_total  # in [-1, 1]
  p_term = jnp.where(p_bhts > 0, p_bhts * jnp.log1p(relative), 0.0)
  q_term = jnp.where(q_bhts > 0, q_bhts * jnp.log1p(-relative), 0.0)
  return jnp.maximum(0.5 * jnp.sum(p_term + q_term, axis=-1), 0.0)


@jax.jit
def _batch_stats(p_bhts: jax.Array, q_bhts: jax.Array, real_b1t: jax.Array) -> AttentionStats:
  def masked_sum(values_bht):  # -> [heads]
    return jnp.sum(jnp.where(real_b1t, values_bht, 0.0), axis=(0, 2))

  return AttentionStats(js_sum=masked_sum(_row_js(p_bhts, q_bhts)),
                        entropy_p_sum=masked_sum(_row_entropy(p_bhts)),
                        entropy_q_sum=masked_sum(_row_entropy(q_bhts)),
                        count=jnp.sum(real_b1t, dtype=jnp.int32))


def attention_divergence(p, q, mask) -> AttentionStats:
  """Per-head JS divergence and entropies of two models' attention over one batch.

  p, q: [batch, heads, query, key] attention probabilities (rows sum to 1) of the
  base and tuned model on the same tokens; mask: [batch, query], true at real
  query positions (padding rows are left out). Computed in float32. Returns the
  sums; `(stats_1 + stats_2 + ...).means()` gives the per-head means.
  """
  p_bhts = jnp.asarray(p, jnp.float32)
  q_bhts = jnp.asarray(q, jnp.float32)
  if p_bhts.shape != q_bhts.shape or p_bhts.ndim != 4:
    raise ValueError(f"p and q must both be [batch, heads, query, key], got {p_bhts.shape} "
                     f"and {q_bhts.shape}")
  batch, _, queries, _ = p_bhts.shape
  if tuple(np.shape(mask)) != (batch, queries):
    raise ValueError(f"mask {np.shape(mask)} must be [batch, query] = {(batch, queries)}")
  return _batch_stats(p_bhts, q_bhts, jnp.asarray(mask, bool)[:, None, :])
