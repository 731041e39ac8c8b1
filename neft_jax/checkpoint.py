"""Orbax checkpoints of a run: parameters, optimizer state, root key and data position.

Each step holds three items: `params` and `optimizer` (the step counter and
optimizer state), saved with StandardSave (arrays written collectively, each
process its own shards), and `meta`, a small JSON item with the step, the root
key's data and the data iterator's position. Parameters restore on their own,
so evaluation and export never read the optimizer state.

Saves are asynchronous (training continues while arrays are written).
`restore_latest` resumes from the newest checkpoint that restores; a partial
or corrupt one is skipped with a warning. One whose metadata (structure,
shapes, dtypes) does not fit the run's state is a UserError, decided before
restoring: Orbax itself would raise on some differences and cast dtypes
silently. Orbax writes each step to a temporary folder and renames it when
complete, so an interrupted save never looks like a checkpoint.

**Keep-best.** With `KeepBest(metric, mode, count)` (checkpoint.keep_best),
checkpoints saved with eval metrics are ranked by Orbax's own `best_fn` and
`BestN` preservation policy: the `count` best are kept beside the
`max_to_keep` latest (`LatestN`), and `best_step()` is Orbax's. The metrics
live in each step's folder, so the ranking survives a restart.

Reading a run folder (its config, its trained model) is `neft_jax.run`'s.
"""

from __future__ import annotations

import dataclasses
import logging

import jax
import numpy as np
import orbax.checkpoint as ocp
from etils import epath

from neft_jax.errors import UserError

log = logging.getLogger(__name__)

MODES = ("min", "max")


@dataclasses.dataclass(frozen=True)
class KeepBest:
  """checkpoint.keep_best: keep the `count` best checkpoints by eval `metric` (`mode` min or max)."""
  metric: str
  mode: str = "min"
  count: int = 1

  @classmethod
  def from_config(cls, section) -> "KeepBest | None":
    """The config's checkpoint.keep_best, or None when its metric is empty (off)."""
    keep = section.get("keep_best") if section is not None else None
    if not keep or not keep.get("metric"):
      return None
    return cls(keep.metric, keep.get("mode", "min"), keep.get("count", 1))

  def value(self, metrics) -> float:
    """The metric of a checkpoint's saved metrics (Orbax's best_fn)."""
    return float(metrics[self.metric])


