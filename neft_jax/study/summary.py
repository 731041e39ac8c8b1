"""A study's summary: summary.csv (one row per finished cell) from DIR/cells/*/seed*/cell.json.

    summarize(study_dir, study) -> the paths written
"""

from __future__ import annotations

import csv
import json
import os


def _cell_dir(study_dir: str, condition: str, seed: int) -> str:
  return os.path.join(study_dir, "cells", condition, f"seed{seed}")


def load_cells(study_dir: str, study) -> list[dict]:
  """The finished cells (those with cell.json), in grid order: condition order, then seed."""
  cells = []
  for condition in study.conditions:
    for seed in study.seeds:
      path = os.path.join(_cell_dir(study_dir, condition, seed), "cell.json")
      if os.path.exists(path):
        with open(path) as f:
          cells.append(json.load(f))
  return cells


def summarize(study_dir: str, study) -> list[str]:
  """Writes summary.csv into study_dir; returns the paths written."""
  cells = load_cells(study_dir, study)
  metrics = sorted({name for cell in cells for name in cell.get("metrics", {})})
  path = os.path.join(study_dir, "summary.csv")
  with open(path, "w", newline="") as f:
    writer = csv.writer(f, lineterminator="\n")
    writer.writerow(["condition", "seed", *metrics])
    for cell in cells:
      values = cell.get("metrics", {})
      writer.writerow([cell["condition"], cell["seed"], *(repr(float(values[m])) if m in values else "" for m in metrics)])
  return [path]
