"""The miniature replications' tables and figures (issue 14), for docs/replications.md.

    python -m configs.replicate.report [data=DIR,runs=DIR] [docs=DIR]

reads the base run (RUNS/base) and the three finished studies (RUNS/study_neftune,
RUNS/study_noise_types, RUNS/study_guided_dropout; see configs/replicate/common.py),
copies their figures into DOCS/img (default docs/img) and prints the markdown of
docs/replications.md's results: each claim with the paper's direction, our
measurement (mean ± std over seeds), the 95% paired bootstrap interval of the
contrast (neft_jax.study.summary.compare, the numbers of each study's summary.md)
and the verdict:

  holds            the interval lies wholly on the paper's side of 0
  does not hold    it lies wholly on the other side
  inconclusive     it contains 0

The layer-wise claims of study B have no interval over examples. Where a change
peaks is counted over the tuned cells (4 conditions x 3 seeds): holds when the peak
is in the upper half of the layers in at least 3 of 4 cells, does not hold when in at
most 1 of 4, inconclusive between. The attention-minus-MLP weight change is
bootstrapped over the cells.
"""

import json
import os
import re
import shutil
import sys
from datetime import datetime

import numpy as np

from configs.replicate import common
from configs.study import guided_dropout, neftune, noise_types
from neft_jax.study import spec, stats, summary

FIGURES = {  # study -> (figure in DIR/figures, name in docs/img)
    "neftune": (("metrics_by_condition.png", "neftune_metrics.png"),
                ("training_curves.png", "neftune_curves.png")),
    "noise_types": (("metrics_by_condition.png", "noise_types_metrics.png"),
                    ("weight_change.png", "noise_types_weight_change.png"),
                    ("cka_by_layer.png", "noise_types_cka.png"),
                    ("probe_accuracy.png", "noise_types_probe.png"),
                    ("attention_js.png", "noise_types_attention_js.png")),
    "guided_dropout": (("metrics_by_condition.png", "guided_dropout_metrics.png"),),
}
CONFIGS = {"neftune": neftune, "noise_types": noise_types, "guided_dropout": guided_dropout}

# (claim, metric, a, b, sign): the paper says mean(a) - mean(b) has this sign.
CLAIMS = {
    "neftune": (
        ("training loss without noise is higher", "test_loss", "alpha_5", "alpha_0", +1),
        ("held-out loss is slightly lower", "eval_loss", "alpha_5", "alpha_0", -1),
        ("answers are longer (characters)", "gen_mean_chars", "alpha_5", "alpha_0", +1),
        ("answers are longer (words)", "gen_mean_words", "alpha_5", "alpha_0", +1),
        ("diversity at least equal", "gen_diversity", "alpha_5", "alpha_0", +1),
        ("log-diversity at least equal", "gen_log_diversity", "alpha_5", "alpha_0", +1),
        ("rep-2 not higher", "gen_rep_2", "alpha_5", "alpha_0", -1),
        ("ROUGE-L vs text-davinci-003 (no stated direction)", "gen_rouge_l", "alpha_5",
         "alpha_0", 0),
    ),
    "noise_types": (
        ("label noise lowers accuracy more than typo noise", "test_accuracy", "label_30",
         "typo_30", -1),
        ("label noise lowers accuracy more than grammar noise", "test_accuracy", "label_30",
         "grammar_30", -1),
        ("label noise lowers macro-F1 more than typo noise", "test_macro_f1", "label_30",
         "typo_30", -1),
        ("label noise lowers macro-F1 more than grammar noise", "test_macro_f1", "label_30",
         "grammar_30", -1),
        ("label noise lowers accuracy against clean", "test_accuracy", "label_30", "clean", -1),
        ("typo noise is at or above clean", "test_accuracy", "typo_30", "clean", +1),
        ("grammar noise is at or above clean", "test_accuracy", "grammar_30", "clean", +1),
    ),
    "guided_dropout": (
        ("guided >= uniform, 100% of the data", "test_accuracy", "guided_100", "uniform_100", +1),
        ("guided >= uniform, 10% of the data", "test_accuracy", "guided_10", "uniform_10", +1),
        ("uniform dropout against none, 100%", "test_accuracy", "uniform_100", "none_100", 0),
        ("uniform dropout against none, 10%", "test_accuracy", "uniform_10", "none_10", 0),
    ),
}