class Checkpoints:
  def __init__(self, directory, *, max_to_keep: int | None = 3, async_save: bool = True,
               read_only: bool = False, keep_best: KeepBest | None = None):
    """`directory`: an absolute local path or a bucket URL (`run.checkpoints_dir`)."""
    self.directory = epath.Path(directory)
    self.keep_best = keep_best
    retention = dict(max_to_keep=None if read_only else max_to_keep)
    if keep_best is not None:  # the best by metric beside the latest, Orbax's policies both
      retention = dict(best_fn=keep_best.value, best_mode=keep_best.mode)
      if not read_only:
        policies = ocp.checkpoint_managers
        retention["preservation_policy"] = policies.AnyPreservationPolicy([
            policies.LatestN(n=max_to_keep),
            policies.BestN(get_metric_fn=keep_best.value, reverse=keep_best.mode == "min",
                           n=keep_best.count, keep_checkpoints_without_metrics=False)])
    options = ocp.CheckpointManagerOptions(
        create=not read_only,
        save_interval_steps=0 if read_only else 1,  # as Orbax sets them itself, with a warning
        read_only=read_only, enable_async_checkpointing=async_save, **retention)
    # Handlers named up front, so each item's metadata reads before any restore.
    self.manager = ocp.CheckpointManager(self.directory, options=options, item_handlers=dict(
        params=ocp.StandardCheckpointHandler(), optimizer=ocp.StandardCheckpointHandler(),
        meta=ocp.JsonCheckpointHandler()))
    self.unrestorable: list[int] = []  # steps restore_latest skipped as partial or corrupt

  def steps(self) -> list[int]:
    return sorted(self.manager.all_steps())

  def save(self, step: int, state, root_key: jax.Array, data_state: dict, *,
           metrics: dict | None = None, extra: dict | None = None) -> None:
    """Starts saving (returns before the arrays are on disk when async).

    `metrics`: the step's eval metrics, which keep-best ranks (None: a checkpoint
    kept only while it is among the latest). `extra`: more JSON for the meta item
    (the early-stopping state), given back by restore_latest.

    A partial or corrupt checkpoint that restore_latest skipped at this step is
    deleted first: the run has come back to its step and replaces it.
    """
    if step in self.unrestorable and step in self.manager.all_steps():
      log.warning("replacing checkpoint %d in %s, which could not be restored", step,
                  self.directory)
      self.manager.delete(step)
      self.unrestorable.remove(step)
    key_data = np.asarray(jax.random.key_data(root_key)).tolist()
    meta = {"step": int(step), "data": data_state, "root_key": key_data} | (extra or {})
    if self.keep_best is not None and metrics is not None:
      metrics = {name: float(value) for name, value in metrics.items()}
    else:
      metrics = None
    self.manager.save(step, args=ocp.args.Composite(
        params=ocp.args.StandardSave(state.params),
        optimizer=ocp.args.StandardSave({"step": state.step, "opt_state": state.opt_state}),
        meta=ocp.args.JsonSave(meta)), metrics=metrics, force=True)

  def restore_latest(self, abstract_state, root_key: jax.Array):
    """(state, root_key, meta) of the newest good checkpoint, or None; `meta` holds the
    data iterator's position under "data", and what `save` was given as `extra`.

    `abstract_state` (a TrainState of ShapeDtypeStructs with shardings) gives
    the shapes, dtypes and shardings to restore into, so a checkpoint restores
    onto whatever mesh the run now has.

    Before restoring, the newest checkpoint whose metadata reads is compared
    with `abstract_state` (tree structure, shapes, dtypes). One that does not
    fit, because the run's config changed the model or the optimizer, raises a
    UserError naming the first difference; nothing is restored, written or
    deleted. One that is partial or corrupt (metadata or arrays unreadable) is
    skipped with a warning, for the one before it.
    """
    optimizer = {"step": abstract_state.step, "opt_state": abstract_state.opt_state}
    expected = {"params": abstract_state.params, "optimizer": optimizer}
    self.unrestorable = []
    for step in reversed(self.steps()):
      try:
        saved = self._saved_arrays(step, expected)
      except Exception as e:  # partial or corrupt: fall back to the one before
        self._skip(step, e)
        continue
      difference = _first_difference(saved, _flat_arrays(expected))
      if difference:
        config_file = self.directory.parent / "config.json"
        raise UserError(
            f"checkpoint {step} in {self.directory} does not fit this run's state: {difference}; "
            f"resume with the config the run was started with ({config_file} shows it), "
            "or use another --workdir for this config")
      try:
        restored = self.manager.restore(step, args=ocp.args.Composite(
            params=ocp.args.StandardRestore(abstract_state.params),
            optimizer=ocp.args.StandardRestore(optimizer), meta=ocp.args.JsonRestore()))
      except Exception as e:  # arrays or meta unreadable: fall back to the one before
        self._skip(step, e)
        continue
      key = jax.random.wrap_key_data(np.asarray(restored.meta["root_key"], np.uint32),
                                     impl=jax.random.key_impl(root_key))
      state = abstract_state.replace(step=restored.optimizer["step"], params=restored.params,
                                     opt_state=restored.optimizer["opt_state"])
      return state, key, restored.meta
    return None

  def best_step(self) -> int:
    """The best step by keep-best's metric, as Orbax ranks them; a UserError without one."""
    if self.keep_best is None:
      raise UserError("--step=best needs a run trained with checkpoint.keep_best (a metric to "
                      "rank its checkpoints by); give a step number, or train with "
                      "--config.checkpoint.keep_best.metric=eval_loss")
    ranked = [step for step in self.steps() if self.manager.metrics(step) is not None]
    if not ranked:
      raise UserError(f"no checkpoint in {self.directory} was saved with eval metrics, so none "
                      f"is best; give a step number (the steps saved are {self.steps()})")
    return int(self.manager.best_step())

  def restore_params(self, abstract_params, step: int | str | None = None):
    """(step, parameters) of `step` (a number, or "best"), or of the latest checkpoint; the
    optimizer stays on disk."""
    steps = self.steps()
    if not steps:
      raise UserError(f"{self.directory} has no checkpoint; train first, or point --workdir "
                      "at a run that saved one")
    if step == "best":
      step = self.best_step()
    if step is None:
      step = steps[-1]
    elif step not in steps:
      raise UserError(f"no checkpoint for step {step} in {self.directory}; the steps saved are {steps}")
    difference = _first_difference(self._saved_arrays(step, {"params": abstract_params}),
                                   _flat_arrays({"params": abstract_params}))
    if difference:
      raise UserError(f"checkpoint {step} in {self.directory} does not fit the model of the "
                      f"run's config: {difference}; give the config the run was trained with")
    restored = self.manager.restore(step, args=ocp.args.Composite(
        params=ocp.args.StandardRestore(abstract_params)))
    return step, restored.params

  def _saved_arrays(self, step: int, items) -> dict:
    """{"item/path/in/tree": (shape, dtype)} of the arrays of `items`' names at `step`,
    from the checkpoint's metadata alone. Raises if any item's metadata is missing
    or unreadable (a partial or corrupt checkpoint)."""
    metadata = self.manager.item_metadata(step)
    trees = {}
    for name in items:
      item = metadata[name]  # KeyError: the item's folder is missing
      if item is None:
        raise ValueError(f"the metadata of {name!r} is missing")
      trees[name] = getattr(item, "tree", item)
    return _flat_arrays(trees)

  def _skip(self, step: int, error: Exception) -> None:
    message = str(error).splitlines()[0] if str(error) else ""
    log.warning("checkpoint %d in %s could not be restored (%s: %s); trying an older one",
                step, self.directory, type(error).__name__, message)
    self.unrestorable.append(step)

  def close(self) -> None:
    self.manager.wait_until_finished()
    self.manager.close()


def _flat_arrays(items: dict) -> dict:
  """{"item/a/0/b": (shape, dtype)} of the arrays (or their metadata) of each named
  tree, item by item, in tree order; the paths as Orbax names them (empty nodes have none)."""
  return {f"{name}/{path}": (tuple(leaf.shape), np.dtype(leaf.dtype))
          for name, tree in items.items()
          for path, leaf in ocp.tree.to_flat_dict(tree, sep="/").items()}


def _first_difference(saved: dict, expected: dict) -> str | None:
  """The first entry (in the run's tree order) where two {path: (shape, dtype)}
  trees differ, in words, with a count of the others; None when they agree."""
  def spelled(entry) -> str:
    shape, dtype = entry
    return f"{dtype.name}[{', '.join(map(str, shape))}]"

  differences = []
  for path, entry in expected.items():
    if path not in saved:
      differences.append(f"{path} is in this run's state but not in the checkpoint")
    elif saved[path] != entry:
      differences.append(f"{path} is {spelled(saved[path])} in the checkpoint but "
                         f"{spelled(entry)} in this run")
  differences += [f"the checkpoint has {path}, which this run's state does not"
                  for path in saved if path not in expected]
  if not differences:
    return None
  more = len(differences) - 1
  others = f" (and {more} more {'entry differs' if more == 1 else 'entries differ'})"
  return differences[0] + (others if more else "")
