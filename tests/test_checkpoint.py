"""Resuming: a checkpoint that does not fit the run stops it and changes nothing;
a partial or corrupt one is skipped for the one before it."""

import gc
import hashlib
import json
import logging
import os
import re
import shutil
import subprocess
import sys

import jax
import numpy as np
import pytest

from neft_jax import checkpoint, train
from neft_jax.errors import UserError
from tests.test_train import shrunk_config

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture
def small_config(demo_assets):
  """shrunk_config with changes keyed "section.name"."""
  def make(**changes):
    config = shrunk_config(demo_assets)
    for key, value in changes.items():
      section, name = key.split(".")
      setattr(config[section], name, value)
    return config
  return make


@pytest.fixture
def trained(shrunk_run):
  """The session's 6-step shrunk demo run, with checkpoints at steps 3 and 6."""
  workdir, result = shrunk_run
  assert sorted(os.listdir(workdir / "checkpoints")) == ["3", "6"]
  return workdir, result


@pytest.fixture
def workdir(trained, tmp_path):
  """A copy of the trained run's workdir, free to damage."""
  copy = tmp_path / "run"
  shutil.copytree(trained[0], copy)
  return copy


def file_hashes(folder) -> dict:
  """{relative path: sha256, or "folder"} of everything under `folder` (the log file aside)."""
  hashes = {}
  for root, folders, files in os.walk(folder):
    for name in folders:
      hashes[os.path.relpath(os.path.join(root, name), folder)] = "folder"
    for name in files:
      path = os.path.join(root, name)
      if name != "train.log":
        hashes[os.path.relpath(path, folder)] = hashlib.sha256(open(path, "rb").read()).hexdigest()
  return hashes


def abstract_of(state):
  return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), state)


@pytest.mark.parametrize("change, difference", [
    # adam -> adamw: a masked weight-decay state joins the optimizer chain.
    ({"optim.weight_decay": 0.1},
     r"optimizer/opt_state/1/2/count is in this run's state but not in the checkpoint "
     r"\(and 1 more entry differs\)"),
    # Orbax would cast float32 to bfloat16 without a word.
    ({"model.param_dtype": "bfloat16"},
     r"params/embed/value is float32\[\d+, 128\] in the checkpoint but bfloat16\[\d+, 128\] "
     r"in this run \(and \d+ more entries differ\)"),
])
def test_checkpoint_that_does_not_fit_stops_the_run_unchanged(small_config, workdir, change,
                                                             difference):
  before = file_hashes(workdir)
  assert "config.json" in before and "metrics.jsonl" in before
  with pytest.raises(UserError) as info:
    train.train(small_config(**change), str(workdir))
  message = str(info.value)
  assert re.match(re.escape(f"checkpoint 6 in {workdir / 'checkpoints'} does not fit this run's "
                            "state: ") + difference + "; ", message), message
  assert "\n" not in message
  assert message.endswith(f"; resume with the config the run was started with "
                          f"({workdir / 'config.json'} shows it), or use another --workdir "
                          "for this config")
  assert file_hashes(workdir) == before  # every checkpoint, config.json, metrics: byte for byte


@pytest.mark.parametrize("entry, changed, expected", [
    ("shape", lambda a: jax.ShapeDtypeStruct((421, 128), a.dtype, sharding=a.sharding),
     "params/embed/value is float32[420, 128] in the checkpoint but float32[421, 128] in this run"),
    ("dtype", lambda a: jax.ShapeDtypeStruct(a.shape, np.float16, sharding=a.sharding),
     "params/embed/value is float32[420, 128] in the checkpoint but float16[420, 128] in this run"),
])
def test_restore_compares_metadata_before_reading_arrays(trained, entry, changed, expected):
  workdir, result = trained
  abstract = abstract_of(result["state"])
  params = jax.tree_util.tree_map_with_path(  # the embedding table changed, the rest as saved
      lambda path, a: changed(a) if path[0] == jax.tree_util.DictKey("embed") else a,
      abstract.params)
  checkpoints = checkpoint.Checkpoints(str(workdir / "checkpoints"), read_only=True)
  try:
    with pytest.raises(UserError, match="^checkpoint 6 .* does not fit this run's state: "
                       + expected.replace("[", r"\[").replace("]", r"\]")):
      checkpoints.restore_latest(abstract.replace(params=params), jax.random.key(0))
    with pytest.raises(UserError, match="does not fit the model of the run's config"):
      checkpoints.restore_params(params)  # what evaluate and export read
  finally:
    checkpoints.close()


def test_first_difference_counts_the_others():
  shape = ((2, 3), np.dtype("float32"))
  assert checkpoint._first_difference({"a": shape}, {"a": shape}) is None
  assert checkpoint._first_difference({"a": shape, "b": shape}, {"c": shape}) == (
      "c is in this run's state but not in the checkpoint (and 2 more entries differ)")
  assert checkpoint._first_difference({"a": shape, "b": shape}, {"a": shape}) == (
      "the checkpoint has b, which this run's state does not")


# Orbax's failed read of a damaged step can leave an asyncio callback behind.
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
@pytest.mark.parametrize("damage", ["metadata_truncated", "metadata_deleted", "item_deleted",
                                    "array_file_truncated"])
