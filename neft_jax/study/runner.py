"""Runs a study's cells, each a training run in DIR/cells/<condition>/seed<k>/, then the summary.

    run(study, study_dir, cells="0/1")     the selected cells in grid order, then summarize
    select_cells(text, count)              the grid indices of --cells=i/n
    cell_metrics(workdir)                  a finished run's final numbers from metrics.jsonl

Resumable: a cell with cell.json is done and skipped; a cell whose run was
killed resumes from its latest checkpoint (`neft_jax.train.train` on the same
workdir does). DIR/study.json holds the resolved study; a second start with
another grid is refused before anything runs. DIR/provenance.json records the
code, versions and base config of the latest start (`neft_jax.provenance`).
Compiled steps are shared between cells through JAX's persistent compilation
cache (DIR/.jax_cache by default), so a seed after the first, or a condition
that only changes the data, compiles nothing. What a cell's stages print (eval
lines, answers, tables) goes to its console.log; the console keeps the log
lines, warnings, progress bars and one line per cell.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import time

import jax
import numpy as np

from neft_jax import provenance
from neft_jax import run as run_folder
from neft_jax.errors import UserError
from neft_jax.study import spec, summary
from neft_jax.study.summary import CELL_FILE, CURVE_FILE, read_curve

log = logging.getLogger(__name__)

STUDY_FILE = "study.json"
CONSOLE_FILE = "console.log"
CACHE_DIR = ".jax_cache"
ANALYSIS_DIR = "analysis"
# train_loss: the mean of the losses logged over the last tenth of the steps (at least the last).
TRAIN_LOSS_FRACTION = 0.1
RESULT_PREFIXES = ("eval_", "test_", "noise_")


def select_cells(text: str, count: int) -> list[int]:
  """Grid indices of `--cells=i/n`: every n-th cell starting at i (0 <= i < n)."""
  parts = str(text).split("/")
  try:
    start, ways = (int(part) for part in parts)
  except ValueError:
    raise UserError(f"--cells={text} is not i/n; give two integers such as --cells=0/4 (cells "
                    "0, 4, 8, ... of the grid)") from None
  if ways < 1:
    raise UserError(f"--cells={text} is out of range: n, the number of tasks sharing the grid, "
                    "must be at least 1")
  if not 0 <= start < ways:
    raise UserError(f"--cells={text} is out of range: with n={ways} tasks, i is one of 0 to "
                    f"{ways - 1} (--cells=0/{ways} ... --cells={ways - 1}/{ways})")
  return list(range(start, count, ways))


@contextlib.contextmanager
def compilation_cache(directory: str | None):
  """JAX's persistent compilation cache in `directory` (None: left as it is) for the
  block, every compiled program cached whatever its size or compile time."""
  if not directory:
    yield
    return
  from jax.experimental.compilation_cache import compilation_cache as cache
  settings = {"jax_compilation_cache_dir": directory,
              "jax_persistent_cache_min_compile_time_secs": 0.0,
              "jax_persistent_cache_min_entry_size_bytes": 0}
  saved = {name: jax.config.values[name] for name in settings}
  for name, value in settings.items():
    jax.config.update(name, value)
  cache.reset_cache()  # the next compile opens the cache in `directory`
  try:
    yield
  finally:
    for name, value in saved.items():
      jax.config.update(name, value)
    cache.reset_cache()


def check_study_file(study: spec.Study, study_dir: str, *, write: bool) -> None:
  """DIR/study.json: written at the first start; a study that differs from it is refused."""
  path = os.path.join(study_dir, STUDY_FILE)
  content = json.loads(json.dumps(spec.resolved(study)))
  if os.path.exists(path):
    with open(path, encoding="utf-8") as f:
      existing = json.load(f)
    if existing != content:
      changed = [key for key in content if existing.get(key) != content[key]]
      changed += [key for key in existing if key not in content]
      raise UserError(
          f"{path} holds another study (its {', '.join(changed)} differ from this config's): "
          "the grid of a study is fixed once it has started; give the changed study another "
          "--workdir, or delete that study.json (and the cells/ that no longer fit) to start over")
    return
  if write:
    os.makedirs(study_dir, exist_ok=True)
    _write_json(path, content)


def _write_json(path: str, content: dict) -> None:
  """Written whole or not at all: a killed writer leaves no half file."""
  partial = f"{path}.partial{os.getpid()}"
  with open(partial, "w", encoding="utf-8") as f:
    json.dump(content, f, indent=1)
    f.write("\n")
  os.replace(partial, path)


def cell_metrics(workdir: str) -> dict[str, float]:
  """The run's final numbers from its metrics.jsonl: train_loss (see TRAIN_LOSS_FRACTION),
  and eval_*, test_* of the last step and noise_* rates. Rows of a step logged twice
  (a run resumed from an earlier checkpoint logs its steps again) count once, the latest."""
  by_step = {int(row["step"]): row for row in read_curve(os.path.join(workdir, CURVE_FILE))}
  if not by_step:
    return {}
  last = max(by_step)
  metrics = {}
  losses = [row["loss"] for step, row in sorted(by_step.items())
            if "loss" in row and step > (1 - TRAIN_LOSS_FRACTION) * last]
  if not losses:
    losses = [row["loss"] for _, row in sorted(by_step.items()) if "loss" in row][-1:]
  if losses:
    metrics["train_loss"] = float(np.mean(losses))
  for step in sorted(by_step):
    for name, value in by_step[step].items():
      if name.startswith("noise_") or (step == last and name.startswith(RESULT_PREFIXES)):
        metrics[name] = float(value)
  return metrics


def prepare_shared_assets(study: spec.Study, study_dir: str) -> None:
  """The demo's model and data, made once for every cell with the base's seed."""
  if "demo" not in study.base:
    return
  from neft_jax import demo
  base = spec.fill_study_dir(study.base, study_dir)
  data = run_folder.data_config(base, study_dir)
  demo.prepare(base.demo, run_folder.resolve(base.model.path, study_dir), os.path.dirname(data.path),
               base.seed)


def base_model_path(study: spec.Study, study_dir: str) -> str:
  return spec.fill_study_dir(study.base, study_dir).model.path


def evaluate_prompts(study: spec.Study, study_dir: str) -> str | None:
  """The evaluate stage's prompt file (study.evaluate.prompts, `{study}` filled), or None."""
  path = study.evaluate.get("prompts")
  return path.replace(spec.STUDY_PLACEHOLDER, study_dir) if path else None


