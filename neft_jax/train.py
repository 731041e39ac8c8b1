"""The main job: fine-tune a Hugging Face model on instruction data with NEFTune.

    python -m neft_jax.train --config=configs/llama2_alpaca.py --workdir=DIR \\
        [--config.neftune.alpha=5 --config.train.steps=100 ...] [--dry_run]

The same command runs on every host of a multi-host job (jax.distributed
starts on TPU slices and SLURM, or with --coordinator_address). The workdir
receives config.json, provenance.json, metrics.jsonl, tensorboard/ and checkpoints/; a run
started again on the same workdir resumes from its latest checkpoint, also on
another mesh. On SIGTERM the processes agree on a step, save and exit 0.
--dry_run compiles the step for the configured mesh without loading weights
or data, and reports per-device memory and FLOPs.
"""

from __future__ import annotations

import json
import logging
import os
import time

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import flags
from etils import epath
from flax import nnx
from ml_collections import config_flags
from tqdm import tqdm

from neft_jax import (checkpoint, cli, config_check, demo, dropout, early_stopping, held_out,
                      lora_run, loss, metrics, multihost, optim, provenance, response_metrics, run,
                      sharding, steps)
from neft_jax.answers import exact_match
from neft_jax.data import batching, pipeline
from neft_jax.data.tokenize import start_token
from neft_jax.errors import UserError
from neft_jax.models import ModelConfig, hf_io, load_hf

log = logging.getLogger(__name__)


def define_flags() -> None:
  """The command line (defined only when run as a program, so importing is free)."""
  config_flags.DEFINE_config_file("config", None, "Config file (configs/*.py).", lock_config=True)
  flags.DEFINE_string("workdir", None, "Where checkpoints, metrics and logs go.")
  flags.DEFINE_bool("dry_run", False, "Compile the train step for the configured mesh from "
                    "abstract state only, report per-device memory and FLOPs, exit.")
  flags.DEFINE_string("coordinator_address", None, "jax.distributed coordinator host:port.")
  flags.DEFINE_integer("num_processes", None, "jax.distributed process count.")
  flags.DEFINE_integer("process_id", None, "This process's jax.distributed index.")
  flags.mark_flags_as_required(["config"])

DROPOUT_RATES_FILE = "dropout_rates.json"
NOISE_MANIFEST_FILE = "noise_manifest.jsonl"


def dropout_site_rates(config, model_config: ModelConfig, workdir, mesh, rules) -> dict[str, float]:
  """Every dropout site's rate for this run. Guided rates come from the Fisher
  scores in dropout.fisher (default {workdir}/fisher.json); without that file
  the Fisher pass runs first and writes it. With no workdir (the dry run) and
  no file, every site that is on gets a placeholder rate: the program is the same."""
  scores = None
  if config.dropout.mode == "guided":
    from neft_jax import information
    path = run.resolve(config.dropout.fisher, workdir) if config.dropout.fisher else (
        None if workdir is None else str(epath.Path(workdir) / information.FISHER_FILE))
    if path is None or not epath.Path(path).exists():
      if workdir is None:
        return dropout.site_rates(ml_collections.ConfigDict(
            dict(config.dropout) | {"mode": "uniform", "rate": config.dropout.max_rate}), model_config)
      if config.dropout.fisher:
        raise UserError(f"dropout.fisher={config.dropout.fisher!r} does not exist; run "
                        f"python -m neft_jax.fisher --out=... first, or leave dropout.fisher empty "
                        f"to run the Fisher pass into the workdir")
      log.info("dropout.mode=guided: no %s yet, running the Fisher pass on fisher.data_path", path)
      # Every process takes part in the pass and gets its scores (only one writes the file).
      scores = information.fisher_pass(config, path, workdir=workdir, mesh=mesh, rules=rules)["sites"]
    else:
      scores = information.read_scores(path, model_config.num_layers)
  return dropout.site_rates(config.dropout, model_config, scores)


