"""A run folder (a training job's workdir), read and written in one place.

    folder(workdir)                  the workdir as an absolute epath.Path (a bucket as given)
    in_bucket(path)                  whether a path is a bucket URL (gs://...), not a local path
    resolve(path, workdir)           a config path with {workdir} filled in
    write_config(workdir, config)    the resolved config as config.json
    load_config(workdir, config)     the config given, or the run's config.json over the defaults
    data_config(config, workdir)     config.data with its paths resolved
    tokenizer_path(config, workdir)  (path, config key) of the run's tokenizer
    checkpoints_dir(workdir)         where the run's Orbax checkpoints are
    trained_model(workdir, config, mesh, rules, step)   (decoder with the run's parameters, step)
    restore_params(workdir, config, abstract, step)     (step, the checkpoint's parameters)
    parse_step(text)                 a --step flag: a number, "best" or None (the latest)

The run's own files go through `etils.epath`, the path library Orbax uses, so a
workdir may be a local folder or a bucket (gs://bucket/run). Model and data
paths are read by their own loaders and stay local paths or hub ids.
"""

from __future__ import annotations

import json

import jax
import ml_collections
from etils import epath
from flax import nnx

from neft_jax import defaults, sharding
from neft_jax.checkpoint import Checkpoints, KeepBest
from neft_jax.errors import UserError
from neft_jax.models import hf_io

CONFIG_FILE = "config.json"
CHECKPOINTS = "checkpoints"


def folder(workdir) -> epath.Path:
  """The workdir as an absolute path; a bucket URL (gs://...) is absolute as given."""
  path = epath.Path(workdir)
  return path if path.is_absolute() else path.resolve()


def in_bucket(path) -> bool:
  """True for a bucket URL (gs://, s3://, ...): no appending, no local loaders."""
  return "://" in str(path)


def resolve(path: str, workdir) -> str:
  """A config path with `{workdir}` replaced by the run folder; "" stays ""."""
  return path.replace("{workdir}", str(workdir)) if path else path


def write_config(workdir, config: ml_collections.ConfigDict) -> None:
  (folder(workdir) / CONFIG_FILE).write_text(config.to_json_best_effort(indent=2))


def load_config(workdir, config: ml_collections.ConfigDict | None = None) -> ml_collections.ConfigDict:
  """The config given, or the config.json the run wrote, over the current defaults
  (so keys added since the run have their default)."""
  if config is not None:
    return config
  path = folder(workdir) / CONFIG_FILE
  if not path.exists():
    raise UserError(f"{workdir} has no {CONFIG_FILE}; give --config, or point --workdir at a "
                    "training run's workdir")
  config = defaults.base()
  config.update(json.loads(path.read_text()))
  return config


def data_config(config: ml_collections.ConfigDict, workdir) -> ml_collections.ConfigDict:
  """A copy of config.data with `path` and `eval_path` resolved against the workdir."""
  data = config.data.copy_and_resolve_references()
  with data.unlocked():
    data.path = resolve(data.path, workdir)
    data.eval_path = resolve(data.eval_path, workdir)
  return data


def tokenizer_path(config: ml_collections.ConfigDict, workdir) -> tuple[str, str]:
  """(path, the config key it comes from): model.tokenizer if set, else model.path."""
  if config.model.tokenizer:
    return resolve(config.model.tokenizer, workdir), "model.tokenizer"
  return resolve(config.model.path, workdir), "model.path"


def checkpoints_dir(workdir) -> epath.Path:
  return folder(workdir) / CHECKPOINTS


def trained_model(workdir, config: ml_collections.ConfigDict, mesh, rules,
                  step: int | str | None = None):
  """(model, step): the decoder with a run's parameters at `step` (a number, "best", or
  None: the latest).

  Only the parameters are read; the optimizer state stays on disk.
  """
  workdir = folder(workdir)
  model_path = resolve(config.model.path, workdir)
  model_config = hf_io.model_config(model_path, config.model, weights=False)
  if model_config.lora_rank:  # the checkpoints hold the adapters: the base comes from model.path
    return _lora_model(workdir, config, model_config, model_path, mesh, rules, step)
  graphdef, abstract = hf_io.abstract_model(model_config)
  shardings = sharding.tree_shardings(abstract, mesh, rules)
  abstract = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                          abstract, shardings)
  step, params = restore_params(workdir, config, abstract, step)
  return nnx.merge(graphdef, params), step


def parse_step(text: str | None) -> int | str | None:
  """A --step flag: a step number, "best" (checkpoint.keep_best's best), or None (the latest)."""
  if text is None or text == "best":
    return text
  try:
    step = int(text)
  except ValueError:
    step = -1
  if step < 0:
    raise UserError(f"--step={text}: give a checkpoint's step number, or best (the best "
                    "checkpoint by the run's checkpoint.keep_best metric)")
  return step


def restore_params(workdir, config: ml_collections.ConfigDict, abstract, step: int | str | None):
  """(step, the trained parameters at `step`) of a run's checkpoints, into `abstract`."""
  directory = checkpoints_dir(workdir)
  if not directory.is_dir():
    raise UserError(f"{workdir} has no {CHECKPOINTS} folder; point --workdir at a training run")
  checkpoints = Checkpoints(directory, read_only=True,
                            keep_best=KeepBest.from_config(config.get("checkpoint")))
  try:
    return checkpoints.restore_params(abstract, step)
  finally:
    checkpoints.close()


def _lora_model(workdir, config, model_config, model_path, mesh, rules, step):
  """trained_model of a LoRA run: its base from model.path, checked against the one it was
  trained on, with the checkpoint's adapters."""
  from neft_jax import lora_run
  if not checkpoints_dir(workdir).is_dir():
    raise UserError(f"{workdir} has no {CHECKPOINTS} folder; point --workdir at a training run")
  lora_run.check_base(workdir, model_path)
  frozen, shaped = lora_run.load(config, model_config, model_path, mesh, rules, fresh=False)
  abstract = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=a.sharding),
                          shaped)
  step, adapters = restore_params(workdir, config, abstract, step)
  graphdef = hf_io.abstract_trainable(model_config)[0]
  return nnx.merge(graphdef, adapters, frozen), step
