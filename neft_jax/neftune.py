"""NEFTune: noisy token embeddings during fine-tuning (Jain et al., ICLR 2024).

    embeddings + eps * alpha / sqrt(L * d),   eps ~ U(-1, 1) (or N(0, 1))

d is the embedding width and L the sequence's true length: each example's own
token count, and with packing each segment's own length, never the padded or
packed row length (transformers uses the padded length; transformers#34659).
Padding gets no noise. The noise is drawn in float32 from an explicit key, so
the same key gives the same noise on any mesh (threefry is partitionable, and
each device draws only its own slice of a sharded batch).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

DISTRIBUTIONS = ("uniform", "gaussian")


def sequence_lengths(shape, mask=None, segment_ids=None) -> jax.Array:
  """L for every token, [batch, length]: its sequence's or segment's true length."""
  batch, length = shape
  if segment_ids is not None:
    # Token count of every segment id in the row, then looked up per token.
    counts_bs = jax.vmap(lambda ids: jnp.bincount(ids, length=length + 1))(segment_ids)
    return jnp.take_along_axis(counts_bs, segment_ids, axis=1).astype(jnp.float32)
  if mask is not None:
    return jnp.broadcast_to(mask.astype(jnp.float32).sum(axis=-1, keepdims=True), (batch, length))
  return jnp.full((batch, length), float(length), jnp.float32)


def add_noise(embeddings: jax.Array, key: jax.Array, *, alpha: float, mask=None,
              segment_ids=None, distribution: str = "uniform") -> jax.Array:
  """Adds NEFTune noise to token embeddings [batch, length, embed].

  Args:
    embeddings: token embeddings, before any position embedding is added.
    key: PRNG key; fold the step into the run's root key to reproduce a run.
    alpha: the noise scale α (a Python number); 0 returns `embeddings` itself.
    mask: [batch, length], 1 for real tokens; padding gets no noise and does
      not count towards L.
    segment_ids: [batch, length] packed-sequence ids, 0 for padding; each
      segment's noise is scaled by its own length.
    distribution: "uniform" (ε ~ U(-1, 1), the paper's) or "gaussian"
      (ε ~ N(0, 1), the same α/√(L·d) scale).
  """
  if distribution not in DISTRIBUTIONS:
    raise ValueError(f"neftune distribution {distribution!r} is not one of {DISTRIBUTIONS}")
  if alpha == 0:
    return embeddings
  batch, length, width = embeddings.shape
  if segment_ids is not None:
    real_bt = segment_ids != 0
  elif mask is not None:
    real_bt = mask.astype(bool)
  else:
    real_bt = jnp.ones((batch, length), bool)
  lengths_bt = sequence_lengths((batch, length), mask, segment_ids)
  scale_bt = jnp.where(real_bt, alpha / jnp.sqrt(jnp.maximum(lengths_bt, 1.0) * width), 0.0)
  if distribution == "uniform":
    eps_btd = jax.random.uniform(key, embeddings.shape, jnp.float32, minval=-1.0, maxval=1.0)
  else:
    eps_btd = jax.random.normal(key, embeddings.shape, jnp.float32)
  noisy = embeddings.astype(jnp.float32) + eps_btd * scale_bt[..., None]
  return noisy.astype(embeddings.dtype)
