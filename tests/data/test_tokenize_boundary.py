"""Where every example starts and where its loss mask begins, with the three
real tokenizers: BOS by the model family (once), the prompt's ids exactly those
generation feeds, the mask on exactly the response and EOS, also where a token
would merge across the prompt/response boundary."""

import shutil

import numpy as np
import pytest
import transformers

from neft_jax.answers import prompt_tokens
from neft_jax.data import templates
from neft_jax.data.sources import Record, load_records
from neft_jax.data.tokenize import encode_prompts, start_token, tokenize
from neft_jax.errors import UserError
from neft_jax.models import hf_io
from tests import tiny_models
from tests.conftest import shared_data

# Chat templates for the tokenizers that ship none (Qwen2 ships its own).
LLAMA2_CHAT = "{{ bos_token }}[INST] {{ messages[0]['content'] }} [/INST]"  # renders <s> itself
PLAIN_CHAT = ("{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
              "{% if add_generation_prompt %}assistant:\n{% endif %}")

# tokenizer folder -> (tiny model family of its config.json, chat template to give it)
TOKENIZERS = {
    "llama2_bare": ("llama", LLAMA2_CHAT),  # tokenizer.model alone: transformers adds no BOS
    "llama2": ("llama", LLAMA2_CHAT),  # with a hub-style tokenizer_config.json (add_bos_token)
    "gpt2": ("gpt2", PLAIN_CHAT),
    "qwen2": ("qwen2_tied", None),
}

RECORDS = [Record("Name a color.", "", "Blue."),
           Record("Add the numbers.", "2 + 2", "4"),
           Record("Write two lines.", "", "First line,\n  then the second one."),
           Record("Repeat the word.", "ok", "ok ok")]


@pytest.fixture(scope="module")
def models(tmp_path_factory):
  """name -> (tokenizer, bos chosen by start_token from the model's config.json)."""
  out = {}
  for name, (family, chat_template) in TOKENIZERS.items():
    folder = tmp_path_factory.mktemp(name)
    source = shared_data("tokenizers", name.removesuffix("_bare"))
    if name.endswith("_bare"):
      shutil.copy(f"{source}/tokenizer.model", folder)
    else:
      tiny_models.add_real_tokenizer(folder, source)
    tiny_models.hf_config(family).save_pretrained(folder)
    tokenizer = transformers.AutoTokenizer.from_pretrained(folder)
    if chat_template:
      tokenizer.chat_template = chat_template
    out[name] = tokenizer, start_token(hf_io.read_config(str(folder)), tokenizer)
  return out


def test_bos_by_family_whatever_the_folder(models):
  llama_bare, bos_bare = models["llama2_bare"]
  assert llama_bare("Hi")["input_ids"][0] != 1  # the quirk: this folder adds no BOS by itself
  assert bos_bare == models["llama2"][1] == 1  # <s>, from config.json
  assert models["gpt2"][1] is None and models["qwen2"][1] is None


def test_llama_bos_falls_back_on_the_tokenizer_and_none_at_all_is_an_error(models, tmp_path):
  tiny_models.hf_config("llama", bos_token_id=None).save_pretrained(tmp_path)
  no_bos = hf_io.read_config(str(tmp_path))
  assert start_token(no_bos, models["llama2_bare"][0]) == 1
  with pytest.raises(UserError, match="set bos_token_id in the model's config.json"):
    start_token(no_bos, models["qwen2"][0])  # a tokenizer without bos_token


@pytest.mark.parametrize("template", ["alpaca", "chat"])
@pytest.mark.parametrize("name", list(TOKENIZERS))
def test_start_prefix_and_mask(models, name, template):
  tokenizer, bos = models[name]
  records = RECORDS + load_records(shared_data("alpaca", "alpaca_cleaned_0000_0099.json"))[:20]
  data = tokenize(records, tokenizer, max_length=4096, template=template, bos=bos)
  assert len(data) == len(records)
  eos = tokenizer.eos_token_id
  prompts = [templates.prompt(r, template, tokenizer) for r in records]
  generation = prompt_tokens(tokenizer, [vars(r) for r in records], template=template, bos=bos,
                             max_new_tokens=1, max_positions=10**6, truncate=False, source="test")
  for record, prompt, ids, mask, fed in zip(records, prompts, data.input_ids, data.loss_masks,
                                            generation):
    start = int(mask.argmax())
    assert not mask[:start].any() and mask[start:].all()
    # One BOS in front for Llama (a template that renders <s> gets no second), none otherwise.
    if bos is not None:
      assert ids[0] == bos and (ids == bos).sum() == 1
    else:
      assert ids[0] not in (tokenizer.bos_token_id, tokenizer.eos_token_id, 151643)
    # The masked part is exactly what generation feeds the model, and decodes to the prompt.
    assert ids[:start].tolist() == fed
    if bos is None:
      assert tokenizer.decode(ids[:start]) == prompt
    else:
      assert tokenizer.decode(ids[1:start]) == prompt.removeprefix(tokenizer.bos_token)
    # The loss covers exactly the response's ids, which decode to the response text, and EOS.
    assert ids[-1] == eos and (ids[start:-1] != eos).all()
    assert tokenizer.decode(ids[start:-1]) == record.output
    if template == "alpaca":  # nothing merges after "\n": the ids of prompt + response together
      together = tokenizer(prompt + record.output, add_special_tokens=False)["input_ids"]
      assert ids[:-1].tolist() == ([bos] if bos is not None else []) + together


@pytest.mark.parametrize("name", ["gpt2", "llama2_bare"])
@pytest.mark.parametrize("prompt, response", [("Answer: ", "Blue sky"),  # a space, then a word
                                              ("Complete the word: extraordin", "ary")])
def test_a_token_merging_across_the_boundary_does_not_shift_the_mask(models, name, prompt,
                                                                      response):
  tokenizer, bos = models[name]
  chat_template, tokenizer.chat_template = tokenizer.chat_template, "{{ messages[0]['content'] }}"
  try:  # the prompt is the instruction itself
    check_boundary(tokenizer, bos, name, prompt, response)
  finally:
    tokenizer.chat_template = chat_template


def check_boundary(tokenizer, bos, name, prompt, response):
  alone = encode_prompts(tokenizer, [prompt], bos)[0]
  together = encode_prompts(tokenizer, [prompt + response], bos)[0]
  if name == "gpt2":  # byte-level BPE merges here: the prompt's ids are no prefix of the whole
    assert together[:len(alone)] != alone
    # The old rule (mask after len(tokenize(prompt)) ids of the whole) lost response text.
    assert tokenizer.decode(together[len(alone):]) != response
  data = tokenize([Record(prompt, "", response)], tokenizer, max_length=64, template="chat", bos=bos)
  ids, mask = data.input_ids[0], data.loss_masks[0]
  assert ids[~mask].tolist() == alone
  assert tokenizer.decode(ids[mask][:-1]) == response  # no dummy-prefix space in front
  assert tokenizer.decode(ids[:-1], skip_special_tokens=True) == prompt + response
  assert np.count_nonzero(mask) == len(ids) - len(alone)
