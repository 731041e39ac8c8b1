"""Label accuracy without generation: every label's completion scored by likelihood.

    score_labels(score_step, params, records, labels, tokenizer, ...)
        {eval_accuracy, eval_macro_f1}: the one call evaluation makes
    label_sets(records, labels, tokenizer, ...)      one TokenizedSet per label
    make_score_step(graphdef, loss_chunk_size)       [rows] summed log-likelihoods
    label_log_likelihoods(score_step, params, sets, ...)   [examples, labels]
    classification_metrics(log_likelihoods, targets)       accuracy and macro F1
    correct(log_likelihoods, targets)                      [examples] 1.0 or 0.0

For each record (a classification example as an Alpaca record: the output is
its true label's name) and each label, the completion is the record with that
label as its output, tokenized exactly as training tokenizes it
(`neft_jax.data.tokenize.tokenize`: [BOS] prompt label EOS). Its score is the
summed log-likelihood of the label's tokens and the EOS given the prompt; the
prediction is the label of highest score (the first of them on a tie). The
EOS makes a label that is a prefix of another ("pos" and "positive") pay for
ending there, so it cannot win by having fewer tokens to pay for.

Every label is one pass of the jitted score step over the batches of
`neft_jax.data.batching.eval_batches`, sharded like the eval step. The step's
output is replicated, so on a multi-host job every process reads back every
row, and each row carries its example's index with it, so rows land on their
examples whichever process's devices hold them.

Truncation: a completion longer than data.max_length would lose label or EOS
tokens, and a score over fewer tokens is not comparable with the others. So
every record's every completion must fit whole; one that does not is a
UserError naming the record and the data.max_length that fits them all,
raised before any forward pass.
"""

from __future__ import annotations

import dataclasses
import sys

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from neft_jax import steps
from neft_jax.data import batching
from neft_jax.data.sources import Record
from neft_jax.data.tokenize import TokenizedSet, check_max_length, tokenize
from neft_jax.errors import UserError


def _preview(record: Record, chars: int = 60) -> str:
  text = record.input or record.instruction
  return repr(text if len(text) <= chars else text[:chars] + "...")


def targets(records: list[Record], labels: tuple[str, ...] | list[str]) -> np.ndarray:
  """int [N]: each record's true label, its output's position in `labels`."""
  index = {label: i for i, label in enumerate(labels)}
  out = np.zeros(len(records), np.int64)
  for i, record in enumerate(records):
    if record.output not in index:
      raise UserError(f"record {i} ({_preview(record)}) has label {record.output!r}, which is not "
                      f"one of data.labels={list(labels)}; add it to data.labels or fix the record")
    out[i] = index[record.output]
  return out


def label_sets(records: list[Record], labels, tokenizer, *, max_length: int, template: str,
               bos: int | None) -> list[TokenizedSet]:
  """One TokenizedSet per label: every record with that label as its output, in order.

  Every completion must fit in `max_length` whole (see the module docstring).
  """
  check_max_length(tokenizer, max_length, template, bos)
  sets = [tokenize([dataclasses.replace(r, output=label) for r in records], tokenizer,
                   max_length=sys.maxsize, template=template, bos=bos) for label in labels]
  longest = max((int(s.lengths.max()) for s in sets if len(s)), default=0)
  if longest > max_length:
    label_index, example = next((k, int(np.argmax(s.lengths > max_length)))
                                for k, s in enumerate(sets) if (s.lengths > max_length).any())
    raise UserError(
        f"record {example} ({_preview(records[example])}) with label {labels[label_index]!r} "
        f"takes {sets[label_index].lengths[example]} tokens (prompt, label and EOS), more than "
        f"data.max_length={max_length}, so its label cannot be scored whole; raise "
        f"data.max_length to at least {longest}, which fits every record with every label")
  for s in sets:  # nothing is cut, so nothing is dropped: the prompt alone decides
    assert len(s) == len(records) and s.num_truncated == s.num_dropped == 0
  return sets


def make_score_step(graphdef: nnx.GraphDef, loss_chunk_size: int = 0):
  """score_step(params, batch) -> {log_likelihood [rows] float32, example_index [rows]}.

  `log_likelihood` is the summed log-probability of each row's response tokens
  (the label and EOS), 0 on an empty row; `example_index` is the batch's own
  `example_index` [rows, 1] (-1 on padding rows), carried through. Jit it
  with out_shardings=sharding.replicated(mesh).
  """

  def score_step(params, batch):
    losses_bt, _, _ = steps.token_losses(nnx.merge(graphdef, params), batch,
                                         loss_chunk_size=loss_chunk_size)
    return {"log_likelihood": -jnp.sum(losses_bt.astype(jnp.float32), axis=-1),
            "example_index": batch["example_index"][:, 0]}

  return score_step


