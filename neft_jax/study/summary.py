"""A study's summary from its finished cells: summary.csv, summary.md and PNG figures.

    summarize(study_dir, study) -> the paths written

A finished cell is DIR/cells/<condition>/seed<k>/cell.json ({"condition",
"seed", "index", "metrics": {name: float}, "examples": {name: [float, ...]},
"seconds"}), with the cell's training curve in metrics.jsonl next to it and,
after the analyze stage, analysis/analysis.csv (see neft_jax.analysis.report).
Cells without cell.json have not finished; the summary covers what has and
names the rest.

summary.csv: one row per finished cell in grid order (conditions in the
study's order, then seeds), columns condition, seed and every metric (the
union over cells, sorted by name; empty where a cell lacks one). A metric that
a cell gives only per example is its mean over the examples. Only numbers that
the cells hold go in, written with repr(float), so the file is byte-identical
whenever it is rebuilt from the same cells (the cells' wall times stay in
summary.md).

summary.md: how many cells finished and which are missing; per condition the
mean ± sample std (ddof=1) over seeds and n for every metric; then each
non-control condition against the control and each named contrast (a, b): the
difference of means a - b over the seeds both have, with its paired bootstrap
interval (neft_jax.study.stats; over the examples too for per-example metrics,
whose difference is then the mean over the cells' examples),
the number of seeds and a verdict (positive: a - b > 0 for the whole interval;
which direction is better depends on the metric); last the cells' wall times.

Figures, in DIR/figures/:
  metrics_by_condition.png  one panel per metric: a dot per seed, a bar at the mean
  training_curves.png       loss (and eval_loss if logged) against step, a thin
                            line per seed, one colour per condition
and where cells have analysis.csv, each condition against the base model,
averaged over seeds:
  cka_by_layer.png          CKA to the base by hidden state, a line per condition
  weight_change.png         relative weight change by layer, attention and mlp panels
  attention_js.png          attention JS divergence by layer (mean over heads)
  probe_accuracy.png        with task probes: held-out probe accuracy by hidden
                            state, a line per condition and the base's, dashed
matplotlib is imported only to draw them.
"""

from __future__ import annotations

import csv
import json
import math
import os

import numpy as np

from neft_jax.analysis.compare import BASE
from neft_jax.errors import UserError
from neft_jax.study import spec, stats

N_RESAMPLES = 2000
BOOTSTRAP_SEED = 0
CONFIDENCE = 0.95
FEW_SEEDS = 5  # below this, summary.md warns that the seed bootstrap understates the spread
CELL_FILE = "cell.json"
CURVE_FILE = "metrics.jsonl"
ANALYSIS_FILE = os.path.join("analysis", "analysis.csv")
FIGURES = "figures"


def cell_dir(study_dir: str, condition: str, seed: int) -> str:
  return os.path.join(study_dir, spec.cell_path(condition, seed))


# --- reading the cells -------------------------------------------------------


def load_cells(study_dir: str, study) -> tuple[list[dict], list[tuple[str, int]]]:
  """(finished cells in grid order, missing (condition, seed) pairs). Each cell
  dict is its cell.json plus "values": metrics with per-example means filled in."""
  cells, missing = [], []
  for condition in study.conditions:
    for seed in study.seeds:
      path = os.path.join(cell_dir(study_dir, condition, seed), CELL_FILE)
      if not os.path.exists(path):
        missing.append((condition, seed))
        continue
      try:
        with open(path, encoding="utf-8") as f:
          cell = json.load(f)
      except json.JSONDecodeError as error:
        raise UserError(f"{path} is not valid JSON ({error}); delete it to run the cell "
                         "again") from None
      cell["condition"], cell["seed"] = condition, seed
      examples = cell.get("examples") or {}
      cell["examples"] = examples
      cell["values"] = {**{name: float(np.mean(values)) for name, values in examples.items()
                           if len(values)},
                        **{name: float(value) for name, value in cell.get("metrics", {}).items()}}
      cells.append(cell)
  return cells, missing