def run_cell(study: spec.Study, cell: spec.Cell, study_dir: str) -> dict | None:
  """Runs the cell's stages and writes its cell.json; returns it (None: preempted)."""
  from neft_jax import train
  workdir = os.path.join(study_dir, cell.path)
  config = spec.cell_config(study, cell, study_dir)
  start = time.perf_counter()
  os.makedirs(workdir, exist_ok=True)
  # What the stages print (eval results, answers, tables) goes to the cell's console.log;
  # the log lines, warnings and the progress bar stay on the console.
  with open(os.path.join(workdir, CONSOLE_FILE), "a", encoding="utf-8") as console, \
      contextlib.redirect_stdout(console):
    result = train.train(config, workdir)
    if result.get("preempted"):
      return None
    metrics = cell_metrics(workdir)
    examples = {name: [float(v) for v in values]
                for name, values in result.get("examples", {}).items()}
    if "evaluate" in study.stages:
      from neft_jax import evaluate
      summary = evaluate.evaluate(config, workdir=workdir,
                                  prompts_path=evaluate_prompts(study, study_dir),
                                  generator=f"{study.name}-{cell.condition}-seed{cell.seed}")
      for name, value in summary.items():
        if (isinstance(value, (int, float)) and not isinstance(value, bool)
            and name != "step" and not name.startswith(("eval_", "test_"))):
          metrics[f"gen_{name}"] = float(value)
    if "analyze" in study.stages:
      from neft_jax import analyze
      analyze.analyze(base_model_path(study, study_dir), [workdir],
                      os.path.join(workdir, ANALYSIS_DIR), **study.analyze)
  content = {"condition": cell.condition, "seed": cell.seed, "index": cell.index,
             "metrics": metrics, "examples": examples,
             "seconds": round(time.perf_counter() - start, 3)}
  if jax.process_index() == 0:
    _write_json(os.path.join(workdir, CELL_FILE), content)
  return content


def is_done(study_dir: str, cell: spec.Cell) -> bool:
  return os.path.exists(os.path.join(study_dir, cell.path, CELL_FILE))


