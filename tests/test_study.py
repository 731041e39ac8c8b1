"""python -m neft_jax.study: cells and their configs, --cells=i/n, bad input before any run,
and the smoke study end to end, killed mid-grid and mid-cell and started again."""

import importlib
import json
import logging
import os
import shutil
import stat
import subprocess
import sys

import ml_collections
import numpy as np
import pytest

from configs.study import smoke
from neft_jax import classify, cli
from neft_jax.errors import UserError, one_line_errors
from neft_jax.study import runner, spec

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
study_main = importlib.import_module("neft_jax.study.__main__")


def smoke_config(**study_changes) -> ml_collections.ConfigDict:
  config = smoke.get_config()
  for key, value in study_changes.items():
    with config.study.ignore_type():
      config.study[key] = value
  return config


def grid_study(conditions: int, seeds: int) -> spec.Study:
  pairs = tuple((f"c{k}", {"neftune.alpha": float(k)}) for k in range(conditions))
  return spec.from_config(smoke_config(conditions=pairs, control="c0", seeds=tuple(range(seeds)),
                                       contrasts={}))


# The grid and its configs ---------------------------------------------------------------------

def test_cells_map_to_the_configs_they_claim(tmp_path):
  config = smoke_config(conditions=(
      ("clean", {}),
      ("label_30", {"data.noise.kind": "label", "data.noise.rate": 0.3, "data.labels": ("a", "b")}),
      ("neft_10", {"neftune.alpha": 10.0, "optim.learning_rate": 1e-3}),
  ), control="clean", seeds=(3, 7), contrasts={"label_vs_neft": ("label_30", "neft_10")})
  with config.study.base.unlocked():
    config.study.base.data.split_seed = 42
  study = spec.from_config(config)
  spec.validate(study)
  cells = spec.cells(study)
  assert [(c.condition, c.seed, c.index, c.path) for c in cells] == [
      ("clean", 3, 0, "cells/clean/seed3"), ("clean", 7, 1, "cells/clean/seed7"),
      ("label_30", 3, 2, "cells/label_30/seed3"), ("label_30", 7, 3, "cells/label_30/seed7"),
      ("neft_10", 3, 4, "cells/neft_10/seed3"), ("neft_10", 7, 5, "cells/neft_10/seed7")]
  base = study.base.to_dict()
  for cell in cells:
    cell_config = spec.cell_config(study, cell, str(tmp_path))
    assert cell_config.seed == cell.seed and cell_config.data.split_seed == 42
    assert cell_config.model.path == f"{tmp_path}/demo/model"  # {study} filled in
    expected = spec.fill_study_dir(study.base, str(tmp_path)).to_dict()
    expected["seed"] = cell.seed
    for key, value in study.conditions[cell.condition].items():
      section, name = key.split(".")[:-1], key.split(".")[-1]
      target = expected
      for part in section:
        target = target[part]
      target[name] = value
    assert cell_config.to_dict() == expected  # the overrides and the seed, nothing else
  assert study.base.to_dict() == base  # the base is left as it was
  assert spec.cell_config(study, cells[2]).data.noise.rate == 0.3
  assert spec.cell_config(study, cells[0]).data.noise.kind == "none"


@pytest.mark.parametrize("conditions, seeds", [(1, 1), (2, 2), (3, 4), (5, 3)])
def test_cells_i_of_n_partition_the_grid(conditions, seeds):
  count = len(spec.cells(grid_study(conditions, seeds)))
  assert count == conditions * seeds
  for ways in range(1, count + 3):
    parts = [runner.select_cells(f"{i}/{ways}", count) for i in range(ways)]
    together = sorted(index for part in parts for index in part)
    assert together == list(range(count))  # none missing, none twice
    assert all(part == sorted(part) for part in parts)  # each task in grid order
    assert all(b - a == ways for part in parts for a, b in zip(part, part[1:]))