def read_curve(path: str) -> list[dict]:
  """metrics.jsonl rows by step; a step logged twice (a resumed run) keeps its last row."""
  if not os.path.exists(path):
    return []
  by_step = {}
  with open(path, encoding="utf-8") as f:
    for line in f:
      line = line.strip()
      if not line:
        continue
      try:
        row = json.loads(line)
      except json.JSONDecodeError:
        continue  # a row cut off by a kill
      if "step" in row:
        by_step.setdefault(int(row["step"]), {}).update(row)
  return [by_step[step] for step in sorted(by_step)]


def read_analysis(path: str, *, base: bool = False) -> list[dict]:
  """The tuned model's rows of analysis.csv, or with `base` the base model's own rows
  (its task probe)."""
  if not os.path.exists(path):
    return []
  with open(path, encoding="utf-8", newline="") as f:
    return [row for row in csv.DictReader(f) if (row.get("model") == BASE) == base]


# --- numbers -----------------------------------------------------------------


def metric_names(cells: list[dict]) -> list[str]:
  return sorted({name for cell in cells for name in cell["values"]})


def headline_names(cells: list[dict], study) -> list[str]:
  """study.metrics in its order (those some cell has), or else every metric."""
  chosen = getattr(study, "metrics", ())
  if not chosen:
    return metric_names(cells)
  present = set(metric_names(cells))
  return [name for name in chosen if name in present]


def condition_stats(cells: list[dict], study) -> dict[str, dict[str, tuple[float, float, int]]]:
  """{condition: {metric: (mean, std, n)}} over the seeds that have the metric."""
  out = {}
  for condition in study.conditions:
    mine = [cell for cell in cells if cell["condition"] == condition]
    out[condition] = {}
    for name in metric_names(cells):
      values = [cell["values"][name] for cell in mine if name in cell["values"]]
      out[condition][name] = stats.mean_std(values)
  return out


def comparisons(study) -> list[tuple[str, str, str]]:
  """(name, a, b): every non-control condition against the control, then the named contrasts."""
  out = [(f"{name} vs {study.control}", name, study.control) for name in study.conditions
         if name != study.control]
  out += [(name, a, b) for name, (a, b) in study.contrasts.items()]
  return out


def compare(cells: list[dict], a: str, b: str, name: str, *, n_resamples: int = N_RESAMPLES,
            seed: int = BOOTSTRAP_SEED, confidence: float = CONFIDENCE) -> dict:
  """Condition a against b on metric `name`, paired by seed (see the module's doc)."""
  by_key = {(cell["condition"], cell["seed"]): cell for cell in cells}
  seeds = sorted({cell["seed"] for cell in cells})
  paired = [s for s in seeds if name in by_key.get((a, s), {}).get("values", {})
            and name in by_key.get((b, s), {}).get("values", {})]
  result = {"seeds": len(paired), "difference": math.nan, "low": math.nan, "high": math.nan,
            "over": "n/a", "verdict": "n/a"}
  if not paired:
    return result
  pairs = [(by_key[(a, s)], by_key[(b, s)]) for s in paired]
  per_example = all(name in cell_a["examples"] and name in cell_b["examples"]
                    for cell_a, cell_b in pairs)
  if per_example:
    lengths = {(cell["condition"], cell["seed"]): len(cell["examples"][name])
               for pair in pairs for cell in pair}
    if len(set(lengths.values())) != 1 or 0 in lengths.values():
      listed = ", ".join(f"{c}/seed{s}: {n}" for (c, s), n in lengths.items())
      raise UserError(f"the cells give different numbers of per-example {name!r} values "
                       f"({listed}); every cell should share the test set (a fixed "
                       "data.split_seed): delete the odd cells' cell.json and run them again")
    values_a = np.stack([np.asarray(cell_a["examples"][name], np.float64) for cell_a, _ in pairs])
    values_b = np.stack([np.asarray(cell_b["examples"][name], np.float64) for _, cell_b in pairs])
    examples = values_a.shape[1]
    result["over"] = (f"{len(paired)} seeds × {examples} examples" if len(paired) > 1
                      else f"{examples} examples only (1 seed)")
  else:
    values_a = np.array([cell_a["values"][name] for cell_a, _ in pairs])
    values_b = np.array([cell_b["values"][name] for _, cell_b in pairs])
    result["over"] = f"{len(paired)} seeds" if len(paired) > 1 else "n/a (1 seed)"
  difference, low, high = stats.paired_bootstrap(values_a, values_b, n_resamples, seed,
                                                 confidence)
  result.update(difference=difference, low=low, high=high, verdict=stats.verdict(low, high))
  return result


