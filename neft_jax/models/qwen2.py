"""Qwen2: the Llama layout plus q/k/v biases, rope_theta from the config, and
a tied or untied head as the config says. Sliding-window attention is rejected
when the config turns it on for any layer.
"""

from __future__ import annotations

from neft_jax.models import llama
from neft_jax.models.config import ModelConfig
from neft_jax.models.mapping import HFConfig

MODEL_TYPE = "qwen2"
ARCHITECTURE = "Qwen2ForCausalLM"
BASE_PREFIX = llama.BASE_PREFIX
IGNORED = llama.IGNORED
tensors = llama.tensors


def config_from_hf(hf: HFConfig) -> ModelConfig:
  num_layers = hf.get("num_hidden_layers")
  layer_types = hf.get("layer_types", None)  # transformers >= 5
  if layer_types and any(t != "full_attention" for t in layer_types):
    raise hf.unsupported("layer_types", layer_types, "sliding-window attention is not implemented")
  if hf.get("use_sliding_window", False) and hf.get("max_window_layers", num_layers) < num_layers:
    raise hf.unsupported("use_sliding_window", True,
                         "sliding-window attention is not implemented; set it to false "
                         "if the window is longer than your sequences")
  # Qwen2 has biases on q, k and v only, whatever attention_bias says.
  return llama.config_from_hf(hf, family=MODEL_TYPE, qkv_bias=True, out_bias=False,
                              tie_embeddings=hf.get("tie_word_embeddings", False))


def config_to_hf(cfg: ModelConfig) -> dict:
  values = llama.config_to_hf(cfg)
  for key in ("attention_bias", "mlp_bias", "head_dim"):
    values.pop(key)
  values.update(
      architectures=[ARCHITECTURE],
      model_type=MODEL_TYPE,
      use_sliding_window=False,
      sliding_window=None,
      max_window_layers=cfg.num_layers,
      layer_types=["full_attention"] * cfg.num_layers,
  )
  return values
