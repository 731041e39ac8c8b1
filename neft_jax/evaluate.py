"""Evaluate a fine-tuned model: held-out loss, generations, the NEFTune paper's metrics.

    python -m neft_jax.evaluate --config=configs/x.py --workdir=DIR [--step=N] \\
        [--prompts=FILE] [--out=DIR]
    python -m neft_jax.evaluate --model=HF_DIR [--config=configs/x.py] [--prompts=FILE] [--out=DIR]

With --workdir, the parameters come from the run's checkpoint (the latest, or
--step) and the config from --config or the run's config.json; with --model,
from a Hugging Face folder. It reports:

  * eval loss and perplexity on the config's held-out split, if it has one;
  * greedy (or configured) generations for every prompt of --prompts, a JSON
    list of objects with `instruction` (and optionally `input`, a reference
    `output`, `dataset`), as AlpacaEval's 805 instructions are; without
    --prompts, for the held-out split;
  * response metrics (`neft_jax.response_metrics`): length, repetition,
    diversity, and ROUGE-L and exact match where references exist.

It writes model_outputs.json (instruction, output, generator, dataset: what
`alpaca_eval --model_outputs` reads) and summary.json, and prints a table.
"""

from __future__ import annotations

import json
import logging
import os

import jax
import ml_collections
import numpy as np
from absl import flags
from flax import nnx
from ml_collections import config_flags

from neft_jax import checkpoint, cli, config_check, defaults, response_metrics, sharding
from neft_jax.data import templates
from neft_jax.data.sources import Record
from neft_jax.data.tokenize import encode_prompts, start_token
from neft_jax.errors import UserError
from neft_jax.generate import generate


def define_flags() -> None:
  """The command line (defined only when run as a program, so importing is free)."""
  config_flags.DEFINE_config_file("config", None, "Config file (configs/*.py).", lock_config=True)
  flags.DEFINE_string("workdir", None, "A training run's workdir (its checkpoints).")
  flags.DEFINE_string("model", None, "A Hugging Face checkpoint folder, instead of --workdir.")
  flags.DEFINE_integer("step", None, "Checkpoint step (default: the latest).")
  flags.DEFINE_string("prompts", None, "AlpacaEval-format JSON of instructions.")
  flags.DEFINE_string("out", None, "Output folder (default: WORKDIR/eval_step_N, or ./eval).")


def eval_loss(eval_step, params, batches, to_global) -> dict:
  """Mean response-token loss and accuracy over all `batches` (host shares)."""
  totals = {"loss_sum": 0.0, "tokens": 0, "correct": 0}
  for batch in batches:
    sums = jax.device_get(eval_step(params, to_global(batch)))
    for name in totals:
      totals[name] += sums[name]
  tokens = max(int(totals["tokens"]), 1)
  return {"eval_loss": float(totals["loss_sum"]) / tokens,
          "eval_token_accuracy": float(totals["correct"]) / tokens}


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


def prompt_tokens(tokenizer, records: list[dict], *, template: str, bos: int | None,
                  max_new_tokens: int, max_positions: int, truncate: bool, source: str
                  ) -> list[list[int]]:
  """Token ids of every prompt, as training tokenizes them (`bos` from
  tokenize.start_token); one too long for the context is an error, or cut from
  the left (behind its BOS)."""
  room = max_positions - max_new_tokens
  if room < 1:
    raise UserError(f"generate.max_new_tokens={max_new_tokens} leaves no room for a prompt in the "
                    f"model's {max_positions} positions")
  texts = [templates.prompt(Record(record["instruction"], record.get("input") or "", ""),
                            template, tokenizer) for record in records]
  prompts = []
  for number, ids in enumerate(encode_prompts(tokenizer, texts, bos)):
    if len(ids) > room:
      if not truncate:
        raise UserError(
            f"{source}: prompt {number} (counting from 0) has {len(ids)} tokens, more than the "
            f"{room} that fit before {max_new_tokens} new ones in the model's {max_positions} "
            "positions; nothing was generated. Shorten it, lower generate.max_new_tokens, or set "
            "generate.truncate_prompts=True to keep each prompt's last tokens")
      logging.warning("%s: prompt %d has %d tokens; kept its last %d", source, number, len(ids), room)
      ids = ids[-room:] if bos is None else [bos, *ids[len(ids) - room + 1:]]
    prompts.append(ids)
  return prompts


def generate_answers(model, tokenizer, prompts: list[list[int]], settings) -> list[str]:
  """Decoded answers, generated in batches of generate.batch_size (the last batch
  filled with copies of its first prompt, so every batch compiles alike)."""
  key = jax.random.key(settings.seed)
  answers = []
  for start in range(0, len(prompts), settings.batch_size):
    chunk = prompts[start:start + settings.batch_size]
    padded = chunk + [chunk[0]] * (settings.batch_size - len(chunk))
    new_ids = generate(model, padded, max_new_tokens=settings.max_new_tokens,
                       key=jax.random.fold_in(key, start), temperature=settings.temperature,
                       top_k=settings.top_k or None, top_p=settings.top_p,
                       repetition_penalty=settings.repetition_penalty,
                       eos_id=tokenizer.eos_token_id, pad_id=tokenizer.pad_token_id or 0)
    answers += [tokenizer.decode(ids, skip_special_tokens=True).strip() for ids in new_ids[:len(chunk)]]
  return answers


