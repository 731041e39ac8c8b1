"""Every config value checked at start-up, before anything is written or compiled.

`validate(config)` raises one `UserError` naming each bad key, its value and
what is allowed. The choices come from the modules that implement them (the
dtypes, remat policies and attention kernels of the model, the templates, the
noise distributions, the schedules, the mesh axes). Checks that need the data
or the model (the prompt template against data.max_length, a batch against
the devices, a prompt against the model's positions) stay where those are read;
`check_model` holds the config against the model's config.json.
"""

from __future__ import annotations

import logging
import numbers
import os
from typing import Callable

import ml_collections

from neft_jax.errors import UserError

log = logging.getLogger(__name__)

Check = Callable[[object], "str | None"]  # None when the value is good, else what is allowed


def integer(low: int | None = None, *, or_value: int | None = None) -> Check:
  """An int (not a bool) >= low; `or_value` is one more value allowed (mesh sizes: -1)."""
  def check(value):
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
      return "must be an integer" + (f" >= {low}" if low is not None else "")
    if or_value is not None and value == or_value:
      return None
    if low is not None and value < low:
      return (f"must be {or_value} or an integer >= {low}" if or_value is not None
              else f"must be an integer >= {low}")
    return None
  return check


def number(low: float | None = None, high: float | None = None, *, low_open: bool = False,
           high_open: bool = False) -> Check:
  """An int or float in the interval [low, high] (open at either end as asked)."""
  if low is not None and high is not None:
    allowed = f"in {'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"
  elif low is not None:
    allowed = f"{'>' if low_open else '>='} {low:g}"
  else:
    allowed = ""

  def check(value):
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
      return f"must be a number {allowed}".rstrip()
    too_low = low is not None and (value <= low if low_open else value < low)
    too_high = high is not None and (value >= high if high_open else value > high)
    return f"must be {allowed}" if too_low or too_high else None
  return check


def lora_dropout(value) -> str | None:
  if isinstance(value, numbers.Real) and not isinstance(value, bool) and value == 0:
    return None
  return ("must be 0: dropout on the adapters' input is not supported; the decoder's dropout "
          "sites (dropout.mode, dropout.rate) work with LoRA")


def boolean(value) -> str | None:
  return None if isinstance(value, bool) else "must be True or False"


def text(value) -> str | None:
  return None if isinstance(value, str) else "must be a string"


def name(value) -> str | None:
  return None if isinstance(value, str) and value else "must be a non-empty string"


def one_of(choices) -> Check:
  choices = tuple(choices)

  def check(value):
    return None if value in choices else f"is not one of {', '.join(map(repr, choices))}"
  return check


def held_out_size(value) -> str | None:
  """data.eval_size: a count (a whole number >= 1) or a fraction in [0, 1)."""
  problem = number(0)(value)
  if problem:
    return problem
  if value >= 1 and value != int(value):
    return "must be a fraction below 1 or a whole count of records"
  return None


def names(value) -> tuple[str, ...]:
  """A tuple of names from a tuple or list of strings, each possibly comma-separated
  (`--config.data.labels=negative,positive` arrives as one string)."""
  if isinstance(value, str):
    value = (value,)
  return tuple(part.strip() for item in value for part in str(item).split(",") if part.strip())


def name_list(choices=None, *, distinct: bool = True) -> Check:
  """A tuple of names (see `names`), each one of `choices` if given."""
  def check(value):
    allowed = "must be a tuple of names" + (f" from {', '.join(choices)}" if choices else "")
    if not isinstance(value, (str, list, tuple)) or not all(isinstance(v, str) for v in
                                                            ((value,) if isinstance(value, str) else value)):
      return allowed
    found = names(value)
    unknown = [n for n in found if choices and n not in choices]
    if unknown:
      return f"has unknown {unknown[0]!r}; {allowed}"
    if distinct and len(set(found)) != len(found):
      return f"names {next(n for n in found if found.count(n) > 1)!r} twice; list each once"
    return None
  return check