def test_cell_metrics_count_a_step_logged_twice_once(tmp_path):
  rows = [{"step": 0, "eval_loss": 9.0, "noise_train_record_rate": 0.25},
          *({"step": s, "loss": 10.0 - s} for s in range(1, 11)),
          {"step": 10, "loss": 7.0},  # a resumed run logged step 10 again: the later counts
          {"step": 10, "eval_loss": 2.5, "test_accuracy": 0.75}]
  (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
  assert runner.cell_metrics(str(tmp_path)) == {
      "train_loss": 7.0, "eval_loss": 2.5, "test_accuracy": 0.75, "noise_train_record_rate": 0.25}


def test_per_example_correctness_is_the_accuracy_by_example():
  scores = np.array([[-1.0, -2.0], [-3.0, -0.5], [-0.1, -0.2], [-2.0, -2.0]])
  targets = np.array([0, 0, 1, 1])
  correct = classify.correct(scores, targets)
  assert correct.tolist() == [1.0, 0.0, 0.0, 0.0]  # the tie goes to the first label
  assert correct.mean() == classify.classification_metrics(scores, targets)["accuracy"]


# Bad input: one error line, exit 1, before any run --------------------------------------------

class Flags:
  def __init__(self, config, workdir, cells="0/1", summarize_only=False, compilation_cache=None,
               dry_run=False):
    self.config, self.workdir, self.cells = config, workdir and str(workdir), cells
    self.summarize_only, self.compilation_cache = summarize_only, compilation_cache
    self.dry_run = dry_run


def run_main(flags, capsys) -> list[str]:
  """The CLI's main with the CLI's error handling, in this process: the stderr lines."""
  with pytest.raises(SystemExit) as exit_info, cli.routed_logging(), one_line_errors():
    study_main.main(flags)
  assert exit_info.value.code == 1
  return capsys.readouterr().err.splitlines()


BAD_STUDIES = {
    "unknown_key": (dict(conditions=(("clean", {"neftune.alpah": 0.0}), ("typo_20", {}))),
                    "error: condition 'clean' overrides 'neftune.alpah', but the base config has "
                    "no key neftune.alpah; did you mean 'neftune.alpha'?"),
    "duplicate_condition": (dict(conditions=(("clean", {}), ("typo_20", {}), ("clean", {}))),
                            "error: study.conditions names 'clean' twice; give every condition "
                            "its own name"),
    "dict_conditions": (dict(conditions={"clean": {}}),
                        "error: study.conditions must be a tuple of (name, overrides) pairs, not a "
                        "dict: a dict keeps only the last of two conditions with the same name, "
                        "silently; write (('control', {}), ('label_30', {'data.noise.kind': "
                        "'label'}), ...)"),
    "unknown_contrast_condition": (
        dict(contrasts={"typo": ("typo_2", "clean")}),
        "error: study.contrasts['typo'] names 'typo_2', which is not a condition; use "
        "conditions of study.conditions: clean, typo_20"),
    "control_not_a_condition": (dict(control="typo"),
                                "error: study.control='typo' is not a condition; use one of "
                                "clean, typo_20"),
    "zero_seeds": (dict(seeds=()), "error: study.seeds is empty; give at least one seed, e.g. "
                                   "(0, 1, 2)"),
    "unknown_stage": (dict(stages=("train", "score")),
                      "error: study.stages has unknown 'score'; stages are train, evaluate, "
                      "analyze"),
    "seed_override": (dict(conditions=(("clean", {"seed": 3}), ("typo_20", {}))),
                      "error: condition 'clean' overrides seed; the seed varies by cell: list "
                      "the seeds in study.seeds"),
    "bad_value": (dict(conditions=(("clean", {"neftune.alpha": -1.0}), ("typo_20", {}))),
                  "error: condition 'clean': neftune.alpha=-1.0 must be >= 0 (set them in the "
                  "config file or with --config.KEY=VALUE)"),
    "evaluate_unknown_option": (dict(stages=("train", "evaluate"), evaluate={"prompt": "x.json"}),
                                "error: study.evaluate has unknown 'prompt'; its only option is "
                                "prompts=FILE (a JSON list of instructions)"),
    "evaluate_without_stage": (dict(evaluate={"prompts": "x.json"}),
                               "error: study.evaluate is set but study.stages has no 'evaluate'; "
                               "add it, e.g. ('train', 'evaluate'), or drop study.evaluate"),
    "evaluate_prompts_missing": (dict(stages=("train", "evaluate"),
                                      evaluate={"prompts": "{study}/none.json"}),
                                 "error: study.evaluate.prompts: {workdir}/none.json does not exist"),
    "metrics_a_string": (dict(metrics="test_accuracy"),
                         "error: study.metrics='test_accuracy' must be a tuple of metric names, "
                         "e.g. ('test_accuracy', 'eval_loss')"),
}


@pytest.mark.parametrize("case", sorted(BAD_STUDIES))
def test_bad_study_is_one_error_line_before_any_run(tmp_path, capsys, case):
  changes, expected = BAD_STUDIES[case]
  workdir = tmp_path / "study"
  expected = expected.replace("{workdir}", str(workdir))
  assert run_main(Flags(smoke_config(**changes), workdir), capsys) == [expected]
  assert not os.path.exists(workdir)  # nothing written, nothing run


@pytest.mark.parametrize("cells, expected", [
    ("4/4", "error: --cells=4/4 is out of range: with n=4 tasks, i is one of 0 to 3 "
            "(--cells=0/4 ... --cells=3/4)"),
    ("-1/2", "error: --cells=-1/2 is out of range: with n=2 tasks, i is one of 0 to 1 "
             "(--cells=0/2 ... --cells=1/2)"),
    ("1/0", "error: --cells=1/0 is out of range: n, the number of tasks sharing the grid, must be "
            "at least 1"),
    ("half", "error: --cells=half is not i/n; give two integers such as --cells=0/4 (cells 0, "
             "4, 8, ... of the grid)"),
])
def test_cells_out_of_range_is_one_error_line(tmp_path, capsys, cells, expected):
  workdir = tmp_path / "study"
  assert run_main(Flags(smoke_config(), workdir, cells=cells), capsys) == [expected]
  assert not os.path.exists(workdir)


def test_demo_files_per_cell_are_refused(tmp_path, capsys):
  """The demo's own {workdir} paths would give every cell its own model, seeded by the cell."""
  config = smoke_config()
  config.study.base.model.path = "{workdir}/demo/model"
  assert run_main(Flags(config, tmp_path / "study"), capsys) == [
      "error: study.base model.path='{workdir}/demo/model': with {workdir} every cell would make "
      "its own demo model and data, seeded by the cell's seed; put them in the study's folder, "
      "shared by every cell: '{study}/demo/...'"]


def test_a_study_file_loads_with_its_argument(tmp_path):
  study = spec.load(os.path.join(REPO, "configs", "study", "smoke.py"))
  assert list(study.conditions) == ["clean", "typo_20"] and study.seeds == (0, 1)
  path = tmp_path / "grid.py"
  path.write_text("from configs.study import smoke\n\n"
                  "def get_config(arg='2'):\n"
                  "  config = smoke.get_config()\n"
                  "  config.study.seeds = tuple(range(int(arg)))\n"
                  "  return config\n")
  assert spec.load(f"{path}:3").seeds == (0, 1, 2) and spec.load(str(path)).seeds == (0, 1)
  with pytest.raises(UserError, match="nope.py does not exist; give a study config such as"):
    spec.load(str(tmp_path / "nope.py"))


def test_a_changed_grid_is_refused(tmp_path, capsys):
  workdir = tmp_path / "study"
  workdir.mkdir()
  runner.check_study_file(spec.from_config(smoke_config()), str(workdir), write=True)
  written = (workdir / "study.json").read_text()
  assert json.loads(written)["cells"][3] == {"condition": "typo_20", "seed": 1, "index": 3,
                                             "path": "cells/typo_20/seed1"}
  lines = run_main(Flags(smoke_config(seeds=(0, 1, 2)), workdir), capsys)
  assert lines == [f"error: {workdir}/study.json holds another study (its seeds, cells differ from "
                   "this config's): the grid of a study is fixed once it has started; give the "
                   "changed study another --workdir, or delete that study.json (and the cells/ "
                   "that no longer fit) to start over"]
  assert set(os.listdir(workdir)) == {"study.json", "study.log"}  # nothing else written
  assert (workdir / "study.json").read_text() == written


def test_no_workdir_is_one_error_line(capsys):
  assert run_main(Flags(smoke_config(), None), capsys) == [
      "error: --workdir is missing: give the study's folder, e.g. --workdir=runs/study (only "
      "--dry_run runs without one)"]


def test_dry_run_reports_each_condition_and_runs_nothing(demo_assets, tmp_path, capsys):
  """--dry_run: each condition's train.dry_run, a line each and the peaks as JSON."""
  study = demo_smoke_study(demo_assets)
  study.conditions["alpha_0"] = {"neftune.alpha": 0.0}  # another program than clean's (alpha 5)
  study.condition_pairs = (*study.condition_pairs, ("alpha_0", {"neftune.alpha": 0.0}))
  runner.prepare_shared_assets(study, str(tmp_path))  # the demo's model config, if not yet made
  reports = runner.dry_run(study)
  assert list(reports) == ["clean", "typo_20", "alpha_0"]
  lines = capsys.readouterr().out.splitlines()
  last = json.loads(lines[-1])
  assert last["study"] == "smoke" and list(last["peak_gib_per_device"]) == list(reports)
  for condition, report in reports.items():
    assert report["mesh"] == {"data": 1, "fsdp": 1, "tensor": 1}
    assert report["param_bytes_per_device"] == 4 * report["parameters"]  # float32, one device
    assert report["peak_bytes_per_device"] > report["param_bytes_per_device"]
    assert any(line.startswith(f"study smoke: {condition}: mesh") for line in lines)
  assert reports["clean"] is reports["typo_20"]  # data noise only: one compiled step serves both
  assert reports["alpha_0"] is not reports["clean"]


def test_command_line_bad_input(tmp_path):
  """The real command: one error line for --cells out of range, before the study's folder."""
  result = subprocess.run(
      [sys.executable, "-m", "neft_jax.study", "--config=configs/study/smoke.py",
       f"--workdir={tmp_path / 'study'}", "--cells=2/2"],
      cwd=REPO, capture_output=True, text=True, timeout=300,
      env=os.environ | {"JAX_PLATFORMS": "cpu"})
  assert result.returncode == 1, result.stderr[-2000:]
  assert result.stderr.splitlines() == [
      "error: --cells=2/2 is out of range: with n=2 tasks, i is one of 0 to 1 (--cells=0/2 ... "
      "--cells=1/2)"]
  assert not os.path.exists(tmp_path / "study")


# The smoke study, end to end, and killed and started again ------------------------------------

def demo_smoke_study(demo_assets) -> spec.Study:
  """configs/study/smoke.py on the session's demo files (the ones it makes itself, as
  tests/test_train.py's shrunk_config has them), on one device: every cell is a
  one-device run, and 8 simulated devices on 2 cores would double the study's time."""
  config = smoke_config()
  base = config.study.base
  assert (base.demo.train_examples, base.demo.eval_examples) == (400, 24)
  base.model.path = os.path.join(demo_assets, "model")
  base.data.path = os.path.join(demo_assets, "data", "train.json")
  base.data.eval_path = os.path.join(demo_assets, "data", "eval.json")
  base.mesh.num_devices = 1
  return spec.from_config(config)


def finished_cells(study_dir):
  """Every cell.json, without its wall time."""
  cells = {}
  for path in sorted(study_dir.glob("cells/*/seed*/cell.json")):
    content = json.loads(path.read_text())
    assert content.pop("seconds") > 0
    cells[str(path.relative_to(study_dir))] = content
  return cells


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
  """One compilation cache for both studies: the second compiles nothing."""
  return str(tmp_path_factory.mktemp("jax_cache"))


@pytest.fixture(scope="module")
def straight_study(demo_assets, cache_dir, tmp_path_factory):
  study_dir = tmp_path_factory.mktemp("straight_study")
  study = demo_smoke_study(demo_assets)
  runner.run(study, str(study_dir), cache_dir=cache_dir)
  return study, study_dir


def test_smoke_study_end_to_end(straight_study):
  study, study_dir = straight_study
  cells = finished_cells(study_dir)
  assert list(cells) == [f"cells/{c}/seed{s}/cell.json" for c in ("clean", "typo_20")
                         for s in (0, 1)]
  for index, (path, cell) in enumerate(cells.items()):
    assert cell["index"] == index and path == f"cells/{cell['condition']}/seed{cell['seed']}/cell.json"
    metrics = cell["metrics"]
    assert set(metrics) >= {"train_loss", "eval_loss", "eval_token_accuracy", "eval_exact_match"}
    assert len(cell["examples"]["eval_exact_match"]) == 8  # eval.exact_match_examples
    assert metrics["eval_exact_match"] == np.mean(cell["examples"]["eval_exact_match"])
    workdir = study_dir / os.path.dirname(path)
    config = json.loads((workdir / "config.json").read_text())
    assert config["seed"] == cell["seed"] and config["data"]["split_seed"] == 0
    assert config["data"]["noise"]["kind"] == {"clean": "none", "typo_20": "typo"}[cell["condition"]]
    if cell["condition"] == "typo_20":  # the realized noise of the cell's own seed
      assert 0.1 < metrics["noise_train_record_rate"] < 0.3
    else:
      assert not any(name.startswith("noise_") for name in metrics)
    assert sorted(os.listdir(workdir / "checkpoints")) == ["2", "4"]
  assert len({cell["metrics"]["train_loss"] for cell in cells.values()}) == 4  # all differ
  study_json = json.loads((study_dir / "study.json").read_text())
  assert study_json["conditions"] == {"clean": {},
                                      "typo_20": {"data.noise.kind": "typo", "data.noise.rate": 0.2}}
  assert [c["path"] for c in study_json["cells"]] == [os.path.dirname(p) for p in cells]
  header, *rows = (study_dir / "summary.csv").read_text().splitlines()
  assert header.startswith("condition,seed") and len(rows) == 4


class Killed(Exception):
  """The study's process ended here (a job's time limit, a node lost)."""


def test_killed_study_started_again_ends_the_same(straight_study, cache_dir, tmp_path,
                                                  monkeypatch, caplog):
  """Killed in its second cell after a checkpoint at step 3 of 4, then run again as two
  --cells=i/n tasks: the same cells and the same summary.csv as the straight study."""
  from neft_jax import train
  study, straight_dir = straight_study
  study_dir = tmp_path / "study"
  real_train, calls = train.train, []

  def killed_in_second_cell(config, workdir, **kwargs):
    calls.append(workdir)
    if len(calls) == 2:
      real_train(config, workdir, stop_after=3)
      raise Killed
    return real_train(config, workdir, **kwargs)

  monkeypatch.setattr(train, "train", killed_in_second_cell)
  with pytest.raises(Killed):
    runner.run(study, str(study_dir), cache_dir=cache_dir)
  monkeypatch.setattr(train, "train", real_train)
  assert list(finished_cells(study_dir)) == ["cells/clean/seed0/cell.json"]
  killed = study_dir / "cells" / "clean" / "seed1"
  assert sorted(os.listdir(killed / "checkpoints")) == ["2", "3"]
  assert not (killed / "cell.json").exists()
  with caplog.at_level(logging.INFO):
    runner.run(study, str(study_dir), "1/2", cache_dir=cache_dir)  # cells 1 and 3
    runner.run(study, str(study_dir), "0/2", cache_dir=cache_dir)  # 0 done; 2
  assert "resumed from step 3" in caplog.text
  assert caplog.text.count("done before, skipped") == 1
  progress = [line for line in caplog.messages if line.startswith("study: cell ")]
  assert [line.split(":")[1] for line in progress] == [
      " cell 2/4 clean seed1", " cell 4/4 typo_20 seed1", " cell 1/4 clean seed0",
      " cell 3/4 typo_20 seed0"]
  assert " done in " in progress[0] and progress[0].endswith(" s left")
  assert finished_cells(study_dir) == finished_cells(straight_dir)
  assert (study_dir / "summary.csv").read_bytes() == (straight_dir / "summary.csv").read_bytes()


def test_summarize_only_reads_whatever_finished(straight_study, tmp_path):
  study, straight_dir = straight_study
  study_dir = tmp_path / "study"
  shutil.copytree(straight_dir / "cells" / "typo_20", study_dir / "cells" / "typo_20")
  shutil.copy(straight_dir / "study.json", study_dir / "study.json")
  runner.run(study, str(study_dir), summarize_only=True)
  rows = (study_dir / "summary.csv").read_text().splitlines()[1:]
  assert [row.split(",")[:2] for row in rows] == [["typo_20", "0"], ["typo_20", "1"]]
  assert not (study_dir / "cells" / "clean").exists()  # nothing ran


# The SLURM launcher ---------------------------------------------------------------------------

def test_slurm_array_then_summary(tmp_path):
  """Stand-ins for sbatch, srun and python record how each mode calls them."""
  log, bin_dir = tmp_path / "calls.log", tmp_path / "bin"
  bin_dir.mkdir()
  for name, reply in (("sbatch", "4242;cluster"), ("srun", ""), ("python", "")):
    stub = bin_dir / name
    stub.write_text(f'#!/usr/bin/env bash\necho "{name} $*" >> {log}\necho "{reply}"\n')
    stub.chmod(stub.stat().st_mode | stat.S_IEXEC)
  env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}
  env |= {"PATH": f"{bin_dir}:{env['PATH']}"}
  args = ["bash", "launch/study_slurm.sbatch", "3", "configs/study/smoke.py", "/shared/study",
          "--config.study.seeds=(0,1,2)"]
  out = subprocess.run(args, cwd=REPO, env=env, check=True, capture_output=True, text=True).stdout
  assert out.strip().endswith("submitted the array job 4242 (3 tasks) and the summary job 4242 "
                              "after it")
  subprocess.run(args, cwd=REPO, check=True, env=env | {
      "SLURM_JOB_ID": "4243", "SLURM_ARRAY_TASK_ID": "2", "SLURM_ARRAY_TASK_COUNT": "3"})
  subprocess.run(args, cwd=REPO, check=True, env=env | {"SLURM_JOB_ID": "4244"})
  script, rest = "launch/study_slurm.sbatch", "3 configs/study/smoke.py /shared/study"
  flags = "--config=configs/study/smoke.py --workdir=/shared/study"
  assert log.read_text().splitlines() == [
      f"sbatch --parsable --array=0-2 --gpus-per-task=1 {script} {rest} --config.study.seeds=(0,1,2)",
      f"sbatch --parsable --dependency=afterany:4242 --job-name=neft_jax_study_summary {script} "
      f"{rest} --config.study.seeds=(0,1,2)",
      f"srun --kill-on-bad-exit=1 python -m neft_jax.study {flags} --cells=2/3 "
      "--config.study.seeds=(0,1,2)",
      f"python -m neft_jax.study {flags} --summarize_only --config.study.seeds=(0,1,2)"]
  bad = subprocess.run([*args[:2], "0", *args[3:]], cwd=REPO, env=env, capture_output=True, text=True)
  assert bad.returncode == 1 and bad.stderr.startswith("error: TASKS=0 must be a whole number")


