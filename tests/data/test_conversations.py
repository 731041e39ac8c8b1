"""Conversations: loss masks against transformers' rendering, truncation, formats, errors."""

import json
import os

import numpy as np
import pytest
import transformers

from neft_jax import neftune
from neft_jax.data import batching, conversations, templates
from neft_jax.data.conversations import Conversation
from neft_jax.errors import UserError
from tests import tiny_models
from tests.conftest import shared_data

# The Llama-2-chat prompt format (BOS and [INST] ... [/INST] per round, <<SYS>> inside the
# first, each reply stripped and closed by EOS), written as a chat template here: the shared
# Llama-2 tokenizer files ship none.
LLAMA2_CHAT = (
    "{% set system = messages[0]['content'] if messages and messages[0]['role'] == 'system' "
    "else none %}"
    "{% for turn in (messages[1:] if system is not none else messages) %}"
    "{% set expected = 'user' if loop.index is odd else 'assistant' %}"
    "{% if turn['role'] != expected %}"
    "{{ raise_exception('turns must alternate between user and assistant') }}{% endif %}"
    "{% if expected == 'user' %}"
    "{% set text = turn['content'] if not (loop.first and system is not none) "
    "else '<<SYS>>\\n' + system + '\\n<</SYS>>\\n\\n' + turn['content'] %}"
    "{{ bos_token }}[INST] {{ text.strip() }} [/INST]"
    "{% else %} {{ turn['content'].strip() }} {{ eos_token }}{% endif %}"
    "{% endfor %}")


def _tokenizer(tmp_path, name, chat_template=None):
  folder = tmp_path / name
  tiny_models.add_real_tokenizer(folder, shared_data("tokenizers", name))
  tokenizer = transformers.AutoTokenizer.from_pretrained(folder)
  if chat_template is not None:
    tokenizer.chat_template = chat_template
  return tokenizer


def _real_conversations(count=12):
  """Multi-turn conversations made of real Alpaca records: a system turn on some, and
  two or three rounds of (instruction, output) each."""
  with open(shared_data("alpaca", "alpaca_cleaned_0000_0099.json")) as f:
    records = json.load(f)
  out, at = [], 0
  for number in range(count):
    turns = [("system", "You are a careful assistant.")] if number % 3 == 0 else []
    for _ in range(2 + number % 2):
      record = records[at]
      at += 1
      user = record["instruction"] + (f"\n\n{record['input']}" if record["input"] else "")
      turns += [("user", user), ("assistant", record["output"])]
    out.append(Conversation(tuple(turns)))
  return out


def _ids(encoded):
  return list(encoded["input_ids"] if isinstance(encoded, dict) or hasattr(encoded, "keys")
              else encoded)


def _turn_by_turn_mask(tokenizer, conversation, end_of_turn):
  """The reference: transformers' own token ids, rendering turn by turn; an assistant turn's
  tokens run from the end of the prompt before it to its end-of-turn token."""
  messages = conversation.messages()
  full = _ids(tokenizer.apply_chat_template(messages, tokenize=True))
  mask = np.zeros(len(full), bool)
  for index, (role, _) in enumerate(conversation.turns):
    if role == "assistant":
      start = len(_ids(tokenizer.apply_chat_template(messages[:index], tokenize=True,
                                                     add_generation_prompt=True)))
      through = _ids(tokenizer.apply_chat_template(messages[:index + 1], tokenize=True))
      assert full[:len(through)] == through
      end = start + through[start:].index(end_of_turn) + 1
      mask[start:end] = True
  return full, mask


def test_qwen2_real_template_masks_equal_turn_by_turn_rendering(tmp_path):
  tokenizer = _tokenizer(tmp_path, "qwen2")
  data = _real_conversations()
  ours = conversations.tokenize_conversations(data, tokenizer, max_length=4096, template="chat",
                                              bos=None)
  im_end = tokenizer.convert_tokens_to_ids("<|im_end|>")
  assert len(ours) == len(data)
  for conversation, ids, mask in zip(data, ours.input_ids, ours.loss_masks):
    full, reference = _turn_by_turn_mask(tokenizer, conversation, im_end)
    assert list(ids) == full
    np.testing.assert_array_equal(mask, reference)
    assert (ids[mask] == im_end).sum() == sum(role == "assistant" for role, _ in conversation.turns)