def prepare_workdir(workdir: str) -> epath.Path:
  """The workdir, made and checked writable (a local folder or a bucket, through epath)."""
  if not workdir:
    raise UserError("--workdir is required: where checkpoints, metrics and logs go")
  workdir = run.folder(workdir)
  try:
    workdir.mkdir(parents=True, exist_ok=True)
    probe = workdir / f".write_test_{jax.process_index()}"
    probe.write_text("ok")
    probe.unlink()
  except Exception as e:  # OSError locally; a bucket's client raises its own errors
    reason = getattr(e, "strerror", None) or (str(e).splitlines() or [type(e).__name__])[0]
    raise UserError(f"workdir {workdir} cannot be written ({reason}); choose another --workdir") from None
  return workdir


def sharded_abstract_state(model_config: ModelConfig, optimizer, mesh, rules):
  """(graphdef, abstract TrainState with shardings, the shardings, abstract frozen
  parameters with shardings or None): no memory used. With LoRA the state's params
  are the adapters and the frozen base is apart; otherwise every parameter trains."""
  graphdef, abstract_params, abstract_frozen = hf_io.abstract_trainable(model_config)
  abstract = jax.eval_shape(
      lambda p: steps.TrainState(jnp.zeros((), jnp.int32), p, optimizer.init(p)), abstract_params)
  shardings = sharding.tree_shardings(abstract, mesh, rules)
  if abstract_frozen is not None:
    frozen_shardings = sharding.tree_shardings(abstract_frozen, mesh, rules)
    abstract_frozen = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                                   abstract_frozen, frozen_shardings)
  for name in sharding.replicated_parameters(shardings.params, abstract.params):
    if model_config.lora_rank and "lora_" in name:
      continue  # an adapter's factors may be too small to split: that is expected
    log.warning("parameter %s is replicated on all %d devices: no sharding rule splits it "
                "(check sharding.rules and the mesh sizes)", name, mesh.size)
  abstract = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                          abstract, shardings)
  return graphdef, abstract, shardings, abstract_frozen


def _check_layout(layout: batching.BatchLayout, mesh, rules) -> None:
  parallel = sharding.data_parallel_size(mesh, rules)
  if layout.micro_batch_size % parallel:
    raise UserError(f"train.batch_size={layout.batch_size} / train.grad_accum_steps="
                    f"{layout.grad_accum_steps} = {layout.micro_batch_size} rows per micro-batch do "
                    f"not divide over the {parallel} data-parallel devices; use a multiple of {parallel}")


