"""Metrics of the held-out splits, as training and `neft_jax.evaluate` report them.

    held = HeldOut(graphdef, config, vocab_size, tokenizer, bos, mesh, rules, layout,
                   {"eval": eval_set, "test": test_set})
    held.metrics(params, "eval")
        {eval_loss, eval_token_accuracy}, and for data.format="classification"
        {eval_accuracy, eval_macro_f1} from label completion (`neft_jax.classify`)

The steps are jitted once, sharded like training's batches. For classification
every split's label completions are tokenized at construction, so a label that
does not fit data.max_length stops the run before training, not at its first
evaluation.
"""

from __future__ import annotations

import jax
import ml_collections
import numpy as np

from neft_jax import classify, loss, sharding, steps
from neft_jax.config_check import names
from neft_jax.data import batching
from neft_jax.data.tokenize import TokenizedSet


class HeldOut:
  """The eval step (and the label scorer for classification) over named splits."""

  def __init__(self, graphdef, config: ml_collections.ConfigDict, vocab_size: int, tokenizer,
               bos: int | None, mesh, rules, layout: batching.BatchLayout,
               splits: dict[str, TokenizedSet]):
    self.max_length, self.mesh, self.rules, self.layout = config.data.max_length, mesh, rules, layout
    scored = names(config.eval.get("splits", ("eval", "test")))
    self.splits = {name: data for name, data in splits.items() if len(data) and name in scored}
    chunk = loss.chunk_size_for(config.train.loss_chunk_size, vocab_size)
    self.eval_step = jax.jit(steps.make_eval_step(graphdef, chunk))
    self.batch_sharding = sharding.batch_sharding(mesh, rules, 0)
    self.labels, self.score_step = {}, None
    self.examples: dict[str, dict[str, np.ndarray]] = {}  # per-example results of the last call
    # eval.loss=False on classification data: the labels' scores alone, a third of the work.
    self.with_loss = config.eval.get("loss", True) or config.data.format != "classification"
    if config.data.format == "classification":
      labels = names(config.data.labels)
      self.score_step = jax.jit(classify.make_score_step(graphdef, chunk),
                                out_shardings=sharding.replicated(mesh))
      for name, data in self.splits.items():  # (true labels, one TokenizedSet per label)
        self.labels[name] = (classify.targets(data.records, labels), classify.label_sets(
            data.records, labels, tokenizer, max_length=self.max_length,
            template=config.data.template, bos=bos))

  def to_global(self, batch):
    return sharding.global_batch(batch, self.batch_sharding)

  def metrics(self, params, split: str) -> dict[str, float]:
    """{split}_loss and _token_accuracy, and for classification _accuracy and _macro_f1
    (only these with eval.loss=False); {} for a split without records or not in
    eval.splits."""
    if split not in self.splits:
      return {}
    batches = batching.eval_batches(self.splits[split], max_length=self.max_length,
                                    layout=self.layout)
    with sharding.activation_rules(self.mesh, self.rules):
      results = (steps.eval_loss(self.eval_step, params, batches, self.to_global, split)
                 if self.with_loss else {})
      if split in self.labels:
        true_labels, sets = self.labels[split]
        scores = classify.label_log_likelihoods(self.score_step, params, sets,
                                                max_length=self.max_length, layout=self.layout,
                                                to_global=self.to_global)
        results |= {f"{split}_{name}": value for name, value in
                    classify.classification_metrics(scores, true_labels).items()}
        self.examples[split] = {"accuracy": classify.correct(scores, true_labels)}
    return results
