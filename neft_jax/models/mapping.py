"""How a Hugging Face tensor maps onto the decoder's parameters.

A family (gpt2.py, llama.py, qwen2.py) describes its checkpoint as a list of
`HFTensor`s; hf_io.py streams tensors through them in both directions. The
same description gives the expected HF shape (for clear shape errors), the
load transform and the save transform, so the three cannot disagree.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Sequence

import numpy as np

from neft_jax.errors import UserError

LAYER = "{layer}"


@dataclasses.dataclass(frozen=True)
class HFTensor:
  """One tensor of a Hugging Face checkpoint.

  Attributes:
    name: its name in the checkpoint; "{layer}" stands for the layer index,
      and such a tensor fills slice [layer] of stacked parameters.
    params: our parameter paths ("layers.attn.query.kernel"). Several means the
      tensor is their concatenation along HF's first axis (before transposing),
      as GPT-2's fused c_attn is query, key and value.
    group: how many of our axes form each HF axis; None means one each. Our
      query kernel [heads, head_dim, embed] is HF's [heads * head_dim, embed]:
      group (2, 1).
    transpose: HF stores the matrix as [in, out] (GPT-2's Conv1D) while ours
      is [out, in].
  """

  name: str
  params: tuple[str, ...]
  group: tuple[int, ...] | None = None
  transpose: bool = False

  @property
  def per_layer(self) -> bool:
    return LAYER in self.name

  def hf_name(self, layer: int | None = None) -> str:
    return self.name.replace(LAYER, str(layer)) if self.per_layer else self.name

  def _grouped(self, shape: Sequence[int]) -> tuple[int, ...]:
    group = self.group or (1,) * len(shape)
    if sum(group) != len(shape):
      raise ValueError(f"group {group} does not cover shape {tuple(shape)} of {self.params}")
    grouped, start = [], 0
    for size in group:
      grouped.append(math.prod(shape[start:start + size]))
      start += size
    return tuple(grouped)

  def hf_shape(self, param_shapes: Sequence[Sequence[int]]) -> tuple[int, ...]:
    """The shape the checkpoint must have, from our (per-layer) parameter shapes."""
    grouped = [self._grouped(s) for s in param_shapes]
    shape = (sum(g[0] for g in grouped),) + grouped[0][1:]
    return shape[::-1] if self.transpose else shape

  def to_params(self, tensor: np.ndarray, param_shapes) -> list[np.ndarray]:
    """Splits and reshapes one HF tensor into our parameters (views when possible)."""
    if self.transpose:
      tensor = np.ascontiguousarray(tensor.T)
    sizes = [self._grouped(s)[0] for s in param_shapes]
    parts = np.split(tensor, np.cumsum(sizes)[:-1], axis=0) if len(sizes) > 1 else [tensor]
    return [part.reshape(shape) for part, shape in zip(parts, param_shapes)]

  def from_params(self, arrays: Sequence[np.ndarray]) -> np.ndarray:
    """The HF tensor from our parameters: the inverse of `to_params`."""
    grouped = [a.reshape(self._grouped(a.shape)) for a in arrays]
    tensor = np.concatenate(grouped, axis=0) if len(grouped) > 1 else grouped[0]
    return np.ascontiguousarray(tensor.T) if self.transpose else tensor


_MISSING = object()


class HFConfig:
  """Reads a config.json dict with errors that name the file and the field."""

  def __init__(self, values: dict, source: str):
    self.values, self.source = values, source

  def get(self, key: str, default: Any = _MISSING) -> Any:
    value = self.values.get(key, default)
    if value is _MISSING or (value is None and default is _MISSING):
      raise UserError(f"{self.source} has no {key!r}, which a {self.values.get('model_type')} "
                      f"model needs; add it or check the file is the model's config.json")
    return default if value is None else value

  def unsupported(self, key: str, value: Any, why: str) -> UserError:
    return UserError(f"{self.source}: {key}={value!r} is not supported by neft_jax ({why})")

  def rope_theta(self) -> float:
    """rope_theta, rejecting any rope scaling (transformers 4 and 5 spellings)."""
    params = self.values.get("rope_parameters") or {}
    scaling = self.values.get("rope_scaling")
    if scaling and scaling.get("rope_type", scaling.get("type", "default")) != "default":
      raise self.unsupported("rope_scaling", scaling, "only plain rotary positions are implemented")
    if params.get("rope_type", "default") != "default":
      raise self.unsupported("rope_parameters", params, "only plain rotary positions are implemented")
    return float(params.get("rope_theta", self.values.get("rope_theta", 10000.0)))

  def token_ids(self) -> dict:
    eos = self.values.get("eos_token_id")
    return dict(bos_token_id=self.values.get("bos_token_id"),
                eos_token_id=tuple(eos) if isinstance(eos, list) else eos,
                pad_token_id=self.values.get("pad_token_id"))
