"""Orbax checkpoints of a run: parameters, optimizer state, root key and data position.

Each step holds three items: `params` and `optimizer` (the step counter and
optimizer state), saved with StandardSave (arrays written collectively, each
process its own shards), and `meta`, a small JSON item with the step, the root
key's data and the data iterator's position. Parameters restore on their own,
so evaluation and export never read the optimizer state.

Saves are asynchronous (training continues while arrays are written).
`restore_latest` resumes from the newest checkpoint that restores; a partial
or corrupt one is skipped with a warning. Orbax writes each step to a
temporary folder and renames it when complete, so an interrupted save never
looks like a checkpoint.
"""

from __future__ import annotations

import logging
import os

import jax
import numpy as np
import orbax.checkpoint as ocp

from neft_jax.errors import UserError


class Checkpoints:
  def __init__(self, directory: str, *, max_to_keep: int | None = 3, async_save: bool = True,
               read_only: bool = False):
    self.directory = os.path.abspath(directory)
    options = ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=not read_only,
                                           read_only=read_only,
                                           enable_async_checkpointing=async_save)
    self.manager = ocp.CheckpointManager(self.directory, options=options)

  def steps(self) -> list[int]:
    return sorted(self.manager.all_steps())

  def save(self, step: int, state, root_key: jax.Array, data_state: dict) -> None:
    """Starts saving (returns before the arrays are on disk when async)."""
    key_data = np.asarray(jax.random.key_data(root_key)).tolist()
    self.manager.save(step, args=ocp.args.Composite(
        params=ocp.args.StandardSave(state.params),
        optimizer=ocp.args.StandardSave({"step": state.step, "opt_state": state.opt_state}),
        meta=ocp.args.JsonSave({"step": int(step), "data": data_state, "root_key": key_data})),
        force=True)

  def restore_latest(self, abstract_state, root_key: jax.Array):
    """(state, root_key, data_state) of the newest good checkpoint, or None.

    `abstract_state` (a TrainState of ShapeDtypeStructs with shardings) gives
    the shapes, dtypes and shardings to restore into, so a checkpoint restores
    onto whatever mesh the run now has.
    """
    optimizer = {"step": abstract_state.step, "opt_state": abstract_state.opt_state}
    for step in reversed(self.steps()):
      try:
        restored = self.manager.restore(step, args=ocp.args.Composite(
            params=ocp.args.StandardRestore(abstract_state.params),
            optimizer=ocp.args.StandardRestore(optimizer), meta=ocp.args.JsonRestore()))
      except Exception as e:  # partial or corrupt: fall back to the one before
        logging.warning("checkpoint %d in %s could not be restored (%s: %s); trying an older one",
                        step, self.directory, type(e).__name__, str(e).splitlines()[0] if str(e) else "")
        continue
      key = jax.random.wrap_key_data(np.asarray(restored.meta["root_key"], np.uint32),
                                     impl=jax.random.key_impl(root_key))
      state = abstract_state.replace(step=restored.optimizer["step"], params=restored.params,
                                     opt_state=restored.optimizer["opt_state"])
      return state, key, restored.meta["data"]
    return None

  def restore_params(self, abstract_params, step: int | None = None):
    """(step, parameters) of `step` or of the latest checkpoint; the optimizer stays on disk."""
    steps = self.steps()
    if not steps:
      raise UserError(f"{self.directory} has no checkpoint; train first, or point --workdir "
                      "at a run that saved one")
    if step is None:
      step = steps[-1]
    elif step not in steps:
      raise UserError(f"no checkpoint for step {step} in {self.directory}; the steps saved are {steps}")
    restored = self.manager.restore(step, args=ocp.args.Composite(
        params=ocp.args.StandardRestore(abstract_params)))
    return step, restored.params

  def close(self) -> None:
    self.manager.wait_until_finished()
    self.manager.close()


def run_config(workdir: str, config=None):
  """The run's config: the one given, or the config.json the run wrote (over the
  current defaults, so keys added since the run have their default)."""
  if config is not None:
    return config
  import json

  from neft_jax import defaults
  path = os.path.join(workdir, "config.json")
  if not os.path.exists(path):
    raise UserError(f"{workdir} has no config.json; give --config, or point --workdir at a "
                    "training run's workdir")
  with open(path) as f:
    saved = json.load(f)
  config = defaults.base()
  config.update(saved)
  return config


def trained_model(workdir: str, config, mesh, rules, step: int | None = None):
  """(model, step): the decoder with a run's parameters at `step` (default: the latest)."""
  from flax import nnx

  from neft_jax import sharding
  from neft_jax.models import hf_io

  model_path = config.model.path.replace("{workdir}", os.path.abspath(workdir))
  model_config = hf_io.model_config(model_path, config.model, weights=False)
  graphdef, abstract = hf_io.abstract_model(model_config)
  shardings = sharding.tree_shardings(abstract, mesh, rules)
  abstract = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                          abstract, shardings)
  directory = os.path.join(workdir, "checkpoints")
  if not os.path.isdir(directory):
    raise UserError(f"{workdir} has no checkpoints folder; point --workdir at a training run")
  checkpoints = Checkpoints(directory, read_only=True)
  try:
    step, params = checkpoints.restore_params(abstract, step)
  finally:
    checkpoints.close()
  return nnx.merge(graphdef, params), step
