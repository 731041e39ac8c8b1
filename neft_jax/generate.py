"""Greedy decoding of a batch of prompts of different lengths.

Prompts are left-padded into one [batch, prompt + new] buffer of static shape,
so the jitted step compiles once per shape. Each step runs the full forward
pass over the buffer (no KV cache), which is simple and exact, and fine for
the small models and short answers of the demo's exact-match evaluation.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx


@functools.partial(jax.jit, static_argnums=0)
def _next_tokens(graphdef, params, tokens_bt, mask_bt, position):
  model = nnx.merge(graphdef, params)
  logits_btv = model(tokens_bt, attention_mask=mask_bt)
  return jnp.argmax(logits_btv[:, position - 1], axis=-1).astype(tokens_bt.dtype)


def greedy_generate(model, prompts: list[list[int]], *, max_new_tokens: int,
                    eos_id: int | None = None, pad_id: int = 0) -> list[list[int]]:
  """New token ids for each prompt (the prompt not included), up to EOS (excluded)."""
  graphdef, params = nnx.split(model)
  prompt_length = max(len(p) for p in prompts)
  total = prompt_length + max_new_tokens
  tokens = np.full((len(prompts), total), pad_id, np.int32)
  mask = np.zeros((len(prompts), total), np.int32)
  for row, prompt in enumerate(prompts):
    tokens[row, prompt_length - len(prompt):prompt_length] = prompt
    mask[row, prompt_length - len(prompt):prompt_length] = 1
  tokens, mask = jnp.asarray(tokens), jnp.asarray(mask)
  done = jnp.zeros(len(prompts), bool)
  for position in range(prompt_length, total):
    next_ids = _next_tokens(graphdef, params, tokens, mask, position)
    tokens = tokens.at[:, position].set(next_ids)
    mask = mask.at[:, position].set(1)
    if eos_id is not None:
      done = done | (next_ids == eos_id)
      if bool(done.all()):
        break
  new = np.asarray(tokens[:, prompt_length:])
  outputs = []
  for row in new:
    ids = row.tolist()
    if eos_id is not None and eos_id in ids:
      ids = ids[: ids.index(eos_id)]
    outputs.append(ids)
  return outputs
