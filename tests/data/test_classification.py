"""Classification data as instruction tuning: loaders, stratified splits, noise in a run."""

import collections
import csv
import json
import os

import ml_collections
import pytest

from neft_jax import defaults
from neft_jax.data import noise, pipeline, sources
from neft_jax.data.sources import Record
from neft_jax.errors import UserError
from tests.conftest import shared_data

LABELS = ("negative", "positive")
INSTRUCTION = "Classify the sentiment."


def data_config(path, **changes) -> ml_collections.ConfigDict:
  data = defaults.base().data
  data.path, data.format, data.labels, data.instruction = str(path), "classification", LABELS, \
      INSTRUCTION
  for key, value in changes.items():
    *sections, name = key.split("__")
    section = data
    for part in sections:
      section = section[part]
    section[name] = value
  return data


def write_json(path, rows):
  path.write_text(json.dumps(rows))
  return path


def test_the_loaders_read_the_rt_polarity_folder_json_and_csv(tmp_path):
  folder = pipeline.split_records(data_config(shared_data("sentiment")))["train"]
  assert len(folder) == 10_662
  assert folder[0] == Record(INSTRUCTION, "simplistic , silly and tedious .", "negative")
  assert collections.Counter(r.output for r in folder) == {"negative": 5331, "positive": 5331}

  rows = [{"sentence": "a fine film", "polarity": 1}, {"sentence": "dull", "polarity": "negative"}]
  with_json = write_json(tmp_path / "reviews.json", rows)
  config = data_config(with_json, fields__text="sentence", fields__label="polarity")
  assert pipeline.split_records(config)["train"] == [
      Record(INSTRUCTION, "a fine film", "positive"), Record(INSTRUCTION, "dull", "negative")]

  with open(tmp_path / "reviews.csv", "w", newline="") as f:  # CSV holds strings: "1" indexes
    writer = csv.writer(f)
    writer.writerows([["text", "label"], ["a fine film", "1"], ["dull, \"slow\"", "negative"]])
  default_instruction = data_config(tmp_path / "reviews.csv", instruction="")
  assert pipeline.split_records(default_instruction)["train"] == [
      Record("Classify the text as one of: negative, positive.", "a fine film", "positive"),
      Record("Classify the text as one of: negative, positive.", 'dull, "slow"', "negative")]


@pytest.mark.parametrize("row, message", [
    ({"text": "ok", "label": "neutral"}, "record 1 (counting from 0) has label 'neutral', which "
     "is not in data.labels=['negative', 'positive']; add it there, or fix the record"),
    ({"text": "ok", "label": 2}, "record 1 (counting from 0) has label 2, out of range for the 2 "
     "names of data.labels=['negative', 'positive']; integer labels index data.labels from 0"),
    ({"label": 0}, "record 1 (counting from 0) has no 'text' field (data.fields.text), the text "
     "to classify"),
    ({"text": "  ", "label": 0}, "record 1 (counting from 0) has an empty 'text' field"),
    ({"text": "ok"}, "record 1 (counting from 0) has no 'label' field; a label is a name of "
     "data.labels or an integer index into them"),
], ids=["label_not_in_set", "index_out_of_range", "no_text", "empty_text", "no_label_field"])
def test_a_bad_classification_record_is_named(tmp_path, row, message):
  path = write_json(tmp_path / "bad.json", [{"text": "fine", "label": 1}, row])
  with pytest.raises(UserError, match="^" + str(path) + ": ") as info:
    pipeline.split_records(data_config(path))
  assert message in str(info.value)


def three_classes(tmp_path):
  """100 records of three labels in unequal shares, interleaved."""
  rows = [{"text": f"text {i}", "label": "abbcc"[i % 5] if i % 2 else "a"} for i in range(100)]
  counts = collections.Counter(r["label"] for r in rows)
  assert counts == {"a": 60, "b": 20, "c": 20}
  return write_json(tmp_path / "three.json", rows), counts


