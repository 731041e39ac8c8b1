"""Orbax checkpoints of a run: train state, root key and data position.

The train state is saved with StandardSave (arrays written collectively, each
process its own shards); the step, the root key's data and the data
iterator's position go into a small JSON item beside it.

Saves are asynchronous (training continues while arrays are written) and
collective across processes. `restore_latest` resumes from the newest
checkpoint that restores; a partial or corrupt one is skipped with a warning.
Orbax writes each step to a temporary folder and renames it when complete, so
an interrupted save never looks like a checkpoint.
"""

from __future__ import annotations

import logging
import os

import jax
import numpy as np
import orbax.checkpoint as ocp


class Checkpoints:
  def __init__(self, directory: str, *, max_to_keep: int | None = 3, async_save: bool = True):
    self.directory = os.path.abspath(directory)
    options = ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=True,
                                           enable_async_checkpointing=async_save)
    self.manager = ocp.CheckpointManager(self.directory, options=options)

  def steps(self) -> list[int]:
    return sorted(self.manager.all_steps())

  def save(self, step: int, state, root_key: jax.Array, data_state: dict) -> None:
    """Starts saving (returns before the arrays are on disk when async)."""
    key_data = np.asarray(jax.random.key_data(root_key)).tolist()
    self.manager.save(step, args=ocp.args.Composite(
        state=ocp.args.StandardSave(state),
        meta=ocp.args.JsonSave({"step": int(step), "data": data_state, "root_key": key_data})),
        force=True)

  def restore_latest(self, abstract_state, root_key: jax.Array):
    """(state, root_key, data_state) of the newest good checkpoint, or None.

    `abstract_state` gives the shapes, dtypes and shardings to restore into,
    so a checkpoint restores onto whatever mesh the run now has.
    """
    for step in reversed(self.steps()):
      try:
        restored = self.manager.restore(step, args=ocp.args.Composite(
            state=ocp.args.StandardRestore(abstract_state), meta=ocp.args.JsonRestore()))
      except Exception as e:  # partial or corrupt: fall back to the one before
        logging.warning("checkpoint %d in %s could not be restored (%s: %s); trying an older one",
                        step, self.directory, type(e).__name__, str(e).splitlines()[0] if str(e) else "")
        continue
      key = jax.random.wrap_key_data(np.asarray(restored.meta["root_key"], np.uint32),
                                     impl=jax.random.key_impl(root_key))
      return restored.state, key, restored.meta["data"]
    return None

  def reached_preemption(self, step: int) -> bool:
    return self.manager.reached_preemption(step)

  def wait(self) -> None:
    self.manager.wait_until_finished()

  def close(self) -> None:
    self.manager.wait_until_finished()
    self.manager.close()
