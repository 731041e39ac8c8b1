"""Evaluation: loss and token accuracy on held-out data, and exact-match answers."""

from __future__ import annotations

import jax
import numpy as np

from neft_jax.data import templates
from neft_jax.data.sources import Record
from neft_jax.generate import greedy_generate


def eval_loss(eval_step, params, batches, to_global) -> dict:
  """Mean response-token loss and accuracy over all `batches` (host shares)."""
  totals = {"loss_sum": 0.0, "tokens": 0, "correct": 0}
  for batch in batches:
    sums = jax.device_get(eval_step(params, to_global(batch)))
    for name in totals:
      totals[name] += sums[name]
  tokens = max(int(totals["tokens"]), 1)
  return {"eval_loss": float(totals["loss_sum"]) / tokens,
          "eval_token_accuracy": float(totals["correct"]) / tokens}


def exact_match(model, tokenizer, records: list[Record], *, template: str, max_new_tokens: int,
                batch_size: int = 64) -> tuple[float, list[str]]:
  """Fraction of records whose greedy answer equals the output (spaces stripped), and the answers."""
  answers = []
  for start in range(0, len(records), batch_size):
    chunk = records[start:start + batch_size]
    prompts = [tokenizer(templates.prompt(r, template, tokenizer))["input_ids"] for r in chunk]
    new_ids = greedy_generate(model, prompts, max_new_tokens=max_new_tokens,
                              eos_id=tokenizer.eos_token_id, pad_id=tokenizer.pad_token_id or 0)
    answers += [tokenizer.decode(ids, skip_special_tokens=True).strip() for ids in new_ids]
  correct = [a == r.output.strip() for a, r in zip(answers, records)]
  return float(np.mean(correct)) if correct else 0.0, answers