@pytest.mark.parametrize("name", ["gpt2", "llama2", "qwen2"])
def test_plain_chat_masks_equal_return_assistant_tokens_mask(tmp_path, name):
  tokenizer = _tokenizer(tmp_path, name)
  data = _real_conversations(6)
  bos = tokenizer.bos_token_id if name == "llama2" else None
  ours = conversations.tokenize_conversations(data, tokenizer, max_length=4096,
                                              template="plain_chat", bos=bos)
  for conversation, ids, mask in zip(data, ours.input_ids, ours.loss_masks):
    encoded = tokenizer.apply_chat_template(
        conversation.messages(), chat_template=templates.PLAIN_CHAT, tokenize=True,
        return_dict=True, return_assistant_tokens_mask=True)
    offset = 1 if bos is not None else 0  # our BOS in front; the template renders none
    assert list(ids[offset:]) == list(encoded["input_ids"])
    np.testing.assert_array_equal(mask[offset:], np.asarray(encoded["assistant_masks"], bool))
    assert ids[mask][-1] == tokenizer.eos_token_id


def test_llama2_chat_template_masks_equal_turn_by_turn_rendering(tmp_path):
  tokenizer = _tokenizer(tmp_path, "llama2", LLAMA2_CHAT)
  data = [c for c in _real_conversations(6)]
  ours = conversations.tokenize_conversations(data, tokenizer, max_length=4096, template="chat",
                                              bos=tokenizer.bos_token_id)
  for conversation, ids, mask in zip(data, ours.input_ids, ours.loss_masks):
    full, reference = _turn_by_turn_mask(tokenizer, conversation, tokenizer.eos_token_id)
    assert list(ids) == full and ids[0] == tokenizer.bos_token_id  # the template's BOS, once
    np.testing.assert_array_equal(mask, reference)


def test_last_assistant_and_truncation_at_a_turn_boundary(tmp_path):
  tokenizer = _tokenizer(tmp_path, "gpt2")
  conversation = Conversation((("user", "Name a color."), ("assistant", "Blue."),
                               ("user", "And another?"), ("assistant", "Red, and then green.")))
  whole = conversations.tokenize_conversations([conversation], tokenizer, max_length=512,
                                               template="plain_chat", bos=None)
  ids, mask = whole.input_ids[0], whole.loss_masks[0]
  runs = np.flatnonzero(np.diff(np.concatenate([[0], mask.astype(int), [0]])))
  (first_start, first_end), (second_start, second_end) = runs.reshape(2, 2)
  assert tokenizer.decode(ids[first_start:first_end]) == "Blue.<|endoftext|>"
  assert tokenizer.decode(ids[second_start:second_end]) == "Red, and then green.<|endoftext|>"

  last = conversations.tokenize_conversations([conversation], tokenizer, max_length=512,
                                              template="plain_chat", bos=None,
                                              train_on="last_assistant")
  assert last.loss_masks[0].sum() == second_end - second_start
  assert last.loss_masks[0][second_start:second_end].all()

  # One token short of the second turn's end: cut after the first, its loss intact.
  cut = conversations.tokenize_conversations([conversation], tokenizer, max_length=second_end - 1,
                                             template="plain_chat", bos=None)
  assert (cut.num_cut_at_turn, cut.num_truncated, cut.num_dropped) == (1, 0, 0)
  assert len(cut.input_ids[0]) == first_end
  np.testing.assert_array_equal(cut.loss_masks[0], mask[:first_end])
  # Inside the first assistant turn: cut there; before it begins: dropped.
  inside = conversations.tokenize_conversations(
      [conversation, conversation], tokenizer, max_length=first_start + 1, template="plain_chat",
      bos=None)
  assert (inside.num_cut_at_turn, inside.num_truncated, len(inside)) == (0, 2, 2)
  assert inside.loss_masks[0].sum() == 1
  none = conversations.tokenize_conversations([conversation], tokenizer, max_length=first_start,
                                              template="plain_chat", bos=None)
  assert (none.num_dropped, len(none)) == (1, 0)


def test_reply_prompt_is_the_history_before_the_last_reply(tmp_path):
  tokenizer = _tokenizer(tmp_path, "gpt2")
  conversation = Conversation((("system", "Be brief."), ("user", "Name a color."),
                               ("assistant", "Blue."), ("user", "Another?"), ("assistant", "Red.")))
  record = conversations.reply_prompt(conversation, tokenizer, "plain_chat")
  assert record == {"instruction": "Another?", "output": "Red.", "prompt": (
      "Be brief.\n\n### User:\nName a color.\n\n### Assistant:\nBlue.<|endoftext|>\n\n"
      "### User:\nAnother?\n\n### Assistant:\n")}