def existing_paths(value) -> str | None:
  """data.exclude: a tuple of local files or folders that exist ({...} placeholders are
  filled later, so those are checked when read)."""
  problem = name_list(distinct=True)(value)
  if problem:
    return problem.replace("names", "paths", 1)
  missing = [p for p in names(value) if "{" not in p and not os.path.exists(p)]
  if missing:
    return (f"names {missing[0]!r}, which does not exist; give local files (.txt, .json, "
            ".jsonl, .csv, .parquet) or an rt-polarity folder, or drop it from data.exclude")
  return None


def sharding_rules(mesh_axes) -> Check:
  """(logical name, None | mesh axis | mesh axes) pairs."""
  def check(value):
    allowed = (f"must be (logical name, mesh axes) pairs, the mesh axes None, one of "
               f"{', '.join(map(repr, mesh_axes))} or a tuple of them")
    if not isinstance(value, (list, tuple)):
      return allowed
    for rule in value:
      if not isinstance(rule, (list, tuple)) or len(rule) != 2 or not isinstance(rule[0], str):
        return f"{allowed}; {rule!r} is not"
      axes = rule[1]
      axes = () if axes is None else (axes,) if isinstance(axes, str) else axes
      if not isinstance(axes, (list, tuple)) or any(a not in mesh_axes for a in axes):
        return f"{allowed}; {tuple(rule)!r} is not"
    return None
  return check


def site_types(choices) -> Check:
  """A comma-separated list of distinct names from `choices` (it may be empty)."""
  def check(value):
    if not isinstance(value, str):
      return f"must be a comma-separated string of {', '.join(choices)}"
    names = [n.strip() for n in value.split(",") if n.strip()]
    unknown = [n for n in names if n not in choices]
    if unknown or len(set(names)) != len(names):
      return (f"has {'unknown' if unknown else 'repeated'} site type "
              f"{(unknown or names)[0]!r}; use a comma-separated list of {', '.join(choices)}")
    return None
  return check


