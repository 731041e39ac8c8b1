"""Plain-text training (data.template="text"): the loss on every token, packing, chunking,
noise, a run from scratch that resumes exactly, evaluation, and bad input."""

import json
import logging
import math
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import pretrain_small
from neft_jax import config_check, defaults, evaluate, neftune, steps, train
from neft_jax.data import batching, pipeline, sources, templates
from neft_jax.demo import train_tokenizer
from neft_jax.errors import UserError
from neft_jax.models.transformer import default_positions
from neft_jax.study.runner import compilation_cache

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
WORDS = ("the quick brown fox jumps over the lazy dog while a stitch in time saves nine and "
         "many hands make light work").split()


def sentence(index: int, words: int) -> str:
  return " ".join(WORDS[(index * 7 + k * 3) % len(WORDS)] for k in range(words))


@pytest.fixture(scope="module")
def tokenizer():
  """Byte-level BPE with <s> (0) and </s> (1), as configs/pretrain_small.py makes one."""
  return train_tokenizer([sentence(i, 12) for i in range(40)], 300, 2)


def data_config(path, **changes):
  config = defaults.base().data
  config.path, config.template, config.max_length = str(path), "text", 64
  for key, value in changes.items():
    config[key] = value
  return config


def encoded(tokenizer, document):
  """[BOS] document EOS, as the tokenizer spells the document on its own."""
  ids = tokenizer(document, add_special_tokens=False)["input_ids"]
  return [tokenizer.bos_token_id, *ids, tokenizer.eos_token_id]


def packed_rows(data, max_length, batch_size=1):
  """Every row of one packed epoch: input_ids, segment_ids, loss_mask [rows, length]."""
  plan = batching.plan_epoch(data.lengths, max_length=max_length, packing=True, seed=0, epoch=0,
                             batch_size=batch_size)
  rows = [batching.make_row(data, indices, max_length) for indices in plan]
  return plan, {key: np.stack([row[key] for row in rows]) for key in rows[0]}


def expected_targets(segment_ids):
  """Real positions whose next position is in the same segment: all but each segment's last."""
  following = np.concatenate([segment_ids[:, 1:], np.zeros_like(segment_ids[:, :1])], axis=1)
  return (segment_ids != 0) & (following == segment_ids)


# The loss on every token -----------------------------------------------------------------

def _write_sources(tmp_path):
  docs = [sentence(i, 3 + i % 5) for i in range(6)]
  (tmp_path / "docs.txt").write_text(docs[0] + "\n\n  \n" + "\n".join(docs[1:]) + "\n")
  (tmp_path / "records.jsonl").write_text("".join(json.dumps({"body": d}) + "\n" for d in docs))
  records = [{"instruction": sentence(i, 3), "input": sentence(i + 1, 2) if i % 2 else "",
              "output": sentence(i + 2, 4)} for i in range(6)]
  (tmp_path / "alpaca.json").write_text(json.dumps(records))
  flattened = ["\n\n".join(p for p in (r["instruction"], r["input"], r["output"]) if p)
               for r in records]
  return {"docs.txt": ({}, docs), "records.jsonl": ({"fields": {"text": "body"}}, docs),
          "alpaca.json": ({}, flattened)}


def test_every_token_is_predicted_for_txt_records_and_flattened_instructions(tmp_path, tokenizer):
  for name, (changes, documents) in _write_sources(tmp_path).items():
    config = data_config(tmp_path / name)
    if "fields" in changes:
      config.fields.text = changes["fields"]["text"]
    data = pipeline.tokenized_splits(config, tokenizer, 0, bos=tokenizer.bos_token_id).train
    assert [r.input for r in data.records] == documents, name  # blank lines skipped, the join
    assert [list(ids) for ids in data.input_ids] == [encoded(tokenizer, d) for d in documents]
    for mask in data.loss_masks:  # every token but the first is a target
      assert not mask[0] and mask[1:].all()
    _, rows = packed_rows(data, 64)
    targets = np.asarray(steps.target_mask({k: jnp.asarray(v) for k, v in rows.items()}))
    np.testing.assert_array_equal(targets, expected_targets(rows["segment_ids"]))
    # The loss counts one prediction per token after the first, EOS included.
    assert targets.sum() == sum(len(ids) - 1 for ids in data.input_ids)


