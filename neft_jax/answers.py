"""Answers to instructions: prompts as token ids, batched generation, exact match.

Shared by the training job (greedy exact match on the held-out split) and
`neft_jax.evaluate` (the configured decoding on any prompts).
"""

from __future__ import annotations

import logging

import jax
import ml_collections

from neft_jax import response_metrics
from neft_jax.data import templates
from neft_jax.data.sources import Record
from neft_jax.data.tokenize import encode_prompts, start_token
from neft_jax.errors import UserError
from neft_jax.generate import generate

log = logging.getLogger(__name__)


def prompt_tokens(tokenizer, records: list[dict], *, template: str, bos: int | None,
                  max_new_tokens: int, max_positions: int, truncate: bool, source: str
                  ) -> list[list[int]]:
  """Token ids of every prompt, as training tokenizes them (`bos` from
  tokenize.start_token); one too long for the context is an error, or cut from
  the left (behind its BOS). A record with a `prompt` (a conversation's history,
  rendered) is that text; any other is its instruction and input in `template`."""
  room = max_positions - max_new_tokens
  if room < 1:
    raise UserError(f"generate.max_new_tokens={max_new_tokens} leaves no room for a prompt in the "
                    f"model's {max_positions} positions")
  texts = [record["prompt"] if "prompt" in record else templates.prompt(
      Record(record["instruction"], record.get("input") or "", ""), template, tokenizer)
      for record in records]
  prompts = []
  for number, ids in enumerate(encode_prompts(tokenizer, texts, bos)):
    if len(ids) > room:
      if not truncate:
        raise UserError(
            f"{source}: prompt {number} (counting from 0) has {len(ids)} tokens, more than the "
            f"{room} that fit before {max_new_tokens} new ones in the model's {max_positions} "
            "positions; nothing was generated. Shorten it, lower generate.max_new_tokens, or set "
            "generate.truncate_prompts=True to keep each prompt's last tokens")
      log.warning("%s: prompt %d has %d tokens; kept its last %d", source, number, len(ids), room)
      ids = ids[-room:] if bos is None else [bos, *ids[len(ids) - room + 1:]]
    prompts.append(ids)
  return prompts


def generate_answers(model, tokenizer, prompts: list[list[int]], settings) -> list[str]:
  """Decoded answers, generated in batches of generate.batch_size (the last batch
  filled with copies of its first prompt, so every batch compiles alike)."""
  key = jax.random.key(settings.seed)
  answers = []
  for start in range(0, len(prompts), settings.batch_size):
    chunk = prompts[start:start + settings.batch_size]
    padded = chunk + [chunk[0]] * (settings.batch_size - len(chunk))
    new_ids = generate(model, padded, max_new_tokens=settings.max_new_tokens,
                       key=jax.random.fold_in(key, start), temperature=settings.temperature,
                       top_k=settings.top_k or None, top_p=settings.top_p,
                       repetition_penalty=settings.repetition_penalty,
                       eos_id=tokenizer.eos_token_id, pad_id=tokenizer.pad_token_id or 0)
    answers += [tokenizer.decode(ids, skip_special_tokens=True).strip() for ids in new_ids[:len(chunk)]]
  return answers


def exact_match(model, tokenizer, records: list[Record], *, template: str, max_new_tokens: int,
                batch_size: int = 64) -> tuple[float, list[str]]:
  """Greedy answers of `records` and the fraction equal to their outputs (the demo's check)."""
  settings = ml_collections.ConfigDict(dict(
      seed=0, batch_size=min(batch_size, len(records)), max_new_tokens=max_new_tokens,
      temperature=0.0, top_k=0, top_p=1.0, repetition_penalty=1.0))
  prompts = encode_prompts(tokenizer, [templates.prompt(r, template, tokenizer) for r in records],
                           start_token(model.config, tokenizer))
  answers = generate_answers(model, tokenizer, prompts, settings)
  return response_metrics.exact_match(answers, [r.output for r in records]), answers
