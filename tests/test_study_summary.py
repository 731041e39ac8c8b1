"""The study summary (neft_jax.study.summary) and its statistics (neft_jax.study.stats).

No training here: the cells' files (cell.json, metrics.jsonl, analysis.csv) are
written by hand into tmp_path, with numbers small enough to check by hand.
"""

import csv
import json
import math
import os
import types

import numpy as np
import pytest

from neft_jax.errors import UserError
from neft_jax.study import stats, summary


# --- stats -------------------------------------------------------------------


def reference_bootstrap(a, b, n_resamples, seed, confidence):
  """A loop-by-loop paired bootstrap with the same draws as stats.paired_bootstrap."""
  a, b = np.asarray(a, float), np.asarray(b, float)
  rng = np.random.default_rng(seed)
  num_seeds = a.shape[0]
  seed_index = rng.integers(0, num_seeds, size=(n_resamples, num_seeds))
  example_index = (rng.integers(0, a.shape[1], size=(n_resamples, a.shape[1]))
                   if a.ndim == 2 else None)
  means = []
  for r in range(n_resamples):
    total, count = 0.0, 0
    for i in seed_index[r]:
      if example_index is None:
        total += a[i] - b[i]
        count += 1
      else:
        for j in example_index[r]:
          total += a[i, j] - b[i, j]
          count += 1
    means.append(total / count)
  tail = (1 - confidence) / 2
  return float(np.mean(a) - np.mean(b)), *np.quantile(means, [tail, 1 - tail])


def test_mean_std_by_hand():
  mean, std, n = stats.mean_std([1.0, 2.0, 4.0])
  assert n == 3 and mean == pytest.approx(7 / 3)
  # sample variance: ((4/3)^2 + (1/3)^2 + (5/3)^2) / 2 = 7/3
  assert std == pytest.approx(math.sqrt(7 / 3))
  mean, std, n = stats.mean_std([5.0])
  assert (mean, n) == (5.0, 1) and math.isnan(std)
  assert stats.mean_std([])[2] == 0


def test_two_seed_bootstrap_matches_the_enumeration():
  # Paired differences 1 and 2. The 4 equally likely seed resamples have means
  # 1 (1/4), 1.5 (1/2) and 2 (1/4), so the 2.5% and 97.5% quantiles of 2000
  # draws are the extremes 1 and 2.
  difference, low, high = stats.paired_bootstrap([1.0, 3.0], [0.0, 1.0])
  assert (difference, low, high) == (1.5, 1.0, 2.0)
  assert stats.verdict(low, high) == "positive"
  # A 40% interval falls inside the middle mass at 1.5.
  assert stats.paired_bootstrap([1.0, 3.0], [0.0, 1.0], confidence=0.4)[1:] == (1.5, 1.5)


@pytest.mark.parametrize("shape", [(3,), (3, 5), (1, 6)])
def test_bootstrap_matches_a_loop_reference(shape):
  rng = np.random.default_rng(7)
  a, b = rng.normal(size=shape), rng.normal(size=shape)
  got = stats.paired_bootstrap(a, b, n_resamples=300, seed=3, confidence=0.9)
  want = reference_bootstrap(a, b, 300, 3, 0.9)
  np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)


def test_pairing_cancels_a_shared_seed_effect():
  # Seeds differ a lot, but a is b + 0.1 on every seed: the paired interval is tight.
  b = np.array([0.0, 10.0, -5.0, 3.0])
  difference, low, high = stats.paired_bootstrap(b + 0.1, b)
  assert difference == pytest.approx(0.1) and low == pytest.approx(0.1)
  assert high == pytest.approx(0.1)


def test_interval_contains_the_truth_and_shrinks_with_more_examples():
  rng = np.random.default_rng(0)
  widths = []
  for examples in (100, 1600):
    a = (rng.random((3, examples)) < 0.7).astype(float)  # accuracy 0.7
    b = (rng.random((3, examples)) < 0.5).astype(float)  # accuracy 0.5
    difference, low, high = stats.paired_bootstrap(a, b)
    assert low < 0.2 < high and low < difference < high
    widths.append(high - low)
  # The width goes as 1 / sqrt(examples): 16x the examples, about a quarter.
  assert widths[1] < 0.35 * widths[0]


def test_one_seed():
  # Per example: the interval is over the examples only.
  difference, low, high = stats.paired_bootstrap([[1.0, 1.0, 0.0, 1.0]], [[0.0, 1.0, 0.0, 0.0]])
  assert difference == 0.5 and 0.0 <= low < 0.5 < high <= 1.0
  # One number per cell: no interval.
  difference, low, high = stats.paired_bootstrap([2.0], [1.5])
  assert difference == 0.5 and math.isnan(low) and math.isnan(high)
  assert stats.verdict(low, high) == "n/a"


