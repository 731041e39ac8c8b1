"""provenance.json: the checkout, versions, devices, config and content hashes of a command's inputs."""

import hashlib
import importlib.metadata
import json
import logging
import os
import platform
import subprocess
import sys

import jax
import ml_collections
import numpy as np
import pytest

from neft_jax import defaults, provenance, sharding
from neft_jax.errors import UserError
from neft_jax.models import weight_files
from neft_jax.study import runner, spec
from tests.test_study import smoke_config

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def sha256(path) -> str:
  return hashlib.sha256(open(path, "rb").read()).hexdigest()


def small_config(**data) -> ml_collections.ConfigDict:
  config = defaults.base()
  config.model.path = "gpt2"
  for key, value in data.items():
    config.data[key] = value
  return config


def write_model(folder, shape=(2, 3)):
  """A checkpoint folder: config.json and one model.safetensors of one tensor."""
  os.makedirs(folder, exist_ok=True)
  with open(os.path.join(folder, "config.json"), "w") as f:
    json.dump({"model_type": "gpt2", "n_layer": 1}, f)
  spec_ = weight_files.TensorSpec("wte.weight", np.dtype(np.float32), shape)
  weight_files.write_safetensors(os.path.join(folder, weight_files.SAFE_SINGLE), [spec_],
                                 lambda name: np.ones(shape, np.float32))
  return str(folder)


def test_record_names_this_checkout_versions_devices_config_and_command(tmp_path, monkeypatch):
  import huggingface_hub
  monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path))  # gpt2 not cached
  config = small_config()
  mesh, _ = sharding.mesh_from_config(config)
  record = json.loads(json.dumps(provenance.collect(config, mesh=mesh)))  # as written
  head = subprocess.run(["git", "-C", REPO, "rev-parse", "HEAD"], capture_output=True, text=True)
  if head.returncode == 0:  # the suite runs from a checkout
    assert record["git"]["commit"] == head.stdout.strip() and len(record["git"]["commit"]) == 40
    assert all(c in "0123456789abcdef" for c in record["git"]["commit"])
    assert isinstance(record["git"]["dirty"], bool)
  else:
    assert record["git"] == {"commit": None, "dirty": None}
  for package in provenance.PACKAGES:
    try:
      expected = importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
      expected = None
    assert record["versions"][package] == expected, package
  assert record["versions"]["jax"] == jax.__version__
  assert record["versions"]["python"] == platform.python_version()
  assert record["devices"] == {"platform": jax.default_backend(),
                               "kind": jax.devices()[0].device_kind,
                               "count": jax.device_count(), "process_count": jax.process_count()}
  assert record["mesh"] == dict(mesh.shape)
  assert record["config"] == json.loads(config.to_json_best_effort())
  again = defaults.base()
  again.update(record["config"])
  assert again.to_json_best_effort() == config.to_json_best_effort()  # the config round-trips
  assert record["command"] == sys.argv and record["inputs"] == {}
  assert record["models"] == {"gpt2": {"hub": "gpt2", "revision": None}}


def test_outside_a_checkout_or_without_git_the_commit_is_null(tmp_path, monkeypatch):
  (tmp_path / "neft_jax").mkdir()
  assert provenance.git_state(str(tmp_path / "neft_jax")) == {"commit": None, "dirty": None}
  monkeypatch.setenv("PATH", str(tmp_path))  # no git on the path
  assert provenance.git_state() == {"commit": None, "dirty": None}


def test_data_files_and_folders_are_hashed_and_a_change_changes_the_hash(tmp_path):
  train = tmp_path / "train.json"
  train.write_text('[{"instruction": "a", "output": "b"}]')
  (tmp_path / "held_out").mkdir()
  for name in ("b.jsonl", "a.jsonl"):
    (tmp_path / "held_out" / name).write_text(f'{{"instruction": "{name}", "output": "x"}}\n')
  prompts = tmp_path / "prompts.json"
  prompts.write_text('[{"instruction": "q"}]')
  config = small_config(path="{workdir}/train.json", eval_path=str(tmp_path / "held_out"),
                        test_path="tatsu-lab/alpaca", exclude=(str(prompts),))
  record = provenance.collect(config, workdir=tmp_path, data={"--prompts": str(prompts),
                                                              "--probe": None})
  data = record["data"]
  assert data["data.path"] == {str(train): sha256(train)}
  assert list(data["data.eval_path"]) == [str(tmp_path / "held_out" / n)
                                          for n in ("a.jsonl", "b.jsonl")]
  assert data["data.test_path"] == {"hub": "tatsu-lab/alpaca"}
  assert data["--prompts"] == data["data.exclude"] == {str(prompts): sha256(prompts)}
  assert "--probe" not in data
  train.write_text('[{"instruction": "a", "output": "c"}]')
  changed = provenance.collect(config, workdir=tmp_path)["data"]
  assert changed["data.path"][str(train)] != data["data.path"][str(train)]
  assert changed["data.eval_path"] == data["data.eval_path"]
  missing = provenance.collect(small_config(path=str(tmp_path / "gone.json")))["data"]
  assert missing == {"data.path": None}


