"""Loading records: formats, folders, field names, and clear errors."""

import json

import pytest

from neft_jax.data.sources import Fields, Record, load_records
from neft_jax.errors import UserError

ROWS = [{"instruction": "Say hi.", "output": "Hi."},
        {"instruction": "Add.", "input": "1 + 1", "output": "2"}]


def test_json_jsonl_parquet_and_folders(tmp_path):
  import datasets
  (tmp_path / "a.json").write_text(json.dumps(ROWS))
  (tmp_path / "b.jsonl").write_text("\n".join(json.dumps(r) for r in ROWS))
  datasets.Dataset.from_list([{"instruction": "P", "input": None, "output": "Q"}]).to_parquet(
      str(tmp_path / "c.parquet"))
  expected = [Record("Say hi.", "", "Hi."), Record("Add.", "1 + 1", "2")]
  assert load_records(str(tmp_path / "a.json")) == expected
  assert load_records(str(tmp_path / "b.jsonl")) == expected
  assert load_records(str(tmp_path / "c.parquet")) == [Record("P", "", "Q")]
  assert load_records(str(tmp_path)) == expected + expected + [Record("P", "", "Q")]


def test_other_field_names(tmp_path):
  (tmp_path / "dolly.jsonl").write_text(json.dumps(
      {"instruction": "Why?", "context": "Because.", "response": "So."}))
  fields = Fields(input="context", output="response")
  assert load_records(str(tmp_path / "dolly.jsonl"), fields=fields) == [Record("Why?", "Because.", "So.")]


def test_non_string_field_names_record_and_field(tmp_path):
  (tmp_path / "d.json").write_text(json.dumps(ROWS + [{"instruction": "x", "output": 7}]))
  with pytest.raises(UserError, match=r"d.json: record 2 \(counting from 0\) has a non-string"):
    load_records(str(tmp_path / "d.json"))


def test_missing_path_names_the_config_key(tmp_path):
  with pytest.raises(UserError, match=r"data.path=.*does not exist"):
    load_records(str(tmp_path / "nowhere.json"))
  with pytest.raises(UserError, match="data.path is not set"):
    load_records("")


def test_hub_dataset_without_hub_access_says_what_to_set():
  with pytest.raises(UserError, match="set data.path to a local"):
    load_records("neft-jax-tests/no-such-dataset")


def test_unknown_format(tmp_path):
  (tmp_path / "data.tsv").write_text("instruction\toutput\na\tb\n")
  with pytest.raises(UserError, match="unknown data format; use .json, .jsonl, .csv or .parquet"):
    load_records(str(tmp_path / "data.tsv"))


def test_csv_records_keep_their_text_and_a_short_row_is_named(tmp_path):
  (tmp_path / "data.csv").write_text('instruction,output\n"Say ""hi"", twice",hi hi\n')
  assert load_records(str(tmp_path / "data.csv")) == [Record('Say "hi", twice', "", "hi hi")]
  (tmp_path / "data.csv").write_text("instruction,output\na,b\nc\n")
  with pytest.raises(UserError, match=r"data.csv: record 1 \(counting from 0, line 3\) has fewer "
                                      r"values than the header's 2 columns$"):
    load_records(str(tmp_path / "data.csv"))
