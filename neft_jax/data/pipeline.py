"""From config to tokenized train and eval sets: tokenizer, records, split."""

from __future__ import annotations

import logging
import os

import ml_collections
import numpy as np

from neft_jax.data import templates
from neft_jax.data.sources import Fields, Record, load_records
from neft_jax.data.tokenize import TokenizedSet, tokenize
from neft_jax.errors import UserError
from neft_jax.hub import is_hub_id

log = logging.getLogger(__name__)


def load_tokenizer(path: str, config_key: str = "model.path"):
  """The Hugging Face tokenizer stored with a checkpoint (or a hub id)."""
  import transformers
  if not path:
    raise UserError(f"{config_key} is not set; give the model's folder (or hub id), which holds "
                    "its tokenizer")
  if not os.path.isdir(path) and os.path.exists(path):
    raise UserError(f"{config_key}={path!r} is a file; give the folder that holds the tokenizer")
  unreachable = (f"{config_key}={path!r} is neither a folder nor a reachable hub id; point "
                 f"{config_key} at a folder with the checkpoint and its tokenizer, or at a hub id "
                 "where the hub can be reached")
  if not os.path.isdir(path) and not is_hub_id(path):
    raise UserError(unreachable)
  try:
    return transformers.AutoTokenizer.from_pretrained(path)
  except Exception as e:
    reason = str(e).splitlines()[0] if str(e) else type(e).__name__
    if not os.path.isdir(path):
      raise UserError(f"{unreachable} ({reason})") from None
    raise UserError(f"no tokenizer could be loaded from {config_key}={path!r} ({reason}); point "
                    f"{config_key} at a folder with the tokenizer files, or a hub id") from None


def split_records(config: ml_collections.ConfigDict, seed: int) -> tuple[list[Record], list[Record]]:
  """Training records and held-out records (data.eval_path, or data.eval_size held out)."""
  fields = Fields(**config.fields)
  records = load_records(config.path, split=config.split, fields=fields)
  if config.eval_path:
    return records, load_records(config.eval_path, split=config.eval_split, fields=fields,
                                 config_key="data.eval_path")
  size = config.eval_size
  count = int(round(size * len(records))) if 0 < size < 1 else int(size)
  if count <= 0:
    return records, []
  if count >= len(records):
    raise UserError(f"data.eval_size={size} leaves no training records out of {len(records)}")
  held_out = np.zeros(len(records), bool)
  held_out[np.random.default_rng([seed, 1]).permutation(len(records))[:count]] = True
  return ([r for r, h in zip(records, held_out) if not h],
          [r for r, h in zip(records, held_out) if h])


def tokenized_splits(config: ml_collections.ConfigDict, tokenizer, seed: int, *, bos: int | None
                     ) -> tuple[TokenizedSet, TokenizedSet]:
  """Train and held-out sets; `bos` is the model's start token (tokenize.start_token)."""
  templates.check_template(config.template, tokenizer)
  train_records, eval_records = split_records(config, seed)
  sets = []
  for name, records in (("train", train_records), ("eval", eval_records)):
    data = tokenize(records, tokenizer, max_length=config.max_length, template=config.template,
                    bos=bos)
    if data.num_truncated or data.num_dropped:
      log.warning("%s: %d of %d examples were cut at data.max_length=%d and %d dropped (prompt "
                  "alone too long)", name, data.num_truncated, len(records), config.max_length,
                  data.num_dropped)
    sets.append(data)
  if not len(sets[0]):
    raise UserError(f"no training example fits data.max_length={config.max_length}")
  return sets[0], sets[1]