def test_verdicts():
  assert stats.verdict(0.1, 0.3) == "positive"
  assert stats.verdict(-0.3, -0.1) == "negative"
  assert stats.verdict(-0.1, 0.3) == "inconclusive"
  assert stats.verdict(0.0, 0.3) == "inconclusive"  # touching 0 is not clear of it
  assert stats.verdict(math.nan, math.nan) == "n/a"


def test_bad_shapes_are_refused():
  with pytest.raises(ValueError, match="same shape"):
    stats.paired_bootstrap([1.0, 2.0], [1.0])
  with pytest.raises(ValueError, match="at least one seed"):
    stats.paired_bootstrap([], [])


# --- the summary ---------------------------------------------------------------


def make_study(**overrides):
  fields = dict(name="tiny", base=None,
                conditions={"control": {}, "noisy": {"neftune.alpha": 5.0},
                            "other": {"neftune.alpha": 1.0}},
                control="control", seeds=(0, 1), stages=("train", "evaluate"),
                contrasts={"noisy_vs_other": ("noisy", "other")})
  fields.update(overrides)
  return types.SimpleNamespace(**fields)


# (condition, seed): (metrics, per-example test_accuracy, seconds). other/seed1 has not finished.
TABLE = {
    ("control", 0): ({"eval_loss": 2.0, "test_accuracy": 0.5}, [1, 0, 1, 0], 11.0),
    ("control", 1): ({"eval_loss": 2.2, "test_accuracy": 0.25}, [1, 0, 0, 0], 13.0),
    ("noisy", 0): ({"eval_loss": 1.8, "test_accuracy": 0.75, "extra": 3.0}, [1, 1, 1, 0], 12.0),
    ("noisy", 1): ({"eval_loss": 1.6, "test_accuracy": 1.0}, [1, 1, 1, 1], 12.5),
    ("other", 0): ({"eval_loss": 2.0}, [1, 0, 0, 1], 10.0),  # accuracy only per example
}


def write_cell(study_dir, condition, seed, metrics, examples, seconds, index=0):
  folder = summary.cell_dir(str(study_dir), condition, seed)
  os.makedirs(folder, exist_ok=True)
  with open(os.path.join(folder, "cell.json"), "w") as f:
    json.dump({"condition": condition, "seed": seed, "index": index, "metrics": metrics,
               "examples": {"test_accuracy": [float(v) for v in examples]},
               "seconds": seconds}, f)
  return folder


def write_table(study_dir, order=None):
  for condition, seed in order or TABLE:
    write_cell(study_dir, condition, seed, *TABLE[(condition, seed)])


EXPECTED_CSV = """condition,seed,eval_loss,extra,test_accuracy
control,0,2.0,,0.5
control,1,2.2,,0.25
noisy,0,1.8,3.0,0.75
noisy,1,1.6,,1.0
other,0,2.0,,0.5
"""


def test_summary_csv_rows_in_grid_order(tmp_path):
  write_table(tmp_path, order=list(TABLE)[::-1])  # written in another order
  paths = summary.summarize(str(tmp_path), make_study(), draw=False)
  assert paths == [str(tmp_path / "summary.csv"), str(tmp_path / "summary.md")]
  assert (tmp_path / "summary.csv").read_text() == EXPECTED_CSV


def test_summary_csv_is_byte_identical_when_rebuilt(tmp_path):
  write_table(tmp_path)
  summary.summarize(str(tmp_path), make_study(), draw=False)
  first = (tmp_path / "summary.csv").read_bytes()
  # The same cells run again with other wall times (a resumed study): the same bytes.
  for (condition, seed), (metrics, examples, seconds) in TABLE.items():
    write_cell(tmp_path, condition, seed, metrics, examples, seconds + 100.0)
  summary.summarize(str(tmp_path), make_study(), draw=False)
  assert (tmp_path / "summary.csv").read_bytes() == first
  assert "113.0" not in first.decode()


def md_row(text, *cells):
  """The markdown table row that starts with these cells."""
  start = "| " + " | ".join(cells) + " |"
  found = [line for line in text.splitlines() if line.startswith(start)]
  assert len(found) == 1, (start, text)
  return [cell.strip() for cell in found[0].strip("|").split("|")]


def section(text, title):
  """The markdown from the heading `title` to the next heading."""
  start = text.index(title + "\n")
  end = text.find("\n#", start + len(title))
  return text[start:end if end >= 0 else None]


