"""GPT-2: config and tensor names.

Learned absolute positions, LayerNorm with bias, GELU (tanh approximation),
biases everywhere, a tied head (untied when the config says so), and q/k/v fused in one Conv1D stored [in, out].
"""

from __future__ import annotations

from neft_jax.models.config import ACTIVATIONS, ModelConfig, dtype_name
from neft_jax.models.mapping import HFConfig, HFTensor

MODEL_TYPE = "gpt2"
ARCHITECTURE = "GPT2LMHeadModel"
BASE_PREFIX = "transformer."
# The causal-mask buffers that old GPT-2 checkpoints (the hub's `gpt2`) carry.
IGNORED = (r"(transformer\.)?h\.\d+\.attn\.(masked_)?bias",)


def config_from_hf(hf: HFConfig) -> ModelConfig:
  embed_dim = hf.get("n_embd")
  num_heads = hf.get("n_head")
  activation = hf.get("activation_function", "gelu_new")
  if activation not in ACTIVATIONS:
    raise hf.unsupported("activation_function", activation, f"supported: {sorted(ACTIVATIONS)}")
  if hf.get("scale_attn_by_inverse_layer_idx", False):
    raise hf.unsupported("scale_attn_by_inverse_layer_idx", True, "not implemented")
  if hf.get("add_cross_attention", False):
    raise hf.unsupported("add_cross_attention", True, "neft_jax models are decoder-only")
  resid_pdrop = float(hf.get("resid_pdrop", 0.1))
  hf_dropout = (("embed", float(hf.get("embd_pdrop", 0.1))),
                ("attention_probs", float(hf.get("attn_pdrop", 0.1))),
                ("attention_output", resid_pdrop), ("mlp_output", resid_pdrop))
  head_dim = embed_dim // num_heads
  return ModelConfig(
      family=MODEL_TYPE,
      vocab_size=hf.get("vocab_size"),
      embed_dim=embed_dim,
      num_layers=hf.get("n_layer"),
      num_heads=num_heads,
      num_kv_heads=num_heads,
      head_dim=head_dim,
      mlp_dim=hf.get("n_inner", 4 * embed_dim),
      max_positions=hf.get("n_positions", 1024),
      norm="layernorm",
      norm_eps=hf.get("layer_norm_epsilon", 1e-5),
      positions="learned",
      mlp="plain",
      activation=activation,
      qkv_bias=True,
      out_bias=True,
      mlp_bias=True,
      tie_embeddings=hf.get("tie_word_embeddings", True),
      attention_scale=None if hf.get("scale_attn_weights", True) else 1.0,
      initializer_range=hf.get("initializer_range", 0.02),
      hf_dropout=hf_dropout,
      **hf.token_ids(),
  )


def config_to_hf(cfg: ModelConfig) -> dict:
  return {
      "architectures": [ARCHITECTURE],
      "model_type": MODEL_TYPE,
      "vocab_size": cfg.vocab_size,
      "n_embd": cfg.embed_dim,
      "n_layer": cfg.num_layers,
      "n_head": cfg.num_heads,
      "n_inner": cfg.mlp_dim,
      "n_positions": cfg.max_positions,
      "activation_function": cfg.activation,
      "layer_norm_epsilon": cfg.norm_eps,
      "scale_attn_weights": cfg.attention_scale is None,
      "tie_word_embeddings": cfg.tie_embeddings,
      "initializer_range": cfg.initializer_range,
      "attn_pdrop": 0.0,
      "resid_pdrop": 0.0,
      "embd_pdrop": 0.0,
      "bos_token_id": cfg.bos_token_id,
      "eos_token_id": cfg.eos_token_id,
      "pad_token_id": cfg.pad_token_id,
      "dtype": dtype_name(cfg.param_dtype),
  }


def tensors(cfg: ModelConfig) -> list[HFTensor]:
  layer = "transformer.h.{layer}."
  heads = (2, 1)  # our [heads, head_dim, embed] is HF's [heads * head_dim, embed]
  qkv = ("layers.attn.query", "layers.attn.key", "layers.attn.value")
  out = [
      HFTensor("transformer.wte.weight", ("embed",)),
      HFTensor("transformer.wpe.weight", ("pos_embed",)),
      HFTensor(layer + "ln_1.weight", ("layers.attn_norm.scale",)),
      HFTensor(layer + "ln_1.bias", ("layers.attn_norm.bias",)),
      HFTensor(layer + "attn.c_attn.weight", tuple(p + ".kernel" for p in qkv), heads, transpose=True),
      HFTensor(layer + "attn.c_attn.bias", tuple(p + ".bias" for p in qkv), (2,)),
      HFTensor(layer + "attn.c_proj.weight", ("layers.attn.out.kernel",), (1, 2), transpose=True),
      HFTensor(layer + "attn.c_proj.bias", ("layers.attn.out.bias",)),
      HFTensor(layer + "ln_2.weight", ("layers.mlp_norm.scale",)),
      HFTensor(layer + "ln_2.bias", ("layers.mlp_norm.bias",)),
      HFTensor(layer + "mlp.c_fc.weight", ("layers.mlp.up.kernel",), transpose=True),
      HFTensor(layer + "mlp.c_fc.bias", ("layers.mlp.up.bias",)),
      HFTensor(layer + "mlp.c_proj.weight", ("layers.mlp.down.kernel",), transpose=True),
      HFTensor(layer + "mlp.c_proj.bias", ("layers.mlp.down.bias",)),
      HFTensor("transformer.ln_f.weight", ("final_norm.scale",)),
      HFTensor("transformer.ln_f.bias", ("final_norm.bias",)),
  ]
  if not cfg.tie_embeddings:
    out.append(HFTensor("lm_head.weight", ("lm_head",)))
  return out
