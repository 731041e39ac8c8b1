"""How far fine-tuning moved the weights: per tensor, per module kind, per block.

For base weights W_b and tuned weights W_t the change is the relative Frobenius
distance ||W_t - W_b|| / ||W_b|| and the cosine <W_t, W_b> / (||W_t|| ||W_b||).
Block parameters (names under `layers.`) carry a leading [layers] axis, so they
are measured layer by layer. The sums are taken in float64, tensor slice by
slice, so a cosine a hair below 1 is not lost to float32 rounding.

Parameter names are those of `neft_jax.models.transformer` flattened with dots
(`layers.attn.query.kernel`, `embed`, `final_norm.scale`, ...). A model with tied
embeddings has no `lm_head`, so no "head" kind: its head is the embedding.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping

import numpy as np
from flax import nnx

from neft_jax.errors import UserError

# Parameter name prefix -> module kind. Biases go with their projection's kind.
KIND_OF_PARAMETER = (
    ("layers.attn.query.", "q"),
    ("layers.attn.key.", "k"),
    ("layers.attn.value.", "v"),
    ("layers.attn.out.", "o"),
    ("layers.mlp.gate.", "gate"),
    ("layers.mlp.up.", "up"),
    ("layers.mlp.down.", "down"),
    ("layers.attn_norm.", "norm"),
    ("layers.mlp_norm.", "norm"),
    ("final_norm.", "norm"),
    ("embed", "embedding"),
    ("pos_embed", "embedding"),
    ("lm_head", "head"),
)
KINDS = ("q", "k", "v", "o", "gate", "up", "down", "norm", "embedding", "head", "other")
# The kinds whose concatenation makes a block's attention and MLP (norms apart).
BLOCK_KINDS = {"attention": ("q", "k", "v", "o"), "mlp": ("gate", "up", "down")}

_CHUNK = 1 << 22  # elements summed at a time in float64 (32 MiB per operand)


def kind_of(name: str) -> str:
  """The module kind of parameter `name`; "other" for a name outside our tree."""
  for prefix, kind in KIND_OF_PARAMETER:
    if name == prefix or (prefix.endswith(".") and name.startswith(prefix)):
      return kind
  return "other"


@dataclasses.dataclass(frozen=True)
class Change:
  """Sums over some weights: base^2, tuned^2, base*tuned, (tuned - base)^2."""
  base_squared: float = 0.0
  tuned_squared: float = 0.0
  product: float = 0.0
  difference_squared: float = 0.0

  def __add__(self, other: Change) -> Change:
    return Change(*(a + b for a, b in zip(dataclasses.astuple(self), dataclasses.astuple(other))))

  @property
  def relative(self) -> float:
    """||W_t - W_b|| / ||W_b||: 0 when equal, inf when only the base is all zero."""
    if self.difference_squared == 0.0:
      return 0.0
    if self.base_squared == 0.0:
      return math.inf
    return math.sqrt(self.difference_squared / self.base_squared)

  @property
  def cosine(self) -> float:
    """<W_t, W_b> / (||W_t|| ||W_b||): 1 when equal (zero ones too), nan when only one is zero."""
    if self.difference_squared == 0.0:
      return 1.0
    if self.base_squared == 0.0 or self.tuned_squared == 0.0:
      return math.nan
    return self.product / math.sqrt(self.base_squared * self.tuned_squared)


@dataclasses.dataclass(frozen=True)
class WeightChange:
  """The change of every tensor, module kind and block.

  Keys are (name, layer): layer is the block index for `layers.` parameters
  and None for the others (embeddings, final norm, head).
    tensors: parameter name -> its change (layer by layer for block tensors)
    kinds:   module kind (KINDS) -> the change over the concatenation of its tensors
    blocks:  "attention" (q, k, v, o) or "mlp" (gate, up, down) -> the change
             over the concatenation of those tensors, per layer
  """
  tensors: dict[tuple[str, int | None], Change]
  kinds: dict[tuple[str, int | None], Change]
  blocks: dict[tuple[str, int], Change]

  def rows(self) -> list[dict]:
    """Tidy rows {level, name, layer, metric, value}: level "tensor", "kind" or "block",
    metric "relative_change" or "cosine"."""
    rows = []
    for level, table in (("tensor", self.tensors), ("kind", self.kinds), ("block", self.blocks)):
      for (name, layer), change in table.items():
        for metric, value in (("relative_change", change.relative), ("cosine", change.cosine)):
          rows.append({"level": level, "name": name, "layer": layer, "metric": metric,
                       "value": value})
    return rows


def flat_parameters(params) -> dict[str, object]:
  """name -> array for an nnx.State, a nested mapping or an already flat mapping."""
  if isinstance(params, nnx.State):
    return {".".join(str(p) for p in path): v.get_value() if isinstance(v, nnx.Variable) else v
            for path, v in nnx.to_flat_state(params)}
  flat = {}
  for key, value in params.items():
    if isinstance(value, Mapping):
      flat.update({f"{key}.{name}": v for name, v in flat_parameters(value).items()})
    else:
      flat[str(key)] = value.get_value() if isinstance(value, nnx.Variable) else value
  return flat


def check_same_architecture(base: dict, tuned: dict) -> None:
  """UserError naming the first tensor (in name order) missing from one side or
  shaped differently."""
  for name in sorted(set(base) | set(tuned)):
    if name not in tuned:
      raise UserError(f"tensor {name} is in the base model but not in the tuned one: compare "
                      "models of the same architecture")
    if name not in base:
      raise UserError(f"tensor {name} is in the tuned model but not in the base one: compare "
                      "models of the same architecture")
    base_shape, tuned_shape = tuple(np.shape(base[name])), tuple(np.shape(tuned[name]))
    if base_shape != tuned_shape:
      raise UserError(f"tensor {name} has shape {base_shape} in the base model and {tuned_shape} "
                      "in the tuned one: compare models of the same architecture and size")


def _change(base, tuned) -> Change:
  """The float64 sums over two equally shaped arrays, a chunk at a time."""
  base_flat, tuned_flat = np.ravel(base), np.ravel(tuned)
  sums = np.zeros(4)
  for start in range(0, base_flat.size, _CHUNK):
    b = base_flat[start:start + _CHUNK].astype(np.float64)
    t = tuned_flat[start:start + _CHUNK].astype(np.float64)
    d = t - b
    sums += (b @ b, t @ t, b @ t, d @ d)
  return Change(*map(float, sums))


def weight_change(base_params, tuned_params) -> WeightChange:
  """The change from `base_params` to `tuned_params` (nnx.State or mappings of
  name -> array, with our parameter names), per tensor, module kind and block.

  Raises UserError naming the first mismatching tensor when the two do not have
  the same tensor names and shapes.
  """
  base, tuned = flat_parameters(base_params), flat_parameters(tuned_params)
  check_same_architecture(base, tuned)
  tensors: dict[tuple[str, int | None], Change] = {}
  kinds: dict[tuple[str, int | None], Change] = {}
  blocks: dict[tuple[str, int], Change] = {}
  for name in sorted(base):
    kind = kind_of(name)
    base_array, tuned_array = np.asarray(base[name]), np.asarray(tuned[name])  # to the host
    stacked = name.startswith("layers.")
    for layer in range(base_array.shape[0]) if stacked else [None]:
      change = (_change(base_array[layer], tuned_array[layer]) if stacked
                else _change(base_array, tuned_array))
      tensors[(name, layer)] = change
      kinds[(kind, layer)] = kinds.get((kind, layer), Change()) + change
      for block, block_kinds in BLOCK_KINDS.items():
        if stacked and kind in block_kinds:
          blocks[(block, layer)] = blocks.get((block, layer), Change()) + change
  return WeightChange(tensors, dict(sorted(kinds.items(), key=_kind_order)),
                      dict(sorted(blocks.items(), key=lambda item: (item[0][1], item[0][0]))))


def _kind_order(item) -> tuple:
  (kind, layer), _ = item
  return (-1 if layer is None else layer, KINDS.index(kind))
