"""Batched generation with a KV cache: greedy, temperature, top-k, top-p, repetition penalty.

    new_ids = generate(model, prompts, max_new_tokens=256, repetition_penalty=1.2,
                       eos_id=tokenizer.eos_token_id)

Prompts (token id lists of any lengths) are left-padded into one buffer, so
every row writes its next token into the same cache slot. One jitted function
runs the prefill and then a `lax.while_loop` of one-token decode steps, all
with static shapes: it compiles once per (batch, prompt bucket, new tokens),
the prompt length being rounded up to a multiple of `bucket`. It stops when
every row has produced EOS or after `max_new_tokens`.

The logits go through, in transformers' order: the repetition penalty (every
token already in the row, prompt and its padding included, has a positive
logit divided and a negative one multiplied by the penalty), then the
temperature, top-k and top-p. Temperature 0 is greedy. Sampling draws from
fold_in(key, step), so the same key repeats a generation.

The model may be sharded (load_hf with a mesh): the step runs under the
model's shardings, inside `neft_jax.sharding.activation_rules` if the caller
opens it.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from neft_jax.models.transformer import KVCache, Transformer


@dataclasses.dataclass(frozen=True)
class Sampling:
  """How the next token is chosen (hashable: part of the compiled function's key)."""
  temperature: float = 0.0
  top_k: int | None = None
  top_p: float | None = None
  repetition_penalty: float = 1.0
  eos_id: int | None = None
  pad_id: int = 0


def process_logits(logits_bv, seen_bv, sampling: Sampling):
  """Repetition penalty, temperature, top-k and top-p, in that order."""
  if sampling.repetition_penalty != 1.0:
    penalized = jnp.where(logits_bv > 0, logits_bv / sampling.repetition_penalty,
                          logits_bv * sampling.repetition_penalty)
    logits_bv = jnp.where(seen_bv, penalized, logits_bv)
  if sampling.temperature == 0.0:
    return logits_bv
  logits_bv = logits_bv / sampling.temperature
  if sampling.top_k:
    kth_largest = jax.lax.top_k(logits_bv, sampling.top_k)[0][:, -1:]
    logits_bv = jnp.where(logits_bv < kth_largest, -jnp.inf, logits_bv)
  if sampling.top_p is not None and sampling.top_p < 1.0:
    sorted_bv = jnp.sort(logits_bv, axis=-1)[:, ::-1]
    probs_bv = jax.nn.softmax(sorted_bv, axis=-1)
    # Keep the smallest set of most likely tokens whose probability reaches top_p.
    before_bv = jnp.cumsum(probs_bv, axis=-1) - probs_bv
    kept_bv = jnp.where(before_bv < sampling.top_p, sorted_bv, jnp.inf)
    threshold_b1 = jnp.min(kept_bv, axis=-1, keepdims=True)
    logits_bv = jnp.where(logits_bv < threshold_b1, -jnp.inf, logits_bv)
  return logits_bv


def choose(logits_bv, key, sampling: Sampling):
  if sampling.temperature == 0.0:
    return jnp.argmax(logits_bv, axis=-1).astype(jnp.int32)
  return jax.random.categorical(key, logits_bv, axis=-1).astype(jnp.int32)


@functools.partial(jax.jit, static_argnames=("graphdef", "max_new_tokens", "sampling"))
def _generate(graphdef, params, tokens_bp, mask_bp, key, *, max_new_tokens: int,
              sampling: Sampling):
  """New tokens [batch, max_new_tokens] (pad after EOS) and how many each row made."""
  model: Transformer = nnx.merge(graphdef, params)
  batch, prompt_length = tokens_bp.shape
  vocab = model.config.vocab_size
  cache = KVCache.empty(model.config, batch, prompt_length + max_new_tokens)
  positions_bp = jnp.maximum(jnp.cumsum(mask_bp, axis=1) - 1, 0)
  logits_bpv, cache = model(tokens_bp, attention_mask=mask_bp, positions=positions_bp, cache=cache)
  rows_b = jnp.arange(batch)[:, None]
  seen_bv = jnp.zeros((batch, vocab), bool).at[rows_b, tokens_bp].set(True)

  def keep_going(carry):
    step, _, _, _, done_b, _ = carry
    return (step < max_new_tokens) & ~jnp.all(done_b)

  def decode(carry):
    step, cache, next_logits_bv, seen_bv, done_b, out_bn = carry
    logits_bv = process_logits(next_logits_bv, seen_bv, sampling)
    token_b = choose(logits_bv, jax.random.fold_in(key, step), sampling)
    token_b = jnp.where(done_b, sampling.pad_id, token_b)
    out_bn = out_bn.at[:, step].set(token_b)
    if sampling.eos_id is not None:
      done_b = done_b | (token_b == sampling.eos_id)
    seen_bv = seen_bv.at[jnp.arange(batch), token_b].set(True)
    positions_b1 = positions_bp[:, -1:] + 1 + step
    logits_b1v, cache = model(token_b[:, None], positions=positions_b1, cache=cache)
    return step + 1, cache, logits_b1v[:, 0], seen_bv, done_b, out_bn

  out_bn = jnp.full((batch, max_new_tokens), sampling.pad_id, jnp.int32)
  carry = (jnp.zeros((), jnp.int32), cache, logits_bpv[:, -1], seen_bv,
           jnp.zeros(batch, bool), out_bn)
  _, _, _, _, _, out_bn = jax.lax.while_loop(keep_going, decode, carry)
  return out_bn


def round_up(n: int, multiple: int) -> int:
  return -(-n // multiple) * multiple


def generate(model: Transformer, prompts: list[list[int]], *, max_new_tokens: int, key=None,
             temperature: float = 0.0, top_k: int | None = None, top_p: float | None = None,
             repetition_penalty: float = 1.0, eos_id: int | None = None, pad_id: int = 0,
             bucket: int = 64) -> list[list[int]]:
  """The new token ids of each prompt (EOS and what follows it left out)."""
  if not prompts or any(len(p) == 0 for p in prompts):
    raise ValueError("generate needs at least one prompt, and no empty prompt")
  if temperature < 0 or (temperature > 0 and key is None):
    raise ValueError("sampling (temperature > 0) needs an explicit PRNG key")
  prompt_length = round_up(max(len(p) for p in prompts), bucket)
  if model.config.positions == "learned" and prompt_length + max_new_tokens > model.config.max_positions:
    prompt_length = max(len(p) for p in prompts)  # no room to round up: use the exact length
  longest = max(len(p) for p in prompts) + max_new_tokens
  if longest > model.config.max_positions:
    raise ValueError(f"a prompt of {longest - max_new_tokens} tokens plus {max_new_tokens} new ones "
                     f"exceed the model's {model.config.max_positions} positions")
  tokens = np.full((len(prompts), prompt_length), pad_id, np.int32)
  mask = np.zeros((len(prompts), prompt_length), np.int32)
  for row, prompt in enumerate(prompts):
    tokens[row, prompt_length - len(prompt):] = prompt
    mask[row, prompt_length - len(prompt):] = 1
  sampling = Sampling(float(temperature), top_k, top_p, float(repetition_penalty), eos_id, pad_id)
  graphdef, params = nnx.split(model)
  out = _generate(graphdef, params, jnp.asarray(tokens), jnp.asarray(mask),
                  key if key is not None else jax.random.key(0),
                  max_new_tokens=max_new_tokens, sampling=sampling)
  results = []
  for row in np.asarray(out).tolist():
    if eos_id is not None and eos_id in row:
      row = row[: row.index(eos_id)]
    results.append(row)
  return results
