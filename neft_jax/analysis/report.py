"""A Comparison written out: analysis.json, a tidy analysis.csv, analysis.md and PNG figures.

    write_report(comparison, out_dir, about)   -> the paths written

analysis.csv has one row per number, columns (model, layer, module, head,
metric, value):
  * weights: metric weight_relative_change / weight_cosine; module a module
    kind (q, k, v, o, gate, up, down, norm, embedding, head), a block
    ("attention": q, k, v, o together; "mlp": gate, up, down together) or a
    parameter name (layers.attn.query.kernel, ...); layer the block index, empty
    for tensors outside the blocks.
  * representations: module "hidden", metric cka_base (base vs this model at
    hidden entry `layer`) or cka_to_last (this model's entry `layer` vs its own
    last entry); layer 0 is the embeddings, the last the final-normed output.
  * attention: module "attention", a head, metric js (base vs tuned),
    entropy_base, entropy_tuned (nats); layer the block index.
  * task probes (with labels): module "hidden", metric probe_accuracy, for the
    base too; layer a hidden entry.

Figures: weight_change.png (layers x module kind, one panel per tuned model),
cka_by_layer.png (one line per tuned model), attention_js.png (layers x heads,
one panel per tuned model), and with labels probe_accuracy.png (one line per
model). matplotlib is imported only to draw them.
"""

from __future__ import annotations

import csv
import json
import math
import os

import numpy as np

from neft_jax.analysis.compare import BASE, Comparison
from neft_jax.analysis.weights import BLOCK_KINDS, Change

COLUMNS = ("model", "layer", "module", "head", "metric", "value")
# Module kinds in a block, the weight heatmap's columns.
BLOCK_MODULES = ("q", "k", "v", "o", "gate", "up", "down", "norm")


def _number(value) -> float | None:
  """A float for JSON (None for nan / inf, which JSON lacks)."""
  value = float(value)
  return value if math.isfinite(value) else None


def rows(comparison: Comparison) -> list[dict]:
  """The tidy rows of analysis.csv (see the module's doc)."""
  out = []

  def add(model, layer, module, head, metric, value):
    out.append({"model": model, "layer": layer, "module": module, "head": head, "metric": metric,
                "value": float(value)})

  for name in comparison.names:
    for row in comparison.weights[name].rows():
      add(name, row["layer"], row["name"], None, f"weight_{row['metric']}", row["value"])
    for layer, value in enumerate(comparison.cka_base[name]):
      add(name, layer, "hidden", None, "cka_base", value)
  for model, values in comparison.cka_to_last.items():
    for layer, value in enumerate(values):
      add(model, layer, "hidden", None, "cka_to_last", value)
  for model, values in comparison.probe_accuracy.items():
    for layer, value in enumerate(values):
      add(model, layer, "hidden", None, "probe_accuracy", value)
  for name in comparison.names:
    for metric, values_lh in comparison.attention[name].items():
      for layer, per_head in enumerate(values_lh):
        for head, value in enumerate(per_head):
          add(name, layer, "attention", head, metric, value)
  return out


def _kind_table(comparison: Comparison, name: str, kinds=BLOCK_MODULES) -> np.ndarray:
  """[layers, kinds] relative weight change (nan where a kind is absent, e.g. no gate)."""
  table = np.full((comparison.num_layers, len(kinds)), np.nan)
  for (kind, layer), change in comparison.weights[name].kinds.items():
    if layer is not None and kind in kinds:
      table[layer, kinds.index(kind)] = change.relative
  return table


def _total(comparison: Comparison, name: str, block: str) -> float:
  """Relative change over all layers' tensors of a block ("attention" or "mlp")."""
  changes = [c for (b, _), c in comparison.weights[name].blocks.items() if b == block]
  return sum(changes, Change()).relative