def test_evaluate_and_analyze_stages(straight_study, tmp_path):
  """A finished cell's run, given the evaluate stage with study.evaluate's prompts and the
  analyze stage: the prompts' answers are saved, their metrics (gen_*) join cell.json, and
  the analysis against the base model is in analysis/."""
  study, straight_dir = straight_study
  study = spec.Study(**{**study.__dict__, "stages": ("train", "evaluate", "analyze"),
                        "seeds": (0,), "evaluate": {"prompts": "{study}/prompts.json"}})
  study.conditions = {"clean": study.conditions["clean"]}
  study.condition_pairs, study.contrasts = (("clean", study.conditions["clean"]),), {}
  study_dir = tmp_path / "study"
  shutil.copytree(straight_dir / "cells" / "clean" / "seed0", study_dir / "cells" / "clean" / "seed0")
  (study_dir / "cells" / "clean" / "seed0" / "cell.json").unlink()
  prompts = [{"instruction": f"Name a colour number {k}.", "output": "Blue.", "dataset": "toy"}
             for k in range(3)]
  (study_dir / "prompts.json").write_text(json.dumps(prompts))
  runner.run(study, str(study_dir), cache_dir="")
  cell = json.loads((study_dir / "cells" / "clean" / "seed0" / "cell.json").read_text())
  straight = json.loads((straight_dir / "cells" / "clean" / "seed0" / "cell.json").read_text())
  for name, value in straight["metrics"].items():  # the run, resumed at its end, is the same
    assert cell["metrics"][name] == value
  generated = {name for name in cell["metrics"] if name.startswith("gen_")}
  assert {"gen_mean_words", "gen_exact_match", "gen_rouge_l"} <= generated
  outputs = json.loads(next(study_dir.glob("cells/clean/seed0/eval_step_*/model_outputs.json"))
                       .read_text())
  assert [(o["instruction"], o["dataset"], o["generator"]) for o in outputs] == [
      (p["instruction"], "toy", "smoke-clean-seed0") for p in prompts]  # not the held-out split's
  analysis = study_dir / "cells" / "clean" / "seed0" / "analysis"
  assert {"analysis.json", "analysis.csv", "analysis.md"} <= set(os.listdir(analysis))
  about = json.loads((analysis / "analysis.json").read_text())
  assert about["base"] == study.base.model.path


