"""Prompt masking on the real Alpaca files with the real Llama-2 tokenizer:
only response tokens (and the appended EOS) carry loss."""

import pytest
import transformers

from neft_jax.data import templates
from neft_jax.data.sources import load_records
from neft_jax.data.tokenize import tokenize
from tests import tiny_models
from tests.conftest import shared_data


@pytest.fixture(scope="module")
def llama_tokenizer(tmp_path_factory):
  folder = tmp_path_factory.mktemp("llama2_tokenizer")
  tiny_models.add_real_tokenizer(folder, shared_data("tokenizers", "llama2"))
  return transformers.AutoTokenizer.from_pretrained(folder)


@pytest.mark.parametrize("file", ["alpaca_cleaned_0000_0099.json", "alpaca_small_2000.json"])
def test_only_response_tokens_carry_loss(llama_tokenizer, file):
  records = load_records(shared_data("alpaca", file))
  data = tokenize(records, llama_tokenizer, max_length=4096, template="alpaca",
                  bos=llama_tokenizer.bos_token_id)
  assert len(data) == len(records) and data.num_truncated == 0
  with_input = 0
  for record, ids, mask in zip(data.records, data.input_ids, data.loss_masks):
    assert ids[0] == llama_tokenizer.bos_token_id and not mask[0] and ids[1] != ids[0]
    assert ids[-1] == llama_tokenizer.eos_token_id and mask[-1]
    # The masked part is exactly the prompt, the rest exactly the response and EOS.
    prompt = llama_tokenizer.decode(ids[~mask], skip_special_tokens=True)
    response = llama_tokenizer.decode(ids[mask][:-1])
    assert prompt == templates.prompt(record, "alpaca")
    assert response == record.output
    assert not mask[: mask.argmax()].any() and mask[mask.argmax():].all()
    with_input += bool(record.input)
  assert 0 < with_input < len(records)  # both templates were exercised


def test_truncation_is_counted(llama_tokenizer):
  records = load_records(shared_data("alpaca", "alpaca_cleaned_0000_0099.json"))
  data = tokenize(records, llama_tokenizer, max_length=128, template="alpaca",
                  bos=llama_tokenizer.bos_token_id)
  assert data.num_truncated > 0
  assert len(data) + data.num_dropped == len(records)
  assert max(len(ids) for ids in data.input_ids) == 128
  assert all(mask.any() for mask in data.loss_masks)
