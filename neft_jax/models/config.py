"""The configuration of the decoder: architecture switches plus run options.

GPT-2, Llama-2 and Qwen2 are one decoder with different switches. A family
module (gpt2.py, llama.py, qwen2.py) reads a Hugging Face config.json into a
`ModelConfig` and writes one back; the decoder reads only this dataclass.
"""

from __future__ import annotations

import dataclasses
from typing import Literal

import jax
import jax.numpy as jnp

from neft_jax.errors import UserError

# Activation names as Hugging Face spells them (transformers.activations).
ACTIVATIONS = {
    "gelu_new": lambda x: jax.nn.gelu(x, approximate=True),
    "gelu_pytorch_tanh": lambda x: jax.nn.gelu(x, approximate=True),
    "gelu": lambda x: jax.nn.gelu(x, approximate=False),
    "relu": jax.nn.relu,
    "silu": jax.nn.silu,
    "swish": jax.nn.silu,
}

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}

# jax.checkpoint policies by name; "none" keeps every activation (no remat),
# "full" saves nothing and recomputes the whole layer in the backward pass.
REMAT_POLICIES = {
    "none": None,
    "full": jax.checkpoint_policies.nothing_saveable,
    "dots": jax.checkpoint_policies.checkpoint_dots,
    "dots_no_batch": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
}

ATTENTION_IMPLEMENTATIONS = ("xla", "cudnn")


@dataclasses.dataclass(frozen=True)
class ModelConfig:
  """Everything the decoder needs; hashable, so it can be a static jit argument."""

  family: str  # "gpt2" | "llama" | "qwen2": which Hugging Face mapping to use.
  vocab_size: int
  embed_dim: int
  num_layers: int
  num_heads: int
  num_kv_heads: int
  head_dim: int
  mlp_dim: int
  max_positions: int
  norm: Literal["layernorm", "rmsnorm"] = "rmsnorm"
  norm_eps: float = 1e-6
  positions: Literal["learned", "rope"] = "rope"
  rope_theta: float = 10000.0
  mlp: Literal["gated", "plain"] = "gated"
  activation: str = "silu"
  qkv_bias: bool = False
  out_bias: bool = False
  mlp_bias: bool = False
  tie_embeddings: bool = False
  # Scale of the attention logits; None means 1/sqrt(head_dim).
  attention_scale: float | None = None
  bos_token_id: int | None = None
  eos_token_id: int | tuple[int, ...] | None = None
  pad_token_id: int | None = None
  initializer_range: float = 0.02
  # The checkpoint's own dropout, (site type, rate) pairs: what transformers
  # applies in training, and what dropout.mode="hf" applies.
  hf_dropout: tuple[tuple[str, float], ...] = ()

  # Run options: how the same weights are stored and computed.
  param_dtype: str = "float32"
  dtype: str = "float32"  # compute dtype of activations and matmuls
  scan_layers: bool = True
  remat: str = "none"
  attention: str = "xla"
  # LoRA (neft_jax.models.lora): rank 0 is off; alpha scales B A by alpha / rank.
  lora_rank: int = 0
  lora_alpha: float = 16.0
  lora_targets: tuple[str, ...] = ()
  lora_dtype: str = "float32"  # the adapters' parameters

  def __post_init__(self):
    check_option("param_dtype", self.param_dtype, DTYPES)
    check_option("dtype", self.dtype, DTYPES)
    check_option("remat", self.remat, REMAT_POLICIES)
    check_option("attention", self.attention, ATTENTION_IMPLEMENTATIONS)
    check_option("activation", self.activation, ACTIVATIONS)
    check_option("lora_dtype", self.lora_dtype, DTYPES)
    if self.num_heads % self.num_kv_heads:
      raise UserError(
          f"num_heads={self.num_heads} is not a multiple of "
          f"num_kv_heads={self.num_kv_heads}; grouped-query attention needs it to be."
      )

  @property
  def param_jnp_dtype(self):
    return DTYPES[self.param_dtype]

  @property
  def compute_jnp_dtype(self):
    return DTYPES[self.dtype]

  @property
  def lora_jnp_dtype(self):
    return DTYPES[self.lora_dtype]

  def with_options(self, **options) -> "ModelConfig":
    """Returns a copy with run options changed, rejecting unknown names."""
    unknown = sorted(set(options) - set(OPTION_NAMES))
    if unknown:
      raise UserError(
          f"unknown model option(s) {unknown}; the options are {list(OPTION_NAMES)}"
      )
    options = {k: (dtype_name(v) if k in ("param_dtype", "dtype", "lora_dtype") else v)
               for k, v in options.items() if v is not None}
    return dataclasses.replace(self, **options)

  def num_params(self) -> int:
    """Parameter count, with a tied head counted once."""
    e, h, m = self.embed_dim, self.head_dim, self.mlp_dim
    attn = e * h * (self.num_heads * 2 + self.num_kv_heads * 2)
    if self.qkv_bias:
      attn += h * (self.num_heads + 2 * self.num_kv_heads)
    if self.out_bias:
      attn += e
    mlp = (3 if self.mlp == "gated" else 2) * e * m
    if self.mlp_bias:
      mlp += (2 if self.mlp == "gated" else 1) * m + e
    norm = e * (2 if self.norm == "layernorm" else 1)
    layer = attn + mlp + 2 * norm
    total = self.num_layers * layer + norm + self.vocab_size * e
    if not self.tie_embeddings:
      total += self.vocab_size * e
    if self.positions == "learned":
      total += self.max_positions * e
    return total


OPTION_NAMES = ("param_dtype", "dtype", "scan_layers", "remat", "attention", "lora_rank",
                "lora_alpha", "lora_targets", "lora_dtype")


def check_option(name: str, value, choices) -> None:
  if value not in choices:
    raise UserError(f"model option {name}={value!r} is not supported; use one of {list(choices)}")


def dtype_name(dtype) -> str:
  """'bfloat16' for jnp.bfloat16, np.dtype('bfloat16') or the string itself."""
  if isinstance(dtype, str):
    return dtype
  return jnp.dtype(dtype).name