def test_classification_cell_has_per_example_test_accuracy(demo_assets, tmp_path):
  """A one-cell study on tests/data's tiny classification reviews: cell.json's examples hold
  1/0 per test example, in the test split's order, and their mean is test_accuracy."""
  from tests.data.test_classification import classification_run_config, reviews
  base = classification_run_config(demo_assets, reviews(tmp_path))
  base.train.steps = 2
  base.train.eval_at_start = False  # every cell's step 0 is the same base: not scored
  config = ml_collections.ConfigDict()
  config.study = dict(name="classification", base=base, conditions=(("clean", {}),),
                      control="clean", seeds=(0,), stages=("train",), contrasts={})
  runner.run(spec.from_config(config), str(tmp_path / "study"), cache_dir="")
  cell = json.loads((tmp_path / "study" / "cells" / "clean" / "seed0" / "cell.json").read_text())
  test, held_out = cell["examples"]["test_accuracy"], cell["examples"]["eval_accuracy"]
  assert len(test) == len(held_out) == 8 and set(test) | set(held_out) <= {0.0, 1.0}
  assert np.mean(test) == pytest.approx(cell["metrics"]["test_accuracy"], abs=1e-12)
  assert np.mean(held_out) == pytest.approx(cell["metrics"]["eval_accuracy"], abs=1e-12)
  rows = [json.loads(line) for line in
          open(tmp_path / "study" / "cells" / "clean" / "seed0" / "metrics.jsonl")]
  assert not any(row["step"] == 0 for row in rows)  # train.eval_at_start=False
