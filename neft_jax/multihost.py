"""Running as one of several processes: jax.distributed and preemption.

The same command runs on every TPU-VM worker or SLURM task. `initialize`
starts `jax.distributed` when the flags give a coordinator, or when the
environment is a multi-process TPU slice or SLURM job (JAX then finds the
coordinator itself). `Preemption` tells the training loop when every process
has agreed on a step at which to save and stop after a SIGTERM.
"""

from __future__ import annotations

import logging
import os
import signal

import jax
from jax.experimental import multihost_utils

log = logging.getLogger(__name__)


def _environment_is_multiprocess() -> bool:
  slurm_tasks = os.environ.get("SLURM_STEP_NUM_TASKS") or os.environ.get("SLURM_NTASKS")
  if slurm_tasks and int(slurm_tasks) > 1:
    return True
  tpu_hosts = os.environ.get("TPU_WORKER_HOSTNAMES", "")
  return "," in tpu_hosts


def initialize(coordinator_address: str | None = None, num_processes: int | None = None,
               process_id: int | None = None) -> bool:
  """Starts jax.distributed if asked for or detected; returns whether it did.

  Call before anything touches a JAX device.
  """
  explicit = coordinator_address is not None
  if not explicit and not _environment_is_multiprocess():
    return False
  # CPU processes exchange collectives over gloo (GPUs and TPUs have their own).
  jax.config.update("jax_cpu_collectives_implementation", "gloo")
  if explicit:
    jax.distributed.initialize(coordinator_address=coordinator_address,
                               num_processes=num_processes, process_id=process_id)
  else:
    jax.distributed.initialize()
  log.info("jax.distributed: process %d of %d, %d local of %d devices", jax.process_index(),
           jax.process_count(), jax.local_device_count(), jax.device_count())
  return True


class Preemption:
  """Whether to save and stop now, at a step every process agrees on.

  With several processes, JAX's preemption service catches SIGTERM and the
  processes agree on a step through the coordinator
  (`multihost_utils.reached_preemption_sync_point`). A single process catches
  SIGTERM itself. Once the stop is decided, further SIGTERMs are ignored, so a
  second one cannot interrupt the final checkpoint.
  """

  def __init__(self):
    self.requested = False
    self.distributed = jax.process_count() > 1
    if not self.distributed:
      signal.signal(signal.SIGTERM, self._on_sigterm)

  def _on_sigterm(self, signum, frame):
    self.requested = True

  def reached(self, step: int) -> bool:
    """Call at every step, on every process, in the same order."""
    if self.distributed:
      stop = multihost_utils.reached_preemption_sync_point(step)
    else:
      stop = self.requested
    if stop:
      signal.signal(signal.SIGTERM, signal.SIG_IGN)
      log.warning("preempted: saving a checkpoint at step %d and stopping", step)
    return stop

  def close(self) -> None:
    if not self.distributed and signal.getsignal(signal.SIGTERM) == self._on_sigterm:
      signal.signal(signal.SIGTERM, signal.SIG_DFL)
