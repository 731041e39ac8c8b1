"""Tokenize instruction records, mask the prompt, append EOS, truncate.

Every example is `[BOS] prompt response EOS`, where:

  * BOS is there or not by the model family's pretraining (`start_token`):
    Llama begins every text with `<s>`; GPT-2 and Qwen2 begin with none. It is
    added here, never by the tokenizer (`add_special_tokens=False`), since
    whether a tokenizer folder adds it varies (a Llama-2 folder holding only
    tokenizer.model adds none under transformers 5). A prompt whose chat
    template already renders BOS gets no second one.
  * the prompt's ids are exactly those generation feeds the model
    (`encode_prompts`, shared with neft_jax.answers), and the loss mask starts
    right after them: prompt and response are tokenized separately and
    concatenated, so a token that would merge across the boundary (a prompt
    ending in a space or in part of a word) cannot shift the mask.
  * the response is tokenized as text that follows the prompt, without the
    dummy-prefix "▁" a sentencepiece tokenizer puts in front of a text on its
    own, so prompt + response decode to exactly the text. Where nothing merges
    (after the line break the Alpaca prompts end in, say), these are the ids
    of prompt + response tokenized together, as in Stanford Alpaca's code.

EOS is appended as a token id and carries loss. Examples longer than
max_length are cut at the end; examples whose prompt alone fills max_length
have no response token left and are dropped. Both are counted.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from neft_jax.data import templates
from neft_jax.data.sources import Record
from neft_jax.errors import UserError

# Whether each model family was pretrained with BOS in front of every text.
STARTS_WITH_BOS = {"gpt2": False, "llama": True, "qwen2": False}


@dataclasses.dataclass
class TokenizedSet:
  input_ids: list[np.ndarray]  # int32 [n] per example
  loss_masks: list[np.ndarray]  # bool [n]: True on response and EOS (text: all but the first)
  records: list[Record]  # the records kept, in order
  num_truncated: int = 0  # examples cut at max_length (response tail lost)
  num_dropped: int = 0  # examples whose prompt alone reached max_length (text: nothing to predict)
  num_split: int = 0  # plain text: documents longer than max_length, split into chunks
  num_chunks: int = 0  # plain text: the examples those documents became

  def __len__(self) -> int:
    return len(self.input_ids)

  @property
  def lengths(self) -> np.ndarray:
    return np.array([len(ids) for ids in self.input_ids], np.int64)


def start_token(model_config, tokenizer) -> int | None:
  """The BOS id every example and generation prompt begins with, or None.

  By the family of `model_config` (a ModelConfig): for Llama the model's
  config.json bos_token_id, else the tokenizer's BOS; for GPT-2 and Qwen2 none.
  """
  if not STARTS_WITH_BOS[model_config.family]:
    return None
  bos = model_config.bos_token_id
  if bos is None:
    bos = tokenizer.bos_token_id
  if bos is None:
    raise UserError(f"the {model_config.family} model begins every text with BOS, but neither its "
                    "config.json (bos_token_id) nor its tokenizer (bos_token) names one; set "
                    "bos_token_id in the model's config.json")
  return int(bos)


def encode_prompts(tokenizer, texts: list[str], bos: int | None) -> list[list[int]]:
  """Token ids of prompt texts, as training and generation both feed them:
  no special tokens but `bos` in front, unless the text renders it already."""
  if not texts:
    return []
  encoded = tokenizer(list(texts), add_special_tokens=False, verbose=False)["input_ids"]
  if bos is None:
    return [list(ids) for ids in encoded]
  return [list(ids) if ids[:1] == [bos] else [bos, *ids] for ids in encoded]


def encode_responses(tokenizer, texts: list[str]) -> list[list[int]]:
  """Token ids of response texts, each as it follows a line break.

  Tokenized behind a "\\n" that is then taken off, so a sentencepiece tokenizer
  adds no dummy-prefix "▁" (which would decode as a space the text lacks);
  where the text's first characters merge with that line break (Qwen2 merges
  line breaks), it is tokenized alone, which byte-level BPE does faithfully.
  """
  if not texts:
    return []
  anchor = tokenizer("\n", add_special_tokens=False)["input_ids"]
  behind = tokenizer(["\n" + text for text in texts], add_special_tokens=False,
                     verbose=False)["input_ids"]
  out = []
  for text, ids in zip(texts, behind):
    if ids[:len(anchor)] == anchor:
      out.append(list(ids[len(anchor):]))
    else:
      out.append(list(tokenizer(text, add_special_tokens=False, verbose=False)["input_ids"]))
  return out


def check_max_length(tokenizer, max_length: int, template: str, bos: int | None) -> None:
  """The empty prompt plus one response token must fit."""
  shortest = len(encode_prompts(tokenizer, [templates.shortest_prompt(template, tokenizer)], bos)[0])
  if max_length < shortest + 1:
    raise UserError(f"data.max_length={max_length} is shorter than the prompt template, which "
                    f"takes {shortest} tokens before any instruction; raise data.max_length")


def eos_id(tokenizer) -> int:
  if tokenizer.eos_token_id is None:
    raise UserError("the tokenizer has no EOS token, which ends every response; use a tokenizer "
                    "with eos_token set in its tokenizer_config.json")
  return int(tokenizer.eos_token_id)


def tokenize(records: list[Record], tokenizer, *, max_length: int, template: str,
             bos: int | None) -> TokenizedSet:
  """Token ids and response masks of `records`, in order; `bos` from `start_token`."""
  check_max_length(tokenizer, max_length, template, bos)
  eos = eos_id(tokenizer)
  prompt_ids = encode_prompts(tokenizer, [templates.prompt(r, template, tokenizer) for r in records],
                              bos)
  response_ids = encode_responses(tokenizer, [r.output for r in records])
  out = TokenizedSet([], [], [])
  for record, prompt_part, response_part in zip(records, prompt_ids, response_ids):
    ids = np.asarray(prompt_part + response_part + [eos], np.int32)
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
