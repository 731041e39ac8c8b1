"""Cross-file deduplication: drop from the training data whatever is evaluated elsewhere.

    normalize(text)                 the form two texts are compared in
    exclusion_keys(paths)           the keys of every record of the files at `paths`
    record_keys(record)             the keys of one Record of data.path
    drop_excluded(records, paths)   (records kept, their indices in `records`)

`data.exclude=("a.json", "b.txt")` drops from data.path's records (every split
drawn from it) each record that one of those files also holds, so nothing
evaluated (a held-out file, AlpacaEval's instructions, a test split written out)
is in the data a model is trained on.

**Normalization**: lowercase, every run of whitespace one space, and the
punctuation (and whitespace) at both ends stripped, so "Give three tips." and
"give  three tips" are the same; the words and punctuation inside are kept.

**What is compared**:
- an instruction record is its normalized (instruction, input) pair: the same
  question with another answer is still the same question;
- a text (a .txt line, a record's `text` or `sentence` field, an rt-polarity
  sentence) is its normalized text, and matches a record of data.path whose input
  (a classification record's text), or whose instruction when it has no input,
  is that text;
- a plain-text document (data.template="text") made by flattening an instruction
  record ("instruction\\n\\ninput\\n\\noutput", or "instruction\\n\\noutput") is
  matched by its first parts too: (part 0, part 1) and (part 0, "").

Exclude files are local: .txt (one text a line), .json, .jsonl, .csv or
.parquet (records with `instruction` / `input`, or `text` / `sentence`), or an
rt-polarity folder (rt-polarity.pos and .neg).
"""

from __future__ import annotations

import logging
import os
import re
import string

from neft_jax.data import rt_polarity, sources
from neft_jax.errors import UserError

log = logging.getLogger(__name__)

_ENDS = string.punctuation + string.whitespace
_SPACE = re.compile(r"\s+")
_PAIR = "\x1f"  # between instruction and input in a pair key; never in a normalized text


def normalize(value: str) -> str:
  """Lowercase, whitespace collapsed to single spaces, punctuation stripped at both ends."""
  return _SPACE.sub(" ", value.lower()).strip(_ENDS)


def pair_key(instruction: str, input_: str = "") -> str:
  return normalize(instruction) + _PAIR + normalize(input_)


def text_key(value: str) -> str:
  return normalize(value)


def _row_keys(row: dict) -> set[str]:
  keys = set()
  instruction = row.get("instruction")
  if isinstance(instruction, str):
    keys.add(pair_key(instruction, row.get("input") or ""))
  for field in ("text", "sentence"):
    if isinstance(row.get(field), str):
      keys.add(text_key(row[field]))
  return keys


def exclusion_keys(paths) -> dict[str, set[str]]:
  """path -> the keys of its records (see the module's doc)."""
  out = {}
  for path in paths:
    if not os.path.exists(path):
      raise UserError(f"data.exclude names {path!r}, which does not exist; give local files "
                      "(.txt, .json, .jsonl, .csv, .parquet) or an rt-polarity folder")
    keys = set()
    if os.path.isdir(path) and rt_polarity.is_rt_polarity(path):
      keys = {text_key(row["text"]) for row in rt_polarity.load_rt_polarity(path)}
    else:
      for file in sources.local_files(path, (".txt", ".json", ".jsonl", ".csv", ".parquet"),
                                      "data.exclude", ""):
        if file.endswith(".txt"):
          with open(file, encoding="utf-8") as f:
            keys |= {text_key(line) for line in f if line.strip()}
        else:
          for row in sources.load_file(file):
            keys |= _row_keys(row)
    keys.discard("")
    keys.discard(_PAIR)
    out[path] = keys
  return out


def record_keys(record: sources.Record) -> set[str]:
  """The keys a Record of data.path is looked up by."""
  if record.instruction:  # an instruction record (classification: the fixed prompt + the text)
    return {pair_key(record.instruction, record.input),
            text_key(record.input or record.instruction)}
  document = record.input  # a plain-text document (or a record with no instruction)
  parts = document.split("\n\n")
  keys = {text_key(document), pair_key(parts[0])}
  if len(parts) > 1:
    keys.add(pair_key(parts[0], parts[1]))
  return keys


def drop_excluded(records: list, paths, *, what: str = "data.path") -> tuple[list, list[int]]:
  """`records` less those whose keys are in a file of `paths`, and the kept ones' indices in
  `records`; logs the counts per file."""
  paths = tuple(paths)
  if not paths:
    return records, list(range(len(records)))
  excluded = exclusion_keys(paths)
  every = set().union(*excluded.values())
  kept, indices, found = [], [], {path: 0 for path in paths}
  for index, record in enumerate(records):
    keys = record_keys(record)
    if keys & every:
      for path in paths:
        if keys & excluded[path]:
          found[path] += 1
    else:
      kept.append(record)
      indices.append(index)
  dropped = len(records) - len(kept)
  log.info("data: dropped %d of %d records of %s found in %s", dropped, len(records), what,
           ", ".join(f"{path} ({count})" for path, count in found.items()))
  return kept, indices
