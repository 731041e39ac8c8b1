"""Bad input on the command line and in configs: one `error:` line, exit 1, nothing written.

Also the console and log file that every CLI gets from neft_jax.cli.
"""

import json
import logging
import os
import subprocess
import sys

import ml_collections
import pytest

from configs import demo as demo_config
from configs import (gpt2_alpaca, llama2_alpaca, llama2_alpaca_lora, llama2_sharegpt, qwen2_alpaca,
                     sentiment)
from neft_jax import cli, config_check, defaults, evaluate, export, train
from neft_jax.errors import UserError
from tests.test_train import shrunk_config

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_cli(*args, timeout=120):
  return subprocess.run([sys.executable, "-m", *args], cwd=REPO, capture_output=True, text=True,
                        timeout=timeout, env=os.environ | {"JAX_PLATFORMS": "cpu"})


def untouched(workdir) -> bool:
  """Nothing written: the workdir is absent or empty (a log file aside)."""
  return not os.path.exists(workdir) or set(os.listdir(workdir)) <= {"train.log"}


# Flag parsing (before main runs) and start-up validation, as a user meets them ----------------

DEMO = "--config=configs/demo.py"


@pytest.mark.parametrize("args, first_line", [
    ([DEMO, "--config.trian.steps=3"],
     "error: --config.trian.steps=3: the config has no key 'trian'; "
     "did you mean \"train\" instead of \"trian\"?"),
    ([DEMO, "--config.train.steps=abc"],
     "error: --config.train.steps=abc: train.steps must be an integer"),
    (["--config=configs/no_such_config.py"],
     "error: --config=configs/no_such_config.py: configs/no_such_config.py does not exist; give a "
     "config file such as configs/demo.py"),
    ([DEMO, "--config.model.remat=ful"],
     "error: model.remat='ful' is not one of 'none', 'full', 'dots', 'dots_no_batch' (set them "
     "in the config file or with --config.KEY=VALUE)"),
    (["--config=configs/gpt2_alpaca.py", "--config.model.path=/no/such/model"],
     "error: model.path='/no/such/model' is neither a folder nor a reachable hub id; point "
     "model.path at a folder with the checkpoint and its tokenizer, or at a hub id where the hub "
     "can be reached"),
], ids=["misspelt_key", "wrong_type", "no_config_file", "bad_choice", "no_model"])
def test_command_line_mistake_is_one_line(tmp_path, args, first_line):
  workdir = tmp_path / "run"
  result = run_cli("neft_jax.train", f"--workdir={workdir}", *args)
  assert result.returncode == 1, result.stderr[-2000:]
  lines = result.stderr.splitlines()
  if "--config.model.path" not in args[-1]:  # found before any work: the only line
    assert lines == [first_line]
  else:  # after the start-up lines (the mesh)
    assert lines[-1] == first_line and [l for l in lines if l.startswith("error:")] == [first_line]
  assert "Traceback" not in result.stderr and result.stdout == ""
  assert untouched(workdir)


# Every config value, checked before anything is written -------------------------------------

BAD_VALUES = {
    "model.remat": ("ful", "is not one of 'none', 'full', 'dots', 'dots_no_batch'"),
    "model.attention": ("flash", "is not one of 'xla', 'cudnn'"),
    "model.param_dtype": ("fp32", "is not one of 'float32', 'bfloat16', 'float16'"),
    "model.scan_layers": ("yes", "must be True or False"),
    "data.template": ("vicuna", "is not one of 'alpaca', 'chat', 'plain_chat', 'text'"),
    "data.train_on": ("every", "is not one of 'all_assistant', 'last_assistant'"),
    "data.eval_size": (2.5, "must be a fraction below 1 or a whole count of records"),
    "data.max_length": (1, "must be an integer >= 2"),
    "data.format": ("table", "is not one of 'instruction', 'classification', 'conversation'"),
    "data.noise.kind": ("jitter", "is not one of 'none', 'label', 'typo', 'grammar'"),
    "data.noise.rate": (1.5, "must be in [0, 1]"),
    "data.noise.typo_ops": (("swap", "flip"), "has unknown 'flip'; must be a tuple of names "
                            "from insert, delete, substitute, swap"),
    "data.noise.grammar_ops": ("article,tense", "has unknown 'tense'; must be a tuple of names "
                               "from article, preposition, agreement, verb_form, word_swap, "
                               "confusion"),
    "neftune.distribution": ("laplace", "is not one of 'uniform', 'gaussian'"),
    "neftune.alpha": (-1.0, "must be >= 0"),
    "optim.schedule": ("step", "is not one of 'cosine', 'linear', 'constant'"),
    "optim.learning_rate": (0.0, "must be > 0"),
    "optim.warmup_ratio": (1.0, "must be in [0, 1)"),
    "train.steps": (-1, "must be an integer >= 0"),
    "train.batch_size": (0, "must be an integer >= 1"),
    "train.grad_accum_steps": (0, "must be an integer >= 1"),
    "train.log_every": (0, "must be an integer >= 1"),
    "train.loss_chunk_size": (-2, "must be -1 or an integer >= 0"),
    "checkpoint.every_steps": (0, "must be an integer >= 1"),
    "checkpoint.max_to_keep": (0, "must be an integer >= 1"),
    "mesh.fsdp": (0, "must be -1 or an integer >= 1"),
    "generate.top_p": (0.0, "must be in (0, 1]"),
    "generate.temperature": (-0.5, "must be >= 0"),
}


