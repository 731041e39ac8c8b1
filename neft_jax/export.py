"""Export a training run's parameters as a Hugging Face checkpoint folder.

    python -m neft_jax.export --workdir=DIR --out=HF_DIR [--step=N|best] [--dtype=bfloat16] [--overwrite]
    python -m neft_jax.export --workdir=LORA_RUN --out=ADAPTER_DIR --adapter

Writes config.json, safetensors (sharded above 5 GB), generation_config.json
and the tokenizer's files, which transformers, vLLM, lm-evaluation-harness and
AlpacaEval read; a LoRA run's adapters are merged into the weights. With
--adapter (LoRA runs), PEFT's adapter_config.json and adapter_model.safetensors
instead, which `peft.PeftModel.from_pretrained(base, ADAPTER_DIR)` loads
(`neft_jax.models.adapters`). The run's config comes from --config or its config.json.
"""

from __future__ import annotations

import os
import shutil

import jax
from absl import flags
from ml_collections import config_flags

from neft_jax import cli, config_check, run, sharding
from neft_jax.data import pipeline
from neft_jax.errors import UserError
from neft_jax.models import adapters, save_hf


def define_flags() -> None:
  """The command line (defined only when run as a program, so importing is free)."""
  config_flags.DEFINE_config_file("config", None, "The run's config (default: its config.json).",
                                  lock_config=True)
  flags.DEFINE_string("workdir", None, "The training run's workdir.")
  flags.DEFINE_string("out", None, "The Hugging Face folder to write.")
  flags.DEFINE_string("step", None, "Checkpoint step, or best (checkpoint.keep_best's best; "
                      "default: the latest).")
  flags.DEFINE_enum("dtype", None, ["float32", "bfloat16", "float16"],
                    "dtype of the saved weights (default: the parameters').")
  flags.DEFINE_bool("overwrite", False, "Replace the contents of a non-empty --out.")
  flags.DEFINE_bool("adapter", False, "A LoRA run: write the adapters in PEFT's format, not "
                    "merged weights.")


def prepare_out_dir(out_dir: str, overwrite: bool) -> None:
  if not out_dir:
    raise UserError("--out is required: the Hugging Face folder to write")
  if os.path.isfile(out_dir):
    raise UserError(f"--out={out_dir} is a file; give a folder")
  if os.path.isdir(out_dir) and os.listdir(out_dir):
    if not overwrite:
      raise UserError(f"--out={out_dir} exists and is not empty; choose another folder or pass "
                      "--overwrite to replace its contents")
    shutil.rmtree(out_dir)


def export(config, workdir: str, out_dir: str, *, step: int | str | None = None,
           dtype: str | None = None, overwrite: bool = False, adapter: bool = False) -> dict:
  """Writes the run's parameters at `step` (a number, "best", default: the latest) as a
  Hugging Face folder, or
  with `adapter` a LoRA run's adapters as a PEFT folder."""
  import transformers

  if not workdir or not run.folder(workdir).is_dir():
    raise UserError(f"--workdir={workdir} is not a folder; point it at a training run")
  workdir = run.folder(workdir)
  config = run.load_config(workdir, config)
  config_check.validate(config)
  if adapter and not config.model.get("lora", {}).get("rank", 0):
    raise UserError(f"--adapter exports LoRA adapters, but the run in {workdir} trained every "
                    "parameter (model.lora.rank=0); drop --adapter to export its weights")
  prepare_out_dir(out_dir, overwrite)  # before any work, and before anything is written
  mesh, rules = sharding.mesh_from_config(config)
  model, step = run.trained_model(workdir, config, mesh, rules, step)
  tokenizer = pipeline.load_tokenizer(*run.tokenizer_path(config, workdir))
  if adapter:
    written = adapters.save_peft(model, out_dir, base=config.model.path)
    if jax.process_index() == 0:
      print(f"exported the LoRA adapters of step {step} of {workdir} to {out_dir}: "
            f"{', '.join(written)} (base {config.model.path})")
    return {"step": step, "files": sorted(os.listdir(out_dir)) if jax.process_index() == 0 else []}
  if model.config.lora_rank:
    model = adapters.merged(model)
  written = save_hf(model, out_dir, dtype=dtype)
  if jax.process_index() == 0:
    tokenizer.save_pretrained(out_dir)
    cfg = model.config
    transformers.GenerationConfig(
        bos_token_id=cfg.bos_token_id, eos_token_id=cfg.eos_token_id,
        pad_token_id=cfg.pad_token_id).save_pretrained(out_dir)
    print(f"exported step {step} of {workdir} to {out_dir}: {', '.join(written)}")
  return {"step": step, "files": sorted(os.listdir(out_dir)) if jax.process_index() == 0 else []}


def main(FLAGS) -> None:
  if FLAGS.workdir:
    cli.log_to(str(run.folder(FLAGS.workdir) / "export.log"))
  export(FLAGS.config, FLAGS.workdir, FLAGS.out, step=run.parse_step(FLAGS.step),
         dtype=FLAGS.dtype, overwrite=FLAGS.overwrite, adapter=FLAGS.adapter)


if __name__ == "__main__":
  cli.run(main, define_flags)