def summary(comparison: Comparison) -> dict:
  """Per tuned model: the layer where each metric changes most, and attention
  against MLP weight change."""
  out = {}
  for name in comparison.names:
    weights = comparison.weights[name]
    block = {b: np.array([weights.blocks[(b, l)].relative for l in range(comparison.num_layers)])
             for b in BLOCK_KINDS}
    cka = comparison.cka_base[name]
    js_l = np.nanmean(comparison.attention[name]["js"], axis=1)
    out[name] = {
        "attention_weight_change_max_layer": int(np.argmax(block["attention"])),
        "attention_weight_change_max": _number(block["attention"].max()),
        "mlp_weight_change_max_layer": int(np.argmax(block["mlp"])),
        "mlp_weight_change_max": _number(block["mlp"].max()),
        "attention_weight_change": _number(_total(comparison, name, "attention")),
        "mlp_weight_change": _number(_total(comparison, name, "mlp")),
        "cka_min_layer": int(np.nanargmin(cka)) if np.isfinite(cka).any() else None,
        "cka_min": _number(np.nanmin(cka)) if np.isfinite(cka).any() else None,
        "attention_js_max_layer": int(np.nanargmax(js_l)) if np.isfinite(js_l).any() else None,
        "attention_js_max": _number(np.nanmax(js_l)) if np.isfinite(js_l).any() else None,
    }
    if name in comparison.probe_accuracy:
      accuracy = comparison.probe_accuracy[name]
      out[name] |= {"probe_accuracy_max_layer": int(np.argmax(accuracy)),
                    "probe_accuracy_max": _number(accuracy.max())}
  return out


def _markdown(comparison: Comparison, about: dict, summaries: dict) -> str:
  def fmt(value, digits=4):
    return "n/a" if value is None else f"{value:.{digits}g}"

  lines = [f"# What fine-tuning changed: {about.get('base', BASE)}", "",
           f"{comparison.examples} probe examples, {comparison.tokens} real tokens; CKA on "
           f"{comparison.cka_tokens} tokens sampled by seed {about.get('seed', 0)}"
           f"{' (debiased)' if comparison.debiased else ''}. Weight and attention layers are "
           "block indices; CKA layer 0 is the embeddings, layer "
           f"{comparison.num_layers} the final-normed output.", "",
           "| tuned model | weight change: attention / MLP (all layers) | most changed attention "
           "block | most changed MLP block | lowest CKA to base (layer) | highest attention JS "
           "(layer, nats) |",
           "|---|---|---|---|---|---|"]
  for name, s in summaries.items():
    lines.append(
        f"| {name} ({about.get('tuned', {}).get(name, name)}) | "
        f"{fmt(s['attention_weight_change'])} / {fmt(s['mlp_weight_change'])} | "
        f"{s['attention_weight_change_max_layer']} ({fmt(s['attention_weight_change_max'])}) | "
        f"{s['mlp_weight_change_max_layer']} ({fmt(s['mlp_weight_change_max'])}) | "
        f"{fmt(s['cka_min'])} ({s['cka_min_layer']}) | "
        f"{fmt(s['attention_js_max'])} ({s['attention_js_max_layer']}) |")
  if comparison.probe_accuracy:
    lines += ["", "Task probe (linear, on each layer's mean hidden state; held-out accuracy): "
              + "; ".join(f"{model} best at layer {int(np.argmax(accuracy))} "
                          f"({fmt(float(accuracy.max()), 3)}), last layer "
                          f"{fmt(float(accuracy[-1]), 3)}"
                          for model, accuracy in comparison.probe_accuracy.items()) + "."]
  lines += ["", "Weight change is ||W_tuned - W_base|| / ||W_base||; CKA is linear CKA of the "
            "hidden states over the same tokens (1: the same representation up to rotation and "
            "scale); attention JS is the mean Jensen-Shannon divergence of the two models' "
            "attention rows over real query positions, averaged over heads here (ln 2 at most).",
            ""]
  return "\n".join(lines)