def test_held_out_splits_are_stratified_and_seeded_by_split_seed_only(tmp_path):
  path, counts = three_classes(tmp_path)
  config = data_config(path, labels=("a", "b", "c"), eval_size=0.1, test_size=20)
  splits = pipeline.split_records(config)
  sizes = {s: len(splits[s]) for s in pipeline.SPLITS}
  assert sizes == {"train": 70, "eval": 10, "test": 20}
  for split in ("eval", "test"):  # each label's share, within one record
    for label, count in collections.Counter(r.output for r in splits[split]).items():
      assert abs(count - sizes[split] * counts[label] / 100) <= 1, (split, label)
  every = sorted(i for s in pipeline.SPLITS for i in splits.indices[s])
  assert every == list(range(100))  # disjoint, and nothing lost
  assert pipeline.split_records(config).indices["test"].tolist() == splits.indices["test"].tolist()
  config.split_seed = 1
  assert pipeline.split_records(config).indices["test"].tolist() != splits.indices["test"].tolist()
  config.test_size = 90
  with pytest.raises(UserError, match=r"^data.eval_size=0.1 and data.test_size=90.0 leave no "
                                      r"training records out of 100$"):
    pipeline.split_records(config)


def test_label_noise_in_a_run_changes_only_the_training_split_and_its_manifest_replays(tmp_path):
  path, _ = three_classes(tmp_path)
  config = data_config(path, labels=("a", "b", "c"), eval_size=0.2, test_size=0.1,
                       noise__kind="label", noise__rate=0.25)
  clean = pipeline.split_records(config)
  noisy, report = pipeline.add_noise(config, clean, seed=3)
  changed = sum(a != b for a, b in zip(clean["train"], noisy["train"]))
  assert changed == round(0.25 * 70) == report.realized["train"].records_changed == 18
  assert noisy["eval"] == clean["eval"] and noisy["test"] == clean["test"]
  assert report.metrics()["noise_train_record_rate"] == pytest.approx(18 / 70)
  # The manifest indexes data.path's records: applied to them, it gives the noisy training split.
  everything = clean["train"] + clean["eval"] + clean["test"]
  order = [*clean.indices["train"], *clean.indices["eval"], *clean.indices["test"]]
  source = [everything[order.index(i)] for i in range(100)]
  replayed = noise.apply_manifest(source, report.manifest)
  assert [replayed[i] for i in clean.indices["train"]] == noisy["train"]
  # The same with another run seed picks other records; data.noise.seed fixes them.
  assert pipeline.add_noise(config, clean, seed=4)[0]["train"] != noisy["train"]
  config.noise.seed = 3
  assert pipeline.add_noise(config, clean, seed=4)[0]["train"] == noisy["train"]
  config.noise.eval = True  # robustness tests: the held-out splits get noise too
  also_held_out, report = pipeline.add_noise(config, clean, seed=3)
  assert also_held_out["train"] == noisy["train"]
  assert sum(a != b for a, b in zip(clean["eval"], also_held_out["eval"])) == round(0.25 * 20)
  assert {e["split"] for e in report.manifest} == {"train", "eval", "test"}


def test_noise_settings_that_do_not_fit_the_data_are_named(tmp_path):
  path = write_json(tmp_path / "ok.json", [{"text": "fine", "label": 1}] * 4)
  with pytest.raises(UserError, match="^data.noise.fields names 'answer', which records do not"):
    pipeline.add_noise(data_config(path, noise__kind="typo", noise__rate=0.1,
                                   noise__fields=("answer",)),
                       pipeline.split_records(data_config(path)), 0)
  instruction = data_config(path, format="instruction", labels=(), noise__kind="label",
                            noise__rate=0.5)
  from neft_jax import config_check
  assert config_check._data_problems(instruction) == [
      "data.noise.kind='label' needs the label set: set data.labels to the class names (two or "
      "more) the label field holds"]


# In a training run ---------------------------------------------------------------------

