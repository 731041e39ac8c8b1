"""neft_jax.analyze and the comparison behind it: a planted change is found where it was made."""

import dataclasses
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from neft_jax.analysis.compare import cka_sample, compare
from neft_jax.errors import UserError
from neft_jax.models import ModelConfig, hf_io, read_config

TINY = ModelConfig(family="llama", vocab_size=64, embed_dim=32, num_layers=4, num_heads=4,
                   num_kv_heads=2, head_dim=8, mlp_dim=64, max_positions=64)


def tiny_model(seed=0, cfg=TINY):
  """A decoder whose every weight is drawn from N(0, 0.2^2) (numpy: no init to compile)."""
  graphdef, abstract = hf_io.abstract_model(cfg)
  rng = np.random.default_rng(seed)
  return nnx.merge(graphdef, jax.tree.map(
      lambda a: jnp.asarray(rng.normal(0.0, 0.2, a.shape).astype(a.dtype)), abstract))


def probe_examples(count=6, seed=0):
  rng = np.random.default_rng(seed)
  return [rng.integers(1, TINY.vocab_size, size=int(n)) for n in rng.integers(5, 17, size=count)]


def with_changed_down_projection(model, layer):
  """A copy of `model` whose layer-`layer` MLP down-projection is perturbed, nothing else."""
  graphdef, state = nnx.split(model)
  state = jax.tree.map(lambda x: x, state)  # a copy
  kernel = state["layers"]["mlp"]["down"]["kernel"]
  noise = jax.random.normal(jax.random.key(7), kernel[...].shape[1:]) * 0.5
  kernel.set_value(kernel[...].at[layer].add(noise))
  return nnx.merge(graphdef, state)


def test_only_one_blocks_mlp_changed_shows_from_that_block_on():
  k = 1
  base = tiny_model()
  tuned = with_changed_down_projection(base, k)
  result = compare(base, {"tuned": tuned}, probe_examples(), rows=4, max_tokens=50, seed=3)
  weights = result.weights["tuned"]
  changed = {key for key, change in weights.tensors.items() if change.relative > 0}
  assert changed == {("layers.mlp.down.kernel", k)}
  assert weights.blocks[("mlp", k)].relative > 0 and weights.blocks[("attention", k)].relative == 0
  cka = result.cka_base["tuned"]  # hidden entry i is block i's input; block k's output: entry k + 1
  np.testing.assert_allclose(cka[:k + 1], 1.0, atol=1e-5)
  assert np.all(cka[k + 1:] < 1 - 1e-3), cka
  js = result.attention["tuned"]["js"]  # [layers, heads]: block k's attention precedes its MLP
  assert js.shape == (TINY.num_layers, TINY.num_heads)
  np.testing.assert_allclose(js[:k + 1], 0.0, atol=1e-7)
  assert np.all(js[k + 1:] > 1e-6), js
  np.testing.assert_allclose(result.attention["tuned"]["entropy_base"][:k + 1],
                             result.attention["tuned"]["entropy_tuned"][:k + 1], atol=1e-5)
  np.testing.assert_allclose(result.cka_to_last["base"][-1], 1.0, atol=1e-6)
  assert result.cka_tokens == 50 and result.examples == 6
  debiased = compare(base, {"tuned": tuned}, probe_examples(), rows=4, max_tokens=50, seed=3,
                     debiased=True).cka_base["tuned"]
  np.testing.assert_allclose(debiased[:k + 1], 1.0, atol=1e-5)
  assert np.all(debiased[k + 1:] < 1 - 1e-3) and not np.allclose(debiased, cka), debiased


def test_cka_sample_is_seeded_and_exact_in_size():
  lengths = [3, 7, 5]
  first, again = cka_sample(lengths, 8, seed=1), cka_sample(lengths, 8, seed=1)
  assert [m.shape[0] for m in first] == lengths and sum(m.sum() for m in first) == 8
  assert all(np.array_equal(a, b) for a, b in zip(first, again))
  assert all(m.all() for m in cka_sample(lengths, 100, seed=1))


