"""What did fine-tuning change? A base model against tuned ones, layer by layer.

    python -m neft_jax.analyze --base=A --tuned=B [--tuned=C ...] --out=DIR \\
        [--probe=DATA] [--step=N|best] [--max_examples=256] [--max_tokens=4096] \\
        [--config=configs/x.py] [--debiased] [--seed=0]

A, B, C are Hugging Face folders or hub ids, or training run workdirs (their
latest checkpoint, or --step). DATA is instruction records (each the text of
its prompt, in the run's template, and its output) or any text source the
project reads (`neft_jax.data.text`); without --probe, the run's held-out
split. Up to --max_examples examples are used; CKA uses --max_tokens of their
real tokens, sampled by --seed. Every model runs on the same tokens, batch by
batch (`neft_jax.analysis.compare`).

The config (data template, max_length, batch size, mesh) is --config, else the
config.json of the first run workdir among --base and --tuned, else the
defaults. Each run workdir is read with its own config.json (or --config).

Writes into DIR analysis.json, analysis.csv (model, layer, module, head,
metric, value), analysis.md and weight_change.png, cka_by_layer.png,
attention_js.png (`neft_jax.analysis.report`), and provenance.json (the code,
config, probe and model hashes, and under "inputs" each run workdir's own
provenance.json: `neft_jax.provenance`). With --probe_labels, on
classification data (the text and label rows of --probe, or the run's held-out
split), also a linear probe's held-out accuracy on every layer's mean hidden
state of the prompt, for every model (probe_accuracy.png).
"""

from __future__ import annotations

import json
import logging
import os
import time

import jax
import ml_collections
import numpy as np
from absl import flags
from flax import nnx
from ml_collections import config_flags

from neft_jax import classify, cli, defaults, provenance, run, sharding
from neft_jax.analysis.compare import BASE, compare
from neft_jax.analysis.report import write_report
from neft_jax.analysis.weights import check_same_architecture, flat_parameters
from neft_jax.config_check import names
from neft_jax.data import pipeline, sources, templates, text
from neft_jax.data.tokenize import encode_prompts, start_token
from neft_jax.errors import UserError
from neft_jax.models import adapters, load_hf

log = logging.getLogger(__name__)


def define_flags() -> None:
  """The command line (defined only when run as a program, so importing is free)."""
  config_flags.DEFINE_config_file("config", None, "Config file (configs/*.py); default: the "
                                  "first run workdir's config.json.", lock_config=True)
  flags.DEFINE_string("base", None, "The base model: a Hugging Face folder or hub id, or a run "
                      "workdir.")
  flags.DEFINE_multi_string("tuned", None, "A tuned model (repeat the flag for several): a Hugging "
                            "Face folder or hub id, or a run workdir.")
  flags.DEFINE_string("probe", None, "Probe data: instruction records or text; default: the "
                      "run's held-out split.")
  flags.DEFINE_string("out", None, "Output folder.")
  flags.DEFINE_string("step", None, "Checkpoint step of the run workdirs, or best "
                      "(checkpoint.keep_best's best; default: the latest).")
  flags.DEFINE_integer("max_examples", 256, "Probe examples used at most.")
  flags.DEFINE_integer("max_tokens", 4096, "Real tokens sampled for CKA at most.")
  flags.DEFINE_bool("debiased", False, "Debiased (unbiased-HSIC) CKA.")
  flags.DEFINE_integer("seed", 0, "Seed of the probe subsample, the CKA token sample and the "
                       "task probes' split.")
  flags.DEFINE_bool("probe_labels", False, "Also a linear task probe per layer: needs "
                    "classification data (data.format='classification', data.labels).")
  flags.mark_flags_as_required(["base", "tuned", "out"])


def is_run(path: str) -> bool:
  """A training run's workdir (checkpoints, or our config.json), not a Hugging Face folder."""
  folder = run.folder(path)
  if run.checkpoints_dir(folder).is_dir():
    return True
  config_file = folder / run.CONFIG_FILE
  if not config_file.exists():
    return False
  try:
    content = json.loads(config_file.read_text())
  except (json.JSONDecodeError, UnicodeDecodeError):
    return False
  return isinstance(content, dict) and "train" in content and "model" in content


