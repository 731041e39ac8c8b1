"""Tokenize instruction records, mask the prompt, append EOS, truncate.

As in Stanford Alpaca's training code (which NEFTune used), prompt and
response are tokenized together and the first len(tokenize(prompt)) tokens
are masked, so the response is tokenized exactly as the model will see it
after the prompt at generation time. EOS is appended as a token id and
carries loss. Examples longer than max_length are cut at the end; examples
whose prompt alone fills max_length have no response token left and are
dropped. Both are counted.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from neft_jax.data import templates
from neft_jax.data.sources import Record
from neft_jax.errors import UserError


@dataclasses.dataclass
class TokenizedSet:
  input_ids: list[np.ndarray]  # int32 [n] per example
  loss_masks: list[np.ndarray]  # bool [n]: True on response tokens and EOS
  records: list[Record]  # the records kept, in order
  num_truncated: int = 0  # examples cut at max_length (response tail lost)
  num_dropped: int = 0  # examples whose prompt alone reached max_length

  def __len__(self) -> int:
    return len(self.input_ids)

  @property
  def lengths(self) -> np.ndarray:
    return np.array([len(ids) for ids in self.input_ids], np.int64)


def check_max_length(tokenizer, max_length: int, template: str) -> None:
  """The empty prompt plus one response token must fit."""
  shortest = len(tokenizer(templates.shortest_prompt(template, tokenizer))["input_ids"]) + 1
  if max_length < shortest:
    raise UserError(f"data.max_length={max_length} is shorter than the prompt template, which "
                    f"takes {shortest - 1} tokens before any instruction; raise data.max_length")


def eos_id(tokenizer) -> int:
  if tokenizer.eos_token_id is None:
    raise UserError("the tokenizer has no EOS token, which ends every response; use a tokenizer "
                    "with eos_token set in its tokenizer_config.json")
  return int(tokenizer.eos_token_id)


def tokenize(records: list[Record], tokenizer, *, max_length: int, template: str) -> TokenizedSet:
  """Token ids and response masks of `records`, in order."""
  check_max_length(tokenizer, max_length, template)
  eos = eos_id(tokenizer)
  prompts = [templates.prompt(r, template, tokenizer) for r in records]
  prompt_ids = tokenizer(prompts, verbose=False)["input_ids"]
  full_ids = tokenizer([p + r.output for p, r in zip(prompts, records)], verbose=False)["input_ids"]
  out = TokenizedSet([], [], [])
  for record, prompt_part, full in zip(records, prompt_ids, full_ids):
    ids = np.asarray(full + [eos], np.int32)
    mask = np.zeros(len(ids), bool)
    mask[len(prompt_part):] = True
    if len(ids) > max_length:
      ids, mask = ids[:max_length], mask[:max_length]
      if not mask.any():
        out.num_dropped += 1
        continue
      out.num_truncated += 1
    out.input_ids.append(ids)
    out.loss_masks.append(mask)
    out.records.append(record)
  return out
