"""Instruction records from a hub dataset or local json / jsonl / parquet files.

Hub datasets and parquet files are loaded with Hugging Face `datasets`; local
JSON and JSON lines with the standard json module (exact values, exact error
positions). Every record is checked at this edge: it needs a string
`instruction` and `output` (an `input` is optional), and a problem is reported
with the file, the record number (from 0) and the field.
"""

from __future__ import annotations

import dataclasses
import json
import os

from neft_jax.errors import UserError
from neft_jax.hub import is_hub_id

LOCAL_FORMATS = {".json": "json", ".jsonl": "json", ".parquet": "parquet"}


@dataclasses.dataclass(frozen=True)
class Record:
  instruction: str
  input: str
  output: str


@dataclasses.dataclass(frozen=True)
class Fields:
  """Column names of the instruction, the optional input and the output."""
  instruction: str = "instruction"
  input: str = "input"
  output: str = "output"


def local_files(path: str, formats=tuple(LOCAL_FORMATS), kind: str = "data",
                how: str = "") -> list[str]:
  """The file `path`, or the files of folder `path`, with a suffix in `formats`
  (`how` describes the first format in the error, as "(one document a line)")."""
  names = [f"{formats[0]} {how}".strip(), *formats[1:]]
  listed = ", ".join(names[:-1]) + " or " + names[-1]
  if os.path.isfile(path):
    if os.path.splitext(path)[1] not in formats:
      raise UserError(f"{path}: unknown {kind} format; use {listed} files")
    return [path]
  files = sorted(os.path.join(path, f) for f in os.listdir(path)
                 if os.path.splitext(f)[1] in formats)
  if not files:
    raise UserError(f"{path} has no {', '.join(formats[:-1])} or {formats[-1]} files")
  return files


def _read_json(file: str) -> list:
  """A JSON list of records, or JSON lines, read with exact types and positions.

  The standard json module rather than `datasets` here: it keeps every value
  as written (Arrow would unify a column's types, turning the string "2" into
  an int next to an int 7) and can say where a broken file breaks.
  """
  with open(file, encoding="utf-8") as f:
    text = f.read()
  if not text.strip():
    raise UserError(f"{file} holds no records; the dataset is empty")
  if text.lstrip().startswith("["):
    try:
      rows = json.loads(text)
    except json.JSONDecodeError as e:
      raise UserError(f"{file}: invalid JSON at line {e.lineno} column {e.colno}: {e.msg}") from None
  else:
    rows = []
    for number, line in enumerate(text.splitlines(), start=1):
      if line.strip():
        try:
          rows.append(json.loads(line))
        except json.JSONDecodeError as e:
          raise UserError(f"{file}: invalid JSON at line {number} column {e.colno}: {e.msg}") from None
  for number, row in enumerate(rows):
    if not isinstance(row, dict):
      raise UserError(f"{file}: record {number} (counting from 0) is a {type(row).__name__}, "
                      "not an object with instruction and output")
  return rows


def _load_file(file: str):
  if LOCAL_FORMATS[os.path.splitext(file)[1]] == "json":
    return _read_json(file)
  import datasets
  datasets.disable_progress_bars()
  try:
    return datasets.load_dataset("parquet", data_files=file, split="train")
  except Exception as e:
    raise UserError(f"{file}: could not be read as parquet ({type(e).__name__}: {e})") from None


def load_hub(dataset_id: str, split: str, config_key: str = "data.path",
             local_formats: str = ".json, .jsonl or .parquet"):
  """A hub dataset's split; failing (no hub, no such dataset) is a UserError that
  names `config_key` and the local formats it could be instead."""
  import datasets
  datasets.disable_progress_bars()
  try:
    return datasets.load_dataset(dataset_id, split=split)
  except Exception as e:
    reason = str(e).splitlines()[0] if str(e) else type(e).__name__
    raise UserError(f"{config_key}={dataset_id!r} is not a local file or folder and could not be "
                    f"loaded from the Hugging Face hub ({reason}); set {config_key} to a local "
                    f"{local_formats} file or folder") from None


def _records(rows, source: str, fields: Fields) -> list[Record]:
  records = []
  for number, row in enumerate(rows):
    values = {}
    for name, column, required in ((fields.instruction, "instruction", True),
                                   (fields.input, "input", False),
                                   (fields.output, "output", True)):
      value = row.get(name)
      if value is None and not required:
        value = ""
      if not isinstance(value, str):
        what = "has no" if value is None else f"has a non-string ({type(value).__name__})"
        raise UserError(f"{source}: record {number} (counting from 0) {what} {name!r} field")
      values[column] = value
    records.append(Record(**values))
  return records


def load_records(path: str, *, split: str = "train", fields: Fields = Fields(),
                 config_key: str = "data.path") -> list[Record]:
  """All records of a local file or folder, or of a hub dataset's split."""
  if not path:
    raise UserError(f"{config_key} is not set; give a local .json, .jsonl or .parquet file "
                    "or folder, or a Hugging Face hub dataset id")
  if os.path.exists(path):
    records = []
    for file in local_files(path):
      records += _records(_load_file(file), file, fields)
  elif is_hub_id(path):
    records = _records(load_hub(path, split), f"{path} [{split}]", fields)
  else:
    raise UserError(f"{config_key}={path!r} does not exist; give a local file or folder, "
                    "or a Hugging Face hub dataset id")
  if not records:
    raise UserError(f"{config_key}={path!r} holds no records; the dataset is empty")
  return records
