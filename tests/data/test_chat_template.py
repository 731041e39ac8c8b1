"""The chat-template option masks the templated prompt and keeps the response."""

import pytest
import transformers

from neft_jax.data import templates
from neft_jax.data.sources import Record
from neft_jax.data.tokenize import check_max_length, tokenize
from neft_jax.errors import UserError
from tests import tiny_models
from tests.conftest import shared_data


def test_qwen2_chat_template(tmp_path):
  tiny_models.add_real_tokenizer(tmp_path, shared_data("tokenizers", "qwen2"))
  tokenizer = transformers.AutoTokenizer.from_pretrained(tmp_path)
  records = [Record("Name a color.", "", "Blue."), Record("Add.", "2 + 2", "4")]
  data = tokenize(records, tokenizer, max_length=512, template="chat", bos=None)
  for record, ids, mask in zip(records, data.input_ids, data.loss_masks):
    prompt = tokenizer.decode(ids[~mask])
    assert prompt == templates.prompt(record, "chat", tokenizer)
    assert record.instruction in prompt and "<|im_start|>assistant" in prompt
    assert tokenizer.decode(ids[mask]) == record.output + "<|im_end|>"


def test_template_longer_than_max_length_is_an_error(tmp_path):
  tiny_models.add_real_tokenizer(tmp_path, shared_data("tokenizers", "gpt2"))
  tokenizer = transformers.AutoTokenizer.from_pretrained(tmp_path)
  with pytest.raises(UserError, match="data.max_length=20 is shorter than the prompt template"):
    check_max_length(tokenizer, 20, "alpaca", bos=None)
  with pytest.raises(UserError, match="no chat_template"):
    templates.check_template("chat", tokenizer)