def test_headline_metrics_choose_the_contrasts_and_the_figure(tmp_path):
  """study.metrics: only those in the contrasts and the metrics figure; every metric stays in
  summary.csv and the per-condition table; a name no cell has is said so."""
  write_table(tmp_path)
  study = make_study(metrics=("test_accuracy", "gen_rouge_l"))
  summary.summarize(str(tmp_path), study, draw=False)
  text = (tmp_path / "summary.md").read_text()
  assert (tmp_path / "summary.csv").read_text() == EXPECTED_CSV
  assert md_row(section(text, "## Per condition"), "eval_loss")[0] == "eval_loss"
  noisy = section(text, "### noisy vs control: a = noisy, b = control")
  assert md_row(noisy, "test_accuracy")[1] == "2"
  assert "| eval_loss |" not in noisy and "| extra |" not in noisy
  assert ("study.metrics names gen_rouge_l, which no finished cell has; the metrics there are: "
          "eval_loss, extra, test_accuracy.") in text
  assert summary.headline_names(summary.load_cells(str(tmp_path), study)[0], study) == [
      "test_accuracy"]


def test_summary_md_arithmetic_by_hand(tmp_path):
  write_table(tmp_path)
  summary.summarize(str(tmp_path), make_study(), draw=False)
  text = (tmp_path / "summary.md").read_text()
  assert "5 of 6 cells finished" in text
  assert "Missing (not finished): other/seed1." in text
  assert "With 2 seeds per condition, resampling the seeds understates" in text

  per_condition = section(text, "## Per condition")
  # Per condition: control eval_loss 2.0, 2.2 -> mean 2.1, sample std sqrt(0.02) = 0.1414.
  assert md_row(per_condition, "eval_loss") == ["eval_loss", "2.1 ± 0.1414 (n=2)", "1.7 ± 0.1414 (n=2)",
                                       "2 ± n/a (n=1)"]
  # accuracy 0.5, 0.25 -> 0.375 ± 0.1768; 0.75, 1.0 -> 0.875 ± 0.1768; other from its examples.
  assert md_row(per_condition, "test_accuracy") == ["test_accuracy", "0.375 ± 0.1768 (n=2)",
                                           "0.875 ± 0.1768 (n=2)", "0.5 ± n/a (n=1)"]
  assert md_row(per_condition, "extra") == ["extra", "—", "3 ± n/a (n=1)", "—"]

  # noisy - control eval_loss: paired differences -0.2 and -0.6; the seed resamples
  # have means -0.6 (1/4), -0.4 (1/2), -0.2 (1/4): interval [-0.6, -0.2], negative.
  noisy, other, named = (section(text, title) for title in (
      "### noisy vs control: a = noisy, b = control", "### other vs control: a = other, b = control",
      "### noisy_vs_other: a = noisy, b = other"))
  assert md_row(noisy, "eval_loss") == ["eval_loss", "2", "-0.4", "[-0.6, -0.2]", "2 seeds",
                                        "negative"]
  # noisy - control accuracy, per example: differences (0,1,0,0) and (0,1,1,1), mean 4/8.
  difference, low, high = reference_bootstrap(
      [[1, 1, 1, 0], [1, 1, 1, 1]], [[1, 0, 1, 0], [1, 0, 0, 0]], 2000, 0, 0.95)
  assert difference == 0.5
  assert md_row(noisy, "test_accuracy") == ["test_accuracy", "2", "0.5",
                                            f"[{low:.4g}, {high:.4g}]", "2 seeds × 4 examples",
                                            stats.verdict(low, high)]
  # other - control: only seed 0 is paired; eval_loss has no interval with one seed.
  assert md_row(other, "eval_loss")[1:] == ["1", "0", "n/a", "n/a (1 seed)", "n/a"]
  assert md_row(other, "test_accuracy")[4] == "4 examples only (1 seed)"
  # The named contrast noisy - other, seed 0: accuracy (1,1,1,0) - (1,0,0,1) = 0.25.
  assert md_row(named, "test_accuracy")[1:3] == ["1", "0.25"]
  assert "Not compared (no seed of both conditions has them): extra." in named
  # Wall times only here: control 11 + 13 s.
  assert md_row(section(text, "## Cell time"), "control", "2") == ["control", "2", "12.0", "24.0"]


def test_no_finished_cell(tmp_path):
  paths = summary.summarize(str(tmp_path), make_study())
  assert (tmp_path / "summary.csv").read_text() == "condition,seed\n"
  text = (tmp_path / "summary.md").read_text()
  assert "0 of 6 cells finished" in text and "No cell has finished yet" in text
  assert len(paths) == 2


def test_differing_test_sets_are_refused(tmp_path):
  write_table(tmp_path)
  write_cell(tmp_path, "noisy", 1, {"eval_loss": 1.6}, [1, 1, 1], 1.0)
  with pytest.raises(UserError, match=r"noisy/seed1: 3.*split_seed"):
    summary.summarize(str(tmp_path), make_study(), draw=False)


