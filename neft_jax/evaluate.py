"""Evaluate a fine-tuned model: held-out loss, generations, the NEFTune paper's metrics.

    python -m neft_jax.evaluate --config=configs/x.py --workdir=DIR [--step=N|best] \\
        [--prompts=FILE] [--out=DIR]
    python -m neft_jax.evaluate --model=HF_DIR [--config=configs/x.py] [--prompts=FILE] [--out=DIR]

With --workdir, the parameters come from the run's checkpoint (the latest,
--step=N, or --step=best with checkpoint.keep_best) and the config from
--config or the run's config.json; with --model, from a Hugging Face folder.
It reports:

  * eval (and test) loss and perplexity on the config's held-out splits, if it has
    them, and for classification data label accuracy and macro F1 (`neft_jax.classify`);
  * greedy (or configured) generations for every prompt of --prompts, a JSON
    list of objects with `instruction` (and optionally `input`, a reference
    `output`, `dataset`), as AlpacaEval's 805 instructions are; without
    --prompts, for the held-out split (for conversations, each one's last reply
    after the turns before it);
  * response metrics (`neft_jax.response_metrics`): length, repetition,
    diversity, and ROUGE-L and exact match where references exist.

A plain-text run (data.template="text") has no prompts in its held-out split:
it reports the held-out loss, perplexity and token accuracy, and generates
(continuing each prompt as plain text) only for --prompts.

It writes model_outputs.json (instruction, output, generator, dataset: what
`alpaca_eval --model_outputs` reads), summary.json and provenance.json (this
evaluation's code, config, data and model hashes, and under "inputs" the run's
own provenance.json: `neft_jax.provenance`), and prints a table.
"""

from __future__ import annotations

import json
import os

import jax
import ml_collections
import numpy as np
from absl import flags
from etils import epath
from flax import nnx
from ml_collections import config_flags

from neft_jax import (cli, config_check, defaults, held_out, provenance, response_metrics, run,
                      sharding)
from neft_jax.answers import generate_answers, prompt_tokens
from neft_jax.data import batching, conversations, pipeline
from neft_jax.data.tokenize import start_token
from neft_jax.errors import UserError
from neft_jax.models import load_hf


def define_flags() -> None:
  """The command line (defined only when run as a program, so importing is free)."""
  config_flags.DEFINE_config_file("config", None, "Config file (configs/*.py).", lock_config=True)
  flags.DEFINE_string("workdir", None, "A training run's workdir (its checkpoints).")
  flags.DEFINE_string("model", None, "A Hugging Face checkpoint folder, instead of --workdir.")
  flags.DEFINE_string("step", None, "Checkpoint step, or best (checkpoint.keep_best's best; "
                      "default: the latest).")
  flags.DEFINE_string("prompts", None, "AlpacaEval-format JSON of instructions.")
  flags.DEFINE_string("out", None, "Output folder (default: WORKDIR/eval_step_N, or ./eval).")


def load_prompts(path: str) -> list[dict]:
  """Prompt records: a JSON list of objects, each with a string `instruction`."""
  if not os.path.exists(path):
    raise UserError(f"--prompts={path} does not exist")
  try:
    with open(path, encoding="utf-8") as f:
      records = json.load(f)
  except json.JSONDecodeError as e:
    raise UserError(f"{path}: invalid JSON at line {e.lineno} column {e.colno}: {e.msg}") from None
  if not isinstance(records, list):
    raise UserError(f"{path}: expected a JSON list of objects with an 'instruction'")
  if not records:
    raise UserError(f"{path} holds no prompts; the prompt file is empty")
  for number, record in enumerate(records):
    if not isinstance(record, dict) or not isinstance(record.get("instruction"), str):
      raise UserError(f"{path}: record {number} (counting from 0) has no string 'instruction'")
  return records


