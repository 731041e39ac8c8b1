"""Label-completion scoring equals a brute-force per-label log-likelihood from transformers."""

import jax
import numpy as np
import pytest
import torch
import transformers
from flax import nnx

from neft_jax import classify, sharding
from neft_jax.data import batching, templates
from neft_jax.data.sources import Record
from neft_jax.data.tokenize import STARTS_WITH_BOS, tokenize
from neft_jax.errors import UserError
from neft_jax.models import load_hf
from tests import tiny_models
from tests.conftest import shared_data

INSTRUCTION = "Classify the sentiment of this movie review."
TEXTS = ["A gorgeous, witty film.", "Dull.", "The plot meanders for two hours and the jokes never land.",
         "It is fine, I suppose, if you like that kind of thing.", "Loved every minute of it!"]
# One token each in both tokenizers; several tokens, with "pos" a prefix of "positive" (Llama).
ONE_TOKEN_LABELS = ("good", "bad")
SEVERAL_TOKEN_LABELS = ("pos", "positive", "very negative", "somewhat positive")
MAX_LENGTH = 96


def records(labels):
  return [Record(INSTRUCTION, text, labels[i % len(labels)]) for i, text in enumerate(TEXTS)]


@pytest.fixture(scope="module", params=[("llama", "llama2", 0), ("gpt2", "gpt2", 32)],
                ids=["llama", "gpt2"])
def checkpoint(request, tmp_path_factory):
  """(torch model, tokenizer, our jitted score step, params, BOS, to_global): rows split
  over a 2-device mesh; GPT-2's output layer in chunks of 32 positions, Llama's whole."""
  family, tokenizer_name, chunk = request.param
  folder = tmp_path_factory.mktemp(family)
  torch_model = tiny_models.build(family, folder)
  tiny_models.add_real_tokenizer(folder, shared_data("tokenizers", tokenizer_name))
  tokenizer = transformers.AutoTokenizer.from_pretrained(folder)
  mesh = sharding.make_mesh(data=2, devices=jax.devices()[:2])
  graphdef, params = nnx.split(load_hf(str(folder), mesh=mesh))
  score_step = jax.jit(classify.make_score_step(graphdef, chunk),
                       out_shardings=sharding.replicated(mesh))
  rows = sharding.batch_sharding(mesh, sharding.DEFAULT_RULES, 0)
  bos = tokenizer.bos_token_id if STARTS_WITH_BOS[family] else None
  return torch_model, tokenizer, score_step, params, bos, lambda b: sharding.global_batch(b, rows)


def brute_force(torch_model, tokenizer, bos, recs, labels) -> np.ndarray:
  """[N, K]: log p(label EOS | prompt), from prompt + label tokenized together, one
  unpadded sequence at a time through the torch model."""
  out = np.zeros((len(recs), len(labels)))
  for i, record in enumerate(recs):
    prompt = templates.prompt(record, "alpaca")
    prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    for k, label in enumerate(labels):
      joint = tokenizer(prompt + label, add_special_tokens=False)["input_ids"]
      assert joint[:len(prompt_ids)] == prompt_ids  # the Alpaca prompt's line break merges nothing
      ids = ([bos] if bos is not None else []) + joint + [tokenizer.eos_token_id]
      start = len(ids) - (len(joint) - len(prompt_ids)) - 1  # first label token
      with torch.no_grad():
        logits = torch_model(torch.tensor([ids])).logits[0].double()
      log_probs = torch.log_softmax(logits, dim=-1)
      out[i, k] = sum(log_probs[t - 1, ids[t]].item() for t in range(start, len(ids)))
  return out


@pytest.mark.parametrize("labels", [ONE_TOKEN_LABELS, SEVERAL_TOKEN_LABELS], ids=["one", "several"])
def test_label_log_likelihoods_equal_transformers(checkpoint, labels):
  """5 examples of different lengths in batches of 4 rows over 2 devices (the last batch
  padded with 3 empty rows): every [example, label] score equals the reference."""
  torch_model, tokenizer, score_step, params, bos, to_global = checkpoint
  recs = records(labels)
  sets = classify.label_sets(recs, labels, tokenizer, max_length=MAX_LENGTH, template="alpaca",
                             bos=bos)
  label_tokens = [int(s.loss_masks[0].sum()) - 1 for s in sets]  # the mask is label + EOS
  assert set(label_tokens) == {1} if labels is ONE_TOKEN_LABELS else max(label_tokens) > 1
  ours = classify.label_log_likelihoods(score_step, params, sets, max_length=MAX_LENGTH,
                                        layout=batching.BatchLayout(4), to_global=to_global)
  reference = brute_force(torch_model, tokenizer, bos, recs, labels)
  assert ours.shape == (len(recs), len(labels)) and ours.dtype == np.float32
  assert np.abs(reference).min() > 1.0  # a few random-model tokens: far from 0
  np.testing.assert_allclose(ours, reference, rtol=1e-4)
  print(f"max |ours - transformers| = {np.abs(ours - reference).max():.2e}")

  # ...and score_labels reports the metrics of those scores.
  metrics = classify.score_labels(score_step, params, recs, labels, tokenizer,
                                  max_length=MAX_LENGTH, template="alpaca", bos=bos,
                                  layout=batching.BatchLayout(4), to_global=to_global, prefix="test")
  expected = classify.classification_metrics(reference, classify.targets(recs, labels))
  assert metrics == pytest.approx({"test_accuracy": expected["accuracy"],
                                   "test_macro_f1": expected["macro_f1"]})