def test_packed_conversations_get_neftune_noise_by_their_own_length(tmp_path):
  tokenizer = _tokenizer(tmp_path, "gpt2")
  data = conversations.tokenize_conversations(_real_conversations(4), tokenizer, max_length=2048,
                                              template="plain_chat", bos=None)
  rows = batching.plan_epoch(data.lengths, max_length=2048, packing=True, seed=0, epoch=0,
                             batch_size=1)
  packed = [row for row in rows if len(row) > 1][0]
  row = batching.make_row(data, packed, 2048)
  lengths = np.asarray(neftune.sequence_lengths((1, 2048), segment_ids=row["segment_ids"][None]))[0]
  start = 0
  for segment, index in enumerate(packed, start=1):
    n = len(data.input_ids[index])
    assert (row["segment_ids"][start:start + n] == segment).all()
    assert (lengths[start:start + n] == n).all()  # L is the conversation's true length
    np.testing.assert_array_equal(row["loss_mask"][start:start + n], data.loss_masks[index])
    start += n


def _write(tmp_path, rows, name="conversations.jsonl"):
  path = tmp_path / name
  path.write_text("".join(json.dumps(row) + "\n" for row in rows))
  return str(path)


def test_sharegpt_messages_and_parquet_read_alike(tmp_path):
  sharegpt = {"conversations": [{"from": "system", "value": "Be brief."},
                                {"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Hello"}]}
  messages = {"messages": [{"role": "system", "content": "Be brief."},
                           {"role": "user", "content": "Hi"},
                           {"role": "assistant", "content": "Hello"}]}
  expected = Conversation((("system", "Be brief."), ("user", "Hi"), ("assistant", "Hello")))
  assert conversations.load_conversations(_write(tmp_path, [sharegpt, messages])) == [expected] * 2
  import datasets
  datasets.Dataset.from_list([messages]).to_parquet(str(tmp_path / "c.parquet"))
  assert conversations.load_conversations(str(tmp_path / "c.parquet")) == [expected]
  renamed = {"dialog": messages["messages"]}
  assert conversations.load_conversations(_write(tmp_path, [renamed], "r.jsonl"),
                                          field="dialog") == [expected]


@pytest.mark.parametrize("row, message", [
    ({"conversations": [{"from": "human", "value": "Hi"}, {"from": "bot", "value": "Yo"}]},
     r"record 0 \(counting from 0\): turn 1 has role 'bot', which is not one of"),
    ({"messages": []}, "has an empty 'messages' field"),
    ({"messages": [{"role": "user", "content": "Hi"}]}, "has no assistant turn"),
    ({"text": "Hi"}, "has no 'conversations' \\(ShareGPT\\) or 'messages' field"),
    ({"messages": [{"role": "user", "content": 3}, {"role": "assistant", "content": "x"}]},
     "turn 0 has a non-string \\(int\\) 'content' field"),
])
def test_bad_conversations_are_user_errors(tmp_path, row, message):
  with pytest.raises(UserError, match=message):
    conversations.load_conversations(_write(tmp_path, [row]))


def test_unknown_train_on_and_missing_template_are_user_errors(tmp_path):
  tokenizer = _tokenizer(tmp_path, "gpt2")
  conversation = Conversation((("user", "Hi"), ("assistant", "Hello")))
  with pytest.raises(UserError, match="data.train_on='every' is not one of"):
    conversations.tokenize_conversations([conversation], tokenizer, max_length=64,
                                         template="plain_chat", bos=None, train_on="every")
  with pytest.raises(UserError, match="no chat_template; use data.template='plain_chat'"):
    conversations.tokenize_conversations([conversation], tokenizer, max_length=64,
                                         template="chat", bos=None)


def test_pipeline_reads_splits_and_logs_the_cuts(tmp_path, caplog):
  from neft_jax import defaults
  from neft_jax.data import pipeline
  tokenizer = _tokenizer(tmp_path, "gpt2")
  rows = [{"messages": [{"role": "user", "content": f"Count to {n}."},
                        {"role": "assistant", "content": " ".join(map(str, range(1, n + 1)))},
                        {"role": "user", "content": "Again, backwards."},
                        {"role": "assistant", "content": " ".join(map(str, range(n, 0, -1)))}]}
          for n in range(1, 41)]
  config = defaults.base().data
  config.update(dict(path=_write(tmp_path, rows), format="conversation", template="plain_chat",
                     eval_size=4, max_length=64))
  with caplog.at_level("INFO"):
    data = pipeline.tokenized_splits(config, tokenizer, seed=0, bos=None)
  assert (len(data.train), len(data.eval)) == (36, 4)
  assert all(isinstance(c, Conversation) for c in data.train.records)
  assert data.train.num_cut_at_turn > 0 and max(data.train.lengths) <= 64
  assert any(f"train: 36 conversations, {data.train.num_cut_at_turn} longer than "
             "data.max_length=64 cut after their last assistant turn" in m for m in caplog.messages)