def train(config: ml_collections.ConfigDict, workdir: str, *, stop_after: int | None = None) -> dict:
  """Runs (or resumes) the fine-tuning job; returns the eval results and the state
  (and per-example results, as `held_out.HeldOut.examples` has them).

  `stop_after` ends this run after that many steps in total, with a
  checkpoint, as a job with a time limit would; running again resumes.
  """
  # ---------------------------------------------------------------- config, workdir, mesh
  config_check.validate(config)
  workdir = prepare_workdir(workdir)
  is_main = jax.process_index() == 0
  mesh, rules = sharding.mesh_from_config(config)

  # ---------------------------------------------------------------- demo assets
  model_path = run.resolve(config.model.path, workdir)
  data_config = run.data_config(config, workdir)
  if "demo" in config:
    demo.prepare(config.demo, model_path, os.path.dirname(data_config.path), config.seed)
  if "pretrain" in config:  # a tokenizer trained on data.path's text, a model from scratch
    demo.prepare_pretrain(config.pretrain, model_path, data_config, config.seed)

  # ---------------------------------------------------------------- data
  tokenizer = pipeline.load_tokenizer(*run.tokenizer_path(config, workdir))
  model_config = hf_io.model_config(model_path, config.model)  # its family decides BOS
  config_check.check_model(config, model_config)
  # Before any checkpoint: a fisher.json that does not fit the model stops the run here.
  site_rates = dropout_site_rates(config, model_config, workdir, mesh, rules)
  bos = start_token(model_config, tokenizer)
  data = pipeline.tokenized_splits(data_config, tokenizer, config.seed, bos=bos)
  train_set, eval_set, test_set = data.train, data.eval, data.test
  if data.noise is not None:
    for split, realized in data.noise.realized.items():
      log.info("data.noise: %s noise at rate %g in the %s split: %s", config.data.noise.kind,
               config.data.noise.rate, split, realized.summary())
  layout = batching.BatchLayout(config.train.batch_size, config.train.grad_accum_steps,
                                jax.process_index(), jax.process_count())
  _check_layout(layout, mesh, rules)
  train_data = batching.train_data(train_set, max_length=config.data.max_length,
                                   packing=config.data.packing, seed=config.seed, layout=layout,
                                   epochs=config.train.epochs, steps=config.train.steps)
  total_steps = len(train_data)
  cut = ("" if pipeline.is_text(data_config)  # text: chunk counts logged with the split
         else f" ({train_set.num_truncated} cut at max_length, {train_set.num_dropped} dropped)")
  log.info("train: %d examples%s in %d rows, %.0f%% real tokens; %d steps (%d per epoch); "
           "eval: %d examples; test: %d", len(train_set), cut, train_data.num_rows,
           100 * train_data.fill, total_steps, train_data.steps_per_epoch, len(eval_set),
           len(test_set))
  if not len(eval_set):
    log.info("no held-out evaluation: set data.eval_path, or data.eval_size to hold records of "
             "data.path out")

  # ---------------------------------------------------------------- model, optimizer, state
  optimizer, learning_rate = optim.optimizer(config.optim, total_steps)
  graphdef, abstract_state, state_shardings, _ = sharded_abstract_state(
      model_config, optimizer, mesh, rules)
  keep_best = checkpoint.KeepBest.from_config(config.checkpoint)
  checkpoints = checkpoint.Checkpoints(run.checkpoints_dir(workdir),
                                       max_to_keep=config.checkpoint.max_to_keep,
                                       async_save=config.checkpoint.async_save, keep_best=keep_best)
  root_key = jax.random.key(config.seed)
  # For classification this tokenizes every label's completion: one that does not fit stops here.
  evaluator = held_out.HeldOut(graphdef, config, model_config.vocab_size, tokenizer, bos, mesh,
                               rules, layout, {"eval": eval_set, "test": test_set})
  # A checkpoint that does not fit this config stops the run here, before it writes anything.
  restored = checkpoints.restore_latest(abstract_state, root_key)
  if is_main:
    run.write_config(workdir, config)
    provenance.write(workdir, provenance.collect(config, workdir=workdir, mesh=mesh))
    if data.noise is not None:  # one line per changed field, indices into the split's source
      (workdir / NOISE_MANIFEST_FILE).write_text("".join(
          json.dumps(entry, ensure_ascii=False) + "\n" for entry in data.noise.manifest))
  data_iter = train_data.iterator()
  frozen = None  # LoRA: the base's parameters, never trained, never in a checkpoint
  if model_config.lora_rank:
    if restored is not None:  # the adapters come from the checkpoint: the base must be the same
      lora_run.check_base(workdir, model_path)
    frozen, adapters = lora_run.load(config, model_config, model_path, mesh, rules,
                                     fresh=restored is None)
    if is_main and restored is None:
      lora_run.write_base(workdir, model_path)
  saved_meta = {}
  if restored is not None:
    state, root_key, saved_meta = restored
    data_iter.set_state(saved_meta["data"])
    log.info("resumed from step %d of %s", int(state.step), checkpoints.directory)
  else:
    if frozen is None:
      model = load_hf(model_path, mesh=mesh, rules=rules, param_dtype=model_config.param_dtype,
                      dtype=model_config.dtype, scan_layers=model_config.scan_layers,
                      remat=model_config.remat, attention=model_config.attention)
      params = nnx.state(model, nnx.Param)
      del model
    else:
      params = adapters
    opt_state = jax.jit(optimizer.init, out_shardings=state_shardings.opt_state)(params)
    state = steps.TrainState(jax.device_put(np.int32(0), state_shardings.step), params, opt_state)
  stopping = early_stopping.EarlyStopping.from_config(config.train.get("early_stopping"),
                                                      saved_meta.get("early_stopping"))

  def all_params(trained):
    """Every parameter of the model: the trained ones, and with LoRA the frozen base."""
    return trained if frozen is None else nnx.merge_state(frozen, trained)

  # ---------------------------------------------------------------- steps
  noise = steps.Noise(config.neftune.alpha, config.neftune.distribution)
  chunk = loss.chunk_size_for(config.train.loss_chunk_size, model_config.vocab_size)
  if is_main:
    dropout.write_rates(workdir / DROPOUT_RATES_FILE, site_rates, config.dropout)
  if config.dropout.mode == "none":
    log.info("dropout: off (dropout.mode=none)")
  else:
    log.info("dropout (%s, %s): rate of every site, layer by layer; all in %s\n%s",
             config.dropout.mode, config.dropout.distribution, DROPOUT_RATES_FILE,
             "\n".join(dropout.describe(site_rates, model_config.num_layers)))
  dropout_rates = jax.device_put(dropout.rates_by_type(site_rates, model_config.num_layers),
                                 sharding.replicated(mesh))
  train_step = jax.jit(steps.make_train_step(graphdef, optimizer, learning_rate, noise, chunk,
                                             config.dropout.distribution),
                       donate_argnums=0, out_shardings=(state_shardings, None))
  train_sharding = sharding.batch_sharding(mesh, rules, 1)
  flops_per_token = metrics.train_flops_per_token(model_config, config.data.max_length)
  peak_flops = metrics.peak_flops_per_device(jax.devices()[0].device_kind, config.train.peak_tflops)

  def run_evals(params, step: int) -> dict:
    results = evaluator.metrics(params, "eval")
    if config.eval.exact_match and len(eval_set):
      model = nnx.merge(graphdef, params)
      score, answers = exact_match(
          model, tokenizer, eval_set.records[: config.eval.exact_match_examples],
          template=config.data.template, max_new_tokens=config.eval.max_new_tokens)
      results["eval_exact_match"] = score
      results["answers"] = answers
    printable = {k: round(v, 4) for k, v in results.items() if k != "answers"}
    if is_main and printable:
      tqdm.write(f"eval at step {step}: {printable}")  # around the progress bar
    return results

  # ---------------------------------------------------------------- train loop
  writer = metrics.MetricsWriter(workdir, enabled=is_main)
  preemption = multihost.Preemption()
  first_step = int(state.step)
  before = (run_evals(all_params(state.params), first_step)
            if first_step == 0 and config.train.get("eval_at_start", True) else {})
  if first_step == 0 and (before or data.noise is not None):
    writer.write(0, {k: v for k, v in before.items() if k != "answers"}
                 | (data.noise.metrics() if data.noise is not None else {}))
  progress = tqdm(total=total_steps, initial=first_step, disable=not is_main, unit="step",
                  dynamic_ncols=True)
  pending, interval_start = [], time.perf_counter()
  last_step = total_steps if stop_after is None else min(stop_after, total_steps)
  if stopping is not None and stopping.stopped_at is not None:  # it ended early before
    log.info("early stopping: the run stopped at step %d (%s); nothing more to train",
             stopping.stopped_at, stopping.reason())
    last_step = first_step
  preempted = stopped = False
  latest_evals = (None, {})  # (step, results) of the last evaluation in the loop

  def save(step: int, evals: dict | None = None) -> None:
    """A checkpoint at `step`, with its eval metrics for keep-best and the early-stopping state."""
    ranked = {k: v for k, v in (evals or {}).items() if k.startswith("eval_")} or None
    checkpoints.save(step, state, root_key, data_iter.get_state(), metrics=ranked,
                     extra={"early_stopping": stopping.state()} if stopping else None)

  for step in range(first_step, last_step):
    batch = sharding.global_batch(next(data_iter), train_sharding)
    with sharding.activation_rules(mesh, rules):
      state, step_metrics = train_step(state, batch, root_key, dropout_rates, frozen)
    pending.append(step_metrics)
    done = step + 1
    preempted = preemption.reached(done)
    evaluate_now = bool(config.train.eval_every and done % config.train.eval_every == 0
                        and done != total_steps)
    if done % config.train.log_every == 0 or done == last_step or preempted or evaluate_now:
      fetched = jax.device_get(pending)
      elapsed = time.perf_counter() - interval_start
      row_tokens = len(fetched) * config.train.batch_size * config.data.max_length
      logged = {
          "loss": np.mean([m["loss"] for m in fetched]),
          "grad_norm": np.mean([m["grad_norm"] for m in fetched]),
          "learning_rate": fetched[-1]["learning_rate"],
          "tokens_per_sec": sum(int(m["tokens"]) for m in fetched) / elapsed,
      }
      if peak_flops:  # every position computed counts, padding included
        logged["mfu"] = flops_per_token * row_tokens / elapsed / (mesh.size * peak_flops)
      if evaluate_now:
        latest_evals = (done, run_evals(all_params(state.params), done))
        logged |= {k: v for k, v in latest_evals[1].items() if k != "answers"}
        stopped = stopping is not None and stopping.update(done, latest_evals[1])
      writer.write(done, logged)
      progress.set_postfix(loss=f"{logged['loss']:.4f}", tok_s=f"{logged['tokens_per_sec']:.0f}")
      pending, interval_start = [], time.perf_counter()
    progress.update(1)
    if preempted or stopped:
      if stopped:
        log.info("early stopping at step %d: %s", done, stopping.reason())
      last_step = done
      break
    evaluated = latest_evals[0] == done and keep_best is not None  # keep-best ranks every eval
    if (done % config.checkpoint.every_steps == 0 or evaluated) and done != last_step:
      save(done, latest_evals[1] if evaluated else None)
  progress.close()

  # ---------------------------------------------------------------- final evals, checkpoint
  at_last_step = latest_evals[1] if latest_evals[0] == last_step else None
  after = {}
  if not preempted:  # the final evaluation goes into the final checkpoint, for keep-best
    after = at_last_step or run_evals(all_params(state.params), last_step)
  if first_step < last_step or not checkpoints.steps():
    save(last_step, after or at_last_step)
  checkpoints.close()
  preemption.close()
  if preempted:
    writer.close()
    return {"before": before, "after": {}, "steps": last_step, "state": state, "preempted": True}
  test = evaluator.metrics(all_params(state.params), "test")
  if is_main and test:
    tqdm.write(f"test at step {last_step}: { {k: round(v, 4) for k, v in test.items()} }")
  after |= test
  if after:
    writer.write(last_step, {k: v for k, v in after.items() if k != "answers"})
  writer.close()
  if is_main and "answers" in after:
    print("held-out answers after training (expected -> model):")
    for record, answer in list(zip(eval_set.records, after["answers"]))[: config.eval.show_answers]:
      print(f"  {record.instruction} {record.input!r}: {record.output!r} -> {answer!r}")
  # Per-example results of the last evaluation of each split, in its order.
  examples = {f"{split}_{name}": values for split, results in evaluator.examples.items()
              for name, values in results.items()}
  if "answers" in after:  # exact match, each answer against its record's output
    answers = after["answers"]
    examples["eval_exact_match"] = np.array(response_metrics.exact_matches(
        answers, [record.output for record in eval_set.records[:len(answers)]]), np.float64)
  ended_early = None
  if stopping is not None and stopping.stopped_at is not None:
    ended_early = stopping.state() | {"reason": stopping.reason()}
  return {"before": before, "after": after, "steps": last_step, "state": state, "preempted": False,
          "examples": examples, "early_stopped": ended_early}


