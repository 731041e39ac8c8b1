"""The real tokenizers load, and each family's tiny test config fits its tokenizer.

Each tokenizer goes into a checkpoint-like folder (with tokenizer_config.json,
as hub checkpoints carry it) and loads through transformers.AutoTokenizer.
"""

import pytest
import transformers

from tests import tiny_models
from tests.conftest import shared_data

TEXT = "Hello world! Below is an instruction that describes a task."

# family -> (tokenizer folder, tiny config, expected ids of TEXT from the data README)
CASES = {
    "llama": ("llama2", "llama", [15043, 3186, 29991, 13866, 338, 385, 15278, 393, 16612, 263, 3414, 29889]),
    "gpt2": ("gpt2", "gpt2", [15496, 995, 0, 10383, 318, 281, 12064, 326, 8477, 257, 4876, 13]),
    "qwen2": ("qwen2", "qwen2_tied", [9707, 1879, 0, 21193, 374, 458, 7600, 429, 16555, 264, 3383, 13]),
}


def auto_tokenizer(tmp_path, folder):
  tiny_models.add_real_tokenizer(tmp_path, shared_data("tokenizers", folder))
  return transformers.AutoTokenizer.from_pretrained(tmp_path)


@pytest.mark.parametrize("family", list(CASES))
def test_tiny_config_fits_real_tokenizer(family, tmp_path):
  folder, tiny_name, expected_ids = CASES[family]
  tokenizer = auto_tokenizer(tmp_path, folder)
  config = tiny_models.hf_config(tiny_name)
  ids = tokenizer(TEXT, add_special_tokens=False)["input_ids"]
  assert ids == expected_ids
  assert tokenizer.decode(ids).strip() == TEXT
  # Every token the tokenizer can produce has an embedding row.
  assert len(tokenizer) <= config.vocab_size
  assert max(tokenizer.get_vocab().values()) < config.vocab_size
  assert tokenizer.eos_token_id is not None
  eos_ids = config.eos_token_id if isinstance(config.eos_token_id, list) else [config.eos_token_id]
  assert tokenizer.eos_token_id in eos_ids
  if tokenizer.bos_token_id is not None:
    assert tokenizer.bos_token_id == config.bos_token_id


def test_special_tokens_are_the_families_own(tmp_path):
  llama = auto_tokenizer(tmp_path / "llama", "llama2")
  assert (llama.bos_token, llama.bos_token_id, llama.eos_token, llama.eos_token_id) == ("<s>", 1, "</s>", 2)
  gpt2 = auto_tokenizer(tmp_path / "gpt2", "gpt2")
  assert (gpt2.eos_token, gpt2.eos_token_id) == ("<|endoftext|>", 50256)
  qwen2 = auto_tokenizer(tmp_path / "qwen2", "qwen2")
  assert (qwen2.eos_token, qwen2.eos_token_id) == ("<|im_end|>", 151645)
  assert (qwen2.pad_token, qwen2.pad_token_id) == ("<|endoftext|>", 151643)