def test_model_folder_hashes_its_config_header_and_sizes_and_a_cached_hub_id_its_revision(
    tmp_path, monkeypatch):
  folder = write_model(tmp_path / "model")
  record = provenance.collect(small_config(), models=[folder])["models"][folder]
  weights = os.path.join(folder, weight_files.SAFE_SINGLE)
  assert record == {
      "config_sha256": sha256(os.path.join(folder, "config.json")),
      "index_sha256": hashlib.sha256(weight_files.read_safetensors_header_bytes(weights)).hexdigest(),
      "files": {weight_files.SAFE_SINGLE: os.path.getsize(weights)}}
  reshaped = provenance.model_fingerprint(write_model(tmp_path / "other", shape=(3, 2)))
  assert reshaped["index_sha256"] != record["index_sha256"]
  assert reshaped["config_sha256"] == record["config_sha256"]
  # A sharded checkpoint: its index file's hash.
  index = {"metadata": {}, "weight_map": {"wte.weight": weight_files.SAFE_SINGLE}}
  (tmp_path / "model" / weight_files.SAFE_INDEX).write_text(json.dumps(index))
  assert provenance.model_fingerprint(folder)["index_sha256"] == sha256(
      tmp_path / "model" / weight_files.SAFE_INDEX)
  # A hub id the Hugging Face cache holds: its revision, read offline.
  import huggingface_hub
  revision = "0123456789abcdef0123456789abcdef01234567"
  repo = tmp_path / "hub" / "models--owner--tiny"
  write_model(repo / "snapshots" / revision)
  (repo / "refs").mkdir()
  (repo / "refs" / "main").write_text(revision)
  monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
  cached = provenance.model_fingerprint("owner/tiny")
  assert cached["hub"] == "owner/tiny" and cached["revision"] == revision
  assert cached["config_sha256"] == record["config_sha256"]
  assert provenance.model_fingerprint("owner/absent") == {"hub": "owner/absent", "revision": None}
  assert provenance.model_fingerprint(str(tmp_path / "no_such_folder")) is None


def test_inputs_are_copied_and_nothing_fails_the_command(tmp_path, monkeypatch, caplog):
  run_dir, bare = tmp_path / "run", tmp_path / "bare"
  run_dir.mkdir()
  bare.mkdir()
  provenance.write(run_dir, provenance.collect(small_config()))
  record = provenance.collect(small_config(), inputs=[run_dir, bare, None])
  assert record["inputs"] == {str(run_dir): json.loads((run_dir / "provenance.json").read_text()),
                              str(bare): None}

  def broken():
    raise RuntimeError("no metadata")

  monkeypatch.setattr(provenance, "versions", broken)
  with caplog.at_level(logging.WARNING):
    record = provenance.collect(small_config())
    assert record["versions"] is None and "the package versions" in caplog.text
    (tmp_path / "a_file").write_text("")
    provenance.write(tmp_path / "a_file" / "out", record)  # a folder that cannot be made
  assert "could not write provenance.json" in caplog.text


def test_a_study_start_writes_its_provenance(tmp_path, monkeypatch):
  config = smoke_config()
  config.study.base.data.path = "{study}/train.json"
  (tmp_path / "train.json").write_text("[]")
  study = spec.from_config(config)
  monkeypatch.setattr(runner, "prepare_shared_assets", lambda study, study_dir: None)
  monkeypatch.setattr(runner, "run_cell", lambda study, cell, study_dir: {"seconds": 0.0})
  monkeypatch.setattr(runner.summary, "summarize", lambda study_dir, study: [])
  with pytest.raises(UserError, match="holds no study yet"):
    runner.run(study, str(tmp_path / "none"), summarize_only=True)
  assert not (tmp_path / "none").exists()
  runner.run(study, str(tmp_path), cache_dir="")
  record = json.loads((tmp_path / "provenance.json").read_text())
  assert record["config"]["data"]["path"] == str(tmp_path / "train.json")
  assert record["data"]["data.path"] == {str(tmp_path / "train.json"): sha256(tmp_path / "train.json")}
  assert record["mesh"] is None and set(record) >= {"git", "versions", "devices", "command"}
