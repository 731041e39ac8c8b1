"""A study's spec: the grid of conditions x seeds, fixed before any result is seen.

    study = load("configs/study/smoke.py")     # or from_config(a ConfigDict with `study`)
    validate(study)                            # UserError before anything runs
    cells(study)                               # [Cell], condition-major, then seed
    cell_config(study, cell, study_dir)        # the cell's train config

A study config file's `get_config()` returns a ConfigDict with a `study`
section:

    study.name        a name for the reports
    study.base        a full train config (configs/*.py's get_config())
    study.conditions  a tuple of (name, overrides) pairs, in order; overrides map
                      dotted base keys to values: ("label_30", {"data.noise.kind": "label",
                      "data.noise.rate": 0.3}). Pairs, not a dict: a dict literal keeps
                      only the last of two entries with the same name, silently.
    study.control     the name of the control condition
    study.seeds       the run seeds; every condition runs with each
    study.stages      what each cell does: ("train",), then "evaluate", then "analyze"
    study.contrasts   name -> (condition, condition), the comparisons the summary makes
    study.evaluate    optional: the evaluate stage's prompts, dict(prompts=FILE), a JSON list
                      of instructions as `neft_jax.evaluate --prompts` reads (AlpacaEval's,
                      with reference outputs for ROUGE-L); without it, the held-out split's
    study.analyze     optional: keyword arguments of the analyze stage (max_examples=64, ...)
    study.metrics     optional: the headline metrics the contrasts and the metrics figure
                      show (default: every metric; summary.csv and the per-condition
                      table always hold every metric)

Each cell's config is the base with its condition's overrides and `seed` set
to the cell's seed; `data.split_seed` is the base's for every cell, so every
cell has the same held-out and test sets (no condition may override it). In
the base's string values `{study}` stands for the study's folder, so that
every cell can share one base model and data set made once (the demo's).
"""

from __future__ import annotations

import dataclasses
import difflib
import importlib.util
import os

import ml_collections

from neft_jax import config_check
from neft_jax.errors import UserError

STAGES = ("train", "evaluate", "analyze")
STUDY_PLACEHOLDER = "{study}"
EVALUATE_OPTIONS = {"prompts"}
# Keys the study itself sets: the run seed by cell, the split seed fixed for all.
RESERVED_KEYS = {
    "seed": "the seed varies by cell: list the seeds in study.seeds",
    "data.split_seed": "data.split_seed is fixed so that every cell has the same held-out and "
                       "test sets: set it in study.base",
}


@dataclasses.dataclass
class Study:
  name: str
  base: ml_collections.ConfigDict
  conditions: dict[str, dict]
  control: str
  seeds: tuple[int, ...]
  stages: tuple[str, ...]
  contrasts: dict[str, tuple[str, str]]
  # The conditions as the config gave them, duplicates included (validate checks them).
  condition_pairs: tuple[tuple[str, dict], ...] = ()
  # The evaluate stage's options: {"prompts": FILE} or nothing (the held-out split).
  evaluate: dict = dataclasses.field(default_factory=dict)
  # Keyword arguments of neft_jax.analyze.analyze for the analyze stage (max_examples, ...).
  analyze: dict = dataclasses.field(default_factory=dict)
  # The headline metrics of the contrasts and the metrics figure (empty: every metric).
  metrics: tuple[str, ...] = ()


@dataclasses.dataclass(frozen=True)
class Cell:
  condition: str
  seed: int
  index: int  # position in the grid: condition-major, then seed
  path: str   # relative to the study folder: cells/<condition>/seed<k>


# Loading ----------------------------------------------------------------------------

def load_config_file(config_path: str) -> ml_collections.ConfigDict:
  """`get_config()` of a config file, or `get_config(arg)` for "path:arg"."""
  path, _, arg = config_path.partition(":")
  if not os.path.exists(path):
    raise UserError(f"--config={config_path}: {path} does not exist; give a study config such "
                    "as configs/study/smoke.py")
  module_spec = importlib.util.spec_from_file_location("neft_jax_study_config", path)
  module = importlib.util.module_from_spec(module_spec)
  module_spec.loader.exec_module(module)
  return module.get_config(arg) if arg else module.get_config()


def load(config_path: str) -> Study:
  """The study of a config file ("path" or "path:arg"), not yet validated."""
  return from_config(load_config_file(config_path))