def exact_match(model, tokenizer, records: list[Record], *, template: str, max_new_tokens: int,
                batch_size: int = 64) -> tuple[float, list[str]]:
  """Greedy answers of `records` and the fraction equal to their outputs (the demo's check)."""
  settings = ml_collections.ConfigDict(dict(
      seed=0, batch_size=min(batch_size, len(records)), max_new_tokens=max_new_tokens,
      temperature=0.0, top_k=0, top_p=1.0, repetition_penalty=1.0))
  prompts = encode_prompts(tokenizer, [templates.prompt(r, template, tokenizer) for r in records],
                           start_token(model.config, tokenizer))
  answers = generate_answers(model, tokenizer, prompts, settings)
  return response_metrics.exact_match(answers, [r.output for r in records]), answers


def evaluate(config: ml_collections.ConfigDict, *, workdir: str | None = None,
             model_path: str | None = None, step: int | None = None, prompts_path: str | None = None,
             out_dir: str | None = None) -> dict:
  """Runs the evaluation; returns the summary (also written to OUT/summary.json)."""
  config_check.validate(config)
  from neft_jax import train  # the mesh and steps of the training job
  from neft_jax.data import batching, pipeline
  from neft_jax.models import load_hf
  from neft_jax.steps import make_eval_step

  if (workdir is None) == (model_path is None):
    raise UserError("give either --workdir (a training run) or --model (a Hugging Face folder)")
  mesh, rules = train.make_mesh(config)
  if workdir is not None:
    workdir = os.path.abspath(workdir)
    model, step = checkpoint.trained_model(workdir, config, mesh, rules, step)
    tokenizer_path = (config.model.tokenizer or config.model.path).replace("{workdir}", workdir)
    generator = f"{os.path.basename(workdir)}-step{step}"
    out_dir = out_dir or os.path.join(workdir, f"eval_step_{step}")
  else:
    model = load_hf(model_path, mesh=mesh, rules=rules, param_dtype=config.model.param_dtype,
                    dtype=config.model.dtype, attention=config.model.attention)
    tokenizer_path = config.model.tokenizer or model_path
    generator = os.path.basename(os.path.normpath(model_path))
    out_dir = out_dir or "eval"
  tokenizer = pipeline.load_tokenizer(tokenizer_path)
  bos = start_token(model.config, tokenizer)
  summary: dict = {"generator": generator}
  if step is not None:
    summary["step"] = step

  # Held-out loss and perplexity, if the config has a held-out split.
  data_config = config.data.copy_and_resolve_references()
  with data_config.unlocked():
    for key in ("path", "eval_path"):
      data_config[key] = data_config[key].replace("{workdir}", workdir or "")
  eval_set = None
  if data_config.eval_path or (data_config.path and data_config.eval_size):
    _, eval_set = pipeline.tokenized_splits(data_config, tokenizer, config.seed, bos=bos)
    layout = batching.BatchLayout(config.train.batch_size, config.train.grad_accum_steps,
                                  jax.process_index(), jax.process_count())
    batches = batching.eval_batches(eval_set, max_length=config.data.max_length, layout=layout)
    eval_sharding = train.batch_sharding(mesh, rules, 0)
    to_global = lambda b: {k: jax.make_array_from_process_local_data(eval_sharding, v)
                           for k, v in b.items()}
    graphdef, params = nnx.split(model)
    with sharding.activation_rules(mesh, rules):
      losses = eval_loss(jax.jit(make_eval_step(graphdef)), params, batches, to_global)
    summary |= losses | {"eval_perplexity": float(np.exp(losses["eval_loss"]))}

  # Generations and their metrics.
  if prompts_path:
    records = load_prompts(prompts_path)
    source, dataset = prompts_path, os.path.splitext(os.path.basename(prompts_path))[0]
  elif eval_set is not None and len(eval_set):
    records = [{"instruction": r.instruction, "input": r.input, "output": r.output}
               for r in eval_set.records[: config.eval.exact_match_examples]]
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

  if jax.process_index() == 0:
    os.makedirs(out_dir, exist_ok=True)
    outputs = [{"instruction": r["instruction"], "output": answer, "generator": generator,
                "dataset": r.get("dataset", dataset)} for r, answer in zip(records, answers)]
    with open(os.path.join(out_dir, "model_outputs.json"), "w") as f:
      json.dump(outputs, f, indent=2, ensure_ascii=False)
    with open(os.path.join(out_dir, "summary.json"), "w") as f:
      json.dump(summary, f, indent=2)
    print(response_metrics.format_table({k: v for k, v in summary.items() if k != "generator"}))
    print(f"wrote {len(outputs)} generations and the summary to {out_dir}")
  return summary


def main(FLAGS) -> None:
  if FLAGS.workdir:
    cli.log_to(os.path.join(os.path.abspath(FLAGS.workdir), "evaluate.log"))
  else:
    cli.log_to(os.path.join(FLAGS.out or "eval", "evaluate.log"))
  config = FLAGS.config
  if config is None:
    config = checkpoint.run_config(FLAGS.workdir) if FLAGS.workdir else defaults.base()
  evaluate(config, workdir=FLAGS.workdir, model_path=FLAGS.model, step=FLAGS.step,
           prompts_path=FLAGS.prompts, out_dir=FLAGS.out)


if __name__ == "__main__":
  cli.run(main, define_flags)