def with_value(config, key, value):
  config = config.copy_and_resolve_references()
  *sections, name = key.split(".")
  section = config
  for part in sections:
    section = section[part]
  with section.ignore_type():  # a config file may set any type; validation must catch it
    section[name] = value
  return config


@pytest.mark.parametrize("key", sorted(BAD_VALUES))
def test_bad_config_value_is_named_with_what_is_allowed(tmp_path, key):
  value, allowed = BAD_VALUES[key]
  config = with_value(shrunk_config(str(tmp_path / "assets")), key, value)
  workdir = tmp_path / "run"
  with pytest.raises(UserError) as info:
    train.train(config, str(workdir))
  assert str(info.value) == (f"{key}={value!r} {allowed} "
                             "(set them in the config file or with --config.KEY=VALUE)")
  assert not os.path.exists(workdir) and not os.path.exists(tmp_path / "assets")


def test_every_problem_is_listed_on_one_line():
  config = with_value(with_value(demo_config.get_config(), "train.steps", -1), "model.remat", "x")
  message = "; ".join(config_check.problems(config))
  assert message == ("model.remat='x' is not one of 'none', 'full', 'dots', 'dots_no_batch'; "
                     "train.steps=-1 must be an integer >= 0")


def test_dry_run_evaluate_and_export_validate_first(tmp_path):
  config = with_value(demo_config.get_config(), "optim.schedule", "step")
  expected = "optim.schedule='step' is not one of"
  with pytest.raises(UserError, match=expected):
    train.dry_run(config)
  with pytest.raises(UserError, match=expected):  # before looking for the run's checkpoints
    evaluate.evaluate(config, workdir=str(tmp_path / "no_run"))
  (tmp_path / "run").mkdir()
  with pytest.raises(UserError, match=expected):
    export.export(config, str(tmp_path / "run"), str(tmp_path / "out"))
  assert os.listdir(tmp_path) == ["run"] and not os.listdir(tmp_path / "run")


def test_max_length_past_learned_positions_stops_the_dry_run(tmp_path):
  from tests import tiny_models
  tiny_models.build("gpt2", tmp_path / "gpt2")  # 128 learned positions
  config = defaults.base()
  config.model.path, config.data.max_length = str(tmp_path / "gpt2"), 256
  with pytest.raises(UserError) as info:
    train.dry_run(config)
  assert str(info.value) == ("data.max_length=256 is more than the model's 128 positions, which "
                             "are learned; set data.max_length to at most 128")


def leaf_keys(config, prefix=""):
  for name, value in config.items():
    if isinstance(value, ml_collections.ConfigDict):
      yield from leaf_keys(value, f"{prefix}{name}.")
    else:
      yield prefix + name


def test_every_config_key_has_a_check():
  rules = config_check.rules()
  keys = set(leaf_keys(defaults.base())) | set(leaf_keys(demo_config.get_config()))
  assert keys - set(rules) == set()


# Maximum positions of the shipped configs' models (their config.json), where knowable.
MODEL_POSITIONS = {
    gpt2_alpaca: 1024,     # gpt2: n_positions
    llama2_alpaca: 4096,   # Llama-2-7b-hf: max_position_embeddings
    llama2_alpaca_lora: 4096,
    llama2_sharegpt: 4096,
    qwen2_alpaca: 32768,   # Qwen2-1.5B: at least this many
    sentiment: 1024,       # openai-community/gpt2
}


@pytest.mark.parametrize("module", [demo_config, gpt2_alpaca, llama2_alpaca, llama2_alpaca_lora,
                                    llama2_sharegpt, qwen2_alpaca, sentiment],
                         ids=lambda m: m.__name__.split(".")[-1])