def local_example_indices(num_examples: int, layout: batching.BatchLayout):
  """The example of each of this process's rows of every eval batch ([rows_per_process]
  per batch, -1 on padding): eval_batches' plan, one example per row in order, cut
  into micro-batches of which each process reads its contiguous slice."""
  batch, rows = layout.micro_batch_size, layout.rows_per_process
  for start in range(0, num_examples, batch):
    indices = start + layout.process_index * rows + np.arange(rows)
    yield np.where(indices < num_examples, indices, -1)


def label_log_likelihoods(score_step, params, sets: list[TokenizedSet], *, max_length: int,
                          layout: batching.BatchLayout, to_global) -> np.ndarray:
  """float32 [N, K]: every example's summed log-likelihood of every label's completion.

  `sets` come from `label_sets`; `score_step` is the jitted `make_score_step`;
  `to_global` makes a process's rows global arrays (`sharding.global_batch`).
  """
  num_examples = len(sets[0]) if sets else 0
  scores = np.full((num_examples, len(sets)), np.nan, np.float32)
  for label_index, data in enumerate(sets):
    batches = batching.eval_batches(data, max_length=max_length, layout=layout)
    for batch, indices in zip(batches, local_example_indices(num_examples, layout), strict=True):
      for row, example in enumerate(indices):  # the plan is as assumed, or this is a bug
        expected = data.input_ids[example] if example >= 0 else np.zeros(0, np.int32)
        assert np.array_equal(batch["input_ids"][row, :len(expected)], expected)
        assert not batch["segment_ids"][row, len(expected):].any()
      batch = dict(batch, example_index=indices.astype(np.int32)[:, None])
      out = jax.device_get(score_step(params, to_global(batch)))
      real = out["example_index"] >= 0
      scores[out["example_index"][real], label_index] = out["log_likelihood"][real]
  assert not np.isnan(scores).any(), "an example was not scored"
  return scores


def classification_metrics(log_likelihoods: np.ndarray, true_labels: np.ndarray) -> dict[str, float]:
  """Accuracy and macro F1 of the argmax label of each row of `log_likelihoods` [N, K].

  Macro F1 is the unweighted mean of the per-class F1 = 2·TP / (2·TP + FP + FN)
  over the classes that are some example's true or predicted label, as
  scikit-learn's f1_score(average="macro") computes it by default: a declared
  label that neither occurs in the split nor is ever predicted has no F1 and
  does not pull the mean down.
  """
  predicted = np.argmax(log_likelihoods, axis=1)
  true_labels = np.asarray(true_labels)
  f1 = []
  for label in np.union1d(true_labels, predicted):
    true_positive = np.sum((predicted == label) & (true_labels == label))
    false_positive = np.sum((predicted == label) & (true_labels != label))
    false_negative = np.sum((predicted != label) & (true_labels == label))
    f1.append(2 * true_positive / (2 * true_positive + false_positive + false_negative))
  return {"accuracy": float(np.mean(predicted == true_labels)), "macro_f1": float(np.mean(f1))}


def correct(log_likelihoods: np.ndarray, true_labels: np.ndarray) -> np.ndarray:
  """float64 [N]: 1.0 where the argmax label of a row of `log_likelihoods` [N, K] is the
  true label, else 0.0 (their mean is classification_metrics' accuracy)."""
  return (np.argmax(log_likelihoods, axis=1) == np.asarray(true_labels)).astype(np.float64)


def score_labels(score_step, params, records: list[Record], labels, tokenizer, *, max_length: int,
                 template: str, bos: int | None, layout: batching.BatchLayout, to_global,
                 prefix: str = "eval") -> dict[str, float]:
  """{prefix}_accuracy and {prefix}_macro_f1 of `records` over `labels`; {} for no records.

  A record's true label is its output, which must be one of `labels`.
  """
  if not records:
    return {}
  true_labels = targets(records, labels)
  sets = label_sets(records, labels, tokenizer, max_length=max_length, template=template, bos=bos)
  scores = label_log_likelihoods(score_step, params, sets, max_length=max_length, layout=layout,
                                 to_global=to_global)
  metrics = classification_metrics(scores, true_labels)
  return {f"{prefix}_{name}": value for name, value in metrics.items()}