def dry_run(config: ml_collections.ConfigDict) -> dict:
  """Compiles the train step for the configured mesh from abstract state only.

  No weights are loaded and no data is read (only the model's config.json).
  Returns, per device: bytes of parameters and optimizer state (from their
  shardings), XLA's argument, output and temporary bytes, and the step's FLOPs.
  """
  config_check.validate(config)
  mesh, rules = sharding.mesh_from_config(config)
  model_config = hf_io.model_config(config.model.path, config.model, weights=False)
  config_check.check_model(config, model_config)
  layout = batching.BatchLayout(config.train.batch_size, config.train.grad_accum_steps, 0, 1)
  _check_layout(layout, mesh, rules)
  steps_for_schedule = config.train.steps or 1000
  optimizer, learning_rate = optim.optimizer(config.optim, steps_for_schedule)
  graphdef, abstract_state, _, abstract_frozen = sharded_abstract_state(
      model_config, optimizer, mesh, rules)
  shape = (layout.grad_accum_steps, layout.micro_batch_size, config.data.max_length)
  batch_spec = sharding.batch_sharding(mesh, rules, 1)
  abstract_batch = {
      "input_ids": jax.ShapeDtypeStruct(shape, jnp.int32, sharding=batch_spec),
      "segment_ids": jax.ShapeDtypeStruct(shape, jnp.int32, sharding=batch_spec),
      "loss_mask": jax.ShapeDtypeStruct(shape, jnp.bool_, sharding=batch_spec),
  }
  noise = steps.Noise(config.neftune.alpha, config.neftune.distribution)
  chunk = loss.chunk_size_for(config.train.loss_chunk_size, model_config.vocab_size)
  train_step = jax.jit(steps.make_train_step(graphdef, optimizer, learning_rate, noise, chunk,
                                             config.dropout.distribution),
                       donate_argnums=0)
  dropout_rates = dropout.rates_by_type(
      dropout_site_rates(config, model_config, None, mesh, rules), model_config.num_layers)
  start = time.perf_counter()
  with sharding.activation_rules(mesh, rules):
    compiled = train_step.lower(abstract_state, abstract_batch, jax.random.key(0),
                                dropout_rates, abstract_frozen).compile()
  compile_seconds = time.perf_counter() - start

  def per_device_bytes(tree) -> int:
    return int(sum(np.prod(x.sharding.shard_shape(x.shape)) * x.dtype.itemsize
                   for x in jax.tree.leaves(tree)))

  memory = compiled.memory_analysis()
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, list) else cost
  report = {
      "mesh": dict(mesh.shape),
      "parameters": model_config.num_params(),
      "param_bytes_per_device": per_device_bytes(abstract_state.params),
      # LoRA: the frozen base apart from the trained adapters (param_bytes_per_device).
      "frozen_bytes_per_device": (0 if abstract_frozen is None
                                  else per_device_bytes(abstract_frozen)),
      "optimizer_bytes_per_device": per_device_bytes(abstract_state.opt_state),
      "argument_bytes_per_device": int(memory.argument_size_in_bytes),
      "output_bytes_per_device": int(memory.output_size_in_bytes),
      "temp_bytes_per_device": int(memory.temp_size_in_bytes),
      "alias_bytes_per_device": int(memory.alias_size_in_bytes),
      "peak_bytes_per_device": int(memory.argument_size_in_bytes + memory.output_size_in_bytes
                                   - memory.alias_size_in_bytes + memory.temp_size_in_bytes),
      "step_flops_per_device": float(cost.get("flops", 0.0)),
      "model_flops_per_step": metrics.train_flops_per_token(model_config, config.data.max_length)
                              * config.train.batch_size * config.data.max_length,
      "compile_seconds": round(compile_seconds, 1),
  }
  if jax.process_index() == 0:
    gib = lambda b: f"{b / 2**30:.2f} GiB"
    print(f"dry run: {model_config.family}, {model_config.num_params() / 1e9:.2f}B parameters, "
          f"mesh {report['mesh']}, batch {shape}")
    if abstract_frozen is not None:
      print(f"  LoRA rank {model_config.lora_rank}: frozen base "
            f"{gib(report['frozen_bytes_per_device'])} per device ({model_config.param_dtype}), "
            f"adapters {report['param_bytes_per_device'] / 2**20:.1f} MiB, their optimizer state "
            f"{report['optimizer_bytes_per_device'] / 2**20:.1f} MiB")
    print(f"  per device: parameters {gib(report['param_bytes_per_device'])}, optimizer state "
          f"{gib(report['optimizer_bytes_per_device'])}, temporaries "
          f"{gib(report['temp_bytes_per_device'])}, peak {gib(report['peak_bytes_per_device'])}")
    print(f"  step FLOPs per device {report['step_flops_per_device']:.3e} "
          f"(model FLOPs per step {report['model_flops_per_step']:.3e})")
    print(json.dumps(report))
  return report


def main(FLAGS) -> None:
  multihost.initialize(FLAGS.coordinator_address, FLAGS.num_processes, FLAGS.process_id)
  # From here on, process 0 reports and keeps the log; the others speak only of problems.
  is_main = jax.process_index() == 0
  logging.getLogger().setLevel(logging.INFO if is_main else logging.WARNING)
  if FLAGS.workdir and is_main and not FLAGS.dry_run:
    cli.log_to(str(run.folder(FLAGS.workdir) / "train.log"))
  if FLAGS.dry_run:
    dry_run(FLAGS.config)
  else:
    train(FLAGS.config, FLAGS.workdir)


if __name__ == "__main__":
  cli.run(main, define_flags)
