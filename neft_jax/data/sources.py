"""Records from a hub dataset or local json / jsonl / csv / parquet files.

    load_records(path, split, fields)         instruction records (Record)
    load_classification(path, split, labels, instruction, text_field, label_field)
                                               text-and-label rows as Records: the input is
                                               the text, the output the label's name
    load_file(file)                           one local file's rows, every column kept
    rows_of(path, split, config_key)          (rows, where) of each file of a path, or a hub split

Hub datasets and parquet files are loaded with Hugging Face `datasets`; local
JSON and JSON lines with the standard json module (exact values, exact error
positions), CSV with the csv module (a header row, every value a string).
The original rt-polarity release, a folder with rt-polarity.pos and
rt-polarity.neg, is read as classification data. Every record is checked at
this edge, and a problem is reported with the file, the record number (from
0) and the field.
"""

from __future__ import annotations

import dataclasses
import json
import os

from neft_jax.errors import UserError
from neft_jax.hub import is_hub_id

LOCAL_FORMATS = {".json": "json", ".jsonl": "json", ".csv": "csv", ".parquet": "parquet"}


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


def _read_csv(file: str) -> list[dict]:
  """Rows of a CSV file with a header row; every value a string, as written."""
  import csv
  with open(file, encoding="utf-8", newline="") as f:
    reader = csv.DictReader(f)
    rows = list(reader)
  if reader.fieldnames is None:
    raise UserError(f"{file} holds no records; the dataset is empty")
  for number, row in enumerate(rows):
    if None in row or None in row.values():
      raise UserError(f"{file}: record {number} (counting from 0, line {number + 2}) has "
                      f"{'more' if None in row else 'fewer'} values than the header's "
                      f"{len(reader.fieldnames)} columns")
  return rows


def load_file(file: str):
  """The rows of one local .json, .jsonl, .csv or .parquet file, with all their columns
  (a list of dicts, or a `datasets.Dataset` for parquet)."""
  kind = LOCAL_FORMATS[os.path.splitext(file)[1]]
  if kind == "json":
    return _read_json(file)
  if kind == "csv":
    return _read_csv(file)
  import datasets
  datasets.disable_progress_bars()
  try:
    return datasets.load_dataset("parquet", data_files=file, split="train")
  except Exception as e:
    raise UserError(f"{file}: could not be read as parquet ({type(e).__name__}: {e})") from None


def load_hub(dataset_id: str, split: str, config_key: str = "data.path",
             local_formats: str = ".json, .jsonl, .csv or .parquet"):
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


def rows_of(path: str, split: str, config_key: str):
  """(rows, where) of every file of a local path, or of a hub dataset's split."""
  if not path:
    raise UserError(f"{config_key} is not set; give a local .json, .jsonl, .csv or .parquet "
                    "file or folder, or a Hugging Face hub dataset id")
  if os.path.exists(path):
    return [(load_file(file), file) for file in local_files(path)]
  if is_hub_id(path):
    return [(load_hub(path, split, config_key), f"{path} [{split}]")]
  raise UserError(f"{config_key}={path!r} does not exist; give a local file or folder, "
                  "or a Hugging Face hub dataset id")


def _not_empty(records: list, path: str, config_key: str) -> list:
  if not records:
    raise UserError(f"{config_key}={path!r} holds no records; the dataset is empty")
  return records


def load_records(path: str, *, split: str = "train", fields: Fields = Fields(),
                 config_key: str = "data.path") -> list[Record]:
  """All records of a local file or folder, or of a hub dataset's split."""
  records = []
  for rows, where in rows_of(path, split, config_key):
    records += _records(rows, where, fields)
  return _not_empty(records, path, config_key)


def default_instruction(labels) -> str:
  return f"Classify the text as one of: {', '.join(labels)}."


def _label_name(value, labels: tuple[str, ...], where: str, number: int, field: str) -> str:
  """A label's name: a name of `labels`, or an integer index into them (a CSV's "1" too,
  unless "1" is itself a label)."""
  if isinstance(value, str) and value not in labels and value.strip().lstrip("-").isdigit():
    value = int(value)
  if isinstance(value, bool) or not isinstance(value, (str, int)):
    what = "has no" if value is None else f"has a {type(value).__name__} in its"
    raise UserError(f"{where}: record {number} (counting from 0) {what} {field!r} field; a label "
                    "is a name of data.labels or an integer index into them")
  if isinstance(value, int):
    if not 0 <= value < len(labels):
      raise UserError(f"{where}: record {number} (counting from 0) has label {value}, out of "
                      f"range for the {len(labels)} names of data.labels={list(labels)}; "
                      f"integer labels index data.labels from 0")
    return labels[value]
  if value not in labels:
    raise UserError(f"{where}: record {number} (counting from 0) has label {value!r}, which is "
                    f"not in data.labels={list(labels)}; add it there, or fix the record")
  return value


def _classification_records(rows, where: str, text_field: str, label_field: str,
                            labels: tuple[str, ...], instruction: str) -> list[Record]:
  records = []
  for number, row in enumerate(rows):
    text = row.get(text_field)
    if not isinstance(text, str) or not text.strip():
      what = ("an empty" if isinstance(text, str) else "no" if text is None
              else f"a non-string ({type(text).__name__})")
      raise UserError(f"{where}: record {number} (counting from 0) has {what} {text_field!r} "
                      "field (data.fields.text), the text to classify")
    label = _label_name(row.get(label_field), labels, where, number, label_field)
    records.append(Record(instruction=instruction, input=text, output=label))
  return records


def load_classification(path: str, *, split: str = "train", labels=(), instruction: str = "",
                        config_key: str = "data.path",
                        text_field: str = "text", label_field: str = "label") -> list[Record]:
  """Text-and-label rows as Records: instruction, input = the text, output = the label's
  name (of `labels`). The rt-polarity release's folder gives its sentences, labelled
  negative and positive."""
  from neft_jax.data import rt_polarity
  labels = tuple(labels)
  instruction = instruction or default_instruction(labels)
  if os.path.isdir(path) and rt_polarity.is_rt_polarity(path):
    return _not_empty(_classification_records(rt_polarity.load_rt_polarity(path), path, "text",
                                              "label", labels, instruction), path, config_key)
  records = []
  for rows, where in rows_of(path, split, config_key):
    records += _classification_records(rows, where, text_field, label_field, labels, instruction)
  return _not_empty(records, path, config_key)