def verdict(low: float, high: float, sign: int) -> str:
  if sign == 0 or not np.isfinite(low):
    return "(no claim)" if sign == 0 else "n/a"
  if low > 0 or high < 0:
    return "holds" if (low > 0) == (sign > 0) else "does not hold"
  return "inconclusive"


def finite_mean(values) -> float:
  values = [v for v in values if np.isfinite(v)]
  return float(np.mean(values)) if values else np.nan


def fmt(value: float, digits: int = 4) -> str:
  if value is None or not np.isfinite(value):
    return "n/a"
  return "0" if abs(value) < 1e-12 else f"{value:.{digits}g}"  # rounding noise of equal seeds


def table(header: list[str], rows: list[list[str]]) -> str:
  lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
  return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in rows])


def load_study(name: str, opts: dict, study_dir: str):
  study = spec.from_config(CONFIGS[name].get_config(f"data={opts['data']},runs={opts['runs']}"))
  cells, missing = summary.load_cells(study_dir, study)
  return study, cells, missing


def claims_table(name: str, study, cells) -> str:
  by_condition = summary.condition_stats(cells, study)
  rows = []
  for claim, metric, a, b, sign in CLAIMS[name]:
    (mean_a, std_a, n_a), (mean_b, std_b, n_b) = (by_condition[c].get(metric, (np.nan,) * 3)
                                                  for c in (a, b))
    result = summary.compare(cells, a, b, metric)
    rows.append([claim, f"`{metric}`", f"{a}: {fmt(mean_a)} ± {fmt(std_a, 2)} (n={n_a})",
                 f"{b}: {fmt(mean_b)} ± {fmt(std_b, 2)} (n={n_b})",
                 f"{fmt(result['difference'], 3)} [{fmt(result['low'], 3)}, "
                 f"{fmt(result['high'], 3)}]", result["over"],
                 verdict(result["low"], result["high"], sign)])
  return table(["claim", "metric", "treatment", "reference", "difference [95% CI]", "over",
                "verdict"], rows)


def condition_table(study, cells, metrics) -> str:
  by_condition = summary.condition_stats(cells, study)
  rows = [[condition] + [f"{fmt(by_condition[condition][m][0])} ± "
                         f"{fmt(by_condition[condition][m][1], 2)}" for m in metrics]
          + [str(by_condition[condition][metrics[0]][2])] for condition in study.conditions]
  return table(["condition", *metrics, "seeds"], rows)


def low_data_gain(cells) -> str:
  """(guided_10 - uniform_10) - (guided_100 - uniform_100) on test accuracy, per example
  and seed, bootstrapped over both: is the gain larger with 10% of the data?"""
  by_key = {(cell["condition"], cell["seed"]): cell for cell in cells}
  seeds = sorted({seed for _, seed in by_key if all(
      (c, seed) in by_key for c in ("guided_10", "uniform_10", "guided_100", "uniform_100"))})
  if not seeds:
    return "the low-data gain: n/a (no seed finished all four cells)"
  get = lambda c: np.stack([np.asarray(by_key[(c, s)]["examples"]["test_accuracy"], float)  # noqa: E731
                            for s in seeds])
  low_gain, full_gain = get("guided_10") - get("uniform_10"), get("guided_100") - get("uniform_100")
  difference, low, high = stats.paired_bootstrap(low_gain, full_gain)
  return (f"the gain of guided over uniform at 10% minus at 100% (test accuracy): "
          f"{difference:+.4f} [{low:+.4f}, {high:+.4f}] over {len(seeds)} seeds × "
          f"{low_gain.shape[1]} examples: {verdict(low, high, +1)}")


