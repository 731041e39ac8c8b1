"""The main job end to end: a shrunk demo, resume, corrupt checkpoints, bad input."""

import gc
import json
import logging
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

from configs import demo as demo_config
from neft_jax import checkpoint, provenance, train
from neft_jax.errors import UserError


def shrunk_config(assets, **changes):
  """configs/demo.py made small: a few steps on a few hundred examples."""
  config = demo_config.get_config()
  config.demo.train_examples, config.demo.eval_examples = 400, 24
  config.model.path = os.path.join(assets, "model")
  config.data.path = os.path.join(assets, "data", "train.json")
  config.data.eval_path = os.path.join(assets, "data", "eval.json")
  config.train.steps, config.train.batch_size, config.train.log_every = 6, 8, 1
  config.checkpoint.every_steps = 3
  config.eval.exact_match_examples, config.eval.max_new_tokens = 8, 3
  config.train.peak_tflops = 0.05  # a made-up CPU peak, so MFU is logged
  for key, value in changes.items():
    section, name = key.split("__")
    setattr(config[section], name, value)
  return config


@pytest.fixture
def assets(demo_assets):
  return demo_assets


@pytest.fixture
def straight_run(shrunk_run):
  """The session's shrunk demo run (tests/conftest.py), trained once for every module."""
  return shrunk_run


def losses(workdir):
  lines = [json.loads(l) for l in open(os.path.join(workdir, "metrics.jsonl"))]
  return {l["step"]: l["loss"] for l in lines if "loss" in l}


def test_shrunk_demo_writes_metrics_config_tensorboard_checkpoints(straight_run):
  workdir, result = straight_run
  assert result["steps"] == 6
  lines = [json.loads(l) for l in open(workdir / "metrics.jsonl")]
  step_lines = [l for l in lines if "loss" in l]
  assert [l["step"] for l in step_lines] == [1, 2, 3, 4, 5, 6]
  for line in step_lines:
    assert {"loss", "learning_rate", "grad_norm", "tokens_per_sec", "mfu"} <= set(line)
    assert np.isfinite(line["loss"]) and line["tokens_per_sec"] > 0 and line["mfu"] > 0
  evals = [l for l in lines if "eval_loss" in l]
  assert [l["step"] for l in evals] == [0, 6]
  assert {"eval_token_accuracy", "eval_exact_match"} <= set(evals[0])
  assert json.loads((workdir / "config.json").read_text())["neftune"]["alpha"] == 5.0
  record = json.loads((workdir / "provenance.json").read_text())  # beside config.json
  assert record["config"] == json.loads((workdir / "config.json").read_text())
  train_file = record["config"]["data"]["path"]
  assert record["data"]["data.path"] == {train_file: provenance.file_sha256(train_file)}
  assert record["mesh"] and record["models"][record["config"]["model"]["path"]]["config_sha256"]
  assert any(f.startswith("events.out.tfevents") for f in os.listdir(workdir / "tensorboard"))
  assert sorted(os.listdir(workdir / "checkpoints")) == ["3", "6"]
  assert result["after"]["eval_loss"] < result["before"]["eval_loss"]


def test_stopped_and_resumed_run_matches_straight_run(straight_run, assets, tmp_path):
  straight_dir, _ = straight_run
  first = train.train(shrunk_config(assets), str(tmp_path), stop_after=3)
  assert first["steps"] == 3 and sorted(os.listdir(tmp_path / "checkpoints")) == ["3"]
  second = train.train(shrunk_config(assets), str(tmp_path))
  assert second["steps"] == 6
  assert losses(tmp_path) == losses(straight_dir)  # bitwise: same data, noise and updates


# Orbax's failed read of the damaged step leaves an asyncio callback behind.
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_corrupt_latest_checkpoint_is_skipped(straight_run, tmp_path, caplog):
  straight_dir, result = straight_run
  shutil.copytree(straight_dir / "checkpoints", tmp_path / "checkpoints")
  state_dir = tmp_path / "checkpoints" / "6" / "params"
  for root, _, files in os.walk(state_dir):  # damage every data file of step 6
    for name in files:
      if "manifest" in name or name.startswith("d") or "ocdbt" in root:
        open(os.path.join(root, name), "wb").close()
  import jax
  state = result["state"]
  abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), state)
  checkpoints = checkpoint.Checkpoints(str(tmp_path / "checkpoints"))
  with caplog.at_level(logging.WARNING):
    restored = checkpoints.restore_latest(abstract, jax.random.key(0))
  checkpoints.close()
  gc.collect()  # the callback Orbax left is reported here, where it is expected, not later
  assert restored is not None and int(restored[0].step) == 3
  assert "checkpoint 6" in caplog.text and "could not be restored" in caplog.text