def evaluate(config: ml_collections.ConfigDict, *, workdir: str | None = None,
             model_path: str | None = None, step: int | str | None = None,
             prompts_path: str | None = None,
             out_dir: str | None = None, generator: str | None = None) -> dict:
  """Runs the evaluation; returns the summary (also written to OUT/summary.json).
  `generator` names the model in model_outputs.json (default: the workdir's folder name and
  step, or the model folder's name)."""
  config_check.validate(config)
  if (workdir is None) == (model_path is None):
    raise UserError("give either --workdir (a training run) or --model (a Hugging Face folder)")
  mesh, rules = sharding.mesh_from_config(config)
  if workdir is not None:
    workdir = run.folder(workdir)
    model, step = run.trained_model(workdir, config, mesh, rules, step)
    tokenizer_path, tokenizer_key = run.tokenizer_path(config, workdir)
    generator = generator or f"{workdir.name}-step{step}"
    out_dir = out_dir or workdir / f"eval_step_{step}"
  else:
    model = load_hf(model_path, mesh=mesh, rules=rules, param_dtype=config.model.param_dtype,
                    dtype=config.model.dtype, attention=config.model.attention)
    tokenizer_path, tokenizer_key = config.model.tokenizer or model_path, (
        "model.tokenizer" if config.model.tokenizer else "--model")
    generator = generator or os.path.basename(os.path.normpath(model_path))
    out_dir = out_dir or "eval"
  tokenizer = pipeline.load_tokenizer(tokenizer_path, tokenizer_key)
  bos = start_token(model.config, tokenizer)
  # provenance.json's record, written beside summary.json: the run's own under inputs.
  record = provenance.collect(config, workdir=workdir, mesh=mesh, inputs=[workdir],
                              models=[model_path] if model_path else None,
                              data={"--prompts": prompts_path})
  summary: dict = {"generator": generator}
  if step is not None:
    summary["step"] = step

  # Held-out loss and perplexity (and label accuracy for classification data), if the
  # config has held-out splits: the run's own, with its noise if data.noise.eval.
  data_config = run.data_config(config, workdir or "")
  eval_set = None
  if pipeline.has_held_out(data_config):
    data = pipeline.tokenized_splits(data_config, tokenizer, config.seed, bos=bos)
    eval_set = data.eval
    layout = batching.BatchLayout(config.train.batch_size, config.train.grad_accum_steps,
                                  jax.process_index(), jax.process_count())
    graphdef, params = nnx.split(model)
    evaluator = held_out.HeldOut(graphdef, config, model.config.vocab_size, tokenizer, bos, mesh,
                                 rules, layout, {"eval": data.eval, "test": data.test})
    for split in ("eval", "test"):
      results = evaluator.metrics(params, split)
      if f"{split}_loss" in results:
        results[f"{split}_perplexity"] = float(np.exp(results[f"{split}_loss"]))
      summary |= results

  # Generations and their metrics.
  if not prompts_path and pipeline.is_text(config.data):
    return _finish_without_generations(summary, out_dir, eval_set, record)
  if prompts_path:
    records = load_prompts(prompts_path)
    source, dataset = prompts_path, os.path.splitext(os.path.basename(prompts_path))[0]
  elif eval_set is not None and len(eval_set):
    held = eval_set.records[: config.eval.exact_match_examples]
    if config.data.format == "conversation":  # each conversation's last reply, after the rest
      records = [conversations.reply_prompt(c, tokenizer, config.data.template) for c in held]
    else:
      records = [{"instruction": r.instruction, "input": r.input, "output": r.output}
                 for r in held]
    source, dataset = "the held-out split", "held_out"
  else:
    raise UserError("nothing to generate for: give --prompts, or a config with a held-out split")
  prompts = prompt_tokens(tokenizer, records, template=config.data.template, bos=bos,
                          max_new_tokens=config.generate.max_new_tokens,
                          max_positions=model.config.max_positions,
                          truncate=config.generate.truncate_prompts, source=source)
  with sharding.activation_rules(mesh, rules):
    answers = generate_answers(model, tokenizer, prompts, config.generate)
  references = [r.get("output") for r in records]
  has_references = all(isinstance(r, str) for r in references)
  summary |= response_metrics.summarize(
      answers, references if has_references else None, prefix_tokens=config.eval.metrics_prefix_tokens)

  if jax.process_index() == 0:  # through epath: the run's folder may be a bucket
    out_dir = epath.Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    outputs = [{"instruction": r["instruction"], "output": answer, "generator": generator,
                "dataset": r.get("dataset", dataset)} for r, answer in zip(records, answers)]
    (out_dir / "model_outputs.json").write_text(json.dumps(outputs, indent=2, ensure_ascii=False))
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=2))
    provenance.write(out_dir, record)
    print(response_metrics.format_table({k: v for k, v in summary.items() if k != "generator"}))
    print(f"wrote {len(outputs)} generations and the summary to {out_dir}")
  return summary


def _finish_without_generations(summary: dict, out_dir, eval_set, record: dict) -> dict:
  """A plain-text run without --prompts: the held-out metrics alone, and why."""
  if eval_set is None:
    raise UserError("nothing to evaluate: data.template='text' has no prompts and the config no "
                    "held-out split; set data.eval_path or data.eval_size, or give --prompts")
  note = ("data.template='text': plain text has no prompts, so no generations or response "
          "metrics (give --prompts for them)")
  summary["generation"] = "skipped: plain text has no prompts"
  if jax.process_index() == 0:
    out_dir = epath.Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=2))
    provenance.write(out_dir, record)
    print(response_metrics.format_table({k: v for k, v in summary.items()
                                         if k not in ("generator", "generation")}))
    print(note)
    print(f"wrote the summary to {out_dir}")
  return summary


def main(FLAGS) -> None:
  if FLAGS.workdir:
    cli.log_to(str(run.folder(FLAGS.workdir) / "evaluate.log"))
  else:
    cli.log_to(os.path.join(FLAGS.out or "eval", "evaluate.log"))
  config = FLAGS.config
  if config is None:
    config = run.load_config(FLAGS.workdir) if FLAGS.workdir else defaults.base()
  evaluate(config, workdir=FLAGS.workdir, model_path=FLAGS.model,
           step=run.parse_step(FLAGS.step), prompts_path=FLAGS.prompts, out_dir=FLAGS.out)


if __name__ == "__main__":
  cli.run(main, define_flags)
