"""data.exclude (neft_jax/data/dedup.py): normalization, drop counts, the config check,
data.train_fraction, and the real overlap between two Alpaca files."""

import json
import logging

import pytest

from neft_jax import config_check, defaults
from neft_jax.data import dedup, pipeline
from neft_jax.errors import UserError
from tests.conftest import shared_data


def _write(path, rows):
  path.write_text(json.dumps(rows))
  return str(path)


def _data(path, **overrides):
  data = defaults.base().data
  data.path = path
  data.update(overrides)
  return data


def test_normalize():
  assert dedup.normalize("  Give THREE\ttips\n for staying healthy.  ") == \
      "give three tips for staying healthy"
  assert dedup.normalize('"Hello, world!"') == "hello, world"  # inner punctuation kept
  assert dedup.normalize("...") == ""
  assert dedup.normalize("a-b") != dedup.normalize("a b")


def test_drop_counts_instruction_records(tmp_path, caplog):
  train = _write(tmp_path / "train.json", [
      {"instruction": "Name a color.", "input": "", "output": "Red"},
      {"instruction": "name a COLOR", "input": "", "output": "Blue"},  # same question
      {"instruction": "Add the numbers.", "input": "2, 3", "output": "5"},
      {"instruction": "Add the numbers.", "input": "4, 5", "output": "9"},  # other input: kept
      {"instruction": "Say hi.", "input": "", "output": "hi"},
  ])
  held = _write(tmp_path / "held.json", [
      {"instruction": "Name a color", "input": "", "output": "Green"},
      {"instruction": "add  the numbers.", "input": "2, 3.", "output": "6"},
  ])
  lines = tmp_path / "eval.txt"
  lines.write_text("Say hi!\nnot in train\n")
  with caplog.at_level(logging.INFO, logger="neft_jax.data.dedup"):
    splits = pipeline.split_records(_data(train, exclude=(held, str(lines))))
  assert [(r.instruction, r.input) for r in splits["train"]] == [("Add the numbers.", "4, 5")]
  assert list(splits.indices["train"]) == [3]  # its index in data.path's file, as without it
  assert f"data: dropped 4 of 5 records of data.path found in {held} (3), {lines} (1)" in \
      caplog.text


def test_drop_text_documents_and_sentences(tmp_path):
  # Plain text: flattened instruction records match by their first parts; lines by their text.
  corpus = _write(tmp_path / "corpus.json", [
      {"text": "Name a color.\n\nRed is one."},
      {"text": "Add the numbers.\n\n2, 3\n\n5"},
      {"text": "A fine movie ."},
      {"text": "Something else entirely."},
  ])
  held = _write(tmp_path / "held.json", [
      {"instruction": "name a color", "input": "", "output": "?"},
      {"instruction": "Add the numbers.", "input": "2, 3", "output": "?"},
      {"sentence": "a fine movie"},
  ])
  splits = pipeline.split_records(_data(corpus, template="text", exclude=(held,)))
  assert [r.input for r in splits["train"]] == ["Something else entirely."]
  # Classification records match by their text (the input), whatever the prompt.
  rows = _write(tmp_path / "sst.json", [{"text": "a fine movie .", "label": "positive"},
                                         {"text": "a dull one", "label": "negative"},
                                         {"text": "great fun", "label": "positive"}])
  data = _data(rows, format="classification", labels=("negative", "positive"),
               exclude=(held,))
  assert [r.input for r in pipeline.split_records(data)["train"]] == ["a dull one", "great fun"]


def test_missing_exclude_file_is_one_error(tmp_path):
  config = defaults.base()
  config.data.exclude = (str(tmp_path / "absent.json"),)
  problems = config_check.problems(config)
  assert len(problems) == 1 and "absent.json" in problems[0] and "does not exist" in problems[0]
  with pytest.raises(UserError, match="does not exist"):
    dedup.drop_excluded([], [str(tmp_path / "absent.json")])
  config.data.exclude = ("{study}/later.json",)  # filled in later: checked when read
  assert config_check.problems(config) == []


def test_train_fraction(tmp_path):
  rows = [{"text": f"review {i}", "label": ("negative", "positive")[i % 2]} for i in range(100)]
  path = _write(tmp_path / "sst.json", rows)
  common = dict(format="classification", labels=("negative", "positive"), test_size=0.2)
  whole = pipeline.split_records(_data(path, **common))
  tenth = pipeline.split_records(_data(path, train_fraction=0.1, **common))
  assert [r.input for r in tenth["test"]] == [r.input for r in whole["test"]]
  assert len(whole["train"]) == 80 and len(tenth["train"]) == 8
  assert set(r.input for r in tenth["train"]) <= set(r.input for r in whole["train"])
  assert sorted(r.output for r in tenth["train"]).count("positive") == 4  # stratified
  config = defaults.base()
  config.data.train_fraction = 1.5
  assert config_check.problems(config) == ["data.train_fraction=1.5 must be in (0, 1]"]


def test_real_alpaca_overlap():
  small = shared_data("alpaca", "alpaca_small_2000.json")
  cleaned = shared_data("alpaca", "alpaca_cleaned_0000_0099.json")
  with open(small) as f:
    small_rows = json.load(f)
  with open(cleaned) as f:
    cleaned_rows = json.load(f)
  # Counted independently: exact (instruction, input) pairs the two files share.
  shared = {(r["instruction"], r["input"]) for r in small_rows} & {
      (r["instruction"], r["input"]) for r in cleaned_rows}
  assert len(shared) == 4  # what the shared data's files hold (issue 14)
  kept = pipeline.split_records(_data(small, exclude=(cleaned,)))["train"]
  assert len(kept) == len(small_rows) - len(shared)
  assert not {(r.instruction, r.input) for r in kept} & shared


def test_replication_configs(tmp_path):
  """configs/replicate and the three study grids: the corpus holds nothing evaluated, and
  every study passes its checks (nothing is trained)."""
  from configs.replicate import base, prep_corpus
  from configs.study import guided_dropout, neftune, noise_types
  from neft_jax.study import spec
  arg = f"data={shared_data()},runs={tmp_path}"
  counts = prep_corpus.main(arg)
  assert counts["alpaca_dropped"] == 4 and counts["documents"] == counts["alpaca"] + counts[
      "sentences"]
  with open(tmp_path / "corpus.jsonl") as f:
    corpus = {dedup.text_key(json.loads(line)["text"]) for line in f}
  with open(tmp_path / "heldout_sentences.txt") as f:
    held = {dedup.text_key(line) for line in f}
  assert len(held) > 700 and not corpus & held
  assert counts["train_sample"] == 200
  assert config_check.problems(base.get_config(arg)) == []
  for module, cells in ((neftune, 6), (noise_types, 12), (guided_dropout, 18)):
    study = spec.from_config(module.get_config(arg))
    spec.validate(study)
    assert len(spec.cells(study)) == cells and len(study.seeds) >= 3
  study = spec.from_config(noise_types.get_config(arg))
  test = pipeline.split_records(study.base.data)["test"]
  assert {dedup.text_key(r.input) for r in test} <= held
