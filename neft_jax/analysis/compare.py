"""A base model and tuned ones side by side over the same probe tokens: every metric.

    comparison = compare(base, {"noisy": tuned_a, "clean": tuned_b}, examples,
                         rows=8, max_tokens=4096, seed=0, debiased=False)

`examples` are token id arrays (one per probe example). They are cut into
batches of `rows` rows, right-padded to the longest example, and every model
runs on each batch in lockstep: one jitted step computes each model's
intermediates (`Transformer.intermediates`) and reduces the attention
probabilities at once, base against each tuned model, to per-head JS
divergence and entropy sums (`attention_divergence`, vmapped over layers). Only
the hidden states of the tokens sampled for CKA (and the pooled states) leave
the step (gathered there), into one `CKATable`; no batch's probabilities or
full hidden states outlive the step.

CKA pairs, per hidden-state entry l (see below): base l against each tuned
model's l, and each model's l against its own last entry; with `labels`, each
model's mean hidden state per example and layer, for the task probes. The tokens
CKA uses are chosen up front, by `seed`, from the examples' real-token counts
(`cka_sample`), so the sample does not depend on the batching.

Index conventions: hidden-state entry i (0 <= i <= layers) is the input of block
i, i.e. the output of block i - 1 (entry 0: the embeddings; the last entry: the
final norm of the last block's output). Weight and attention layers are block
indices 0 .. layers - 1. A change in block k's MLP therefore first shows in
hidden entry k + 1 and in the attention of block k + 1.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from neft_jax.analysis.attention import AttentionStats, attention_divergence
from neft_jax.analysis.cka import CKATable
from neft_jax.analysis.probes import layer_probe_accuracy
from neft_jax.analysis.weights import WeightChange, weight_change
from neft_jax.errors import UserError

BASE = "base"


@dataclasses.dataclass
class Comparison:
  """Every metric of a base model against named tuned models.

    weights[name]:        WeightChange of tuned model `name`
    cka_base[name]:       [layers + 1] CKA of base hidden entry l vs the tuned model's entry l
    cka_to_last[model]:   [layers + 1] CKA of a model's entry l vs its own last entry
                          (model: "base" or a tuned name)
    attention[name]:      {"js", "entropy_base", "entropy_tuned"}: [layers, heads] means
                          over real query positions, nats
    probe_accuracy[model]: [layers + 1] held-out accuracy of a linear probe on each hidden
                          entry's mean over the example's real tokens (with `labels`; else {})
  """
  names: tuple[str, ...]
  num_layers: int
  num_heads: int
  examples: int
  tokens: int       # real tokens of the probe examples
  cka_tokens: int   # the tokens CKA was computed on
  debiased: bool
  weights: dict[str, WeightChange]
  cka_base: dict[str, np.ndarray]
  cka_to_last: dict[str, np.ndarray]
  attention: dict[str, dict[str, np.ndarray]]
  probe_accuracy: dict[str, np.ndarray] = dataclasses.field(default_factory=dict)


def cka_sample(lengths, max_tokens: int, seed: int) -> list[np.ndarray]:
  """Per example, a boolean mask over its tokens: the ones CKA uses. All real
  tokens when there are at most `max_tokens`, else `max_tokens` of them drawn
  without replacement by `seed`."""
  lengths = np.asarray(lengths, np.int64)
  total = int(lengths.sum())
  chosen = np.ones(total, bool)
  if total > max_tokens:
    chosen[:] = False
    chosen[np.random.default_rng([seed, 12]).choice(total, max_tokens, replace=False)] = True
  return np.split(chosen, np.cumsum(lengths)[:-1])


@functools.partial(jax.jit, static_argnums=0)
def _batch_step(graphdefs, params, input_ids_bt, attention_mask_bt, sample_k):
  """Every model's hidden states at the batch's CKA tokens [layers + 1, k, embed]
  (`sample_k`: their flat indices into [batch * length], padded to a fixed k),
  and their means over each row's real tokens [layers + 1, batch, embed]; for
  each tuned model, its AttentionStats against the base ([layers, heads] sums).
  Gathering the sampled tokens here keeps the full [layers + 1, batch, length,
  embed] states on the device."""
  sampled, pooled, stats, base_probs_lbnts = [], [], [], None
  real_bt = attention_mask_bt.astype(jnp.float32)
  count_b = jnp.maximum(real_bt.sum(axis=1), 1.0)
  for graphdef, model_params in zip(graphdefs, params):
    model = nnx.merge(graphdef, model_params)
    hidden_lbtd, probs_lbnts = model.intermediates(input_ids_bt, attention_mask_bt)
    layers, batch, length, embed = hidden_lbtd.shape
    sampled.append(hidden_lbtd.reshape(layers, batch * length, embed)[:, sample_k])
    pooled.append(jnp.einsum("lbtd,bt->lbd", hidden_lbtd, real_bt) / count_b[:, None])
    if base_probs_lbnts is None:
      base_probs_lbnts = probs_lbnts
    else:
      stats.append(jax.vmap(attention_divergence, in_axes=(0, 0, None))(
          base_probs_lbnts, probs_lbnts, attention_mask_bt))
  return sampled, pooled, stats


def _batches(examples, masks, rows: int, length: int):
  """(input_ids [rows, length], attention_mask, cka_mask) per batch; the last
  batch is filled with empty rows."""
  for start in range(0, len(examples), rows):
    input_ids = np.zeros((rows, length), np.int32)
    real = np.zeros((rows, length), bool)
    sample = np.zeros((rows, length), bool)
    chunk = zip(examples[start:start + rows], masks[start:start + rows])
    for row, (ids, chosen) in enumerate(chunk):
      input_ids[row, :len(ids)], real[row, :len(ids)], sample[row, :len(ids)] = ids, True, chosen
    yield input_ids, real, sample


def compare(base, tuned: dict, examples, *, rows: int = 8, max_tokens: int = 4096, seed: int = 0,
            debiased: bool = False, to_global=None, labels=None) -> Comparison:
  """The base Transformer against every tuned one ({name: Transformer}) on the
  probe `examples` (token id arrays); see the module's doc. `to_global` places a
  batch {input_ids, attention_mask} on the mesh (None: as it comes). `labels`
  (int, one per example): also a linear probe's accuracy per layer and model
  (`neft_jax.analysis.probes`)."""
  names = tuple(tuned)
  if BASE in names:
    raise UserError(f"a tuned model may not be called {BASE!r}: that name is the base model's")
  base_params = nnx.state(base, nnx.Param)
  weights = {name: weight_change(base_params, nnx.state(model, nnx.Param))
             for name, model in tuned.items()}  # UserError: the first mismatching tensor
  if labels is not None:
    if len(labels) != len(examples):
      raise ValueError(f"{len(labels)} labels for {len(examples)} examples")
    labels = np.asarray([label for label, ids in zip(labels, examples) if len(ids)], np.int64)
  examples = [np.asarray(ids, np.int32) for ids in examples if len(ids)]
  if not examples:
    raise UserError("the probe set is empty: give --probe data with at least one non-empty "
                    "example (or a run whose held-out split has one)")
  cfg = base.config
  masks = cka_sample([len(ids) for ids in examples], max_tokens, seed)
  cka_tokens = int(sum(m.sum() for m in masks))
  if debiased and cka_tokens < 4:
    raise UserError(f"--debiased CKA needs at least 4 probe tokens; the probe set has {cka_tokens}")
  models = {BASE: base} | dict(tuned)
  layers = range(cfg.num_layers + 1)
  pairs = [(f"{BASE}/{l}", f"{name}/{l}") for name in names for l in layers]
  pairs += [(f"{model}/{l}", f"{model}/{cfg.num_layers}") for model in models for l in layers]
  table = CKATable(pairs)
  graphdefs, params = zip(*(nnx.split(model) for model in models.values()))
  attention_sums: list[AttentionStats | None] = [None] * len(names)
  length = max(len(ids) for ids in examples)
  pooled_rows: list[list[np.ndarray]] = [[] for _ in models]
  # One k for every batch (one compilation): the most CKA tokens a batch holds.
  sample_size = max(1, max(int(sum(m.sum() for m in masks[start:start + rows]))
                           for start in range(0, len(masks), rows)))
  for input_ids, real, sample in _batches(examples, masks, rows, length):
    batch = {"input_ids": input_ids, "attention_mask": real}
    if to_global is not None:
      batch = to_global(batch)
    chosen_k = np.flatnonzero(sample.reshape(-1))  # row-major, as a boolean index takes them
    sample_k = np.zeros(sample_size, np.int32)
    sample_k[:len(chosen_k)] = chosen_k
    sampled, pooled, stats = _batch_step(graphdefs, params, batch["input_ids"],
                                         batch["attention_mask"], sample_k)
    if labels is not None:
      filled = real.any(axis=1)  # rows holding an example (not the last batch's filling)
      for rows_of_model, pooled_lbd in zip(pooled_rows, pooled):
        rows_of_model.append(np.asarray(pooled_lbd)[:, filled])
    if len(chosen_k):
      features = {}
      for model, sampled_lkd in zip(models, sampled):
        chosen_lnd = np.asarray(sampled_lkd)[:, :len(chosen_k)]  # [layers + 1, tokens, embed]
        features |= {f"{model}/{l}": chosen_lnd[l] for l in layers}
      table.add(features)
    attention_sums = [s if total is None else total + s for total, s in zip(attention_sums, stats)]
  cka_base = {name: np.array([table.result(f"{BASE}/{l}", f"{name}/{l}", debiased) for l in layers])
              for name in names}
  cka_to_last = {model: np.array([table.result(f"{model}/{l}", f"{model}/{cfg.num_layers}",
                                               debiased) for l in layers]) for model in models}
  attention = {}
  for name, total in zip(names, attention_sums):
    means = total.means()
    attention[name] = {"js": means["js"], "entropy_base": means["entropy_p"],
                       "entropy_tuned": means["entropy_q"]}
  probe_accuracy = {}
  if labels is not None:
    for model, rows_of_model in zip(models, pooled_rows):
      probe_accuracy[model] = layer_probe_accuracy(np.concatenate(rows_of_model, axis=1), labels,
                                                   seed)
  return Comparison(names, cfg.num_layers, cfg.num_heads, len(examples),
                    int(sum(len(ids) for ids in examples)), cka_tokens, debiased, weights, cka_base,
                    cka_to_last, attention, probe_accuracy)
