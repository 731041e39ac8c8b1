"""The output layer and its cross-entropy, over the whole micro-batch or in chunks.

The logits of a micro-batch are float32 [rows, length, vocab]: for Qwen2's
151,936-token vocabulary the largest tensor of a train step. With
`chunk_size` > 0 the output layer and the loss run over `chunk_size` positions
of every row at a time, so only [rows, chunk_size, vocab] logits exist at once:

  * `masked_loss_sum` (training) is a fused linear cross-entropy: a custom VJP
    whose forward pass computes, chunk by chunk, the gradients of the loss with
    respect to the hidden states and the head weights (the head's gradient
    summed over chunks), so the backward pass only scales them by the incoming
    cotangent and nothing is recomputed. The alternative, `jax.checkpoint` per
    chunk, runs the head's forward matmul again in the backward pass (four
    vocabulary-wide matmuls instead of three). Measured on the 2-core CPU for
    the output layer and loss alone (forward and backward, 8 rows of 256
    tokens, width 256, vocabulary 32,000; process CPU seconds, best of 7, on a
    loaded machine): whole 2.35, fused in chunks of 32 positions 1.97,
    checkpointed chunks of 32 positions 2.64.
  * `token_losses_and_hits` (evaluation, no gradients) is a plain scan.

Chunks run along the length axis, so every chunk keeps the batch sharding of
the rows; a length that is not a multiple of `chunk_size` is padded with
masked positions. With `chunk_size` 0 both compute the logits at once, as
`Transformer.__call__` does. `chunk_size_for` turns the config's setting into
a chunk size: -1 (the default) chunks vocabularies of `AUTO_MIN_VOCAB` tokens or
more in `AUTO_CHUNK_SIZE` positions, and keeps small ones whole.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import optax

from neft_jax import sharding
from neft_jax.models.transformer import output_logits


# train.loss_chunk_size=-1: chunk the vocabularies of the real families (GPT-2
# 50,257, Llama-2 32,000, Qwen2 151,936), not the demo's or the tests' tiny ones.
# On the 2-core CPU, chunks make the benchmark's step faster (bench/train_step.py).
AUTO_MIN_VOCAB = 16_384
AUTO_CHUNK_SIZE = 64


def chunk_size_for(setting: int, vocab_size: int) -> int:
  """Positions per chunk for `train.loss_chunk_size=setting`: -1 chooses by vocabulary size."""
  if setting >= 0:
    return setting
  return AUTO_CHUNK_SIZE if vocab_size >= AUTO_MIN_VOCAB else 0


def _cross_entropy(hidden_btd, head_vd, targets_bt):
  """Per-token cross-entropy [batch, length] and the float32 logits."""
  logits_btv = output_logits(hidden_btd, head_vd)
  return optax.softmax_cross_entropy_with_integer_labels(logits_btv, targets_bt), logits_btv


def _chunk_loss_sum(hidden_btd, head_vd, targets_bt, mask_bt):
  losses_bt, _ = _cross_entropy(hidden_btd, head_vd, targets_bt)
  return jnp.sum(jnp.where(mask_bt, losses_bt, 0.0))


def _chunked(x_bt, chunk_size: int):
  """[batch, length, ...] -> [chunks, batch, chunk_size, ...], the length padded with zeros."""
  batch, length = x_bt.shape[:2]
  num_chunks = -(-length // chunk_size)
  padding = [(0, 0), (0, num_chunks * chunk_size - length)] + [(0, 0)] * (x_bt.ndim - 2)
  x_bnc = jnp.pad(x_bt, padding).reshape(batch, num_chunks, chunk_size, *x_bt.shape[2:])
  return jnp.swapaxes(x_bnc, 0, 1)


def _unchunked(x_nbc, length: int):
  """[chunks, batch, chunk_size, ...] -> [batch, length, ...]."""
  num_chunks, batch, chunk_size = x_nbc.shape[:3]
  x_bt = jnp.swapaxes(x_nbc, 0, 1).reshape(batch, num_chunks * chunk_size, *x_nbc.shape[3:])
  return x_bt[:, :length]


def _constrain_chunk(hidden_bcd, *per_token_bc):
  """Keeps a chunk's rows where the micro-batch's rows are."""
  return (sharding.constrain(hidden_bcd, ("batch", "length", "embed")),
          *(sharding.constrain(x_bc, ("batch", "length")) for x_bc in per_token_bc))


def masked_loss_sum(hidden_btd, head_vd, targets_bt, mask_bt, chunk_size: int = 0):
  """Sum over the masked tokens of the cross-entropy of `head_vd @ hidden`, a scalar.

  Args:
    hidden_btd: [batch, length, embed] final-normed hidden states.
    head_vd: [vocab, embed] output-layer weights.
    targets_bt: [batch, length] int token ids to predict.
    mask_bt: [batch, length] bool, True where a token's loss counts.
    chunk_size: positions per chunk; 0 computes the logits at once.
  """
  if not chunk_size:
    return _chunk_loss_sum(hidden_btd, head_vd, targets_bt, mask_bt)
  return _fused_loss_sum(hidden_btd, head_vd, targets_bt, mask_bt, chunk_size)


@functools.partial(jax.custom_vjp, nondiff_argnums=(4,))
def _fused_loss_sum(hidden_btd, head_vd, targets_bt, mask_bt, chunk_size):
  return _fused_forward(hidden_btd, head_vd, targets_bt, mask_bt, chunk_size)[0]


def _fused_forward(hidden_btd, head_vd, targets_bt, mask_bt, chunk_size):
  """The loss and its gradients with respect to the hidden states and the head.

  Per chunk, autodiff gives the gradient of the loss with respect to the
  logits, and two matmuls with it give those of the hidden states and of the
  head (in the compute dtype, accumulating in float32). The rows are split
  into as many groups as the batch is sharded into, and the head's gradient is
  summed per group, so that each device sums over its own rows' chunks without
  communication; the groups' sums are added once, after the last chunk
  (summing over all rows in every chunk would all-reduce [vocab, embed] once
  per chunk). The loss, too, is kept per group until the end.
  """
  batch, dtype = hidden_btd.shape[0], hidden_btd.dtype
  groups = sharding.shard_count("batch", batch)
  grouped = lambda x: x.reshape(groups, batch // groups, *x.shape[1:])
  head_in_dtype_vd = head_vd.astype(dtype)
  group_axes = ("batch", "vocab", "embed")

  def chunk_step(head_grad_gvd, chunk):
    hidden_bcd, targets_bc, mask_bc = _constrain_chunk(*chunk)
    hidden_gbcd = grouped(hidden_bcd)  # [groups, rows per group, chunk, embed]
    logits_gbcv = jnp.einsum("gbcd,vd->gbcv", hidden_gbcd, head_in_dtype_vd,
                             preferred_element_type=jnp.float32)
    logits_gbcv = sharding.constrain(logits_gbcv, ("batch", None, "length", "vocab"))

    def group_losses(logits_gbcv):
      losses_gbc = optax.softmax_cross_entropy_with_integer_labels(logits_gbcv, grouped(targets_bc))
      return jnp.sum(jnp.where(grouped(mask_bc), losses_gbc, 0.0), axis=(1, 2))  # [groups]

    losses_g, vjp = jax.vjp(group_losses, logits_gbcv)
    (logits_grad_gbcv,) = vjp(jnp.ones_like(losses_g))
    logits_grad_gbcv = logits_grad_gbcv.astype(dtype)
    hidden_grad_gbcd = jnp.einsum("gbcv,vd->gbcd", logits_grad_gbcv, head_in_dtype_vd,
                                  preferred_element_type=jnp.float32).astype(dtype)
    head_grad_gvd = head_grad_gvd + jnp.einsum("gbcv,gbcd->gvd", logits_grad_gbcv, hidden_gbcd,
                                               preferred_element_type=jnp.float32)
    head_grad_gvd = sharding.constrain(head_grad_gvd, group_axes)
    return head_grad_gvd, (losses_g, hidden_grad_gbcd.reshape(hidden_bcd.shape))

  chunks = tuple(_chunked(x, chunk_size) for x in (hidden_btd, targets_bt, mask_bt))
  head_grad_gvd = jnp.zeros((groups, *head_vd.shape), jnp.float32)
  head_grad_gvd = sharding.constrain(head_grad_gvd, group_axes)
  head_grad_gvd, (losses_ng, hidden_grad_nbcd) = jax.lax.scan(chunk_step, head_grad_gvd, chunks)
  hidden_grad_btd = _unchunked(hidden_grad_nbcd, hidden_btd.shape[1])
  return losses_ng.sum(), (hidden_grad_btd, head_grad_gvd.sum(0).astype(head_vd.dtype))


def _fused_backward(chunk_size, gradients, cotangent):
  del chunk_size
  hidden_grad_btd, head_grad_vd = gradients
  return ((cotangent * hidden_grad_btd).astype(hidden_grad_btd.dtype),
          (cotangent * head_grad_vd).astype(head_grad_vd.dtype), None, None)


_fused_loss_sum.defvjp(_fused_forward, _fused_backward)


def token_losses_and_hits(hidden_btd, head_vd, targets_bt, chunk_size: int = 0):
  """Per-token cross-entropy [batch, length] float32, and whether the argmax is the target."""
  if not chunk_size:
    losses_bt, logits_btv = _cross_entropy(hidden_btd, head_vd, targets_bt)
    return losses_bt, jnp.argmax(logits_btv, axis=-1) == targets_bt

  def chunk_step(_, chunk):
    hidden_bcd, targets_bc = _constrain_chunk(*chunk)
    losses_bc, logits_bcv = _cross_entropy(hidden_bcd, head_vd, targets_bc)
    return None, (losses_bc, jnp.argmax(logits_bcv, axis=-1) == targets_bc)

  chunks = tuple(_chunked(x, chunk_size) for x in (hidden_btd, targets_bt))
  _, (losses_nbc, hits_nbc) = jax.lax.scan(chunk_step, None, chunks)
  length = hidden_btd.shape[1]
  return _unchunked(losses_nbc, length), _unchunked(hits_nbc, length)