def write_json(path, value):
  with open(path, "w") as f:
    f.write(value if isinstance(value, str) else json.dumps(value))
  return str(path)


@pytest.mark.parametrize("case", ["invalid_json", "missing_field", "empty", "max_length",
                                  "batch_devices", "workdir", "no_model", "no_data"])
def test_bad_input_fails_with_one_line_and_no_checkpoint(assets, straight_run, tmp_path, case):
  good = {"instruction": "Add the two numbers.", "input": "1 + 2", "output": "3"}
  config = shrunk_config(assets)
  workdir = tmp_path / "run"
  expected = {
      "invalid_json": "invalid JSON at line 1",
      "missing_field": "record 1 (counting from 0) has no 'output' field",
      "empty": "holds no records",
      "max_length": "data.max_length=16 is shorter than the prompt template",
      "batch_devices": "do not divide over the 8 data-parallel devices",
      "workdir": "cannot be written",
      "no_model": "point model.path at a folder",
      "no_data": "data.path=",
  }[case]
  if case == "invalid_json":
    config.data.path = write_json(tmp_path / "bad.json", '[{"instruction": "a" "output": "b"}]')
  elif case == "missing_field":
    config.data.path = write_json(tmp_path / "missing.json", [good, {"instruction": "x"}])
  elif case == "empty":
    config.data.path = write_json(tmp_path / "empty.json", [])
  elif case == "max_length":
    config.data.max_length = 16
  elif case == "batch_devices":
    config.train.batch_size = 12
  elif case == "no_model":
    del config["demo"]  # which would make the model
    config.model.path = str(tmp_path / "no_such_model")
  elif case == "no_data":
    config.data.path = "someone/no-such-dataset"  # not local, and no hub here
  elif case == "workdir":
    workdir = tmp_path / "a_file" / "run"
    (tmp_path / "a_file").write_text("not a folder")
  with pytest.raises(UserError) as info:
    train.train(config, str(workdir))
  message = str(info.value)
  assert expected in message and "\n" not in message
  if case == "missing_field":
    assert str(tmp_path / "missing.json") in message
  assert not os.path.exists(workdir / "checkpoints")


def test_command_line_error_is_one_line_with_nonzero_exit(assets, straight_run, tmp_path):
  data = write_json(tmp_path / "bad.json", "[{oops")
  repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  result = subprocess.run(  # the session's demo model, already made (straight_run)
      [sys.executable, "-m", "neft_jax.train", "--config=configs/demo.py",
       f"--workdir={tmp_path / 'run'}", f"--config.data.path={data}",
       f"--config.model.path={os.path.join(assets, 'model')}",
       "--config.demo.train_examples=50", "--config.demo.eval_examples=5"],
      cwd=repo, capture_output=True, text=True, timeout=300,
      env=os.environ | {"JAX_PLATFORMS": "cpu"})
  assert result.returncode == 1
  error_lines = [l for l in result.stderr.splitlines() if l.startswith("error:")]
  assert len(error_lines) == 1 and "invalid JSON" in error_lines[0] and "bad.json" in error_lines[0]
  assert not os.path.exists(tmp_path / "run" / "checkpoints")


def test_misspelt_config_key_fails_with_a_suggestion(tmp_path):
  repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  result = subprocess.run(
      [sys.executable, "-m", "neft_jax.train", "--config=configs/demo.py",
       f"--workdir={tmp_path}", "--config.neftune.alpah=3"],
      cwd=repo, capture_output=True, text=True, timeout=120, env=os.environ | {"JAX_PLATFORMS": "cpu"})
  assert result.returncode != 0
  assert "alpah" in result.stderr and "alpha" in result.stderr
