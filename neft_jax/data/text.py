"""Plain text: documents as strings, and their token ids, for losses over every token.

    load_documents(path, ...)         documents from a .txt file, json / jsonl / csv / parquet
                                      files with a text field, instruction records, or a hub dataset
    tokenize_documents(docs, ...)     token ids, cut at max_length, of up to N documents (Fisher)
    tokenize_text(records, ...)       plain-text training examples (data.template="text"): every
                                      document whole, long ones split into chunks

The sources:
  * `.txt`: one document per line; blank lines are skipped.
  * `.json` (a list of objects), `.jsonl`, `.csv`, `.parquet` or a hub dataset's split,
    whose records hold the text in `text_field`.
  * instruction records (`instruction` and `output`, optional `input`, under
    the names of `data.fields`) without a text field: each becomes the text of
    its prompt, formatted with the run's template, followed by its output
    (with data.template="text", `templates.flatten`: the parts joined by a
    blank line).
  * a folder of such files, in name order.

Used by the Fisher pass (`neft_jax.information`) and by plain-text training
(`neft_jax.data.pipeline` with data.template="text"). Every mistake is a
UserError that names the file, the record, the field and the config key.

Plain-text training (`tokenize_text`): every example is `[BOS] text EOS`,
BOS as the family was pretrained (`neft_jax.data.tokenize.start_token`) and
EOS when the tokenizer has one, so the last token of every document learns
to predict the document's end. The loss is on every token that has one
before it: the loss mask is True on all but each example's first token, so
every real position but the last predicts the next token of its own
document. A document longer than max_length is split into chunks of
max_length tokens that overlap by one: chunk k+1 begins with chunk k's last
token, as its context, so every token of the document but the first is
predicted exactly once; BOS begins only the first chunk and EOS ends only the
last. Each chunk is an example of its own (its own packed segment, with its
own positions and its own NEFTune length L).
"""

from __future__ import annotations

import dataclasses
import os

import numpy as np

from neft_jax.data import sources, templates
from neft_jax.data.sources import Record
from neft_jax.data.tokenize import TokenizedSet, encode_prompts
from neft_jax.errors import UserError
from neft_jax.hub import is_hub_id

TEXT_FORMATS = (".txt",) + tuple(sources.LOCAL_FORMATS)


def _text_lines(file: str) -> list[str]:
  with open(file, encoding="utf-8") as f:
    return [line.rstrip("\r\n") for line in f if line.strip()]


def _documents_of_rows(rows, source: str, text_field: str, fields: sources.Fields,
                       template: str, tokenizer, text_key: str) -> list[str]:
  """The text field of every record, or, for instruction records, prompt + output."""
  rows = list(rows) if not hasattr(rows, "column_names") else rows
  if not len(rows):
    return []
  first = rows[0]
  if text_field not in first and fields.instruction in first and fields.output in first:
    records = sources._records(rows, source, fields)  # noqa: SLF001  (the same checks as training's)
    return [templates.prompt(r, template, tokenizer) + r.output for r in records]
  documents = []
  for number, row in enumerate(rows):
    value = row.get(text_field)
    if not isinstance(value, str):
      what = "has no" if value is None else f"has a non-string ({type(value).__name__})"
      raise UserError(f"{source}: record {number} (counting from 0) {what} {text_field!r} field; "
                      f"give every record a text in {text_field!r} ({text_key}), or give "
                      f"instruction records ({fields.instruction!r} and {fields.output!r})")
    if value.strip():
      documents.append(value)
  return documents


