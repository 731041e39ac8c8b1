"""Tiny random Hugging Face models for parity tests, built with transformers + torch.

Every weight (norm scales and biases too) is redrawn at random, so a weight
mapped to the wrong place changes the logits. Vocabulary sizes and special
tokens are the real ones of each family, so the real tokenizers work with them.
"""

import torch
import transformers

# family name -> (config class, keyword arguments)
TINY_CONFIGS = {
    "gpt2": (transformers.GPT2Config, dict(
        vocab_size=50257, n_embd=64, n_layer=2, n_head=4, n_positions=128,
        bos_token_id=50256, eos_token_id=50256)),
    "llama": (transformers.LlamaConfig, dict(  # grouped-query attention: 4 heads, 2 kv heads
        vocab_size=32000, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
        bos_token_id=1, eos_token_id=2, tie_word_embeddings=False)),
    "qwen2_tied": (transformers.Qwen2Config, dict(
        vocab_size=151936, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
        rope_theta=1000000.0, bos_token_id=151643, eos_token_id=151645, tie_word_embeddings=True)),
    "qwen2_untied": (transformers.Qwen2Config, dict(
        vocab_size=151936, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=1, max_position_embeddings=256,
        rope_theta=50000.0, bos_token_id=151643, eos_token_id=151645, tie_word_embeddings=False)),
}


def hf_config(name: str, **overrides):
  config_class, kwargs = TINY_CONFIGS[name]
  return config_class(**(kwargs | overrides))


def build(name: str, folder, seed: int = 0, **overrides):
  """Saves a tiny random model into `folder`; returns the torch model in eval mode."""
  torch.manual_seed(seed)
  model = transformers.AutoModelForCausalLM.from_config(hf_config(name, **overrides))
  with torch.no_grad():
    for param in model.parameters():
      param.normal_(0.0, 0.2)
  model.eval()
  model.save_pretrained(folder)
  return model


# tokenizer_config.json as the families' hub checkpoints ship it; the shared
# Llama-2 and GPT-2 tokenizer folders hold only the vocabulary files.
TOKENIZER_CONFIGS = {
    "llama2": {"tokenizer_class": "LlamaTokenizer", "bos_token": "<s>", "eos_token": "</s>",
               "unk_token": "<unk>", "add_bos_token": True, "add_eos_token": False, "legacy": False},
    "gpt2": {"tokenizer_class": "GPT2Tokenizer", "bos_token": "<|endoftext|>",
             "eos_token": "<|endoftext|>", "unk_token": "<|endoftext|>", "model_max_length": 1024},
}


def add_real_tokenizer(folder, tokenizer_dir) -> None:
  """Copies a real tokenizer into a checkpoint folder, as hub checkpoints hold one."""
  import json
  import os
  import shutil
  os.makedirs(folder, exist_ok=True)
  for name in os.listdir(tokenizer_dir):
    if name.endswith((".json", ".txt", ".model")):
      shutil.copy(os.path.join(tokenizer_dir, name), folder)
  config = TOKENIZER_CONFIGS.get(os.path.basename(os.path.normpath(tokenizer_dir)))
  if config and not os.path.exists(os.path.join(folder, "tokenizer_config.json")):
    with open(os.path.join(folder, "tokenizer_config.json"), "w") as f:
      json.dump(config, f)