def rules() -> dict[str, Check]:
  """The check of every config key (of defaults.base() and configs/demo.py's `demo`)."""
  from neft_jax import checkpoint, dropout, neftune, optim
  from neft_jax.data import conversations, noise, pipeline, templates
  from neft_jax.models.config import ATTENTION_IMPLEMENTATIONS, DTYPES, REMAT_POLICIES
  from neft_jax.sharding import MESH_AXES

  return {
      "seed": integer(0),
      "model.path": text,
      "model.tokenizer": text,
      "model.param_dtype": one_of(DTYPES),
      "model.dtype": one_of(DTYPES),
      "model.scan_layers": boolean,
      "model.remat": one_of(REMAT_POLICIES),
      "model.attention": one_of(ATTENTION_IMPLEMENTATIONS),
      "model.lora.rank": integer(0),
      "model.lora.alpha": number(0, low_open=True),
      "model.lora.dropout": lora_dropout,
      "model.lora.targets": text,
      "model.lora.base_dtype": one_of(DTYPES),
      "model.lora.init_seed": integer(0, or_value=-1),
      "model.lora.init_from": text,
      "data.path": text,
      "data.split": name,
      "data.format": one_of(pipeline.FORMATS),
      "data.eval_path": text,
      "data.eval_split": name,
      "data.eval_size": held_out_size,
      "data.template": one_of(templates.TEMPLATES),
      "data.train_on": one_of(conversations.TRAIN_ON),
      "data.max_length": integer(2),
      "data.packing": boolean,
      "data.fields.instruction": name,
      "data.fields.input": name,
      "data.fields.output": name,
      "data.fields.text": name,
      "data.fields.label": name,
      "data.fields.messages": text,
      "data.test_path": text,
      "data.test_split": name,
      "data.test_size": held_out_size,
      "data.split_seed": integer(0),
      "data.exclude": existing_paths,
      "data.train_fraction": number(0, 1, low_open=True),
      "data.labels": name_list(),
      "data.instruction": text,
      "data.noise.kind": one_of(("none",) + noise.KINDS),
      "data.noise.rate": number(0, 1),
      "data.noise.seed": integer(0, or_value=-1),
      "data.noise.fields": name_list(),
      "data.noise.label_noise": one_of(noise.LABEL_NOISE),
      "data.noise.typo_ops": name_list(noise.TYPO_OPS),
      "data.noise.grammar_ops": name_list(noise.GRAMMAR_OPS),
      "data.noise.eval": boolean,
      "neftune.alpha": number(0),
      "neftune.distribution": one_of(neftune.DISTRIBUTIONS),
      "dropout.mode": one_of(dropout.MODES),
      "dropout.rate": number(0, 1, high_open=True),
      "dropout.distribution": one_of(dropout.DISTRIBUTIONS),
      "dropout.sites": site_types(dropout.SITE_TYPES),
      "dropout.max_rate": number(0, 1, high_open=True),
      "dropout.min_rate": number(0, 1, high_open=True),
      "dropout.fisher": text,
      "fisher.data_path": text,
      "fisher.split": name,
      "fisher.text_field": name,
      "fisher.num_examples": integer(1),
      "fisher.max_length": integer(2),
      "fisher.batch_size": integer(1),
      "train.steps": integer(0),
      "train.epochs": integer(1),
      "train.batch_size": integer(1),
      "train.grad_accum_steps": integer(1),
      "train.loss_chunk_size": integer(0, or_value=-1),
      "train.log_every": integer(1),
      "train.eval_every": integer(0),
      "train.eval_at_start": boolean,
      "train.peak_tflops": number(0),
      "train.early_stopping.metric": text,
      "train.early_stopping.mode": one_of(checkpoint.MODES),
      "train.early_stopping.patience": integer(1),
      "train.early_stopping.min_delta": number(0),
      "optim.learning_rate": number(0, low_open=True),
      "optim.schedule": one_of(optim.SCHEDULES),
      "optim.warmup_ratio": number(0, 1, high_open=True),
      "optim.weight_decay": number(0),
      "optim.b1": number(0, 1, high_open=True),
      "optim.b2": number(0, 1, high_open=True),
      "optim.eps": number(0, low_open=True),
      "optim.grad_clip_norm": number(0),
      "eval.exact_match": boolean,
      "eval.exact_match_examples": integer(1),
      "eval.max_new_tokens": integer(1),
      "eval.show_answers": integer(0),
      "eval.metrics_prefix_tokens": integer(1),
      "eval.splits": name_list(("eval", "test")),
      "eval.loss": boolean,
      "generate.max_new_tokens": integer(1),
      "generate.temperature": number(0),
      "generate.top_k": integer(0),
      "generate.top_p": number(0, 1, low_open=True),
      "generate.repetition_penalty": number(0, low_open=True),
      "generate.batch_size": integer(1),
      "generate.seed": integer(0),
      "generate.truncate_prompts": boolean,
      "checkpoint.every_steps": integer(1),
      "checkpoint.max_to_keep": integer(1),
      "checkpoint.async_save": boolean,
      "checkpoint.keep_best.metric": text,
      "checkpoint.keep_best.mode": one_of(checkpoint.MODES),
      "checkpoint.keep_best.count": integer(1),
      "mesh.data": integer(1, or_value=-1),
      "mesh.fsdp": integer(1, or_value=-1),
      "mesh.tensor": integer(1, or_value=-1),
      "mesh.num_devices": integer(0),
      "sharding.rules": sharding_rules(MESH_AXES),
      # configs/demo.py: what the run makes before training
      "demo.train_examples": integer(1),
      "demo.eval_examples": integer(0),
      "demo.vocab_size": integer(1),
      "demo.min_merge_fraction": number(0, 1, low_open=True),
      "demo.model.embed_dim": integer(1),
      "demo.model.num_layers": integer(1),
      "demo.model.num_heads": integer(1),
      "demo.model.num_kv_heads": integer(1),
      "demo.model.head_dim": integer(1),
      "demo.model.mlp_dim": integer(1),
      "demo.model.max_positions": integer(2),
      "demo.model.initializer_range": number(0, low_open=True),
      # configs/pretrain_small.py: the tokenizer and model made from data.path's text
      "pretrain.vocab_size": integer(1),
      "pretrain.min_frequency": integer(1),
      "pretrain.model.embed_dim": integer(1),
      "pretrain.model.num_layers": integer(1),
      "pretrain.model.num_heads": integer(1),
      "pretrain.model.num_kv_heads": integer(1),
      "pretrain.model.head_dim": integer(1),
      "pretrain.model.mlp_dim": integer(1),
      "pretrain.model.max_positions": integer(2),
      "pretrain.model.initializer_range": number(0, low_open=True),
  }


