"""LoRA runs: only the adapters train and are checkpointed, the base stays bitwise the same,
resume is exact, the exports load in PEFT and transformers with our logits, and bad input
is one error line."""

import json
import os
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import transformers
from flax import nnx

from neft_jax import cli, export, run, sharding, train
from neft_jax import lora_run as lora_run_module
from neft_jax.errors import one_line_errors
from neft_jax.models import hf_io, load_hf, save_hf
from tests.models.test_hf_parity import max_error, torch_logits
from tests.test_train import losses, shrunk_config

peft = pytest.importorskip("peft", reason="peft is a test dependency (pip install -e '.[test]')")


def lora_config(assets, **lora_changes):
  config = shrunk_config(assets)
  config.train.steps = 4
  config.checkpoint.every_steps = 2
  config.model.lora.update(dict(rank=4, alpha=8.0, base_dtype="float32") | lora_changes)
  config.neftune.alpha = 5.0  # NEFTune on the adapters' run too
  config.mesh.num_devices = 1
  return config


@pytest.fixture(scope="module")
def lora_run(demo_assets, tmp_path_factory):
  from neft_jax import demo
  config = lora_config(demo_assets)
  demo.prepare(config.demo, config.model.path, os.path.dirname(config.data.path), config.seed)
  workdir = tmp_path_factory.mktemp("lora_run")
  result = train.train(config, str(workdir))
  return config, workdir, result


def test_only_the_adapters_train_and_the_base_is_bitwise_the_same(lora_run):
  config, workdir, result = lora_run
  trained = result["state"].params
  assert all("lora_" in ".".join(map(str, path)) for path, _ in nnx.to_flat_state(trained))
  assert any(np.abs(np.asarray(v.get_value())).max() > 0 for path, v in nnx.to_flat_state(trained)
             if path[-1] == "lora_b")  # B started at zeros and has moved
  # The checkpoint holds the adapters and their optimizer state, nothing of the base.
  saved = os.listdir(workdir / "checkpoints" / "4")
  assert "params" in saved
  mesh, rules = sharding.mesh_from_config(config)
  model, step = run.trained_model(workdir, config, mesh, rules)
  assert step == 4
  base = load_hf(config.model.path)
  base_flat = {".".join(map(str, p)): np.asarray(v.get_value())
               for p, v in nnx.to_flat_state(nnx.state(base, nnx.Param))}
  for path, value in nnx.to_flat_state(nnx.state(model, nnx.Param)):
    name = ".".join(map(str, path))
    if "lora_" not in name:
      np.testing.assert_array_equal(np.asarray(value.get_value()), base_flat[name], err_msg=name)
  fingerprint = json.loads((workdir / "lora_base.json").read_text())
  assert len(fingerprint["weights_sha256"]) == 64 and fingerprint["files"] == ["model.safetensors"]


def test_a_stopped_lora_run_resumes_exactly(lora_run, tmp_path):
  config, straight_dir, _ = lora_run
  first = train.train(config, str(tmp_path), stop_after=2)
  assert first["steps"] == 2
  second = train.train(config, str(tmp_path))
  assert second["steps"] == 4
  assert losses(tmp_path) == losses(straight_dir)  # bitwise


def test_exported_adapter_and_merged_weights_give_our_logits(lora_run, tmp_path):
  config, workdir, _ = lora_run
  mesh, rules = sharding.mesh_from_config(config)
  model, _ = run.trained_model(workdir, config, mesh, rules)
  ids = np.random.RandomState(0).randint(3, model.config.vocab_size, (2, 10))
  mask = np.ones_like(ids)
  ours = np.asarray(model(jnp.asarray(ids), attention_mask=jnp.asarray(mask)))

  export.export(config, str(workdir), str(tmp_path / "adapter"), adapter=True)
  assert sorted(os.listdir(tmp_path / "adapter")) == ["adapter_config.json",
                                                      "adapter_model.safetensors"]
  base = transformers.AutoModelForCausalLM.from_pretrained(config.model.path)
  peft_model = peft.PeftModel.from_pretrained(base, str(tmp_path / "adapter")).eval()
  assert max_error(ours, torch_logits(peft_model, ids, mask), mask) < 1e-4

  export.export(config, str(workdir), str(tmp_path / "merged"))
  merged = transformers.AutoModelForCausalLM.from_pretrained(str(tmp_path / "merged")).eval()
  assert max_error(ours, torch_logits(merged, ids, mask), mask) < 1e-4

  # ... and the exported adapter as model.lora.init_from starts a run at those logits.
  started = lora_config(os.path.dirname(config.model.path), init_from=str(tmp_path / "adapter"))
  started.model.path = config.model.path
  model_config = hf_io.model_config(config.model.path, started.model)
  frozen, adapters = lora_run_module.load(started, model_config, config.model.path, mesh, rules)
  graphdef = hf_io.abstract_trainable(model_config)[0]
  restarted = nnx.merge(graphdef, adapters, frozen)
  again = np.asarray(restarted(jnp.asarray(ids), attention_mask=jnp.asarray(mask)))
  assert max_error(again, ours, mask) < 1e-5
  # Where a checkpoint's adapters replace them (resume, evaluate), init_from is not read.
  shutil.rmtree(tmp_path / "adapter")
  lora_run_module.load(started, model_config, config.model.path, mesh, rules, fresh=False)