def test_mismatching_shapes_and_empty_probe_are_user_errors():
  base = tiny_model()
  other = tiny_model(cfg=dataclasses.replace(TINY, mlp_dim=48))
  with pytest.raises(UserError, match="layers.mlp.down.kernel has shape"):
    compare(base, {"tuned": other}, probe_examples())
  with pytest.raises(UserError, match="probe set is empty"):
    compare(base, {"tuned": tiny_model(1)}, [])


# The command line on the shrunk demo ----------------------------------------------------

@pytest.fixture(scope="module")
def clean_run(demo_assets, shrunk_run, tmp_path_factory):
  """The shrunk demo without NEFTune, 3 steps (shrunk_run has NEFTune alpha=5)."""
  from neft_jax import train
  from tests.test_train import shrunk_config
  workdir = tmp_path_factory.mktemp("clean_run")
  config = shrunk_config(demo_assets, neftune__alpha=0.0, train__steps=3)
  train.train(config, str(workdir))
  return workdir


def test_cli_compares_a_base_with_two_runs_and_writes_every_file(demo_assets, shrunk_run,
                                                                 clean_run, tmp_path):
  import csv

  from neft_jax import analyze
  noisy, _ = shrunk_run
  out = tmp_path / "analysis"
  content = analyze.analyze(os.path.join(demo_assets, "model"), [str(noisy), str(clean_run)],
                            str(out), max_examples=10, max_tokens=200, seed=1)
  names = [os.path.basename(str(noisy)), os.path.basename(str(clean_run))]
  assert sorted(content["summary"]) == sorted(names)
  assert content["probe"] == "the held-out eval split" and content["examples"] == 10
  assert content["cka_tokens"] == 200 and content["tuned"][names[0]].endswith("(step 6)")
  for name in names:  # trained: every block moved, representations and attention too
    assert 0 < content["summary"][name]["mlp_weight_change"] < 1
    cka = content["cka_base"][name]
    assert len(cka) == 5 and all(0 < v <= 1 + 1e-6 for v in cka) and min(cka) < 0.9999
    js = np.array(content["attention"][name]["js"])
    assert js.shape == (4, 4) and np.all(js > 0) and np.all(js <= np.log(2))
  for png in ("weight_change.png", "cka_by_layer.png", "attention_js.png"):
    data = (out / png).read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 1000, png
  with open(out / "analysis.csv", newline="") as f:
    table = list(csv.DictReader(f))
  assert list(table[0]) == ["model", "layer", "module", "head", "metric", "value"]
  metrics = {row["metric"] for row in table}
  assert {"weight_relative_change", "weight_cosine", "cka_base", "cka_to_last", "js",
          "entropy_base", "entropy_tuned"} <= metrics
  summary = (out / "analysis.md").read_text()
  assert all(name in summary for name in names) and "attention JS" in summary
  record = json.loads((out / "provenance.json").read_text())  # each run's own record within
  assert record["inputs"] == {str(run): json.loads((run / "provenance.json").read_text())
                              for run in (noisy, clean_run)}
  assert list(record["models"]) == [os.path.join(demo_assets, "model")]


