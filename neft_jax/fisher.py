"""The Fisher pass of guided dropout: per-site scores and rates into a fisher.json.

    python -m neft_jax.fisher --config=CONFIG --out=fisher.json [--save_diagonal] \\
        [--workdir=RUN] [--config.fisher.data_path=general_text.txt --config.fisher.num_examples=1024 ...]

The model comes from model.path, the text from the config's `fisher` section
(see `neft_jax.information` for what is computed, and the README);
`--workdir` fills `{workdir}` in those paths, as for a demo run's model. With
--save_diagonal, fisher_diagonal.safetensors beside fisher.json holds the
whole diagonal under the checkpoint's Hugging Face tensor names and shapes.
"""

from __future__ import annotations

import os

import jax
from absl import flags
from ml_collections import config_flags

from neft_jax import cli, information


def define_flags() -> None:
  """The command line (defined only when run as a program, so importing is free)."""
  config_flags.DEFINE_config_file("config", None, "Config file (configs/*.py).", lock_config=True)
  flags.DEFINE_string("out", None, "The fisher.json to write.")
  flags.DEFINE_string("workdir", None, "A run folder: fills {workdir} in model.path, "
                      "model.tokenizer and fisher.data_path (configs/demo.py's model lives there).")
  flags.DEFINE_bool("save_diagonal", False, "Also write the full diagonal, under the checkpoint's "
                    "tensor names, as fisher_diagonal.safetensors beside --out.")
  flags.mark_flags_as_required(["config"])


def main(FLAGS) -> None:
  if FLAGS.out:
    cli.log_to(os.path.join(os.path.dirname(os.path.abspath(FLAGS.out)), "fisher.log"))
  content = information.fisher_pass(FLAGS.config, FLAGS.out, FLAGS.save_diagonal,
                                    workdir=FLAGS.workdir)
  if jax.process_index() == 0:
    print(information.format_sites(content))
    print(f"wrote {FLAGS.out} ({content['num_examples']} examples, {content['tokens']} tokens, "
          f"{content['examples_per_sec']:.2f} examples/s)")


if __name__ == "__main__":
  cli.run(main, define_flags)
