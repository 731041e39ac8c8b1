"""Logical axis names -> mesh axes.

Models name the dimensions of their parameters and activations with logical
names (`vocab`, `embed`, `heads`, `kv_heads`, `head_dim`, `mlp`, `layers`,
`batch`, `length`, ...). A list of rules, kept in the config, maps each name to
mesh axes; the first rule whose mesh axes are still free and divide the
dimension wins, and a name with no usable rule is replicated. Mesh axes of size
1 are left out of the specs.

`mesh_from_config` builds a run's mesh and rules from its config's `mesh` and
`sharding` sections; `batch_sharding` and `global_batch` place each process's
rows of a batch on that mesh.
"""

from __future__ import annotations

import contextlib
import contextvars
import logging
import math
from typing import Sequence

import jax
import ml_collections
import numpy as np
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from neft_jax.errors import UserError

log = logging.getLogger(__name__)

# (logical name, mesh axis or axes or None), in priority order.
Rules = Sequence[tuple[str, str | tuple[str, ...] | None]]

DEFAULT_RULES: tuple = (
    ("batch", ("data", "fsdp")),
    ("embed", "fsdp"),
    ("vocab", "tensor"),
    ("heads", "tensor"),
    ("kv_heads", "tensor"),
    ("mlp", "tensor"),
    ("length", None),
    ("head_dim", None),
    ("layers", None),
    ("norm", None),
    ("positions", None),
    ("lora_rank", None),  # LoRA's rank: small, never sharded
)


def _as_tuple(mesh_axes) -> tuple[str, ...]:
  if mesh_axes is None:
    return ()
  return (mesh_axes,) if isinstance(mesh_axes, str) else tuple(mesh_axes)


def logical_to_spec(logical_axes: Sequence[str | None], rules: Rules,
                    shape: Sequence[int] | None = None, mesh: Mesh | None = None) -> PartitionSpec:
  """The PartitionSpec for dimensions named `logical_axes`.

  With `shape` and `mesh`, a rule is skipped when its mesh axes do not divide
  the dimension (e.g. 2 kv heads on a tensor axis of 8), so that dimension
  falls to the next rule or is replicated.
  """
  used: set[str] = set()
  spec = []
  for dim, name in enumerate(logical_axes):
    chosen = None
    for rule_name, mesh_axes in rules:
      if rule_name != name:
        continue
      axes = _as_tuple(mesh_axes)
      if mesh is not None:  # axes of size 1 (or absent) split nothing: leave them out
        axes = tuple(a for a in axes if mesh.shape.get(a, 1) > 1)
      if any(a in used for a in axes):
        continue
      if shape is not None and mesh is not None:
        if shape[dim] % math.prod(mesh.shape[a] for a in axes):
          continue
      chosen = axes
      break
    if chosen:
      used.update(chosen)
      spec.append(chosen[0] if len(chosen) == 1 else chosen)
    else:
      spec.append(None)
  return PartitionSpec(*spec)


MESH_AXES = ("data", "fsdp", "tensor")


def make_mesh(data: int = -1, fsdp: int = 1, tensor: int = 1, devices=None) -> Mesh:
  """A (data, fsdp, tensor) mesh over all devices; one size may be -1 for "the rest"."""
  devices = jax.devices() if devices is None else devices
  sizes = {"data": data, "fsdp": fsdp, "tensor": tensor}
  rest = [name for name, size in sizes.items() if size == -1]
  if len(rest) > 1:
    raise UserError(f"only one of mesh.data, mesh.fsdp, mesh.tensor may be -1, got {sizes}")
  known = math.prod(size for size in sizes.values() if size != -1)
  if any(size == 0 or size < -1 for size in sizes.values()) or len(devices) % known:
    raise UserError(f"mesh sizes {sizes} do not divide the {len(devices)} devices")
  if rest:
    sizes[rest[0]] = len(devices) // known
  if math.prod(sizes.values()) != len(devices):
    raise UserError(f"mesh sizes {sizes} use {math.prod(sizes.values())} devices, but there are "
                    f"{len(devices)}; set one of mesh.data, mesh.fsdp, mesh.tensor to -1")
  shape = tuple(sizes[name] for name in MESH_AXES)
  return jax.make_mesh(shape, MESH_AXES, devices=devices,
                       axis_types=(jax.sharding.AxisType.Auto,) * 3)