def test_cli_bad_input_is_one_error_line(demo_assets, shrunk_run, tmp_path):
  import subprocess
  import sys

  from neft_jax import analyze
  noisy, _ = shrunk_run
  base = os.path.join(demo_assets, "model")
  empty = tmp_path / "empty.json"
  empty.write_text("[]")
  with pytest.raises(UserError, match="probe set is empty"):
    analyze.analyze(base, [str(noisy)], str(tmp_path / "a"), probe=str(empty))
  with pytest.raises(UserError, match="--probe_labels needs data with labels"):  # instruction data
    analyze.analyze(base, [str(noisy)], str(tmp_path / "a"), probe_labels=True)
  other = tmp_path / "other_model"  # the demo's model with a narrower MLP
  from neft_jax.models import save_hf
  cfg = dataclasses.replace(read_config(base), mlp_dim=96)
  save_hf(tiny_model(cfg=cfg), str(other))
  with pytest.raises(UserError, match=r"tensor layers\.mlp\.down\.kernel has shape"):
    analyze.analyze(base, [str(other)], str(tmp_path / "b"))
  result = subprocess.run(  # a missing step, through the command line
      [sys.executable, "-m", "neft_jax.analyze", f"--base={base}", f"--tuned={noisy}",
       "--step=5", f"--out={tmp_path / 'c'}"], capture_output=True, text=True, timeout=300,
      cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
  assert result.returncode == 1, result.stderr
  errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
  assert len(errors) == 1 and "no checkpoint for step 5" in errors[0], result.stderr


def test_probe_data_is_text_or_instruction_records(demo_assets, shrunk_run, tmp_path):
  from neft_jax import analyze, run
  from neft_jax.data import pipeline
  from neft_jax.data.tokenize import start_token
  noisy, _ = shrunk_run
  config = run.load_config(noisy)
  tokenizer = pipeline.load_tokenizer(os.path.join(demo_assets, "model"))
  bos = start_token(read_config(os.path.join(demo_assets, "model")), tokenizer)
  lines = tmp_path / "probe.txt"
  lines.write_text("sort the letters of cab\n\nreverse the word stone\nadd 2 and 3\n")
  examples, source = analyze.probe_examples(str(lines), config, noisy, tokenizer, bos,
                                            max_examples=8, seed=0, max_length=128)
  assert source == str(lines) and len(examples) == 3  # the blank line is skipped
  assert all(ids[0] == bos and len(ids) > 2 for ids in examples)
  records = os.path.join(demo_assets, "data", "eval.json")  # instruction records
  examples, _ = analyze.probe_examples(records, config, noisy, tokenizer, bos, max_examples=5,
                                       seed=0, max_length=16)
  assert len(examples) == 5 and max(len(ids) for ids in examples) == 16
  labelled = tmp_path / "labelled.csv"  # classification rows: the prompt holds the text only
  labelled.write_text("text,label\ngood film,positive\ndull plot,negative\nfine cast,1\n")
  classification = config.copy_and_resolve_references()
  with classification.unlocked():
    classification.data.format, classification.data.labels = "classification", ("negative", "positive")
  examples, labels, _ = analyze.labeled_probe(str(labelled), classification, noisy, tokenizer, bos,
                                              max_examples=8, seed=0, max_length=128)
  assert labels.tolist() == [1, 0, 1] and len(examples) == 3
  prompt = tokenizer.decode(examples[0])  # ends where the label would begin
  assert "good film" in prompt and prompt.rstrip().endswith("### Response:"), prompt


def test_linear_probe_reads_a_planted_label_and_not_noise():
  from neft_jax.analysis.probes import probe_accuracy
  rng = np.random.default_rng(0)
  labels = rng.integers(0, 3, size=120)
  features = rng.normal(size=(120, 10))
  features[np.arange(120), labels] += 3.0  # each label along its own direction
  assert probe_accuracy(features, labels, seed=1) > 0.9
  assert probe_accuracy(rng.normal(size=(120, 10)), labels, seed=1) < 0.6  # chance is 1/3
  with pytest.raises(UserError, match="at least 2 labels"):
    probe_accuracy(features, np.zeros(120, int))


def test_probes_per_layer_of_every_model(tmp_path):
  from neft_jax.analysis.report import write_report
  base = tiny_model()
  examples = probe_examples(count=12)
  labels = np.array([int(ids[0] >= TINY.vocab_size // 2) for ids in examples])
  result = compare(base, {"tuned": tiny_model(1)}, examples, rows=4, max_tokens=50, labels=labels)
  assert set(result.probe_accuracy) == {"base", "tuned"}
  for accuracy in result.probe_accuracy.values():
    assert accuracy.shape == (TINY.num_layers + 1,) and np.all((0 <= accuracy) & (accuracy <= 1))
  paths = write_report(result, str(tmp_path), {"base": "random", "tuned": {"tuned": "random"}})
  assert os.path.join(str(tmp_path), "probe_accuracy.png") in paths
  table = (tmp_path / "analysis.csv").read_text().splitlines()
  assert sum(",probe_accuracy," in line for line in table) == 2 * (TINY.num_layers + 1)