def test_flatten_joins_instruction_input_and_output_with_a_blank_line():
  record = sources.Record("Add the numbers.", "1 + 2", "3")
  assert templates.flatten(record) == "Add the numbers.\n\n1 + 2\n\n3"
  assert templates.flatten(sources.Record("Name a color.", "", "Blue")) == "Name a color.\n\nBlue"
  assert templates.prompt(record, "text") + record.output == templates.flatten(record)
  assert templates.prompt(sources.Record("", "a plain document", ""), "text") == "a plain document"


def test_packing_segments_positions_and_neftune_length_per_document(tmp_path, tokenizer):
  (tmp_path / "docs.txt").write_text("\n".join(sentence(i, 2 + i % 6) for i in range(30)))
  data = pipeline.tokenized_splits(data_config(tmp_path / "docs.txt", packing=True), tokenizer, 0,
                                   bos=tokenizer.bos_token_id).train
  plan, rows = packed_rows(data, 64)
  assert any(len(indices) > 2 for indices in plan)  # rows really hold several documents
  positions = np.asarray(default_positions(rows["segment_ids"].shape,
                                           segment_ids_bt=jnp.asarray(rows["segment_ids"])))
  lengths = np.asarray(neftune.sequence_lengths(rows["segment_ids"].shape,
                                                segment_ids=jnp.asarray(rows["segment_ids"])))
  for row, indices in enumerate(plan):
    start = 0
    for segment, index in enumerate(indices, start=1):
      ids = data.input_ids[index]
      span = slice(start, start + len(ids))
      np.testing.assert_array_equal(rows["input_ids"][row, span], ids)
      assert (rows["segment_ids"][row, span] == segment).all()
      np.testing.assert_array_equal(positions[row, span], np.arange(len(ids)))
      assert (lengths[row, span] == len(ids)).all()  # NEFTune's L: the document's own length
      start += len(ids)
    assert (rows["segment_ids"][row, start:] == 0).all()


# Long documents ----------------------------------------------------------------------------

def test_long_documents_are_split_into_chunks_that_predict_every_token_once(tmp_path, tokenizer,
                                                                            caplog):
  long_docs = [sentence(i, 40 + 9 * i) for i in range(3)]
  (tmp_path / "docs.txt").write_text("\n".join([sentence(9, 3), *long_docs, sentence(8, 4)]))
  max_length = 16
  with caplog.at_level(logging.INFO, logger="neft_jax.data.pipeline"):
    data = pipeline.tokenized_splits(data_config(tmp_path / "docs.txt", max_length=max_length),
                                     tokenizer, 0, bos=tokenizer.bos_token_id).train
  full = [encoded(tokenizer, d) for d in long_docs]
  chunk_counts = [math.ceil((len(ids) - 1) / (max_length - 1)) for ids in full]
  assert min(len(ids) for ids in full) > 2 * max_length
  assert data.num_split == 3 and data.num_chunks == sum(chunk_counts)
  assert len(data) == 2 + sum(chunk_counts) and data.num_dropped == 0
  assert (f"train: 5 documents of plain text, 3 longer than data.max_length=16 split into "
          f"{sum(chunk_counts)} chunks, 0 dropped (no token to predict): {len(data)} examples"
          in caplog.text)
  start = 1
  for ids, count in zip(full, chunk_counts):
    chunks = [list(c) for c in data.input_ids[start:start + count]]
    masks = data.loss_masks[start:start + count]
    start += count
    assert all(len(c) <= max_length for c in chunks) and all(len(c) >= 2 for c in chunks)
    for before, after in zip(chunks, chunks[1:]):
      assert after[0] == before[-1]  # one token of overlap, as context
    # The predicted tokens of the chunks, in order, are the document's tokens after the first.
    predicted = [t for chunk, mask in zip(chunks, masks) for t, m in zip(chunk, mask) if m]
    assert predicted == ids[1:]
    # BOS opens only the first chunk, EOS ends only the last.
    assert [c[0] == ids[0] for c in chunks] == [True] + [False] * (count - 1)
    assert [c.count(tokenizer.eos_token_id) for c in chunks] == [0] * (count - 1) + [1]