def from_config(config: ml_collections.ConfigDict) -> Study:
  """The study of a config's `study` section, not yet validated."""
  if "study" not in config:
    raise UserError("the config has no 'study' section; a study config's get_config() returns "
                    "a ConfigDict with study.base, study.conditions, study.control, study.seeds "
                    "(see configs/study/smoke.py)")
  section = config.study
  for key in ("base", "conditions", "control", "seeds"):
    if key not in section:
      raise UserError(f"study.{key} is missing; see configs/study/smoke.py for a complete study")
  if not isinstance(section.base, ml_collections.ConfigDict):
    raise UserError("study.base must be a train config (a ConfigDict, as configs/*.py's "
                    "get_config() returns)")
  pairs = _condition_pairs(section.conditions)
  contrasts = section.get("contrasts", {})
  contrasts = {str(name): tuple(pair) for name, pair in
               (contrasts.items() if hasattr(contrasts, "items") else ())}
  return Study(
      name=str(section.get("name", "study")),
      base=section.base,
      conditions={name: overrides for name, overrides in pairs},
      control=str(section.control),
      seeds=tuple(section.seeds),
      stages=tuple(section.get("stages", ("train",))),
      contrasts=contrasts,
      condition_pairs=pairs,
      evaluate=dict(section.get("evaluate", {})),
      analyze=dict(section.get("analyze", {})),
      metrics=_metric_names(section.get("metrics", ())))


def _metric_names(metrics) -> tuple[str, ...]:
  if isinstance(metrics, str) or not all(isinstance(name, str) for name in metrics):
    raise UserError(f"study.metrics={metrics!r} must be a tuple of metric names, e.g. "
                    "('test_accuracy', 'eval_loss')")
  return tuple(metrics)


def _condition_pairs(conditions) -> tuple[tuple[str, dict], ...]:
  if isinstance(conditions, (dict, ml_collections.ConfigDict)):
    raise UserError("study.conditions must be a tuple of (name, overrides) pairs, not a dict: a "
                    "dict keeps only the last of two conditions with the same name, silently; "
                    "write (('control', {}), ('label_30', {'data.noise.kind': 'label'}), ...)")
  pairs = []
  for number, pair in enumerate(conditions):
    if (not isinstance(pair, (tuple, list)) or len(pair) != 2 or not isinstance(pair[0], str)
        or not hasattr(pair[1], "items")):
      raise UserError(f"study.conditions[{number}] is {pair!r}; each condition is a (name, "
                      "overrides) pair, overrides a dict of dotted config keys to values")
    pairs.append((pair[0], dict(pair[1].items())))
  return tuple(pairs)


# Checks -----------------------------------------------------------------------------

def validate(study: Study) -> None:
  """Raises a UserError on the first problem with the study, before anything runs."""
  names = [name for name, _ in study.condition_pairs] or list(study.conditions)
  if not names:
    raise UserError("study.conditions is empty; give at least one (name, overrides) pair")
  seen = set()
  for name in names:
    if name in seen:
      raise UserError(f"study.conditions names {name!r} twice; give every condition its own name")
    if not name or "/" in name or name.startswith("."):
      raise UserError(f"study.conditions: {name!r} is not a usable name (it names a folder); "
                      "use letters, digits, '_' or '-'")
    seen.add(name)
  if study.control not in study.conditions:
    raise UserError(f"study.control={study.control!r} is not a condition; use one of "
                    f"{', '.join(names)}")
  for name, pair in study.contrasts.items():
    if len(pair) != 2:
      raise UserError(f"study.contrasts[{name!r}]={pair!r}: a contrast is a pair of conditions "
                      "(treatment, reference)")
    for condition in pair:
      if condition not in study.conditions:
        raise UserError(f"study.contrasts[{name!r}] names {condition!r}, which is not a condition; "
                        f"use conditions of study.conditions: {', '.join(names)}")
    if pair[0] == pair[1]:
      raise UserError(f"study.contrasts[{name!r}] compares {pair[0]!r} with itself; name two "
                      "different conditions")
  if not study.seeds:
    raise UserError("study.seeds is empty; give at least one seed, e.g. (0, 1, 2)")
  if not all(isinstance(seed, int) and not isinstance(seed, bool) and seed >= 0
             for seed in study.seeds):
    raise UserError(f"study.seeds={study.seeds!r} must be non-negative integers")
  if len(set(study.seeds)) != len(study.seeds):
    raise UserError(f"study.seeds={study.seeds!r} repeats a seed; give every seed once")
  for stage in study.stages:
    if stage not in STAGES:
      raise UserError(f"study.stages has unknown {stage!r}; stages are {', '.join(STAGES)}")
  if (not study.stages or study.stages[0] != "train" or len(set(study.stages)) != len(study.stages)
      or list(study.stages) != [s for s in STAGES if s in study.stages]):
    raise UserError(f"study.stages={study.stages!r}: each cell trains first, then evaluates, "
                    "then analyzes; give them in that order, each once, e.g. ('train', 'evaluate')")
  unknown = sorted(set(study.evaluate) - EVALUATE_OPTIONS)
  if unknown:
    raise UserError(f"study.evaluate has unknown {', '.join(map(repr, unknown))}; its only "
                    "option is prompts=FILE (a JSON list of instructions)")
  if study.evaluate and "evaluate" not in study.stages:
    raise UserError("study.evaluate is set but study.stages has no 'evaluate'; add it, e.g. "
                    "('train', 'evaluate'), or drop study.evaluate")
  if "demo" in study.base:
    for key in ("model.path", "data.path", "data.eval_path"):
      value = study.base.model.path if key == "model.path" else study.base.data[key.split(".")[1]]
      if "{workdir}" in value:
        raise UserError(f"study.base {key}={value!r}: with {{workdir}} every cell would make its "
                        "own demo model and data, seeded by the cell's seed; put them in the "
                        "study's folder, shared by every cell: '{study}/demo/...'")
  for name, overrides in study.conditions.items():
    for key in overrides:
      if key in RESERVED_KEYS:
        raise UserError(f"condition {name!r} overrides {key}; {RESERVED_KEYS[key]}")
  for cell in cells(study)[::len(study.seeds)]:  # each condition's config, checked whole
    config = cell_config(study, cell)
    try:
      config_check.validate(config)
    except UserError as e:
      raise UserError(f"condition {cell.condition!r}: {e}") from None