def load_model(path: str, config: ml_collections.ConfigDict | None, mesh, rules, step):
  """(model, label): a run workdir's model at `step` (with its own config.json
  unless --config), or a Hugging Face folder's."""
  if is_run(path):
    model, step = run.trained_model(path, run.load_config(path, config), mesh, rules, step)
    if model.config.lora_rank:  # a LoRA run: its weights are the base's plus alpha/r B A
      model = adapters.merged(model)
    return model, f"{path} (step {step})"
  config = config or defaults.base()
  return load_hf(path, mesh=mesh, rules=rules, param_dtype=config.model.param_dtype,
                 dtype=config.model.dtype, attention=config.model.attention), path


def display_names(paths: list[str]) -> list[str]:
  """Short distinct names of the tuned models: their folder names."""
  names = []
  for path in paths:
    name = os.path.basename(os.path.normpath(path)) or path
    if name == BASE:
      name = "tuned_base"
    candidate, number = name, 2
    while candidate in names:
      candidate, number = f"{name}_{number}", number + 1
    names.append(candidate)
  return names


def probe_examples(probe: str | None, config, workdir, tokenizer, bos, max_examples: int, seed: int,
                   max_length: int) -> tuple[list[np.ndarray], str]:
  """(token ids per example, where they come from)."""
  if probe:
    fields = config.data.fields
    try:
      documents = text.load_documents(
          probe, text_field=fields.get("text", "text"), template=config.data.template,
          fields=sources.Fields(instruction=fields.instruction, input=fields.input,
                                output=fields.output), tokenizer=tokenizer, config_key="--probe")
    except UserError as e:
      if "with no text" in str(e):
        raise UserError(f"--probe={probe}: the probe set is empty; give a file with at least one "
                        "non-blank record or line") from None
      raise
    tokenized = text.tokenize_documents(documents, tokenizer, max_length=max_length,
                                        num_examples=max_examples, bos=bos, seed=seed)
    return tokenized.input_ids, probe
  data_config = run.data_config(config, workdir or "")
  if not pipeline.has_held_out(data_config):
    raise UserError("no --probe and the config has no held-out split: give --probe data")
  data = pipeline.tokenized_splits(data_config, tokenizer, config.seed, bos=bos)
  split = "eval" if len(data.eval) else "test"
  return getattr(data, split).input_ids[:max_examples], f"the held-out {split} split"


def labeled_probe(probe: str | None, config, workdir, tokenizer, bos, max_examples: int, seed: int,
                  max_length: int) -> tuple[list[np.ndarray], np.ndarray, str]:
  """(prompt token ids per example, label index per example, where they come from)
  of classification records: the prompt holds the text, never the label."""
  data = run.data_config(config, workdir or "")
  labels = names(data.labels)
  if data.format != "classification" or len(labels) < 2:
    raise UserError("--probe_labels needs data with labels: a config (the run's, or --config) "
                    "with data.format='classification' and data.labels, and --probe rows with a "
                    "text and a label (or the run's held-out split)")
  if probe:
    records = sources.load_classification(probe, labels=labels, instruction=data.instruction,
                                          config_key="--probe", text_field=data.fields.text,
                                          label_field=data.fields.label)
    source = probe
  else:
    held_out = pipeline.split_records(data).records
    split = "eval" if held_out.get("eval") else "test"
    records, source = held_out.get(split, []), f"the held-out {split} split"
  if len(records) > max_examples:
    chosen = np.sort(np.random.default_rng([seed, 11]).permutation(len(records))[:max_examples])
    records = [records[i] for i in chosen]
  prompts = [templates.prompt(r, data.template, tokenizer) for r in records]
  examples = [np.asarray(ids[:max_length], np.int32)
              for ids in encode_prompts(tokenizer, prompts, bos)]
  return examples, classify.targets(records, labels), source


