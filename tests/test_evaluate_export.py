"""Evaluate and export a trained run: AlpacaEval outputs, metrics, HF folders, bad input."""

import json
import os
import subprocess
import sys

import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers

from neft_jax import evaluate, export, sharding
from neft_jax.errors import UserError
from neft_jax.models import load_hf
from neft_jax.run import trained_model
from tests.conftest import shared_data
from tests.test_train import shrunk_config

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture
def run(demo_assets, shrunk_run):
  """The session's shrunk demo run (6 steps, checkpoints at 3 and 6) and its config."""
  return shrunk_config(demo_assets), shrunk_run[0]


def eval_config(config, **generate):
  config = config.copy_and_resolve_references()
  config.generate.max_new_tokens, config.generate.batch_size = 6, 4
  for key, value in generate.items():
    config.generate[key] = value
  return config


def test_export_loads_in_transformers_with_equal_logits(run, tmp_path):
  config, workdir = run
  out = tmp_path / "hf"
  result = export.export(config, str(workdir), str(out))
  assert result["step"] == 6
  assert {"config.json", "model.safetensors", "generation_config.json", "tokenizer.json"} <= set(result["files"])
  torch_model, info = transformers.AutoModelForCausalLM.from_pretrained(out, output_loading_info=True)
  assert not info["missing_keys"] and not info["unexpected_keys"]
  tokenizer = transformers.AutoTokenizer.from_pretrained(out)
  ids = np.array([tokenizer("Reverse the letters of the word.\nabc")["input_ids"]])
  with torch.no_grad():
    reference = torch_model.eval()(torch.tensor(ids)).logits.numpy()
  mesh, rules = sharding.mesh_from_config(config)
  trained, step = trained_model(str(workdir), config, mesh, rules)
  np.testing.assert_allclose(np.asarray(trained(jnp.asarray(ids))), reference, atol=1e-4, rtol=0)
  # An earlier step exports too, and differs.
  export.export(config, str(workdir), str(tmp_path / "hf3"), step=3)
  earlier = load_hf(tmp_path / "hf3")(jnp.asarray(ids))
  assert not np.allclose(np.asarray(earlier), reference, atol=1e-3)


def test_export_refuses_a_non_empty_folder_unless_overwrite(run, tmp_path):
  config, workdir = run
  (tmp_path / "out").mkdir()
  (tmp_path / "out" / "notes.txt").write_text("keep me")
  with pytest.raises(UserError, match="exists and is not empty.*--overwrite"):
    export.export(config, str(workdir), str(tmp_path / "out"))
  assert (tmp_path / "out" / "notes.txt").exists()
  export.export(config, str(workdir), str(tmp_path / "out"), overwrite=True)
  assert not (tmp_path / "out" / "notes.txt").exists() and (tmp_path / "out" / "config.json").exists()


def test_step_without_checkpoint_lists_the_steps(run, tmp_path):
  config, workdir = run
  with pytest.raises(UserError, match=r"no checkpoint for step 4 .* the steps saved are \[3, 6\]"):
    export.export(config, str(workdir), str(tmp_path / "x"), step=4)


def test_evaluate_held_out_split(run, tmp_path):
  config, workdir = run
  summary = evaluate.evaluate(eval_config(config), workdir=str(workdir), out_dir=str(tmp_path))
  assert summary["step"] == 6 and summary["count"] == 8
  assert summary["eval_perplexity"] == pytest.approx(np.exp(summary["eval_loss"]))
  assert 0 <= summary["exact_match"] <= 1 and "rouge_l" in summary and "diversity" in summary
  outputs = json.loads((tmp_path / "model_outputs.json").read_text())
  assert len(outputs) == 8
  assert set(outputs[0]) == {"instruction", "output", "generator", "dataset"}
  assert json.loads((tmp_path / "summary.json").read_text())["count"] == 8
  record = json.loads((tmp_path / "provenance.json").read_text())
  assert record["inputs"] == {str(workdir): json.loads((workdir / "provenance.json").read_text())}


def test_evaluate_alpaca_eval_prompts_from_a_hf_folder_matches_the_workdir(run, tmp_path):
  config, workdir = run
  instructions = json.load(open(shared_data("alpaca_eval", "text_davinci_003_model_outputs.json")))
  prompts = tmp_path / "prompts.json"
  prompts.write_text(json.dumps(instructions[:6]))
  config = eval_config(config, truncate_prompts=True)
  from_run = evaluate.evaluate(config, workdir=str(workdir), prompts_path=str(prompts),
                               out_dir=str(tmp_path / "a"))
  export.export(config, str(workdir), str(tmp_path / "hf"))
  from_folder = evaluate.evaluate(config, model_path=str(tmp_path / "hf"), prompts_path=str(prompts),
                                  out_dir=str(tmp_path / "b"))
  a = json.loads((tmp_path / "a" / "model_outputs.json").read_text())
  b = json.loads((tmp_path / "b" / "model_outputs.json").read_text())
  assert [o["output"] for o in a] == [o["output"] for o in b]
  assert [o["instruction"] for o in a] == [i["instruction"] for i in instructions[:6]]
  assert [o["dataset"] for o in a] == [i["dataset"] for i in instructions[:6]]
  # The reference outputs of the file give ROUGE-L; both runs score the same.
  assert from_run["rouge_l"] == from_folder["rouge_l"]


def test_bad_prompt_files(run, tmp_path):
  config, workdir = run
  (tmp_path / "empty.json").write_text("[]")
  with pytest.raises(UserError, match="holds no prompts"):
    evaluate.evaluate(eval_config(config), workdir=str(workdir), prompts_path=str(tmp_path / "empty.json"))
  (tmp_path / "long.json").write_text(json.dumps(
      [{"instruction": "short"}, {"instruction": "word " * 400}]))
  with pytest.raises(UserError, match=r"prompt 1 \(counting from 0\) has \d+ tokens.*nothing was generated"):
    evaluate.evaluate(eval_config(config), workdir=str(workdir), prompts_path=str(tmp_path / "long.json"))


def test_command_line_errors_are_one_line(run, tmp_path):
  _, workdir = run
  (tmp_path / "out").mkdir()
  (tmp_path / "out" / "x").write_text("x")
  env = os.environ | {"JAX_PLATFORMS": "cpu"}
  for command, expected in (
      (["neft_jax.export", f"--workdir={workdir}", f"--out={tmp_path / 'out'}"], "not empty"),
      (["neft_jax.export", f"--workdir={workdir}", f"--out={tmp_path / 'o2'}", "--step=5"], "[3, 6]"),
      (["neft_jax.evaluate", f"--workdir={workdir}", "--step=5"], "[3, 6]")):
    result = subprocess.run([sys.executable, "-m", *command], cwd=REPO, env=env,
                            capture_output=True, text=True, timeout=300)
    errors = [l for l in result.stderr.splitlines() if l.startswith("error:")]
    assert result.returncode == 1 and len(errors) == 1 and expected in errors[0], result.stderr[-2000:]