def _lookup(config: ml_collections.ConfigDict, key: str):
  """(True, value) of a dotted key, or (False, None) when the config lacks it."""
  value = config
  for part in key.split("."):
    if not isinstance(value, (ml_collections.ConfigDict, dict)) or part not in value:
      return False, None
    value = value[part]
  return True, value


def problems(config: ml_collections.ConfigDict) -> list[str]:
  """What is wrong with `config`, one phrase per bad key ([] when all is well)."""
  found = []
  for key, check in rules().items():
    present, value = _lookup(config, key)
    if present:
      problem = check(value)
      if problem:
        found.append(f"{key}={value!r} {problem}")
  if "dropout" in config and not found and config.dropout.min_rate > config.dropout.max_rate:
    found.append(f"dropout.min_rate={config.dropout.min_rate!r} is more than "
                 f"dropout.max_rate={config.dropout.max_rate!r}")
  if "data" in config and not found:
    found += _data_problems(config.data, config.get("eval"))
  for section in ("demo", "pretrain"):  # the run's model is made from these: they must agree
    if section in config and not found:
      found += _made_model_problems(config, section)
  if "checkpoint" in config and "train" in config and not found:
    found += _selection_problems(config)
  if "pretrain" in config and not found and config.data.template not in ("text", "alpaca"):
    found.append(f"pretrain trains its tokenizer on data.path's text, which "
                 f"data.template={config.data.template!r} cannot render without one; set "
                 "data.template='text'")
  return found


def eval_metric_names(config: ml_collections.ConfigDict) -> list[str]:
  """The metrics every evaluation during training reports, by the config."""
  data, config_eval = config.data, config.get("eval", {})
  classification = data.get("format") == "classification"
  found = []
  if config_eval.get("loss", True) or not classification:
    found += ["eval_loss", "eval_token_accuracy"]
  if classification:
    found += ["eval_accuracy", "eval_macro_f1"]
  if config_eval.get("exact_match"):
    found.append("eval_exact_match")
  return found


def _selection_problems(config: ml_collections.ConfigDict) -> list[str]:
  """checkpoint.keep_best and train.early_stopping against the evaluations they rank."""
  from neft_jax.data import pipeline
  found = []
  for key, section in (("checkpoint.keep_best", config.checkpoint.get("keep_best")),
                       ("train.early_stopping", config.train.get("early_stopping"))):
    if not section or not section.metric:
      continue
    known = eval_metric_names(config)
    if section.metric not in known:
      found.append(f"{key}.metric={section.metric!r} is not a metric the evaluations report; "
                   f"use one of {known}")
    elif "data" in config and not pipeline.has_held_out(config.data):
      found.append(f"{key}.metric={section.metric!r} ranks held-out evaluations, but the data "
                   "has no eval split; set data.eval_path, or data.eval_size")
    elif "eval" not in names(config.get("eval", {}).get("splits", ("eval",))):
      found.append(f"{key}.metric={section.metric!r} ranks the eval split's evaluations, but "
                   "eval.splits leaves it out; add eval to eval.splits")
    elif key == "train.early_stopping" and not config.train.eval_every:
      found.append(f"{key}.metric={section.metric!r} needs evaluations during training; set "
                   "train.eval_every")
  return found


def _made_model_problems(config: ml_collections.ConfigDict, section: str) -> list[str]:
  """The model `section` (demo or pretrain) makes, against the rest of the config."""
  found, model = [], config[section].model
  if model.num_heads % model.num_kv_heads:
    found.append(f"{section}.model.num_heads={model.num_heads} is not a multiple of "
                 f"{section}.model.num_kv_heads={model.num_kv_heads}")
  if config.data.max_length > model.max_positions:
    found.append(f"data.max_length={config.data.max_length} is more than the {section} model's "
                 f"{section}.model.max_positions={model.max_positions}")
  if config.generate.max_new_tokens >= model.max_positions:
    found.append(f"generate.max_new_tokens={config.generate.max_new_tokens} leaves no room for "
                 f"a prompt in {section}.model.max_positions={model.max_positions}")
  return found