# Noise -----------------------------------------------------------------------------------------

def test_typo_noise_changes_the_text_field_and_label_noise_is_refused(tmp_path, tokenizer):
  (tmp_path / "docs.txt").write_text("\n".join(sentence(i, 8) for i in range(20)))
  config = data_config(tmp_path / "docs.txt")
  config.noise.kind, config.noise.rate, config.noise.seed = "typo", 0.3, 1
  data = pipeline.tokenized_splits(config, tokenizer, 0, bos=tokenizer.bos_token_id)
  manifest = data.noise.manifest
  assert manifest and {entry["field"] for entry in manifest} == {"text"}
  changed = {entry["index"]: entry["after"] for entry in manifest}
  assert all(data.train.records[i].input == after for i, after in changed.items())
  config.noise.kind = "label"
  with pytest.raises(UserError, match="data.noise.kind='label' needs labels, but "
                                      "data.template='text' trains on plain text"):
    pipeline.tokenized_splits(config, tokenizer, 0, bos=tokenizer.bos_token_id)


# Config checks and bad input -------------------------------------------------------------------

@pytest.mark.parametrize("key, value, message", [
    ("data.template", "txt", "data.template='txt' is not one of 'alpaca', 'chat', 'plain_chat', 'text'"),
    ("eval.exact_match", True, "eval.exact_match=True needs prompts to answer, but "
                               "data.template='text' has none; set eval.exact_match=False"),
    ("data.noise.kind", "label", "data.noise.kind='label' needs labels, but data.template='text'"),
    ("data.format", "classification", "data.template='text' trains on plain text, but "
                                      "data.format='classification'"),
])
def test_config_check_names_what_plain_text_cannot_do(key, value, message):
  config = pretrain_small.get_config()
  config_check.validate(config)
  section, name = key.rsplit(".", 1)
  target = config
  for part in section.split("."):
    target = target[part]
  target[name] = value
  if name == "format":
    config.data.labels = ("negative", "positive")
  assert any(message in problem for problem in config_check.problems(config))


def test_every_pretrain_key_has_a_check():
  def leaf_keys(config, prefix=""):
    for name, value in config.items():
      if hasattr(value, "items"):
        yield from leaf_keys(value, f"{prefix}{name}.")
      else:
        yield prefix + name
  keys = set(leaf_keys(pretrain_small.get_config().pretrain, "pretrain."))
  assert keys and keys <= set(config_check.rules())
  config = pretrain_small.get_config()
  config.pretrain.model.num_kv_heads = 3
  assert config_check.problems(config) == [
      "pretrain.model.num_heads=4 is not a multiple of pretrain.model.num_kv_heads=3"]


def tiny_pretrain_config(tmp_path, corpus, **changes):
  """configs/pretrain_small.py shrunk: a 2-layer width-32 model, 4 steps of 4 rows of 32."""
  config = pretrain_small.get_config()
  config.pretrain.vocab_size = 300
  config.pretrain.model.update(embed_dim=32, num_layers=2, num_heads=2, num_kv_heads=1,
                               head_dim=16, mlp_dim=64, max_positions=64)
  config.model.path = str(tmp_path / "model")
  config.data.path = str(corpus)
  config.data.eval_size, config.data.max_length = 0, 32
  config.train.steps, config.train.batch_size, config.train.log_every = 4, 4, 1
  config.train.eval_every = 0
  config.checkpoint.every_steps = 2
  config.generate.max_new_tokens = 8
  config.neftune.alpha = 5.0  # noise in the step too, so resuming must replay it
  config.mesh.num_devices = 1
  for key, value in changes.items():
    section, name = key.split("__")
    config[section][name] = value
  return config