def test_curve_keeps_the_last_row_of_a_step(tmp_path):
  path = tmp_path / "metrics.jsonl"
  path.write_text('{"step": 1, "loss": 3.0}\n{"step": 2, "loss": 2.5}\n'
                  '{"step": 2, "loss": 2.4}\n{"step": 2, "eval_loss": 2.6}\n{"step": 3, "lo')
  assert summary.read_curve(str(path)) == [{"step": 1, "loss": 3.0},
                                           {"step": 2, "loss": 2.4, "eval_loss": 2.6}]


def write_curve_and_analysis(folder, shift):
  with open(os.path.join(folder, "metrics.jsonl"), "w") as f:
    for step in range(1, 6):
      row = {"step": step, "loss": 3.0 - 0.3 * step + shift}
      if step % 5 == 0:
        row["eval_loss"] = 2.0 + shift
      f.write(json.dumps(row) + "\n")
  os.makedirs(os.path.join(folder, "analysis"))
  with open(os.path.join(folder, "analysis", "analysis.csv"), "w", newline="") as f:
    writer = csv.DictWriter(f, ("model", "layer", "module", "head", "metric", "value"))
    writer.writeheader()
    for layer in range(3):
      writer.writerow({"model": "base", "layer": layer, "module": "hidden", "metric": "cka_to_last",
                       "value": 0.5})
      writer.writerow({"model": "tuned", "layer": layer, "module": "hidden", "metric": "cka_base",
                       "value": 1.0 - 0.1 * layer - shift})
      for model, accuracy in (("base", 0.5 + 0.05 * layer), ("tuned", 0.5 + 0.1 * layer + shift)):
        writer.writerow({"model": model, "layer": layer, "module": "hidden",
                         "metric": "probe_accuracy", "value": accuracy})
    for layer in range(2):
      for block in ("attention", "mlp"):
        writer.writerow({"model": "tuned", "layer": layer, "module": block,
                         "metric": "weight_relative_change", "value": 0.01 * (layer + 1) + shift})
      for head in range(2):
        writer.writerow({"model": "tuned", "layer": layer, "module": "attention", "head": head,
                         "metric": "js", "value": 0.02 * (head + 1) + shift})
    writer.writerow({"model": "tuned", "layer": "", "module": "embedding",
                     "metric": "weight_relative_change", "value": 0.001})


def test_layer_means_average_heads_then_seeds(tmp_path):
  analysis = {}
  for seed, shift in ((0, 0.0), (1, 0.1)):
    folder = tmp_path / f"seed{seed}"
    folder.mkdir()
    write_curve_and_analysis(str(folder), shift)
    analysis[("noisy", seed)] = summary.read_analysis(str(folder / "analysis" / "analysis.csv"))
  js = summary._layer_means(analysis, "noisy", lambda row: row["metric"] == "js")
  # heads 0.02, 0.04 -> 0.03 (seed 0) and 0.13 (seed 1) -> 0.08 on both layers.
  assert js == pytest.approx({0: 0.08, 1: 0.08})
  cka = summary._layer_means(analysis, "noisy", lambda row: row["metric"] == "cka_base")
  assert cka == pytest.approx({0: 0.95, 1: 0.85, 2: 0.75})  # the base's own rows left out
  probe = lambda row: row["metric"] == "probe_accuracy"  # noqa: E731
  assert summary._layer_means(analysis, "noisy", probe) == pytest.approx({0: 0.55, 1: 0.65,
                                                                          2: 0.75})
  base = {key: summary.read_analysis(str(tmp_path / f"seed{key[1]}" / "analysis" / "analysis.csv"),
                                     base=True) for key in analysis}
  assert summary._layer_means(base, "noisy", probe) == pytest.approx({0: 0.5, 1: 0.55, 2: 0.6})


def test_figures_are_valid_pngs(tmp_path):
  from matplotlib import image

  write_table(tmp_path)
  for (condition, seed) in TABLE:
    write_curve_and_analysis(summary.cell_dir(str(tmp_path), condition, seed), 0.05 * seed)
  paths = summary.summarize(str(tmp_path), make_study())
  figures = sorted(os.path.basename(p) for p in paths if p.endswith(".png"))
  assert figures == ["attention_js.png", "cka_by_layer.png", "metrics_by_condition.png",
                     "probe_accuracy.png", "training_curves.png", "weight_change.png"]
  for path in paths[2:]:
    assert os.path.getsize(path) > 1000
    pixels = image.imread(path)
    assert pixels.ndim == 3 and pixels.shape[0] > 100 and pixels.shape[1] > 100
    assert pixels.std() > 0  # something is drawn
  text = (tmp_path / "summary.md").read_text()
  assert "![cka_by_layer.png](figures/cka_by_layer.png)" in text