def _demo_conversations(assets, count):
  """Conversations of two demo tasks each, from the demo's own training records."""
  with open(os.path.join(assets, "data", "train.json")) as f:
    records = json.load(f)
  rows = []
  for first, second in zip(records[0:2 * count:2], records[1:2 * count:2]):
    rows.append({"conversations": [
        {"from": "human", "value": f"{first['instruction']} {first['input']}"},
        {"from": "gpt", "value": first["output"]},
        {"from": "human", "value": f"{second['instruction']} {second['input']}"},
        {"from": "gpt", "value": second["output"]}]})
  return rows


def test_training_on_conversations_runs_and_packs(demo_assets, shrunk_run, tmp_path, caplog):
  from neft_jax import train
  from tests.test_train import shrunk_config
  path = _write(tmp_path, _demo_conversations(demo_assets, 120))
  config = shrunk_config(demo_assets, data__format="conversation", data__template="plain_chat",
                         data__path=path, data__eval_path="", data__eval_size=8,
                         data__packing=True, train__steps=2, train__eval_at_start=False)
  config.eval.exact_match = False
  with caplog.at_level("INFO"):
    result = train.train(config, str(tmp_path / "run"))
  assert result["steps"] == 2 and np.isfinite(result["after"]["eval_loss"])
  assert any("train: 112 conversations" in m for m in caplog.messages)
  # evaluate answers each held-out conversation's last reply, after the turns before it
  from neft_jax import evaluate
  config.generate.max_new_tokens, config.generate.batch_size = 4, 8
  summary = evaluate.evaluate(config, workdir=str(tmp_path / "run"), out_dir=str(tmp_path / "ev"))
  outputs = json.loads((tmp_path / "ev" / "model_outputs.json").read_text())
  assert len(outputs) == 8 and "rouge_l" in summary and np.isfinite(summary["eval_loss"])
  assert all(o["instruction"] and o["dataset"] == "held_out" for o in outputs)


def test_a_bad_conversation_is_one_error_line(demo_assets, shrunk_run, tmp_path):
  import subprocess
  import sys
  path = _write(tmp_path, [{"messages": [{"role": "user", "content": "Hi"},
                                         {"role": "robot", "content": "Beep"}]}])
  model = os.path.join(demo_assets, "model")
  result = subprocess.run(
      [sys.executable, "-m", "neft_jax.train", "--config=configs/gpt2_alpaca.py",
       f"--workdir={tmp_path / 'run'}", f"--config.model.path={model}",
       f"--config.data.path={path}", "--config.data.format=conversation",
       "--config.data.template=plain_chat"],
      cwd=os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))),
      capture_output=True, text=True, timeout=120, env=os.environ | {"JAX_PLATFORMS": "cpu"})
  assert result.returncode == 1, result.stderr[-2000:]
  errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
  assert errors == [f"error: {path}: record 0 (counting from 0): turn 1 has role 'robot', which "
                    "is not one of ['assistant', 'gpt', 'human', 'system', 'user']; fix the record "
                    "or drop it"]
  assert "Traceback" not in result.stderr


def test_templates_that_cannot_be_masked_are_user_errors(tmp_path):
  tokenizer = _tokenizer(tmp_path, "llama2", LLAMA2_CHAT)
  out_of_order = Conversation((("user", "Hi"), ("user", "Hello?"), ("assistant", "Yes.")))
  with pytest.raises(UserError, match=r"conversation 0 \(counting from 0\) cannot be rendered by "
                     r"the tokenizer template \(TemplateError: turns must alternate between user "
                     r"and assistant"):
    conversations.tokenize_conversations([out_of_order], tokenizer, max_length=64,
                                         template="chat", bos=1)
  # A template that renders the last turns only: earlier turns are not where the text begins.
  tokenizer.chat_template = ("{% for m in messages[-2:] %}{{ m['role'] + ': ' + m['content'] }}"
                             "{% endfor %}{% if add_generation_prompt %}assistant: {% endif %}")
  long = Conversation((("user", "A"), ("assistant", "B"), ("user", "C"), ("assistant", "D")))
  with pytest.raises(UserError, match="does not render a conversation turn by turn"):
    conversations.tokenize_conversations([long], tokenizer, max_length=64, template="chat",
                                         bos=1)
