"""A study from the command line: a grid of conditions x seeds, then its summary.

    python -m neft_jax.study --config=configs/study/NAME.py --workdir=DIR \\
        [--cells=i/n] [--summarize_only] [--compilation_cache=PATH] [--config.study.KEY=VALUE ...]
    python -m neft_jax.study --config=configs/study/NAME.py --dry_run

Every (condition, seed) cell is a training run in DIR/cells/<condition>/seed<k>/
(`neft_jax.study.runner`); the summary (summary.csv, summary.md, figures) goes
into DIR. Started again, the study skips finished cells and resumes a killed
one from its checkpoint. --cells=i/n runs every n-th cell starting at i, so the
tasks of an array job (launch/study_slurm.sbatch) share the grid;
--summarize_only writes the summary of whatever cells have finished. The log
of everything is DIR/study.log. --dry_run compiles each condition's train step
for its mesh from abstract state (`neft_jax.train --dry_run`), runs nothing and
prints each condition's memory per device, with a JSON last line.
"""

from __future__ import annotations

import os

from absl import flags
from ml_collections import config_flags

from neft_jax import cli
from neft_jax.errors import UserError
from neft_jax.study import runner, spec


def define_flags() -> None:
  """The command line (defined only when run as a program, so importing is free)."""
  config_flags.DEFINE_config_file("config", None, "Study config file (configs/study/*.py).",
                                  lock_config=True)
  flags.DEFINE_string("workdir", None, "The study's folder: cells, summary, study.json.")
  flags.DEFINE_string("cells", "0/1", "i/n: run every n-th cell of the grid starting at i.")
  flags.DEFINE_bool("summarize_only", False, "Only write the summary of the finished cells.")
  flags.DEFINE_string("compilation_cache", None, "JAX's persistent compilation cache folder "
                      "(default WORKDIR/.jax_cache; empty: none).")
  flags.DEFINE_bool("dry_run", False, "Compile each condition's train step for its mesh from "
                    "abstract state and print its memory per device; run nothing.")
  flags.mark_flags_as_required(["config"])


def main(FLAGS) -> None:
  study = spec.from_config(FLAGS.config)
  if FLAGS.dry_run:
    runner.dry_run(study, FLAGS.compilation_cache)
    return
  if not FLAGS.workdir:
    raise UserError("--workdir is missing: give the study's folder, e.g. --workdir=runs/study "
                    "(only --dry_run runs without one)")
  cli.log_to(os.path.join(FLAGS.workdir, "study.log"))
  runner.run(study, FLAGS.workdir, FLAGS.cells, summarize_only=FLAGS.summarize_only,
             cache_dir=FLAGS.compilation_cache)


if __name__ == "__main__":
  cli.run(main, define_flags)