# --- writing -----------------------------------------------------------------


def write_csv(path: str, cells: list[dict]) -> None:
  names = metric_names(cells)
  with open(path, "w", encoding="utf-8", newline="") as f:
    writer = csv.writer(f, lineterminator="\n")
    writer.writerow(["condition", "seed", *names])
    for cell in cells:
      values = cell["values"]
      writer.writerow([cell["condition"], cell["seed"],
                       *(repr(values[name]) if name in values else "" for name in names)])


def _fmt(value: float, digits: int = 4) -> str:
  return f"{value:.{digits}g}" if math.isfinite(value) else "n/a"


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
  return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header),
          *("| " + " | ".join(row) + " |" for row in rows)]


def markdown(study, cells: list[dict], missing: list[tuple[str, int]], figures: list[str], *,
             n_resamples: int = N_RESAMPLES, seed: int = BOOTSTRAP_SEED,
             confidence: float = CONFIDENCE) -> str:
  total = len(study.conditions) * len(study.seeds)
  lines = [f"# Study {study.name}: summary", "",
           f"{len(cells)} of {total} cells finished "
           f"({len(study.conditions)} conditions × {len(study.seeds)} seeds; "
           f"control: {study.control})."]
  if missing:
    lines.append("Missing (not finished): " + ", ".join(f"{c}/seed{s}" for c, s in missing)
                 + ".")
  lines.append("")
  names = metric_names(cells)
  if not cells:
    lines.append("No cell has finished yet: nothing to summarize.")
    return "\n".join(lines) + "\n"

  lines += ["## Per condition", "",
            "Mean ± sample standard deviation (ddof=1) over seeds, and the number of seeds n.", ""]
  per_condition = condition_stats(cells, study)
  rows = []
  for name in names:
    row = [name]
    for condition in study.conditions:
      mean, std, n = per_condition[condition][name]
      row.append("—" if n == 0 else f"{_fmt(mean)} ± {_fmt(std)} (n={n})")
    rows.append(row)
  lines += _table(["metric", *study.conditions], rows) + [""]

  percent = f"{100 * confidence:g}%"
  lines += ["## Contrasts", "",
            f"The difference of means a − b over the seeds both conditions finished, with a "
            f"{percent} paired bootstrap percentile interval ({n_resamples} resamples, "
            f"bootstrap seed {seed}). Each resample draws seeds with replacement, seed k of a "
            "paired with seed k of b; for per-example metrics it also draws the test examples "
            "with replacement, the same examples on both sides. Verdict: positive when the "
            "whole interval is above 0 (a − b > 0), negative when below, inconclusive when it "
            "spans 0, n/a without an interval. Which direction is better depends on the metric "
            "(for a loss, lower is better): a verdict says only the sign.", ""]
  if len(study.seeds) < FEW_SEEDS:
    lines += [f"With {len(study.seeds)} seeds per condition, resampling the seeds understates "
              "the spread between seeds (with 2 or 3 seeds, a metric without per-example values "
              "gets the range of its paired differences as its interval): read the verdicts as "
              "provisional.", ""]
  chosen = getattr(study, "metrics", ())
  absent = [name for name in chosen if name not in names]
  if absent:
    lines += [f"study.metrics names {', '.join(absent)}, which no finished cell has; the "
              f"metrics there are: {', '.join(names)}.", ""]
  for title, a, b in comparisons(study):
    rows, unpaired = [], []
    for name in headline_names(cells, study):
      result = compare(cells, a, b, name, n_resamples=n_resamples, seed=seed,
                       confidence=confidence)
      if not result["seeds"]:
        unpaired.append(name)
        continue
      interval = ("n/a" if not math.isfinite(result["low"])
                  else f"[{_fmt(result['low'])}, {_fmt(result['high'])}]")
      rows.append([name, str(result["seeds"]), _fmt(result["difference"]), interval,
                   result["over"], result["verdict"]])
    lines += [f"### {title}: a = {a}, b = {b}", ""]
    if rows:
      lines += _table(["metric", "seeds", "a − b", f"{percent} interval", "resampled over",
                       "verdict"], rows) + [""]
    if unpaired:
      lines += ["Not compared (no seed of both conditions has them): " + ", ".join(unpaired)
                + ".", ""]

  lines += ["## Cell time", "", "Wall seconds per finished cell (not in summary.csv).", ""]
  rows = []
  for condition in study.conditions:
    seconds = [float(cell["seconds"]) for cell in cells
               if cell["condition"] == condition and cell.get("seconds") is not None]
    if seconds:
      rows.append([condition, str(len(seconds)), f"{np.mean(seconds):.1f}", f"{sum(seconds):.1f}"])
  lines += _table(["condition", "cells", "mean s", "total s"], rows) + [""]

  if figures:
    lines += ["## Figures", ""]
    lines += [f"![{os.path.basename(path)}]({FIGURES}/{os.path.basename(path)})"
              for path in figures]
    lines.append("")
  return "\n".join(lines)