def test_metrics_by_hand():
  """Targets 0 0 1 1 2, predictions 0 1 1 1 0; label 3 is declared but never true nor
  predicted. Accuracy 3/5. F1: class 0 (TP 1, FP 1, FN 1) 1/2, class 1 (TP 2, FP 1)
  4/5, class 2 (FN 1) 0; the mean over classes 0-2 is 13/30."""
  predicted = [0, 1, 1, 1, 0]
  scores = np.full((5, 4), -5.0)
  scores[np.arange(5), predicted] = -1.0
  scores[1, 0] = -1.0 - 1e-3  # the true label a close second: still wrong
  metrics = classify.classification_metrics(scores, np.array([0, 0, 1, 1, 2]))
  assert metrics == pytest.approx({"accuracy": 3 / 5, "macro_f1": 13 / 30})
  perfect = classify.classification_metrics(np.eye(3)[[2, 0, 1]], np.array([2, 0, 1]))
  assert perfect == {"accuracy": 1.0, "macro_f1": 1.0}


def test_ties_go_to_the_first_label():
  assert classify.classification_metrics(np.zeros((2, 2)), np.array([0, 1]))["accuracy"] == 0.5


class CharTokenizer:
  """One token per character (id = code point + 3); EOS 2. Enough for tokenize."""
  eos_token_id, bos_token_id, chat_template = 2, 1, None

  def __call__(self, texts, add_special_tokens=False, verbose=False):
    ids = [[ord(c) + 3 for c in text] for text in ([texts] if isinstance(texts, str) else texts)]
    return {"input_ids": ids[0] if isinstance(texts, str) else ids}


def test_a_record_whose_output_is_not_a_label_is_named():
  recs = records(ONE_TOKEN_LABELS)
  recs[3] = Record(INSTRUCTION, TEXTS[3], "neutral")
  with pytest.raises(UserError, match=r"record 3 .*'neutral'.*data\.labels=\['good', 'bad'\]"):
    classify.score_labels(None, None, recs, ONE_TOKEN_LABELS, CharTokenizer(), max_length=512,
                          template="alpaca", bos=None, layout=batching.BatchLayout(4),
                          to_global=None)


def test_a_completion_cut_at_max_length_is_an_error():
  """With characters as tokens, record 2 with "somewhat positive" is the longest completion."""
  recs, labels = records(SEVERAL_TOKEN_LABELS), SEVERAL_TOKEN_LABELS
  longest = len(tokenize([Record(INSTRUCTION, TEXTS[2], "somewhat positive")], CharTokenizer(),
                         max_length=10_000, template="alpaca", bos=None).input_ids[0])
  sets = classify.label_sets(recs, labels, CharTokenizer(), max_length=longest, template="alpaca",
                             bos=None)
  assert [len(s) for s in sets] == [5] * 4
  with pytest.raises(UserError, match=rf"record 2 .*'somewhat positive'.*at least {longest}"):
    classify.label_sets(recs, labels, CharTokenizer(), max_length=longest - 1, template="alpaca",
                        bos=None)


@pytest.mark.parametrize("process_count", [1, 2])
def test_example_indices_follow_eval_batches(process_count):
  """Each process's rows of eval_batches hold the examples local_example_indices names."""
  data = tokenize(records(ONE_TOKEN_LABELS), CharTokenizer(), max_length=512, template="alpaca",
                  bos=None)
  seen = []
  for process in range(process_count):
    layout = batching.BatchLayout(4, process_index=process, process_count=process_count)
    batches = list(batching.eval_batches(data, max_length=512, layout=layout))
    indices = list(classify.local_example_indices(len(data), layout))
    assert len(batches) == len(indices) == 2
    for batch, rows in zip(batches, indices):
      for row, example in zip(batch["input_ids"], rows):
        expected = data.input_ids[example] if example >= 0 else np.zeros(0)
        assert np.array_equal(row[:len(expected)], expected) and not row[len(expected):].any()
      seen += [i for i in rows if i >= 0]
  assert sorted(seen) == list(range(len(data)))