def reviews(tmp_path, count=64):
  rows = [{"text": f"{'a fine' if i % 2 else 'a dull'} film, number {i}", "label": i % 2}
          for i in range(count)]
  return write_json(tmp_path / "reviews.json", rows)


def classification_run_config(demo_assets, data_path, **noise_settings):
  from neft_jax import demo
  from tests.test_train import shrunk_config
  config = shrunk_config(demo_assets)
  # The demo's model and tokenizer where the other tests find them (made once per session).
  demo.prepare(config.demo, config.model.path, os.path.dirname(config.data.path), config.seed)
  config.data.path, config.data.eval_path = str(data_path), ""
  config.data.format, config.data.labels = "classification", LABELS
  config.data.eval_size, config.data.test_size = 8, 8
  config.data.noise.update(noise_settings)
  config.eval.exact_match = False
  config.train.steps = 4
  config.mesh.num_devices = 1  # compiles faster; the meshes are the step's own tests
  return config


def test_a_classification_run_reports_accuracy_and_its_noise(demo_assets, tmp_path):
  from neft_jax import train
  config = classification_run_config(demo_assets, reviews(tmp_path), kind="label", rate=0.25)
  workdir = tmp_path / "run"
  result = train.train(config, str(workdir))
  lines = [json.loads(line) for line in open(workdir / "metrics.jsonl")]
  first, last = lines[0], lines[-1]
  assert first["step"] == 0 and 0 <= first["eval_accuracy"] <= 1 and "eval_macro_f1" in first
  assert first["noise_train_records_changed"] == round(0.25 * 48) == 12
  assert first["noise_train_record_rate"] == 12 / 48
  assert last["step"] == 4 and {"eval_accuracy", "test_accuracy", "test_macro_f1",
                                "test_loss"} <= set(last)
  assert result["after"]["test_accuracy"] == last["test_accuracy"]
  manifest = [json.loads(line) for line in open(workdir / "noise_manifest.jsonl")]
  assert len(manifest) == 12 and {e["split"] for e in manifest} == {"train"}
  assert all(e["field"] == "output" and e["before"] != e["after"] for e in manifest)
  # neft_jax.evaluate on the run's checkpoint: the same label metrics, on the same splits.
  from neft_jax import evaluate
  config.eval.exact_match_examples, config.generate.max_new_tokens = 2, 2
  summary = evaluate.evaluate(config, workdir=str(workdir), out_dir=str(tmp_path / "eval"))
  for key in ("eval_accuracy", "eval_macro_f1", "test_accuracy", "test_macro_f1", "test_loss"):
    assert summary[key] == pytest.approx(last[key], abs=1e-6), key
  # eval.splits and eval.loss: only the test split, only its labels, the same numbers.
  config.eval.splits, config.eval.loss = ("test",), False
  labels_only = evaluate.evaluate(config, workdir=str(workdir), out_dir=str(tmp_path / "eval2"))
  assert not any(key.startswith("eval_") or key.endswith("_loss") for key in labels_only)
  for key in ("test_accuracy", "test_macro_f1"):
    assert labels_only[key] == summary[key], key


@pytest.mark.parametrize("row, message", [
    ({"text": "odd", "label": "neutral"}, "has label 'neutral', which is not in data.labels"),
    ({"label": 1}, "has no 'text' field (data.fields.text)"),
], ids=["label_not_in_set", "no_text"])
def test_bad_classification_data_stops_the_run_before_anything_is_written(
    demo_assets, tmp_path, row, message):
  from neft_jax import train
  path = reviews(tmp_path, 8)
  path.write_text(json.dumps(json.loads(path.read_text()) + [row]))
  workdir = tmp_path / "run"
  with pytest.raises(UserError, match=f"record 8 \\(counting from 0\\) {message}".replace(
      "(data", "\\(data").replace("text)", "text\\)")):
    train.train(classification_run_config(demo_assets, path), str(workdir))
  assert not workdir.exists() or os.listdir(workdir) == []