@pytest.mark.parametrize("content, message", [
    ("\n  \n\n", "data.path='{path}': plain-text data with no text (every document is empty); "
                 "give a file with at least one non-blank document"),
    ('{"text": "fine"}\n{"body": "no text"}\n',
     "{path}: record 1 (counting from 0) has no 'text' field; give every record a text in 'text' "
     "(data.fields.text), or give instruction records ('instruction' and 'output')"),
], ids=["all_blank", "no_text_field"])
def test_bad_text_source_stops_the_run_before_anything_is_made(tmp_path, content, message):
  corpus = tmp_path / ("corpus.txt" if "text" not in content else "corpus.jsonl")
  corpus.write_text(content)
  with pytest.raises(UserError) as info:
    train.train(tiny_pretrain_config(tmp_path, corpus), str(tmp_path / "run"))
  assert message.format(path=corpus) in str(info.value)
  assert not (tmp_path / "model").exists() and not (tmp_path / "run" / "checkpoints").exists()


def test_cli_unset_corpus_is_one_error_line(tmp_path):
  result = subprocess.run(
      [sys.executable, "-m", "neft_jax.train", "--config=configs/pretrain_small.py",
       f"--workdir={tmp_path / 'run'}"], cwd=REPO, capture_output=True, text=True, timeout=120,
      env=os.environ | {"JAX_PLATFORMS": "cpu"})
  assert result.returncode == 1, result.stderr[-2000:]
  errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
  assert errors == ["error: data.path is not set; give a .txt file (one document a line), a json, "
                    "jsonl, csv or parquet file or folder with a text field, or a hub dataset id"]
  assert not (tmp_path / "run" / "pretrain").exists()


# A run from scratch that resumes exactly, and its evaluation ------------------------------------

def losses(workdir):
  lines = [json.loads(line) for line in open(os.path.join(workdir, "metrics.jsonl"))]
  return {line["step"]: line["loss"] for line in lines if "loss" in line}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
  path = tmp_path_factory.mktemp("corpus") / "corpus.txt"
  path.write_text("\n".join(sentence(i, 3 + i % 11) for i in range(60)) + "\n")
  return path


def test_text_run_from_scratch_resumes_exactly_and_evaluates(tmp_path, corpus, capsys):
  # The three runs share compiled steps through a persistent cache, as a study's cells do.
  with compilation_cache(str(tmp_path / "jax_cache")):
    _resume_and_evaluate(tmp_path, corpus, capsys)


def _resume_and_evaluate(tmp_path, corpus, capsys):
  straight = train.train(tiny_pretrain_config(tmp_path, corpus), str(tmp_path / "straight"))
  assert straight["steps"] == 4 and (tmp_path / "model" / "config.json").exists()
  first = train.train(tiny_pretrain_config(tmp_path, corpus), str(tmp_path / "resumed"),
                      stop_after=2)
  assert first["steps"] == 2
  train.train(tiny_pretrain_config(tmp_path, corpus), str(tmp_path / "resumed"))
  straight_losses = losses(tmp_path / "straight")
  assert sorted(straight_losses) == [1, 2, 3, 4]
  assert all(np.isfinite(list(straight_losses.values())))
  assert losses(tmp_path / "resumed") == straight_losses  # bitwise: same chunks, noise, updates

  # Evaluated on held-out documents: loss, perplexity and token accuracy; no generations.
  config = tiny_pretrain_config(tmp_path, corpus, data__eval_size=8)
  summary = evaluate.evaluate(config, workdir=str(tmp_path / "straight"),
                              out_dir=str(tmp_path / "eval"))
  assert summary["eval_perplexity"] == pytest.approx(math.exp(summary["eval_loss"]))
  assert 0 <= summary["eval_token_accuracy"] <= 1 and summary["step"] == 4
  assert summary["generation"] == "skipped: plain text has no prompts"
  assert "no generations or response metrics (give --prompts for them)" in capsys.readouterr().out
  assert sorted(os.listdir(tmp_path / "eval")) == ["provenance.json", "summary.json"]