# --- figures -----------------------------------------------------------------


def _layer_means(analysis_by_cell: dict, condition: str, keep) -> dict[int, float]:
  """{layer: mean over the condition's seeds (and over heads) of the rows `keep` selects}."""
  per_seed = []
  for (name, _), rows in analysis_by_cell.items():
    if name != condition:
      continue
    by_layer = {}
    for row in rows:
      if keep(row) and row.get("layer") not in ("", None):
        value = float(row["value"])
        if math.isfinite(value):
          by_layer.setdefault(int(row["layer"]), []).append(value)
    if by_layer:
      per_seed.append({layer: float(np.mean(values)) for layer, values in by_layer.items()})
  layers = sorted({layer for seed_means in per_seed for layer in seed_means})
  return {layer: float(np.mean([m[layer] for m in per_seed if layer in m])) for layer in layers}


def figures(study_dir: str, study, cells: list[dict]) -> list[str]:
  """Draws the figures into study_dir/figures; returns their paths."""
  import matplotlib
  matplotlib.use("Agg")
  from matplotlib import pyplot as plt
  from matplotlib.ticker import MaxNLocator

  out_dir = os.path.join(study_dir, FIGURES)
  os.makedirs(out_dir, exist_ok=True)
  conditions = list(study.conditions)
  colours = {c: plt.get_cmap("tab10")(i % 10) for i, c in enumerate(conditions)}
  paths = []

  def save(figure, file):
    path = os.path.join(out_dir, file)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
    paths.append(path)

  names = headline_names(cells, study)
  if names:
    columns = min(3, len(names))
    rows = math.ceil(len(names) / columns)
    figure, axes = plt.subplots(rows, columns, figsize=(1.2 * len(conditions) * columns + 2,
                                                       3.2 * rows), squeeze=False)
    for axis, name in zip(axes.flat, names):
      for x, condition in enumerate(conditions):
        values = [cell["values"][name] for cell in cells
                  if cell["condition"] == condition and name in cell["values"]]
        if not values:
          continue
        offsets = np.linspace(-0.15, 0.15, len(values)) if len(values) > 1 else [0.0]
        axis.scatter(x + np.asarray(offsets), values, color=colours[condition], s=22, zorder=3)
        axis.hlines(np.mean(values), x - 0.3, x + 0.3, color="black", linewidth=2, zorder=2)
      axis.set(title=name, xticks=range(len(conditions)), xlim=(-0.6, len(conditions) - 0.4))
      axis.set_xticklabels(conditions, rotation=30, ha="right")
    for axis in list(axes.flat)[len(names):]:
      axis.axis("off")
    figure.suptitle(f"{study.name}: each metric by condition (dots: seeds, bar: mean)")
    save(figure, "metrics_by_condition.png")

  curves = {(cell["condition"], cell["seed"]):
            read_curve(os.path.join(cell_dir(study_dir, cell["condition"], cell["seed"]),
                                    CURVE_FILE)) for cell in cells}
  keys = [key for key in ("loss", "eval_loss")
          if any(key in row for curve in curves.values() for row in curve)]
  if keys:
    figure, axes = plt.subplots(1, len(keys), figsize=(5.2 * len(keys), 3.6), squeeze=False)
    for axis, key in zip(axes[0], keys):
      labelled = set()
      for (condition, _), curve in curves.items():
        points = [(row["step"], row[key]) for row in curve if key in row]
        if not points:
          continue
        steps, values = zip(*points)
        axis.plot(steps, values, color=colours[condition], linewidth=0.9, alpha=0.7,
                  marker="o" if key == "eval_loss" else None, markersize=3,
                  label=None if condition in labelled else condition)
        labelled.add(condition)
      axis.set(xlabel="step", ylabel=key, title=f"{key} (a line per seed)")
      axis.xaxis.set_major_locator(MaxNLocator(integer=True))
      axis.legend(fontsize="small")
    save(figure, "training_curves.png")

  analysis = {(cell["condition"], cell["seed"]):
              read_analysis(os.path.join(cell_dir(study_dir, cell["condition"], cell["seed"]),
                                         ANALYSIS_FILE)) for cell in cells}
  analysis = {key: rows for key, rows in analysis.items() if rows}
  if analysis:
    def plot_layers(axis, keep):
      axis.xaxis.set_major_locator(MaxNLocator(integer=True))
      drawn = False
      for condition in conditions:
        means = _layer_means(analysis, condition, keep)
        if means:
          axis.plot(list(means), list(means.values()), marker="o", color=colours[condition],
                    label=condition)
          drawn = True
      if drawn:
        axis.legend(fontsize="small")

    figure, axis = plt.subplots(figsize=(5.5, 3.8))
    plot_layers(axis, lambda row: row["metric"] == "cka_base")
    axis.set(xlabel="hidden state (0: embeddings)", ylabel="CKA to base",
             title="CKA to the base by layer (mean over seeds)")
    save(figure, "cka_by_layer.png")

    figure, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    for axis, block in zip(axes, ("attention", "mlp")):
      plot_layers(axis, lambda row, block=block: (row["metric"] == "weight_relative_change"
                                                  and row["module"] == block))
      axis.set(xlabel="layer", ylabel="relative weight change",
               title=f"{block} weights vs base (mean over seeds)")
    save(figure, "weight_change.png")

    figure, axis = plt.subplots(figsize=(5.5, 3.8))
    plot_layers(axis, lambda row: row["metric"] == "js" and row["module"] == "attention")
    axis.set(xlabel="layer", ylabel="JS divergence (nats)",
             title="attention JS to the base by layer\n(mean over heads and seeds)")
    save(figure, "attention_js.png")

    is_probe = lambda row: row["metric"] == "probe_accuracy"  # noqa: E731
    if any(is_probe(row) for rows in analysis.values() for row in rows):
      figure, axis = plt.subplots(figsize=(5.5, 3.8))
      plot_layers(axis, is_probe)
      base_rows = {key: read_analysis(os.path.join(cell_dir(study_dir, *key), ANALYSIS_FILE),
                                      base=True) for key in analysis}
      base_means = _layer_means(base_rows, next(iter(base_rows))[0], is_probe)
      if base_means:
        axis.plot(list(base_means), list(base_means.values()), color="black", linestyle="--",
                  marker=".", label="base")
        axis.legend(fontsize="small")
      axis.set(xlabel="hidden state (0: embeddings)", ylabel="held-out probe accuracy",
               title="task probe by layer (mean over seeds)")
      save(figure, "probe_accuracy.png")
  return paths


def summarize(study_dir: str, study, *, n_resamples: int = N_RESAMPLES,
              seed: int = BOOTSTRAP_SEED, confidence: float = CONFIDENCE,
              draw: bool = True) -> list[str]:
  """Writes summary.csv, summary.md and (with `draw`) the figures into study_dir
  from the cells that have finished; returns the paths written."""
  cells, missing = load_cells(study_dir, study)
  csv_path, md_path = (os.path.join(study_dir, f) for f in ("summary.csv", "summary.md"))
  write_csv(csv_path, cells)
  drawn = figures(study_dir, study, cells) if draw and cells else []
  text = markdown(study, cells, missing, drawn, n_resamples=n_resamples, seed=seed,
                  confidence=confidence)
  with open(md_path, "w", encoding="utf-8") as f:
    f.write(text)
  return [csv_path, md_path, *drawn]