def _figures(comparison: Comparison, out_dir: str) -> list[str]:
  import matplotlib
  matplotlib.use("Agg")
  from matplotlib import pyplot as plt

  names, paths = comparison.names, []
  width = len(names)

  def save(figure, file):
    path = os.path.join(out_dir, file)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
    paths.append(path)

  figure, axes = plt.subplots(1, width, figsize=(3.6 * width + 1, 3.2), squeeze=False)
  for axis, name in zip(axes[0], names):
    table = _kind_table(comparison, name)
    image = axis.imshow(table, aspect="auto", cmap="viridis", origin="lower")
    axis.set(title=name, xlabel="module", ylabel="layer", xticks=range(len(BLOCK_MODULES)),
             yticks=range(comparison.num_layers))
    axis.set_xticklabels(BLOCK_MODULES, rotation=45)
    figure.colorbar(image, ax=axis, label="relative change")
  save(figure, "weight_change.png")

  figure, axis = plt.subplots(figsize=(5, 3.5))
  for name in names:
    axis.plot(range(comparison.num_layers + 1), comparison.cka_base[name], marker="o", label=name)
  axis.set(xlabel="hidden state (0: embeddings)", ylabel="CKA to base", title="CKA by layer",
           xticks=range(comparison.num_layers + 1))
  axis.legend()
  save(figure, "cka_by_layer.png")

  figure, axes = plt.subplots(1, width, figsize=(3.6 * width + 1, 3.2), squeeze=False)
  for axis, name in zip(axes[0], names):
    image = axis.imshow(comparison.attention[name]["js"], aspect="auto", cmap="magma",
                        origin="lower")
    axis.set(title=name, xlabel="head", ylabel="layer", xticks=range(comparison.num_heads),
             yticks=range(comparison.num_layers))
    figure.colorbar(image, ax=axis, label="JS divergence (nats)")
  save(figure, "attention_js.png")

  if comparison.probe_accuracy:
    figure, axis = plt.subplots(figsize=(5, 3.5))
    for model, accuracy in comparison.probe_accuracy.items():
      axis.plot(range(comparison.num_layers + 1), accuracy, marker="o", label=model)
    axis.set(xlabel="hidden state (0: embeddings)", ylabel="held-out probe accuracy",
             title="Task probe by layer", xticks=range(comparison.num_layers + 1))
    axis.legend()
    save(figure, "probe_accuracy.png")
  return paths


def write_report(comparison: Comparison, out_dir: str, about: dict) -> list[str]:
  """Writes analysis.json, analysis.csv, analysis.md and the figures into
  out_dir; `about` (base, tuned {name: source}, step, probe, seed ...) goes into
  the JSON and the summary. Returns the paths written."""
  os.makedirs(out_dir, exist_ok=True)
  table, summaries = rows(comparison), summary(comparison)
  content = {
      **about,
      "examples": comparison.examples, "tokens": comparison.tokens,
      "cka_tokens": comparison.cka_tokens, "debiased": comparison.debiased,
      "num_layers": comparison.num_layers, "num_heads": comparison.num_heads,
      "summary": summaries,
      "cka_base": {name: [_number(v) for v in values]
                   for name, values in comparison.cka_base.items()},
      "cka_to_last": {name: [_number(v) for v in values]
                      for name, values in comparison.cka_to_last.items()},
      "attention": {name: {metric: [[_number(v) for v in per_head] for per_head in values]
                           for metric, values in metrics.items()}
                    for name, metrics in comparison.attention.items()},
      "probe_accuracy": {model: [_number(v) for v in values]
                         for model, values in comparison.probe_accuracy.items()},
      "weights": {name: [{**r, "value": _number(r["value"])} for r in table
                         if r["model"] == name and r["metric"].startswith("weight_")]
                  for name in comparison.names},
  }
  paths = [os.path.join(out_dir, f) for f in ("analysis.json", "analysis.csv", "analysis.md")]
  with open(paths[0], "w", encoding="utf-8") as f:
    json.dump(content, f, indent=1)
  with open(paths[1], "w", encoding="utf-8", newline="") as f:
    writer = csv.DictWriter(f, COLUMNS)
    writer.writeheader()
    writer.writerows(table)
  with open(paths[2], "w", encoding="utf-8") as f:
    f.write(_markdown(comparison, about, summaries))
  return paths + _figures(comparison, out_dir)