def load_documents(path: str, *, split: str = "train", text_field: str = "text",
                   fields: sources.Fields = sources.Fields(), template: str = "alpaca",
                   tokenizer=None, config_key: str = "fisher.data_path",
                   text_key: str = "fisher.text_field", what: str = "Fisher data") -> list[str]:
  """Every non-blank document of `path`, in order (see the module's doc).

  `config_key` and `text_key` are the config keys of the path and of the text
  field, and `what` the data's role, as the errors name them.
  """
  if not path:
    raise UserError(f"{config_key} is not set; give a .txt file (one document a line), a json, "
                    "jsonl, csv or parquet file or folder with a text field, or a hub dataset id")
  documents = []
  if os.path.exists(path):
    for file in sources.local_files(path, TEXT_FORMATS, "text", "(one document a line)"):
      if file.endswith(".txt"):
        documents += _text_lines(file)
        continue
      with open(file, encoding="utf-8") as f:
        blank = file.endswith((".json", ".jsonl")) and not f.read().strip()
      if not blank:
        documents += _documents_of_rows(sources.load_file(file), file,
                                        text_field, fields, template, tokenizer, text_key)
  elif is_hub_id(path):
    rows = sources.load_hub(path, split, config_key, ".txt, .json, .jsonl, .csv or .parquet")
    documents = _documents_of_rows(rows, f"{path} [{split}]", text_field, fields, template,
                                   tokenizer, text_key)
  else:
    raise UserError(f"{config_key}={path!r} does not exist; give a local file or folder, or a "
                    "Hugging Face hub dataset id")
  if not documents:
    raise UserError(f"{config_key}={path!r}: {what} with no text (every document is empty); "
                    "give a file with at least one non-blank document")
  return documents


@dataclasses.dataclass
class TokenizedText:
  input_ids: list[np.ndarray]  # int32 [n >= 2] per document
  selection: str  # "all" (every usable document) or "seeded_subsample"
  num_documents: int  # documents in the source
  num_truncated: int = 0  # documents cut at max_length
  num_too_short: int = 0  # documents of fewer than 2 tokens, skipped (among those looked at)

  @property
  def num_tokens(self) -> int:
    return int(sum(len(ids) for ids in self.input_ids))


def tokenize_documents(documents: list[str], tokenizer, *, max_length: int, num_examples: int,
                       bos: int | None, seed: int, chunk: int = 1024) -> TokenizedText:
  """Token ids of up to `num_examples` documents of at least 2 tokens, cut at max_length.

  Each is `[BOS] text` with BOS as training adds it (`bos` from
  `neft_jax.data.tokenize.start_token`), and no EOS. When the source holds more
  documents than `num_examples`, they are taken in a random order seeded by
  `seed` (a seeded subsample) until `num_examples` are found; otherwise every
  document is used. The examples keep the source's order.
  """
  subsample = len(documents) > num_examples
  order = (np.random.default_rng([seed, 10]).permutation(len(documents)) if subsample
           else np.arange(len(documents)))
  chosen: dict[int, np.ndarray] = {}
  out = TokenizedText([], "seeded_subsample" if subsample else "all", len(documents))
  for start in range(0, len(order), chunk):
    indices = order[start:start + chunk]
    for index, ids in zip(indices, encode_prompts(tokenizer, [documents[i] for i in indices], bos)):
      if len(ids) < 2:
        out.num_too_short += 1
        continue
      if len(ids) > max_length:
        ids, out.num_truncated = ids[:max_length], out.num_truncated + 1
      chosen[int(index)] = np.asarray(ids, np.int32)
      if len(chosen) == num_examples:
        break
    if len(chosen) == num_examples:
      break
  out.input_ids = [chosen[i] for i in sorted(chosen)]
  return out


def tokenize_text(records: list[Record], tokenizer, *, max_length: int, bos: int | None
                  ) -> TokenizedSet:
  """Plain-text training examples of `records` (documents in `input`), in order.

  `[BOS] text EOS` per document (see the module's doc), split into chunks of
  `max_length` tokens overlapping by one where longer; the loss mask is True
  on every token but each example's first. A document with no token to
  predict (one token, no BOS and no EOS) is dropped. `records` of the set has
  each example's document (a split document once per chunk).
  """
  eos = tokenizer.eos_token_id
  tail = [] if eos is None else [int(eos)]
  out = TokenizedSet([], [], [])
  stride = max_length - 1  # each chunk adds max_length - 1 tokens to predict
  for record, ids in zip(records, encode_prompts(tokenizer, [r.input for r in records], bos)):
    ids = np.asarray(list(ids) + tail, np.int32)
    if len(ids) < 2:
      out.num_dropped += 1
      continue
    starts = range(0, len(ids) - 1, stride) if len(ids) > max_length else (0,)
    if len(starts) > 1:
      out.num_split += 1
      out.num_chunks += len(starts)
    for start in starts:
      chunk = ids[start:start + max_length]
      mask = np.ones(len(chunk), bool)
      mask[0] = False  # nothing before it in its example predicts it
      out.input_ids.append(chunk)
      out.loss_masks.append(mask)
      out.records.append(record)
  return out