def dry_run(study: spec.Study, cache_dir: str | None = None) -> dict[str, dict]:
  """Each condition's `neft_jax.train.dry_run` (its first seed's config; the seeds compile
  alike): no weights, no data, only the model's config.json. Returns {condition: report};
  prints a line per condition, then the peaks as a JSON last line. With `cache_dir`,
  conditions that compile to the same program (data noise) load it from that cache."""
  from neft_jax import train
  spec.validate(study)
  reports, by_program = {}, {}
  with compilation_cache(cache_dir):
    for cell in spec.cells(study)[::len(study.seeds)]:
      config = spec.cell_config(study, cell)
      key = program_key(config)
      if key in by_program:  # only the data differs (noise, share): the same step, the same bytes
        reports[cell.condition] = reports[by_program[key]]
        log.info("study %s: condition %s compiles as %s does", study.name, cell.condition,
                 by_program[key])
        continue
      log.info("study %s: dry run of condition %s", study.name, cell.condition)
      reports[cell.condition] = train.dry_run(config)
      by_program[key] = cell.condition
  if jax.process_index() == 0:
    gib = lambda b: round(b / 2**30, 2)  # noqa: E731
    for condition, report in reports.items():
      print(f"study {study.name}: {condition}: mesh {report['mesh']}, peak "
            f"{gib(report['peak_bytes_per_device'])} GiB per device")
    print(json.dumps({"study": study.name, "peak_gib_per_device": {
        condition: gib(report["peak_bytes_per_device"]) for condition, report in reports.items()}}))
  return reports


def program_key(config) -> str:
  """What decides a cell's compiled train step: the config without the data section's
  contents, which change the examples but not the step (noise, data.train_fraction,
  files), and with the data's shapes (max_length, packing) kept."""
  content = json.loads(config.to_json_best_effort())
  data = content.pop("data", {})
  content["data_shape"] = [data.get("max_length"), data.get("packing")]
  content.pop("seed", None)
  return json.dumps(content, sort_keys=True)


def run(study: spec.Study, study_dir: str, cells: str = "0/1", *, summarize_only: bool = False,
        cache_dir: str | None = None) -> list[str]:
  """Runs the selected cells (see the module's doc), then the summary; returns its paths.

  Every check (the study, --cells, study.json) comes before any cell runs.
  `cache_dir`: the compilation cache's folder (default DIR/.jax_cache; "" for none).
  """
  spec.validate(study)
  grid = spec.cells(study)
  selected = [grid[i] for i in select_cells(cells, len(grid))]
  study_dir = os.path.abspath(study_dir)
  is_main = jax.process_index() == 0
  if evaluate_prompts(study, study_dir) and not summarize_only:  # a bad prompt file: before all
    from neft_jax import evaluate
    try:
      evaluate.load_prompts(evaluate_prompts(study, study_dir))
    except UserError as e:
      raise UserError(f"study.evaluate.prompts: {str(e).removeprefix('--prompts=')}") from None
  check_study_file(study, study_dir, write=is_main and not summarize_only)
  if summarize_only and not os.path.isdir(study_dir):
    raise UserError(f"{study_dir} holds no study yet; run the study first (without "
                    "--summarize_only)")
  if is_main:  # this start's code and base config (study.json: the grid; each cell: its own)
    provenance.write(study_dir, provenance.collect(spec.fill_study_dir(study.base, study_dir)))
  if summarize_only:
    return summary.summarize(study_dir, study) if is_main else []
  todo = [cell for cell in selected if not is_done(study_dir, cell)]
  log.info("study %s: %d cells (%d conditions x %d seeds); --cells=%s selects %d, %d done before",
           study.name, len(grid), len(study.conditions), len(study.seeds), cells, len(selected),
           len(selected) - len(todo))
  prepare_shared_assets(study, study_dir)
  cache = os.path.join(study_dir, CACHE_DIR) if cache_dir is None else cache_dir
  stages = ", ".join(study.stages)
  seconds = []
  with compilation_cache(cache):
    for cell in selected:
      label = f"study: cell {cell.index + 1}/{len(grid)} {cell.condition} seed{cell.seed}"
      if is_done(study_dir, cell):
        log.info("%s: done before, skipped", label)
        continue
      content = run_cell(study, cell, study_dir)
      if content is None:
        log.info("%s: stopped by preemption; run the same command again to resume", label)
        return []
      seconds.append(content["seconds"])
      left = len(todo) - len(seconds)
      # The first cell of a run also compiles the steps the others find in the cache.
      per_cell = float(np.mean(seconds[1:] if len(seconds) > 1 else seconds))
      log.info("%s: %s done in %.1f s; ~%.0f s left", label, stages, content["seconds"],
               left * per_cell)
  return summary.summarize(study_dir, study) if is_main else []
