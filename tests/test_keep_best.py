"""Keep-best checkpoints and early stopping, on the shrunk demo: the right step kept, the
right step stopped at, resumed exactly; evaluate and export --step=best."""

import json
import os

import numpy as np
import pytest

from neft_jax import early_stopping, evaluate, export, run, train
from neft_jax.errors import UserError
from tests.test_train import losses, shrunk_config


def selecting_config(assets):
  """10 steps, evaluated every 2. No evaluation improves on the first by min_delta=10, so
  patience 2 stops the run at step 6 (evals at 2, 4, 6); keep-best keeps the highest
  eval_loss (mode max: the worst, so that it is not also the latest checkpoint)."""
  config = shrunk_config(assets, train__steps=10, train__eval_every=2)
  config.eval.exact_match = False
  config.checkpoint.every_steps, config.checkpoint.max_to_keep = 100, 1
  config.checkpoint.keep_best.update(metric="eval_loss", mode="max", count=1)
  config.train.early_stopping.update(metric="eval_loss", mode="min", patience=2, min_delta=10.0)
  return config


def eval_losses(workdir) -> dict[int, float]:
  lines = [json.loads(l) for l in open(os.path.join(workdir, "metrics.jsonl"))]
  return {l["step"]: l["eval_loss"] for l in lines if "eval_loss" in l}


@pytest.fixture(scope="module")
def selected(demo_assets, shrunk_run, tmp_path_factory):
  workdir = tmp_path_factory.mktemp("selected")
  result = train.train(selecting_config(demo_assets), str(workdir))
  return workdir, result


def test_early_stopping_stops_at_the_right_step_and_says_why(selected):
  workdir, result = selected
  assert result["steps"] == 6 and result["early_stopped"]["stopped_at"] == 6
  assert result["early_stopped"]["best_step"] == 2
  assert max(losses(workdir)) == 6  # no step after the stop
  assert "eval_loss has not improved on" in result["early_stopped"]["reason"]


def test_keep_best_keeps_the_best_step_beside_the_latest(selected):
  workdir, _ = selected
  evaluated = {step: loss for step, loss in eval_losses(workdir).items() if step > 0}
  assert sorted(evaluated) == [2, 4, 6]
  best = max(evaluated, key=evaluated.get)  # mode max
  assert sorted(int(s) for s in os.listdir(workdir / "checkpoints")) == sorted({best, 6})
  assert best != 6


def test_evaluate_and_export_take_step_best(selected, demo_assets, tmp_path):
  workdir, _ = selected
  evaluated = {step: loss for step, loss in eval_losses(workdir).items() if step > 0}
  best = max(evaluated, key=evaluated.get)
  summary = evaluate.evaluate(run.load_config(workdir), workdir=str(workdir), step="best",
                              out_dir=str(tmp_path / "eval"))
  assert summary["step"] == best
  np.testing.assert_allclose(summary["eval_loss"], evaluated[best], rtol=1e-5)
  assert export.export(None, str(workdir), str(tmp_path / "hf"), step="best")["step"] == best


def test_resumed_run_stops_where_the_straight_run_stops(selected, demo_assets, tmp_path):
  straight, _ = selected
  first = train.train(selecting_config(demo_assets), str(tmp_path), stop_after=4)
  assert first["steps"] == 4  # its eval at 4 did not improve: one of patience 2 used
  second = train.train(selecting_config(demo_assets), str(tmp_path))
  assert second["steps"] == 6 and second["early_stopped"]["stopped_at"] == 6
  assert losses(tmp_path) == losses(straight)
  again = train.train(selecting_config(demo_assets), str(tmp_path))  # already stopped
  assert again["steps"] == 6 and max(losses(tmp_path)) == 6


def test_early_stopping_counts_evaluations_since_the_best():
  from ml_collections import ConfigDict
  section = ConfigDict(dict(metric="eval_accuracy", mode="max", patience=2, min_delta=0.01))
  stopping = early_stopping.EarlyStopping.from_config(section)
  verdicts = [stopping.update(step, {"eval_accuracy": value})
              for step, value in ((1, 0.5), (2, 0.6), (3, 0.605), (4, 0.7), (5, 0.69), (6, 0.7))]
  assert verdicts == [False, False, False, False, False, True]
  assert (stopping.best_step, stopping.stopped_at) == (4, 6)
  resumed = early_stopping.EarlyStopping.from_config(section, saved=stopping.state())
  assert resumed.state() == stopping.state()


def test_step_best_without_keep_best_is_an_error(shrunk_run, tmp_path):
  workdir, _ = shrunk_run
  with pytest.raises(UserError, match="--step=best needs a run trained with checkpoint.keep_best"):
    export.export(None, str(workdir), str(tmp_path / "hf"), step="best")


def test_step_flag_takes_a_number_or_best():
  assert (run.parse_step("12"), run.parse_step("best"), run.parse_step(None)) == (12, "best", None)
  for bad in ("latest", "-3"):
    with pytest.raises(UserError, match=f"--step={bad}: give a checkpoint's step number, or best"):
      run.parse_step(bad)
