"""The published config.json of the full-scale studies' models, for dry runs without the hub.

    python -m configs.replicate.model_configs [OUT]      (default runs/replicate/model_configs)

writes OUT/gpt2, OUT/Qwen2-1.5B and OUT/Llama-2-7b-hf, each holding only the
config.json of openai-community/gpt2, Qwen/Qwen2-1.5B and meta-llama/Llama-2-7b-hf
(the shapes below are those files' values). `--dry_run` reads nothing else, so

    JAX_NUM_CPU_DEVICES=8 python -m neft_jax.study --dry_run \\
        --config=configs/study/neftune.py:model=runs/replicate/model_configs/Llama-2-7b-hf

answers "does the full-scale study fit?" on any machine. To train, give the real
model instead (model=meta-llama/Llama-2-7b-hf or a downloaded folder).
"""

import os
import sys

MODELS = {
    "gpt2": ("GPT2Config", dict(vocab_size=50257, n_positions=1024, n_embd=768, n_layer=12,
                                n_head=12, layer_norm_epsilon=1e-5)),
    "Qwen2-1.5B": ("Qwen2Config", dict(vocab_size=151936, hidden_size=1536,
                                       intermediate_size=8960, num_hidden_layers=28,
                                       num_attention_heads=12, num_key_value_heads=2,
                                       max_position_embeddings=131072, rope_theta=1000000.0,
                                       rms_norm_eps=1e-6, tie_word_embeddings=True)),
    "Llama-2-7b-hf": ("LlamaConfig", dict(vocab_size=32000, hidden_size=4096,
                                          intermediate_size=11008, num_hidden_layers=32,
                                          num_attention_heads=32, num_key_value_heads=32,
                                          max_position_embeddings=4096, rope_theta=10000.0,
                                          rms_norm_eps=1e-5, tie_word_embeddings=False)),
}


def write(out: str) -> list[str]:
  import transformers
  folders = []
  for name, (config_class, values) in MODELS.items():
    folder = os.path.join(out, name)
    getattr(transformers, config_class)(**values).save_pretrained(folder)
    folders.append(folder)
  return folders


if __name__ == "__main__":
  for folder in write(sys.argv[1] if len(sys.argv) > 1 else os.path.join("runs", "replicate",
                                                                           "model_configs")):
    print(f"wrote {folder}/config.json")
