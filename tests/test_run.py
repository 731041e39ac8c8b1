"""Reading a run folder: config.json through epath, {workdir} paths, the demo in a bucket."""

import json

import pytest
from etils import epath

from configs import demo as demo_config
from neft_jax import demo, run
from neft_jax.errors import UserError


def test_config_json_round_trip_through_epath(tmp_path):
  config = demo_config.get_config()
  config.train.steps = 7
  run.write_config(epath.Path(tmp_path), config)
  saved = json.loads((tmp_path / "config.json").read_text())
  assert saved["train"]["steps"] == 7 and saved["model"]["path"] == "{workdir}/demo/model"
  del saved["optim"]["eps"]  # a key added after the run was made
  (tmp_path / "config.json").write_text(json.dumps(saved))
  loaded = run.load_config(str(tmp_path))
  assert loaded.train.steps == 7 and loaded.optim.eps == 1e-8  # the default
  assert run.load_config(tmp_path, config) is config  # a config given wins
  with pytest.raises(UserError, match="has no config.json; give --config"):
    run.load_config(tmp_path / "elsewhere")


def test_workdir_paths(tmp_path, monkeypatch):
  config = demo_config.get_config()
  workdir = run.folder(tmp_path)
  assert run.resolve(config.model.path, workdir) == f"{tmp_path}/demo/model"
  assert run.resolve("", workdir) == ""
  assert run.data_config(config, workdir).eval_path == f"{tmp_path}/demo/data/eval.json"
  assert config.data.eval_path == "{workdir}/demo/data/eval.json"  # the config is untouched
  assert run.tokenizer_path(config, workdir) == (f"{tmp_path}/demo/model", "model.path")
  config.model.tokenizer = "{workdir}/tok"
  assert run.tokenizer_path(config, workdir) == (f"{tmp_path}/tok", "model.tokenizer")
  assert str(run.checkpoints_dir(workdir)) == f"{tmp_path}/checkpoints"
  monkeypatch.chdir(tmp_path)
  assert str(run.folder("runs/x")) == f"{tmp_path}/runs/x"  # relative: made absolute
  assert str(run.folder("gs://bucket/run")) == "gs://bucket/run"  # a bucket: as given
  assert run.in_bucket("gs://bucket/run") and not run.in_bucket(tmp_path)


def test_demo_in_a_bucket_asks_for_local_model_and_data(tmp_path):
  with pytest.raises(UserError, match=r"model.path=gs://b/run/demo/model is in a bucket.*local"):
    demo.prepare(demo_config.get_config().demo, "gs://b/run/demo/model", str(tmp_path), seed=0)
  assert not list(tmp_path.iterdir())  # nothing written