def analyze(base: str, tuned: list[str], out_dir: str, *, config=None, probe=None, step=None,
            max_examples=256, max_tokens=4096, debiased=False, seed=0,
            probe_labels=False) -> dict:
  """Runs the analysis; returns analysis.json's content (see the module's doc)."""
  if not tuned:
    raise UserError("give at least one --tuned model to compare with --base")
  if max_examples < 1 or max_tokens < 1:
    raise UserError(f"--max_examples={max_examples} and --max_tokens={max_tokens} must be at "
                    "least 1")
  runs = [path for path in [base, *tuned] if is_run(path)]
  main_config = config or (run.load_config(runs[0]) if runs else defaults.base())
  mesh, rules = sharding.mesh_from_config(main_config)
  start = time.perf_counter()
  base_model, base_label = load_model(base, config, mesh, rules, step)
  names = display_names(tuned)
  tuned_models, tuned_labels = {}, {}
  for name, path in zip(names, tuned):
    tuned_models[name], tuned_labels[name] = load_model(path, config, mesh, rules, step)
  base_params = flat_parameters(nnx.state(base_model, nnx.Param))
  for model in tuned_models.values():  # before reading the probe: names the first mismatch
    check_same_architecture(base_params, flat_parameters(nnx.state(model, nnx.Param)))
  log.info("analyze: models loaded in %.1f s", time.perf_counter() - start)

  if is_run(base):
    tokenizer_path, key = run.tokenizer_path(run.load_config(base, config), run.folder(base))
  elif main_config.model.tokenizer:
    tokenizer_path, key = run.resolve(main_config.model.tokenizer, runs[0] if runs else ""), (
        "model.tokenizer")
  else:
    tokenizer_path, key = base, "--base"
  tokenizer = pipeline.load_tokenizer(tokenizer_path, key)
  bos = start_token(base_model.config, tokenizer)
  max_length = min(main_config.data.max_length, base_model.config.max_positions)
  probe_args = (probe, main_config, runs[0] if runs else None, tokenizer, bos, max_examples, seed,
                max_length)
  labels = None
  if probe_labels:
    examples, labels, source = labeled_probe(*probe_args)
  else:
    examples, source = probe_examples(*probe_args)

  layout_rows = main_config.train.batch_size // main_config.train.grad_accum_steps
  # No more rows than the examples fill (rounded up to the batch's devices): a
  # last batch of empty rows costs full forward passes and their memory.
  ways = sharding.split_ways(mesh, rules, "batch")
  layout_rows = min(layout_rows, -(-len(examples) // ways) * ways)
  batch_sharding = sharding.batch_sharding(mesh, rules, 0)
  start = time.perf_counter()
  with sharding.activation_rules(mesh, rules):
    comparison = compare(base_model, tuned_models, examples, rows=layout_rows,
                         max_tokens=max_tokens, seed=seed, debiased=debiased,
                         to_global=lambda batch: sharding.global_batch(batch, batch_sharding),
                         labels=labels)
  log.info("analyze: models compared (forward passes, metrics) in %.1f s", time.perf_counter() - start)
  about = {"base": base_label, "tuned": tuned_labels, "probe": source, "seed": seed,
           "max_examples": max_examples, "max_tokens": max_tokens}
  if jax.process_index() != 0:
    return {}
  start = time.perf_counter()
  paths = write_report(comparison, out_dir, about)
  record = provenance.collect(main_config, workdir=runs[0] if runs else None, mesh=mesh,
                              inputs=runs, models=[p for p in [base, *tuned] if p not in runs],
                              data={"--probe": probe})  # a run's model: in its own record
  provenance.write(out_dir, record)
  log.info("analyze: report written in %.1f s", time.perf_counter() - start)
  with open(paths[2], encoding="utf-8") as f:
    print(f.read())
  print(f"wrote {', '.join(os.path.basename(p) for p in paths)} to {out_dir}")
  with open(paths[0], encoding="utf-8") as f:
    return json.load(f)


def main(FLAGS) -> None:
  cli.log_to(os.path.join(FLAGS.out, "analyze.log"))
  analyze(FLAGS.base, FLAGS.tuned, FLAGS.out, config=FLAGS.config, probe=FLAGS.probe,
          step=run.parse_step(FLAGS.step), max_examples=FLAGS.max_examples,
          max_tokens=FLAGS.max_tokens, debiased=FLAGS.debiased, seed=FLAGS.seed,
          probe_labels=FLAGS.probe_labels)


if __name__ == "__main__":
  cli.run(main, define_flags)
