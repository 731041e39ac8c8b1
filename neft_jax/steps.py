"""The jitted steps: pure functions of the state, a batch and a key.

    train_step(state, batch, key, dropout_rates=None) -> (state, metrics)
    eval_step(params, batch) -> sums of loss, response tokens and correct tokens
    eval_loss(eval_step, params, batches, to_global) -> mean loss and token accuracy

A batch holds `input_ids`, `segment_ids` (0 on padding, 1, 2, ... per packed
example) and `loss_mask` (True on response tokens), each [accum, rows, length]
for training (gradient accumulation scans the first axis) and [rows, length]
for evaluation. The loss is the mean over the response tokens of the whole
accumulated batch. NEFTune noise and dropout happen only in the train step.
`key` is the run's root key; each purpose has its own key from it (NOISE_KEY,
DROPOUT_KEY), folded with the step and the micro-batch, so a resumed run draws
the same noise and the same dropout masks.
"""

from __future__ import annotations

import dataclasses

import flax.struct
import jax
import jax.numpy as jnp
import optax
from flax import nnx

from neft_jax import dropout, loss, neftune

# Purposes of the keys derived from the run's root key (config.seed).
NOISE_KEY = 1
DROPOUT_KEY = 2


@flax.struct.dataclass
class TrainState:
  step: jax.Array  # int32 scalar: optimizer steps taken
  params: nnx.State
  opt_state: optax.OptState


@dataclasses.dataclass(frozen=True)
class Noise:
  """NEFTune settings; alpha=0 switches the noise off at trace time."""
  alpha: float = 0.0
  distribution: str = "uniform"


def target_mask(batch) -> jax.Array:
  """[..., length]: position t predicts a response token of its own example at t+1.

  Targets are the inputs shifted left by one; the last position predicts
  nothing. Kept at full length, so the logits are never sliced (a slice of
  [batch, length, vocab] logits and its padded gradient cost two copies of them).
  """
  segments = batch["segment_ids"]
  next_segments = jnp.concatenate([segments[..., 1:], jnp.zeros_like(segments[..., :1])], axis=-1)
  next_is_response = jnp.concatenate(
      [batch["loss_mask"][..., 1:], jnp.zeros_like(batch["loss_mask"][..., :1])], axis=-1)
  return next_is_response & (next_segments == segments) & (next_segments != 0)


def _hidden_and_targets(model, batch, noise: Noise, noise_key, drop=None):
  """The final-normed hidden states [batch, length, embed] and the next tokens;
  `drop` is a `neft_jax.dropout.Dropout` (None: no dropout)."""
  input_ids, segment_ids = batch["input_ids"], batch["segment_ids"]
  embeddings = model.embed_tokens(input_ids)
  if noise.alpha:
    embeddings = neftune.add_noise(embeddings, noise_key, alpha=noise.alpha,
                                   segment_ids=segment_ids, distribution=noise.distribution)
  hidden_btd = model.hidden_states(embeddings=embeddings, segment_ids=segment_ids, dropout=drop)
  targets_bt = jnp.concatenate([input_ids[:, 1:], input_ids[:, :1]], axis=1)
  return hidden_btd, targets_bt


def token_losses(model, batch, *, noise: Noise = Noise(), noise_key=None, loss_chunk_size: int = 0):
  """Per-token cross-entropy, the target mask, and whether the argmax is right.

  `loss_chunk_size` > 0 computes the output layer that many positions at a
  time (see `neft_jax.loss`); the results are the same.
  """
  hidden_btd, targets_bt = _hidden_and_targets(model, batch, noise, noise_key)
  mask_bt = target_mask(batch)
  losses_bt, hits_bt = loss.token_losses_and_hits(hidden_btd, model.head(), targets_bt,
                                                  loss_chunk_size)
  return jnp.where(mask_bt, losses_bt, 0.0), mask_bt, hits_bt & mask_bt