def run_cli_main(main, capsys) -> list[str]:
  """The error lines of `main` run as the CLI runs it (exit code 1, no traceback); the
  other stderr lines are the log's."""
  with pytest.raises(SystemExit) as exit_info, cli.routed_logging(), one_line_errors():
    main()
  assert exit_info.value.code == 1
  err = capsys.readouterr().err
  assert "Traceback" not in err
  return [line for line in err.splitlines() if line.startswith("error")]


@pytest.mark.parametrize("changes, expected", [
    (dict(targets="query,gatex"), "error: model.lora.targets names 'gatex', which a llama model "
                                  "does not have; its projections are query, key, value, out, "
                                  "gate, up, down (or 'all')"),
    (dict(rank=-1), "error: model.lora.rank=-1 must be an integer >= 0 (set them in the config "
                    "file or with --config.KEY=VALUE)"),
])
def test_bad_lora_settings_are_one_error_line(demo_assets, tmp_path, capsys, changes, expected):
  config = lora_config(demo_assets, **changes)
  assert run_cli_main(lambda: train.train(config, str(tmp_path / "run")), capsys) == [expected]


def test_resuming_on_another_base_is_refused(lora_run, tmp_path, capsys):
  config, workdir, _ = lora_run
  copy = tmp_path / "run"
  shutil.copytree(workdir, copy)
  other = tmp_path / "other_base"
  shutil.copytree(config.model.path, other)
  model = load_hf(str(other))
  nnx.update(model, jax.tree.map(lambda x: x * 1.01, nnx.state(model, nnx.Param)))
  save_hf(model, str(other))
  changed = lora_config(os.path.dirname(config.model.path))
  changed.model.path = str(other)
  changed.train.steps = 6
  lines = run_cli_main(lambda: train.train(changed, str(copy)), capsys)
  assert len(lines) == 1 and lines[0].startswith(
      f"error: model.path={other} holds another base model than the LoRA run in {copy}")


def test_an_adapter_for_other_targets_is_one_error_line(lora_run, tmp_path, capsys):
  config, workdir, _ = lora_run
  export.export(config, str(workdir), str(tmp_path / "adapter"), adapter=True)
  other = lora_config(os.path.dirname(config.model.path), targets="query,value",
                      init_from=str(tmp_path / "adapter"))
  lines = run_cli_main(lambda: train.train(other, str(tmp_path / "run")), capsys)
  assert len(lines) == 1 and "adapts other modules than model.lora.targets=query,value" in lines[0]


def test_evaluate_and_analyze_take_a_lora_run(lora_run, tmp_path):
  from neft_jax import analyze, evaluate
  config, workdir, result = lora_run
  config = config.copy_and_resolve_references()
  config.eval.exact_match_examples, config.generate.max_new_tokens = 2, 2
  summary = evaluate.evaluate(config, workdir=str(workdir), out_dir=str(tmp_path / "eval"))
  assert summary["eval_loss"] == pytest.approx(result["after"]["eval_loss"], rel=1e-6)
  analyze.analyze(config.model.path, [str(workdir)], str(tmp_path / "analysis"), max_examples=4)
  lines = (tmp_path / "analysis" / "analysis.csv").read_text().splitlines()[1:]
  changes = [float(line.split(",")[-1]) for line in lines
             if ",attention,," in line and "weight_relative_change" in line]
  assert len(changes) == 4 and all(c > 0 for c in changes)  # the merged B A moved the weights