def _text_problems(data, config_eval) -> list[str]:
  """data.template='text' (plain text, loss on every token) against what needs prompts or labels."""
  found = []
  if data.get("format") == "classification":
    found.append("data.template='text' trains on plain text, but data.format='classification' "
                 "scores labels after a prompt; use data.template='alpaca' (or 'chat') for "
                 "classification, or data.format='instruction' for text")
  noise = data.get("noise")
  if noise is not None and noise.kind == "label":
    found.append("data.noise.kind='label' needs labels, but data.template='text' trains on plain "
                 "text, which has none; use data.noise.kind='typo' or 'grammar'")
  elif noise is not None and any(field != "text" for field in names(noise.fields)):
    found.append(f"data.noise.fields={list(names(noise.fields))} names a field plain text does "
                 "not have; with data.template='text' leave data.noise.fields empty or name text")
  if config_eval is not None and config_eval.get("exact_match"):
    found.append("eval.exact_match=True needs prompts to answer, but data.template='text' has "
                 "none; set eval.exact_match=False")
  return found


def _conversation_problems(data, config_eval) -> list[str]:
  """data.format='conversation' against what needs single-turn records."""
  from neft_jax.data import templates
  found = []
  if data.get("template") not in templates.CHAT_TEMPLATES:
    found.append(f"data.format='conversation' renders turns with a chat template, but "
                 f"data.template={data.get('template')!r}; use data.template='chat' (the "
                 "tokenizer's) or 'plain_chat'")
  noise = data.get("noise")
  if noise is not None and noise.kind != "none":
    found.append("data.noise corrupts instruction and classification records, not "
                 "conversations; set data.noise.kind='none' or use data.format='instruction'")
  if names(data.get("exclude", ())):
    found.append("data.exclude matches instruction records, not conversations; leave it empty "
                 "with data.format='conversation'")
  if config_eval is not None and config_eval.get("exact_match"):
    found.append("eval.exact_match=True answers single-turn prompts, not conversations; set "
                 "eval.exact_match=False")
  return found


def _data_problems(data, config_eval=None) -> list[str]:
  """Data keys that only make sense together (and eval's that depend on them)."""
  found = []
  labels = names(data.get("labels", ()))
  classification = data.get("format") == "classification"
  if classification and len(labels) < 2:
    found.append(f"data.format='classification' needs data.labels, the class names in order "
                 f"(two or more; got {list(labels)})")
  noise = data.get("noise")
  if data.get("template") == "text":
    found += _text_problems(data, config_eval)
    if found:
      return found
  if data.get("format") == "conversation":
    return _conversation_problems(data, config_eval)
  if noise is not None and noise.kind == "label" and len(labels) < 2:
    found.append("data.noise.kind='label' needs the label set: set data.labels to the class "
                 "names (two or more) the label field holds")
  if noise is not None and noise.kind != "none" and not noise.rate:
    log.warning("data.noise.kind=%r with data.noise.rate=0 changes nothing", noise.kind)
  if noise is not None and noise.kind in ("typo", "grammar") and not names(
      noise.typo_ops if noise.kind == "typo" else noise.grammar_ops):
    found.append(f"data.noise.{noise.kind}_ops is empty; choose one or more operations")
  return found


def check_model(config: ml_collections.ConfigDict, model_config) -> None:
  """The config against the model's own config.json (a ModelConfig): its positions."""
  length, positions = config.data.max_length, model_config.max_positions
  if length > positions:
    message = f"data.max_length={length} is more than the model's {positions} positions"
    if model_config.positions == "learned":  # a position past the table has no embedding
      raise UserError(f"{message}, which are learned; set data.max_length to at most {positions}")
    log.warning("%s; rotary positions past them were not pretrained", message)


def validate(config: ml_collections.ConfigDict) -> None:
  """Raises a UserError that lists every bad value of `config`, with what is allowed."""
  found = problems(config)
  if found:
    raise UserError("; ".join(found) + " (set them in the config file or with --config.KEY=VALUE)")