def make_train_step(graphdef: nnx.GraphDef, optimizer: optax.GradientTransformation,
                    learning_rate: optax.Schedule, noise: Noise, loss_chunk_size: int = 0,
                    dropout_distribution: str = "bernoulli"):
  """The train step for a model structure, an optimizer and NEFTune settings.

  `dropout_rates` of the step maps each dropout site type that is on to its
  rates ("embed" a scalar, the layer types [layers]; `neft_jax.dropout.rates_by_type`);
  None or {} is no dropout. The types present are static, the rates data.

  `loss_chunk_size` > 0 runs the output layer and its loss over that many
  positions of every row at a time, fused with their gradients
  (`neft_jax.loss.masked_loss_sum`); 0 computes the whole micro-batch's
  logits at once.

  `frozen` (LoRA): the parameters that are not trained, merged with the state's
  (the adapters) for the forward pass; no gradient or optimizer state is made for them.
  """

  def train_step(state: TrainState, batch, key, dropout_rates=None, frozen=None):
    total_tokens = jnp.maximum(target_mask(batch).sum(), 1).astype(jnp.float32)
    noise_key = jax.random.fold_in(jax.random.fold_in(key, NOISE_KEY), state.step)
    dropout_key = jax.random.fold_in(jax.random.fold_in(key, DROPOUT_KEY), state.step)
    num_micro = batch["input_ids"].shape[0]

    def micro_step(micro_batch, index):
      drop = None
      if dropout_rates:
        drop = dropout.Dropout(jax.random.fold_in(dropout_key, index), dict(dropout_rates),
                               dropout_distribution)

      def loss_fn(params):
        model = nnx.merge(graphdef, params) if frozen is None else nnx.merge(graphdef, params, frozen)
        hidden_btd, targets_bt = _hidden_and_targets(
            model, micro_batch, noise, jax.random.fold_in(noise_key, index), drop)
        loss_sum = loss.masked_loss_sum(hidden_btd, model.head(), targets_bt,
                                        target_mask(micro_batch), loss_chunk_size)
        return loss_sum / total_tokens

      return jax.value_and_grad(loss_fn)(state.params)

    if num_micro == 1:
      losses, grads = micro_step(jax.tree.map(lambda x: x[0], batch), 0)
    else:
      def accumulate(grad_sum, inputs):
        loss_value, grads = micro_step(*inputs)
        return jax.tree.map(lambda s, g: s + g.astype(jnp.float32), grad_sum, grads), loss_value

      zeros = jax.tree.map(lambda p: jnp.zeros(p.shape, jnp.float32), state.params)
      grads, losses = jax.lax.scan(accumulate, zeros, (batch, jnp.arange(num_micro)))
      grads = jax.tree.map(lambda g, p: g.astype(p.dtype), grads, state.params)
    updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    metrics = {
        "loss": jnp.sum(losses),
        "grad_norm": optax.tree.norm(grads),
        "learning_rate": learning_rate(state.step),
        "tokens": (batch["segment_ids"] != 0).sum(),
        "loss_tokens": total_tokens,
    }
    return TrainState(state.step + 1, params, opt_state), metrics

  return train_step


def make_eval_step(graphdef: nnx.GraphDef, loss_chunk_size: int = 0):
  """Sums of the loss, the target tokens and the right argmaxes of a batch."""

  def eval_step(params, batch):
    losses, mask, correct = token_losses(nnx.merge(graphdef, params), batch,
                                         loss_chunk_size=loss_chunk_size)
    return {"loss_sum": losses.sum(), "tokens": mask.sum(), "correct": correct.sum()}

  return eval_step


def eval_loss(eval_step, params, batches, to_global, prefix: str = "eval") -> dict:
  """Mean response-token loss and token accuracy over every batch of `batches`
  ({prefix}_loss, {prefix}_token_accuracy).

  `eval_step` is the jitted `make_eval_step`; `batches` yields this process's
  rows, which `to_global` makes global arrays (`sharding.global_batch`).
  """
  totals = {"loss_sum": 0.0, "tokens": 0, "correct": 0}
  for batch in batches:
    sums = jax.device_get(eval_step(params, to_global(batch)))
    for name in totals:
      totals[name] += sums[name]
  tokens = max(int(totals["tokens"]), 1)
  return {f"{prefix}_loss": float(totals["loss_sum"]) / tokens,
          f"{prefix}_token_accuracy": float(totals["correct"]) / tokens}