def test_partial_or_corrupt_latest_checkpoint_is_skipped(trained, workdir, damage, caplog):
  step_dir = workdir / "checkpoints" / "6" / "optimizer"
  if damage == "metadata_truncated":
    with open(step_dir / "_METADATA", "r+") as f:
      f.truncate(100)
  elif damage == "metadata_deleted":
    os.remove(step_dir / "_METADATA")
  elif damage == "item_deleted":
    shutil.rmtree(step_dir)
  else:
    for root, _, files in os.walk(step_dir / "ocdbt.process_0" / "d"):
      for name in files:
        open(os.path.join(root, name), "wb").close()
  checkpoints = checkpoint.Checkpoints(str(workdir / "checkpoints"))
  try:
    with caplog.at_level(logging.WARNING):
      restored = checkpoints.restore_latest(abstract_of(trained[1]["state"]), jax.random.key(0))
  finally:
    checkpoints.close()
    gc.collect()  # the callback Orbax left is reported here, where it is expected, not later
  assert restored is not None and int(restored[0].step) == 3
  assert "checkpoint 6" in caplog.text and "could not be restored" in caplog.text
  assert checkpoints.unrestorable == [6]


def test_save_that_never_finished_is_not_a_checkpoint(trained, workdir):
  # What an interrupted save leaves on a local disk: the step's temporary folder.
  unfinished = workdir / "checkpoints" / "6.orbax-checkpoint-tmp-1764000000000000"
  os.rename(workdir / "checkpoints" / "6", unfinished)
  checkpoints = checkpoint.Checkpoints(str(workdir / "checkpoints"))
  try:
    assert checkpoints.steps() == [3]
    restored = checkpoints.restore_latest(abstract_of(trained[1]["state"]), jax.random.key(0))
  finally:
    checkpoints.close()
  assert int(restored[0].step) == 3 and checkpoints.unrestorable == []
  assert os.path.isdir(unfinished)  # left as it was


def losses(workdir):
  lines = [json.loads(line) for line in open(workdir / "metrics.jsonl")]
  return {line["step"]: line["loss"] for line in lines if "loss" in line}


@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_run_resumes_before_a_corrupt_checkpoint_and_replaces_it(small_config, trained, workdir,
                                                                 caplog):
  os.remove(workdir / "checkpoints" / "6" / "params" / "_METADATA")
  with caplog.at_level(logging.WARNING):  # no exact-match decoding: the losses are compared
    result = train.train(small_config(**{"eval.exact_match": False}), str(workdir))
  gc.collect()  # the callback Orbax left is reported here, where it is expected, not later
  assert "checkpoint 6" in caplog.text and "replacing checkpoint 6" in caplog.text
  assert result["steps"] == 6 and sorted(os.listdir(workdir / "checkpoints")) == ["3", "6"]
  assert os.path.exists(workdir / "checkpoints" / "6" / "params" / "_METADATA")
  # Steps 4 to 6 again, from step 3's checkpoint: the same losses as the first time.
  assert losses(workdir) == losses(trained[0])


def test_command_line_mismatch_is_one_error_line_and_exit_1(small_config, workdir):
  before = file_hashes(workdir)
  config = small_config()  # the run's config, as flags
  flags = [f"--config.{section}.{name}={config[section][name]}" for section, name in (
      ("demo", "train_examples"), ("demo", "eval_examples"), ("model", "path"), ("data", "path"),
      ("data", "eval_path"), ("train", "steps"), ("train", "batch_size"), ("train", "log_every"),
      ("checkpoint", "every_steps"), ("eval", "exact_match_examples"),
      ("eval", "max_new_tokens"), ("train", "peak_tflops"))]
  result = subprocess.run(
      [sys.executable, "-m", "neft_jax.train", "--config=configs/demo.py", f"--workdir={workdir}",
       *flags, "--config.optim.weight_decay=0.1"],
      cwd=REPO, capture_output=True, text=True, timeout=300,
      env=os.environ | {"JAX_PLATFORMS": "cpu"})
  assert result.returncode == 1, result.stderr[-2000:]
  error_lines = [line for line in result.stderr.splitlines() if line.startswith("error:")]
  assert len(error_lines) == 1 and "Traceback" not in result.stderr
  assert error_lines[0].startswith("error: checkpoint 6 in ") and "does not fit" in error_lines[0]
  assert file_hashes(workdir) == before


@pytest.mark.parametrize("mode, best", [("min", 4), ("max", 2)])
def test_keep_best_keeps_the_best_beside_the_latest(tmp_path, mode, best):
  from neft_jax import steps
  keep = checkpoint.KeepBest("eval_loss", mode, count=1)
  directory = str(tmp_path / "checkpoints")
  checkpoints = checkpoint.Checkpoints(directory, max_to_keep=2, async_save=False, keep_best=keep)
  losses = {2: 0.5, 4: 0.3, 6: 0.4}  # evaluated at the even steps only
  for step in range(1, 7):
    state = steps.TrainState(np.int32(step), {"w": np.full(3, step, np.float32)}, {})
    metrics = {"eval_loss": losses[step], "eval_token_accuracy": 0.1} if step in losses else None
    checkpoints.save(step, state, jax.random.key(0), {}, metrics=metrics)
  checkpoints.close()
  assert sorted(int(name) for name in os.listdir(directory)) == sorted({best, 5, 6})
  reader = checkpoint.Checkpoints(directory, read_only=True, keep_best=keep)
  try:
    assert reader.best_step() == best  # read back from the metrics in each step's folder
    step, params = reader.restore_params({"w": jax.ShapeDtypeStruct((3,), np.float32)}, "best")
    assert step == best and (np.asarray(params["w"]) == best).all()
  finally:
    reader.close()
  plain = checkpoint.Checkpoints(directory, read_only=True)
  with pytest.raises(UserError, match="--step=best needs a run trained with checkpoint.keep_best"):
    plain.best_step()
  plain.close()