def mesh_from_config(config: ml_collections.ConfigDict) -> tuple[Mesh, tuple]:
  """(mesh, rules) of a run: `mesh.data`, `mesh.fsdp`, `mesh.tensor` and
  `mesh.num_devices`, and the `sharding.rules` as tuples."""
  devices = jax.devices()
  if config.mesh.num_devices:
    if jax.process_count() > 1:
      raise UserError("mesh.num_devices selects devices of a single process; leave it 0 "
                      "on a multi-process job")
    devices = devices[: config.mesh.num_devices]
  mesh = make_mesh(config.mesh.data, config.mesh.fsdp, config.mesh.tensor, devices)
  rules = tuple((name, tuple(axes) if isinstance(axes, (list, tuple)) else axes)
                for name, axes in config.sharding.rules)
  log.info("mesh %s over %d devices, %d processes", dict(mesh.shape), mesh.size,
           jax.process_count())
  return mesh, rules


def batch_sharding(mesh: Mesh, rules: Rules, leading_axes: int) -> NamedSharding:
  """Rows over the batch mesh axes; `leading_axes` unsharded axes in front (accumulation)."""
  spec = logical_to_spec(("batch",), rules, mesh=mesh)
  return NamedSharding(mesh, PartitionSpec(*([None] * leading_axes), spec[0], None))


def replicated(mesh: Mesh) -> NamedSharding:
  """Every device holds the whole array (small run-wide values, like dropout rates)."""
  return NamedSharding(mesh, PartitionSpec())


def split_ways(mesh: Mesh, rules: Rules, logical_axis: str, size: int | None = None) -> int:
  """Into how many pieces the rules split a dimension named `logical_axis` (of `size`)."""
  spec = logical_to_spec((logical_axis,), rules, None if size is None else (size,), mesh)
  return math.prod(mesh.shape[axis] for axis in _as_tuple(spec[0]))


def data_parallel_size(mesh: Mesh, rules: Rules) -> int:
  """How many ways the rows of a batch are split."""
  return split_ways(mesh, rules, "batch")


def global_batch(local: dict[str, np.ndarray], sharding: NamedSharding) -> dict[str, jax.Array]:
  """A batch of global arrays from each process's own rows (`batch_sharding`)."""
  return {name: jax.make_array_from_process_local_data(sharding, rows)
          for name, rows in local.items()}


def _is_variable(x) -> bool:
  return isinstance(x, nnx.Variable)


def tree_shardings(tree, mesh: Mesh, rules: Rules):
  """NamedShardings for any pytree of arrays or NNX Variables (abstract or concrete).

  A Variable is placed by its `logical_axes` metadata (so optimizer moments
  follow their parameters); any other leaf (a step counter, a key) is
  replicated.
  """
  def sharding_of(leaf):
    if not _is_variable(leaf):
      return NamedSharding(mesh, PartitionSpec())
    shape = leaf.get_value().shape
    axes = leaf.get_metadata("logical_axes", None) or (None,) * len(shape)
    return leaf.replace(NamedSharding(mesh, logical_to_spec(axes, rules, shape, mesh)))

  return jax.tree.map(sharding_of, tree, is_leaf=_is_variable)


_ACTIVE: contextvars.ContextVar = contextvars.ContextVar("neft_jax_sharding", default=None)


@contextlib.contextmanager
def activation_rules(mesh: Mesh, rules: Rules):
  """Within this context, `constrain` pins activations to the mesh."""
  token = _ACTIVE.set((mesh, tuple(rules)))
  try:
    yield
  finally:
    _ACTIVE.reset(token)


def constrain(x: jax.Array, logical_axes: Sequence[str | None]) -> jax.Array:
  """with_sharding_constraint by logical names; a no-op outside `activation_rules`."""
  active = _ACTIVE.get()
  if active is None:
    return x
  mesh, rules = active
  spec = logical_to_spec(logical_axes, rules, x.shape, mesh)
  return jax.lax.with_sharding_constraint(x, NamedSharding(mesh, spec))


def shard_count(logical_axis: str, size: int) -> int:
  """Into how many pieces `constrain` splits a dimension of `size` named
  `logical_axis` (1 outside `activation_rules`)."""
  active = _ACTIVE.get()
  return 1 if active is None else split_ways(*active, logical_axis, size)


def replicated_parameters(shardings, abstract_state, min_bytes: int = 1 << 24) -> list[str]:
  """Names of parameters of at least `min_bytes` that are whole on every device.

  On a mesh of several devices this is usually an accident (a dimension no
  rule maps, or one the mesh axes do not divide), and costs memory on every
  device; the caller warns about each.
  """
  found = []
  flat_shardings = dict(nnx.to_flat_state(shardings))
  for path, variable in nnx.to_flat_state(abstract_state):
    value = variable.get_value()
    sharding = flat_shardings[path].get_value()
    nbytes = value.size * value.dtype.itemsize
    if nbytes >= min_bytes and sharding.num_devices > 1 and sharding.is_fully_replicated:
      found.append(".".join(str(p) for p in path))
  return found
