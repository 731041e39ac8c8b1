"""LoRA adapters (Hu et al. 2021) on the decoder's projections, as PEFT defines them.

With `ModelConfig.lora_rank` r > 0, every targeted projection y = W x (+ b) of
every layer becomes

    y = W x (+ b) + (alpha / r) * B (A x)

with A [r, in] drawn Kaiming-uniform (bound 1/sqrt(in), what PEFT's
`kaiming_uniform_(a=sqrt(5))` gives) and B [out, r] zeros, so a fresh adapter
changes nothing. A and B are `LoRAParam`s, an `nnx.Param` subclass, so

    nnx.split(model, LoRAParam, ...)   -> graphdef, adapters, frozen base

separates what is trained from what is not. They carry logical axes like the
kernel they adapt, with `lora_rank` (never sharded) for r: A is [lora_rank,
<the kernel's input axes>], B [<its output axes>, lora_rank].

Targets are named by the decoder's projections: query, key, value, out
(attention), gate, up, down (MLP; gate only in gated MLPs). `targets("all", cfg)`
is every projection the family has.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from flax import nnx

from neft_jax.errors import UserError

ATTENTION = ("query", "key", "value", "out")
MLP = ("gate", "up", "down")
RANK_AXIS = "lora_rank"


class LoRAParam(nnx.Param):
  """A LoRA factor (A or B): with model.lora.rank > 0, the only parameters trained."""


def family_projections(mlp: str) -> tuple[str, ...]:
  """Every projection of a decoder whose MLP is `mlp` ("gated" or "plain")."""
  return ATTENTION + (MLP if mlp == "gated" else MLP[1:])


def targets(spec, mlp: str, family: str = "") -> tuple[str, ...]:
  """The projections `spec` names: "all", or names separated by commas (or a sequence),
  in the decoder's order. An unknown name or one the family lacks is a UserError."""
  known = family_projections(mlp)
  if isinstance(spec, str):
    names = known if spec.strip() == "all" else [s.strip() for s in spec.split(",") if s.strip()]
  else:
    names = [str(s).strip() for s in spec]
  if not names:
    raise UserError("model.lora.targets is empty; give 'all' or projections such as "
                    f"'query,value' (this model has {', '.join(known)})")
  for name in names:
    if name not in known:
      where = f"a {family} model" if family else "this model"
      raise UserError(f"model.lora.targets names {name!r}, which {where} does not have; its "
                      f"projections are {', '.join(known)} (or 'all')")
  return tuple(name for name in known if name in names)


def init_a(key, shape, dtype, fan_in: int) -> jax.Array:
  """PEFT's A: U(-1/sqrt(fan_in), 1/sqrt(fan_in))."""
  bound = 1.0 / math.sqrt(fan_in)
  return jax.random.uniform(key, shape, jnp.float32, -bound, bound).astype(dtype)


def einsum_equations(equation: str) -> tuple[str, str, str]:
  """For a projection's "<x>,<kernel>-><out>" einsum: (A's, B's, the merge's) equations.

  "btd,nhd->btnh" gives ("btd,rd->btr", "btr,nhr->btnh", "nhr,rd->nhd"): x through A
  to the rank, then through B to the output, and B A as a kernel-shaped update.
  """
  inputs, out = equation.split("->")
  x_axes, k_axes = inputs.split(",")
  r = next(c for c in "rzyxwq" if c not in equation)
  contracted = "".join(a for a in x_axes if a in k_axes)
  free = "".join(a for a in k_axes if a not in contracted)
  batch = x_axes[:len(x_axes) - len(contracted)]
  return (f"{x_axes},{r}{contracted}->{batch}{r}", f"{batch}{r},{free}{r}->{out}",
          f"{free}{r},{r}{contracted}->{k_axes}")


def factor_shapes(equation: str, kernel_shape, kernel_axes, rank: int):
  """((A's shape, A's axes), (B's shape, B's axes), fan_in) for a projection's kernel."""
  inputs, _ = equation.split("->")
  x_axes, k_axes = inputs.split(",")
  contracted = [a for a in x_axes if a in k_axes]
  free = [a for a in k_axes if a not in contracted]
  size = dict(zip(k_axes, kernel_shape))
  axis = dict(zip(k_axes, kernel_axes))
  a = ((rank, *[size[c] for c in contracted]), (RANK_AXIS, *[axis[c] for c in contracted]))
  b = ((*[size[f] for f in free], rank), (*[axis[f] for f in free], RANK_AXIS))
  return a, b, math.prod(size[c] for c in contracted)


def model_options(section, mlp: str, family: str) -> dict:
  """ModelConfig options of a config's `model.lora` section: {} with rank 0, else the
  rank, alpha, targets (checked against the family) and the frozen base's dtype."""
  if not section or not section.get("rank"):
    return {}
  return {"lora_rank": int(section["rank"]), "lora_alpha": float(section["alpha"]),
          "lora_targets": targets(section.get("targets", "all"), mlp, family),
          "param_dtype": section.get("base_dtype", "bfloat16")}