def layer_profiles(study_dir: str, study, cells) -> dict:
  """Per tuned cell: {metric: {layer: value}} for weight change (attention, mlp), CKA to the
  base, attention JS (mean over heads) and the probe's gain over the base's."""
  profiles = {}
  for cell in cells:
    path = os.path.join(summary.cell_dir(study_dir, cell["condition"], cell["seed"]),
                        summary.ANALYSIS_FILE)
    tuned, base = summary.read_analysis(path), summary.read_analysis(path, base=True)
    key = (cell["condition"], cell["seed"])
    pick = lambda rows, metric, module: summary._layer_means(  # noqa: E731
        {key: rows}, cell["condition"], lambda r: r["metric"] == metric and r["module"] == module)
    probe, base_probe = pick(tuned, "probe_accuracy", "hidden"), pick(base, "probe_accuracy", "hidden")
    profiles[key] = {
        "attention_change": pick(tuned, "weight_relative_change", "attention"),
        "mlp_change": pick(tuned, "weight_relative_change", "mlp"),
        "cka_drop": {layer: 1 - v for layer, v in pick(tuned, "cka_base", "hidden").items()},
        "attention_js": pick(tuned, "js", "attention"),
        "probe_gain": {layer: probe[layer] - base_probe.get(layer, np.nan) for layer in probe},
    }
  return profiles