def test_shipped_configs_validate_and_leave_room_to_generate(module):
  config = module.get_config()
  config_check.validate(config)
  if module is sentiment:
    for condition in sentiment.CONDITIONS:
      config_check.validate(sentiment.get_config(f"{condition},data=local/sentiment"))
  positions = (config.demo.model.max_positions if module is demo_config
               else MODEL_POSITIONS[module])
  if module is demo_config:
    assert positions == 256
  # Room for the longest prompt the config trains on, before the new tokens.
  assert config.generate.max_new_tokens + config.data.max_length <= positions


# No held-out split --------------------------------------------------------------

def test_no_held_out_split_trains_saves_and_evaluates_prompts(demo_assets, tmp_path, caplog):
  """data.eval_size=0 without data.eval_path (the base default): no held-out evaluation.
  Then neft_jax.evaluate with the demo's own generation settings, as the README runs it."""
  config = shrunk_config(demo_assets)  # the session's demo files (made here if not yet)
  config.data.eval_path, config.data.eval_size = "", 0
  config.train.steps = 2
  workdir = tmp_path / "run"
  with caplog.at_level(logging.INFO):
    result = train.train(config, str(workdir))
  assert "no held-out evaluation" in caplog.text
  assert result["steps"] == 2 and result["before"] == {} and result["after"] == {}
  assert os.listdir(workdir / "checkpoints") == ["2"]
  lines = [json.loads(l) for l in open(workdir / "metrics.jsonl")]
  assert [l["step"] for l in lines] == [1, 2] and not any("eval_loss" in l for l in lines)

  prompts = tmp_path / "prompts.json"
  prompts.write_text(json.dumps([{"instruction": "Reverse the letters of the word.",
                                  "input": "abc", "output": "cba"}]))
  demo_generate = demo_config.get_config().generate
  assert config.generate.to_dict() == demo_generate.to_dict()  # the demo's, unchanged
  summary = evaluate.evaluate(config, workdir=str(workdir), prompts_path=str(prompts))
  assert summary["step"] == 2 and "mean_words" in summary
  outputs = json.loads((workdir / "eval_step_2" / "model_outputs.json").read_text())
  assert [o["instruction"] for o in outputs] == ["Reverse the letters of the word."]


# The console and the log file ----------------------------------------------------------------

def test_console_shows_own_lines_and_warnings_and_the_log_file_everything(tmp_path, capsys):
  workdir = tmp_path / "run"
  with cli.routed_logging():
    cli.log_to(str(workdir / "train.log"))
    logging.getLogger("neft_jax.train").info("own line before the folder exists")
    logging.getLogger("absl").info("CheckpointManagerOptions(%s)", "x" * 1500)
    logging.getLogger("jax._src.xla_bridge").warning("a third-party warning")
    logging.getLogger("absl").warning("Requested `tracked_metric`; did not provide metrics.")
    workdir.mkdir()
    logging.getLogger("neft_jax.checkpoint").warning("own warning")
  console = capsys.readouterr().err.splitlines()
  assert console == ["own line before the folder exists",
                     "warning [jax._src.xla_bridge]: a third-party warning",
                     "warning: own warning"]
  log = (workdir / "train.log").read_text()
  for text in ("INFO neft_jax.train] own line", "INFO absl] CheckpointManagerOptions(xxx",
               "WARNING jax._src.xla_bridge] a third-party", "WARNING neft_jax.checkpoint] own",
               "WARNING absl] Requested `tracked_metric`"):  # expected: in the log alone
    assert text in log


def test_no_log_file_when_the_folder_is_never_made(tmp_path):
  with cli.routed_logging():
    cli.log_to(str(tmp_path / "run" / "train.log"))
    logging.getLogger("neft_jax.train").info("a line")
  assert not os.path.exists(tmp_path / "run")


def test_a_config_importing_configs_from_elsewhere_says_where_to_run():
  """configs/demo_guided.py and configs/study/*.py import configs/*.py, found from the root."""
  error = ModuleNotFoundError("No module named 'configs'", name="configs")
  message = cli._flag_error(error, ["--config=/elsewhere/configs/demo_guided.py"])
  assert message == (
      "--config=/elsewhere/configs/demo_guided.py imports configs, which is found from the "
      "repository's root: run the command from there (configs that build on others, such as "
      "configs/demo_guided.py and configs/study/*.py, import configs/*.py)")
  other = ModuleNotFoundError("No module named 'yaml'", name="yaml")
  assert cli._flag_error(other, []) == "ModuleNotFoundError: No module named 'yaml'"
