"""Llama-2 (and the Llama layout Qwen2 shares): config and tensor names.

Rotary positions, RMSNorm, SwiGLU MLP, no biases, an untied head, and
grouped-query attention when num_key_value_heads < num_attention_heads.
"""

from __future__ import annotations

from neft_jax.models.config import ACTIVATIONS, ModelConfig, dtype_name
from neft_jax.models.mapping import HFConfig, HFTensor

MODEL_TYPE = "llama"
ARCHITECTURE = "LlamaForCausalLM"
BASE_PREFIX = "model."
# Buffers some checkpoints carry that are not weights.
IGNORED = (r"model\.layers\.\d+\.self_attn\.rotary_emb\.inv_freq",)


def config_from_hf(hf: HFConfig, family: str = MODEL_TYPE, **switches) -> ModelConfig:
  embed_dim = hf.get("hidden_size")
  num_heads = hf.get("num_attention_heads")
  activation = hf.get("hidden_act", "silu")
  if activation not in ACTIVATIONS:
    raise hf.unsupported("hidden_act", activation, f"supported: {sorted(ACTIVATIONS)}")
  attention_bias = hf.get("attention_bias", False)
  options = dict(
      family=family,
      vocab_size=hf.get("vocab_size"),
      embed_dim=embed_dim,
      num_layers=hf.get("num_hidden_layers"),
      num_heads=num_heads,
      num_kv_heads=hf.get("num_key_value_heads", num_heads),
      head_dim=hf.get("head_dim", embed_dim // num_heads),
      mlp_dim=hf.get("intermediate_size"),
      max_positions=hf.get("max_position_embeddings", 2048),
      norm="rmsnorm",
      norm_eps=hf.get("rms_norm_eps", 1e-6),
      positions="rope",
      rope_theta=hf.rope_theta(),
      mlp="gated",
      activation=activation,
      qkv_bias=attention_bias,
      out_bias=attention_bias,
      mlp_bias=hf.get("mlp_bias", False),
      tie_embeddings=hf.get("tie_word_embeddings", False),
      initializer_range=hf.get("initializer_range", 0.02),
      hf_dropout=(("attention_probs", float(hf.get("attention_dropout", 0.0))),),
      **hf.token_ids(),
  )
  options.update(switches)
  return ModelConfig(**options)


def config_to_hf(cfg: ModelConfig) -> dict:
  return {
      "architectures": [ARCHITECTURE],
      "model_type": MODEL_TYPE,
      "vocab_size": cfg.vocab_size,
      "hidden_size": cfg.embed_dim,
      "intermediate_size": cfg.mlp_dim,
      "num_hidden_layers": cfg.num_layers,
      "num_attention_heads": cfg.num_heads,
      "num_key_value_heads": cfg.num_kv_heads,
      "head_dim": cfg.head_dim,
      "hidden_act": cfg.activation,
      "max_position_embeddings": cfg.max_positions,
      "rms_norm_eps": cfg.norm_eps,
      "rope_theta": cfg.rope_theta,
      "rope_scaling": None,
      "attention_bias": cfg.qkv_bias,
      "attention_dropout": 0.0,
      "mlp_bias": cfg.mlp_bias,
      "tie_word_embeddings": cfg.tie_embeddings,
      "initializer_range": cfg.initializer_range,
      "bos_token_id": cfg.bos_token_id,
      "eos_token_id": list(cfg.eos_token_id) if isinstance(cfg.eos_token_id, tuple) else cfg.eos_token_id,
      "pad_token_id": cfg.pad_token_id,
      "dtype": dtype_name(cfg.param_dtype),
  }


def tensors(cfg: ModelConfig) -> list[HFTensor]:
  layer = "model.layers.{layer}."
  heads = (2, 1)  # our [heads, head_dim, embed] is HF's [heads * head_dim, embed]
  out = [
      HFTensor("model.embed_tokens.weight", ("embed",)),
      HFTensor(layer + "input_layernorm.weight", ("layers.attn_norm.scale",)),
      HFTensor(layer + "self_attn.q_proj.weight", ("layers.attn.query.kernel",), heads),
      HFTensor(layer + "self_attn.k_proj.weight", ("layers.attn.key.kernel",), heads),
      HFTensor(layer + "self_attn.v_proj.weight", ("layers.attn.value.kernel",), heads),
      HFTensor(layer + "self_attn.o_proj.weight", ("layers.attn.out.kernel",), (1, 2)),
      HFTensor(layer + "post_attention_layernorm.weight", ("layers.mlp_norm.scale",)),
      HFTensor(layer + "mlp.gate_proj.weight", ("layers.mlp.gate.kernel",)),
      HFTensor(layer + "mlp.up_proj.weight", ("layers.mlp.up.kernel",)),
      HFTensor(layer + "mlp.down_proj.weight", ("layers.mlp.down.kernel",)),
      HFTensor("model.norm.weight", ("final_norm.scale",)),
  ]
  if cfg.qkv_bias:
    out += [HFTensor(layer + f"self_attn.{p}_proj.bias", (f"layers.attn.{name}.bias",), (2,))
            for p, name in (("q", "query"), ("k", "key"), ("v", "value"))]
  if cfg.out_bias:
    out.append(HFTensor(layer + "self_attn.o_proj.bias", ("layers.attn.out.bias",)))
  if cfg.mlp_bias:
    out += [HFTensor(layer + f"mlp.{p}_proj.bias", (f"layers.mlp.{name}.bias",))
            for p, name in (("gate", "gate"), ("up", "up"), ("down", "down"))]
  if not cfg.tie_embeddings:
    out.append(HFTensor("lm_head.weight", ("lm_head",)))
  return out