def layer_section(study_dir: str, study, cells, num_layers: int) -> str:
  profiles = layer_profiles(study_dir, study, cells)
  if not profiles:
    return "no analysis found"
  lines = []
  # Means by layer over every tuned cell.
  names = ("attention_change", "mlp_change", "attention_js", "cka_drop", "probe_gain")
  layers = sorted({layer for p in profiles.values() for m in names for layer in p[m]})
  rows = []
  for layer in layers:
    rows.append([str(layer)] + [fmt(finite_mean([p[m].get(layer, np.nan)
                                                 for p in profiles.values()]), 3) for m in names])
  lines.append(table(["layer", "attention weight change", "MLP weight change",
                      "attention JS (nats)", "1 − CKA to base", "probe gain over base"], rows))
  lines.append("")
  lines.append("Weights: layer k is block k (0 the lowest); hidden states: 0 the embeddings, k the "
               "output of block k.")
  # Where each cell's change peaks: the upper half of the blocks, or not.
  upper = {"attention_change": num_layers // 2, "mlp_change": num_layers // 2,
           "cka_drop": num_layers // 2 + 1, "probe_gain": num_layers // 2 + 1}
  lines.append("")
  for metric, first_upper in upper.items():
    peaks = [max(p[metric], key=lambda layer: p[metric][layer]) for p in profiles.values()
             if p[metric]]
    count = sum(peak >= first_upper for peak in peaks)
    share = count / len(peaks) if peaks else np.nan
    word = ("holds" if share >= 0.75 else "does not hold" if share <= 0.25 else "inconclusive")
    lines.append(f"- `{metric}` peaks in the upper half (layer ≥ {first_upper}) in {count} of "
                 f"{len(peaks)} tuned cells (peaks: {sorted(peaks)}): {word}")
  attention = np.array([np.mean(list(p["attention_change"].values())) for p in profiles.values()])
  mlp = np.array([np.mean(list(p["mlp_change"].values())) for p in profiles.values()])
  difference, low, high = stats.paired_bootstrap(attention, mlp)
  lines.append(f"- attention minus MLP relative weight change, mean over layers: {difference:+.4f} "
               f"[{low:+.4f}, {high:+.4f}] over {len(attention)} tuned cells "
               f"(attention {attention.mean():.4f}, MLP {mlp.mean():.4f}): "
               f"{verdict(low, high, -1)}")
  return "\n".join(lines)


def collect_outputs(study_dir: str, study, cells) -> str:
  """Each cell's AlpacaEval answers as DIR/alpaca_eval/<condition>-seed<k>.json, named
  <study>-<condition>-seed<k> (as the study runner names them), for `alpaca_eval
  --model_outputs`."""
  out = os.path.join(study_dir, "alpaca_eval")
  os.makedirs(out, exist_ok=True)
  written = 0
  for cell in cells:
    folder = summary.cell_dir(study_dir, cell["condition"], cell["seed"])
    sources = sorted(name for name in os.listdir(folder) if name.startswith("eval_step_"))
    if not sources:
      continue
    with open(os.path.join(folder, sources[-1], "model_outputs.json"), encoding="utf-8") as f:
      outputs = json.load(f)
    name = f"{study.name}-{cell['condition']}-seed{cell['seed']}"
    for output in outputs:
      output["generator"] = name
    with open(os.path.join(out, f"{cell['condition']}-seed{cell['seed']}.json"), "w",
              encoding="utf-8") as f:
      json.dump(outputs, f, indent=1, ensure_ascii=False)
    written += 1
  return f"{written} answer files of {len(outputs) if written else 0} answers in {out}"


def wall_times(cells) -> str:
  seconds = [cell.get("seconds", 0.0) for cell in cells]
  return f"{len(cells)} cells, {sum(seconds) / 60:.1f} minutes of cells (the study's own wall time is in the text)"


def base_section(base_dir: str) -> str:
  rows = summary.read_curve(os.path.join(base_dir, summary.CURVE_FILE))
  evals = [(row["step"], row["eval_loss"]) for row in rows if "eval_loss" in row]
  with open(os.path.join(base_dir, "config.json"), encoding="utf-8") as f:
    config = json.load(f)
  stamps = []
  with open(os.path.join(base_dir, "train.log"), encoding="utf-8") as f:
    for line in f:
      match = re.match(r"(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d),\d+ ", line)
      if match:
        stamps.append(datetime.fromisoformat(match.group(1)))
  train = config["train"]
  tokens = train["steps"] * train["batch_size"] * config["data"]["max_length"]
  lines = [f"- {train['steps']} steps × {train['batch_size']} rows × "
           f"{config['data']['max_length']} tokens = {tokens:,} token positions"]
  if stamps:
    lines.append(f"- train.log spans {(stamps[-1] - stamps[0]).total_seconds() / 60:.1f} minutes")
  lines += [f"- held-out loss at step {step}: {loss:.3f} (perplexity {np.exp(loss):.1f})"
            for step, loss in evals]
  return "\n".join(lines)


def main(argv: list[str]) -> None:
  args = dict(part.split("=", 1) for arg in argv for part in arg.split(",") if "=" in part)
  docs = args.pop("docs", "docs")
  opts = common.options(",".join(f"{k}={v}" for k, v in args.items()))
  runs = opts["runs"]
  if not os.path.exists(os.path.join(runs, "base", "config.json")):
    from neft_jax import cli
    cli.fail(f"{runs}/base holds no pretraining run; run configs/replicate/base.py first (the "
             "replications' folder is the runs=DIR argument, default runs/replicate)")
  os.makedirs(os.path.join(docs, "img"), exist_ok=True)
  print("## Base model\n")
  print(base_section(os.path.join(runs, "base")))
  for name in ("neftune", "noise_types", "guided_dropout"):
    study_dir = os.path.join(runs, f"study_{name}")
    if not os.path.isdir(study_dir):
      print(f"\n## {name}: {study_dir} not found (run the study first)")
      continue
    study, cells, missing = load_study(name, opts, study_dir)
    print(f"\n## {name}\n")
    print(wall_times(cells) + (f"; missing: {missing}" if missing else ""))
    print()
    print(condition_table(study, cells, list(study.metrics)))
    print()
    print(claims_table(name, study, cells))
    if name == "noise_types":
      print()
      print(layer_section(study_dir, study, cells, common.BASE_MODEL["num_layers"]))
    if name == "neftune":
      print()
      print("- " + collect_outputs(study_dir, study, cells))
    if name == "guided_dropout":
      print()
      print("- " + low_data_gain(cells))
    for source, target in FIGURES[name]:
      path = os.path.join(study_dir, summary.FIGURES, source)
      if os.path.exists(path):
        shutil.copyfile(path, os.path.join(docs, "img", target))


if __name__ == "__main__":
  main(sys.argv[1:])