# The grid ---------------------------------------------------------------------------

def cell_path(condition: str, seed: int) -> str:
  """A cell's folder, relative to the study folder."""
  return f"cells/{condition}/seed{seed}"


def cells(study: Study) -> list[Cell]:
  """Every (condition, seed) cell: condition-major, then seed, in the given orders."""
  grid = [(condition, seed) for condition in study.conditions for seed in study.seeds]
  return [Cell(condition, seed, index, cell_path(condition, seed))
          for index, (condition, seed) in enumerate(grid)]


def cell_config(study: Study, cell: Cell, study_dir: str | None = None) -> ml_collections.ConfigDict:
  """The cell's train config: the base, its condition's overrides, `seed` = the cell's
  seed; `data.split_seed` stays the base's. With `study_dir`, `{study}` in string
  values is replaced by it."""
  config = study.base.copy_and_resolve_references()
  for key, value in study.conditions[cell.condition].items():
    set_key(config, key, value, f"condition {cell.condition!r}")
  config.seed = cell.seed
  config.data.split_seed = study.base.data.split_seed
  if study_dir is not None:
    config = fill_study_dir(config, study_dir)
  return config


def set_key(config: ml_collections.ConfigDict, key: str, value, where: str) -> None:
  """config[a][b][c] = value for key "a.b.c"; a key the config lacks is a UserError."""
  *sections, name = key.split(".")
  section = config
  for depth, part in enumerate([*sections, name]):
    if not isinstance(section, ml_collections.ConfigDict) or part not in section:
      known = ".".join([*sections, name][:depth])
      message = f"{where} overrides {key!r}, but the base config has no key {known + '.' if known else ''}{part}"
      close = difflib.get_close_matches(key, list(leaf_keys(config)), n=1)
      raise UserError(message + (f"; did you mean {close[0]!r}?" if close else
                                 "; every key is in neft_jax/defaults.py"))
    if depth < len(sections):
      section = section[part]
  try:
    section[name] = value
  except (TypeError, ValueError) as e:
    raise UserError(f"{where} sets {key}={value!r}: {e}") from None


def leaf_keys(config: ml_collections.ConfigDict, prefix: str = ""):
  for name, value in config.items():
    if isinstance(value, ml_collections.ConfigDict):
      yield from leaf_keys(value, f"{prefix}{name}.")
    else:
      yield prefix + name


def fill_study_dir(config: ml_collections.ConfigDict, study_dir: str) -> ml_collections.ConfigDict:
  """A copy with `{study}` in every string value replaced by `study_dir`."""
  config = config.copy_and_resolve_references()

  def fill(section):
    for name, value in section.items():
      if isinstance(value, ml_collections.ConfigDict):
        fill(value)
      elif isinstance(value, str) and STUDY_PLACEHOLDER in value:
        section[name] = value.replace(STUDY_PLACEHOLDER, study_dir)

  fill(config)
  return config


def resolved(study: Study) -> dict:
  """The study as study.json holds it: the base config, the conditions, the seeds, the cells."""
  import json
  return {
      "name": study.name,
      "base": json.loads(study.base.to_json_best_effort()),
      "conditions": {name: dict(overrides) for name, overrides in study.conditions.items()},
      "control": study.control,
      "seeds": list(study.seeds),
      "stages": list(study.stages),
      "contrasts": {name: list(pair) for name, pair in study.contrasts.items()},
      "evaluate": dict(study.evaluate),
      "analyze": dict(study.analyze),
      "cells": [dataclasses.asdict(cell) for cell in cells(study)],
  }
