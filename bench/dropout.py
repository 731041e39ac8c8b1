"""Benchmark: what dropout sites cost in the train step, and the Fisher pass against PyTorch.

Step time, on the train-step benchmark's model (a Llama of 4 layers, width 256,
vocabulary 32000; 8 rows of 256 tokens; clipping and AdamW; NEFTune off, so
only dropout differs), of our jitted `steps.make_train_step` with

  none              no dropout site on (dropout_rates={})
  uniform           every site at 0.1 (dropout.mode=uniform)
  guided            every site at its guided rate: 0.1 down to 0 linear in the
                    rank of Fisher scores (here the scores of a Fisher pass of
                    the same model on random tokens)
  guided_no_probs   guided, with the attention_probs sites off

in alternating order, each step timed until its results are computed; the
ratios are medians over steps that ran back to back.

The Fisher pass: examples/s of the empirical diagonal Fisher (per-example
squared gradients, averaged) over random 64-token examples, ours
(`neft_jax.information.fisher_diagonal`: jax.vmap of jax.grad over micro-batches,
jitted) against PyTorch's per-example loop (the paper's method: batch of 1,
forward with labels, backward, square and add every gradient; the faster of 1
thread and one per core), each in its own process. Compilation is not timed.
Both sides are timed twice: for the whole diagonal, and for the sites only, as
a guided-dropout run computes it (our pass leaves out the untied output
layer's squares; PyTorch's loop with the output layer frozen skips its weight
gradient). fisher_speedup_vs_torch is the whole against the whole.

    python bench/dropout.py [--steps 6] [--warmup 2] [--fisher_examples 64]
                            [--fisher_length 64] [--fisher_batch 8] [--layers 4] ...
                            [--only_fisher]

The last line printed is a JSON object (guided_over_none, guided_over_uniform,
fisher_speedup_vs_torch, fisher_sites_speedup_vs_torch_sites and the figures
they come from; with --only_fisher, the Fisher figures alone, and no train step
is run).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time

import harness

from harness import SEED, progress

VARIANTS = ("none", "uniform", "guided", "guided_no_probs")


def model_shape(args) -> dict:
  return {"layers": args.layers, "hidden": args.width, "heads": args.heads,
          "kv_heads": args.heads, "head_dim": args.width // args.heads,
          "intermediate": args.intermediate, "vocab": args.vocab}


def fisher_tokens(args):
  import numpy as np
  rng = np.random.default_rng(SEED + 1)
  return rng.integers(0, args.vocab, (args.fisher_examples, args.fisher_length)).astype(np.int32)


# --- ours ------------------------------------------------------------------

def ours_fisher(args, cfg, graphdef, params):
  """(site scores, timing) of our Fisher pass over the random examples: the whole
  diagonal, and as a guided-dropout run computes it (sites only: no untied head)."""
  from neft_jax import information, sharding
  mesh, rules = sharding.make_mesh(), sharding.DEFAULT_RULES
  examples = list(fisher_tokens(args))
  timing = {}
  for name, head in (("whole", True), ("sites", False)):
    diagonal, timing[name] = information.fisher_diagonal(
        graphdef, params, examples, mesh=mesh, rules=rules, batch_size=args.fisher_batch, head=head)
  return information.site_scores(diagonal, cfg), timing


def ours_worker(args) -> dict:
  import jax
  import ml_collections

  from neft_jax import dropout, steps

  cfg = harness.ours_model_config(model_shape(args), args.seq, param_dtype="float32",
                                  dtype="float32", scan_layers=True)
  optimizer, learning_rate = harness.ours_optimizer(len(VARIANTS) * (args.warmup + args.steps))
  graphdef, state, batch = harness.ours_state_and_batch(
      cfg, optimizer, harness.random_token_ids(model_shape(args), args.batch, args.seq))
  scores, fisher_timing = ours_fisher(args, cfg, graphdef, state.params)
  progress(f"ours: Fisher pass {fisher_timing}")
  if args.only_fisher:
    return {"fisher": fisher_timing, "parameters": cfg.num_params(), "jax_version": jax.__version__}

  def plan(mode: str, sites: str) -> dict:
    settings = ml_collections.ConfigDict(
        {"mode": mode, "rate": 0.1, "sites": sites, "max_rate": 0.1, "min_rate": 0.0})
    rates = dropout.site_rates(settings, cfg, scores)
    return dropout.rates_by_type(rates, cfg.num_layers)

  every = ",".join(dropout.SITE_TYPES)
  no_probs = ",".join(k for k in dropout.SITE_TYPES if k != "attention_probs")
  rates = {"none": {}, "uniform": plan("uniform", every), "guided": plan("guided", every),
           "guided_no_probs": plan("guided", no_probs)}
  step = jax.jit(steps.make_train_step(graphdef, optimizer, learning_rate, steps.Noise(0.0)),
                 donate_argnums=0)
  key = jax.random.key(SEED)

  def run(variant: str) -> float:
    nonlocal state
    start = time.perf_counter()
    state, metrics = step(state, batch, key, rates[variant])
    jax.block_until_ready((state, metrics))
    return time.perf_counter() - start

  for i in range(args.warmup):
    for variant in VARIANTS:
      progress(f"warmup {i} {variant}: {run(variant):.3f} s")
  seconds = {variant: [] for variant in VARIANTS}
  for i in range(args.steps):
    for variant in (VARIANTS if i % 2 == 0 else VARIANTS[::-1]):
      seconds[variant].append(run(variant))
      progress(f"step {i} {variant}: {seconds[variant][-1]:.3f} s")
  return {"seconds": seconds, "fisher": fisher_timing, "parameters": cfg.num_params(),
          "jax_version": jax.__version__}


# --- torch -----------------------------------------------------------------

def torch_worker(args) -> dict:
  """PyTorch's per-example loop, timed with 1 thread and with one per core: the faster
  counts (on a machine that other processes load, two threads on two cores ran the
  loop 8x slower than one)."""
  import torch
  import transformers

  torch.manual_seed(SEED)
  model = transformers.LlamaForCausalLM(harness.torch_llama(model_shape(args), args.seq))
  model = model.to(torch.float32).eval()  # no dropout, as in our pass
  squares = [torch.zeros_like(p) for p in model.parameters()]
  examples = torch.from_numpy(fisher_tokens(args)).long()

  def example(ids):
    model.zero_grad(set_to_none=True)
    model(input_ids=ids[None], labels=ids[None]).loss.backward()
    with torch.no_grad():
      for s, p in zip(squares, model.parameters()):
        if p.grad is not None:
          s.add_(p.grad.square())

  results = {}
  # "whole": every parameter, the paper's loop; "sites": the output layer frozen, as
  # our sites-only pass leaves it out (autograd then skips its weight gradient).
  for name, head in (("whole", True), ("sites", False)):
    model.lm_head.weight.requires_grad_(head)
    per_sec = {}
    for threads in sorted({1, os.cpu_count()}):
      torch.set_num_threads(threads)
      for ids in examples[:2]:  # warmup
        example(ids)
      start = time.perf_counter()
      for ids in examples:
        example(ids)
      seconds = time.perf_counter() - start
      per_sec[threads] = len(examples) / seconds
      progress(f"torch {name}, {threads} thread(s): {len(examples)} examples in {seconds:.2f} s")
    results[name] = {"examples_per_sec": max(per_sec.values()),
                     "by_threads": {str(t): round(v, 2) for t, v in per_sec.items()}}
  return {"fisher": results, "torch_version": torch.__version__,
          "transformers_version": transformers.__version__}


# --- driver ----------------------------------------------------------------

WORKERS = {"ours": ours_worker, "torch": torch_worker}


def paired_ratio(numerator: list[float], denominator: list[float]) -> float:
  return statistics.median(n / d for n, d in zip(numerator, denominator))


def parse_args():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--steps", type=int, default=6, help="timed steps per variant")
  parser.add_argument("--warmup", type=int, default=2, help="untimed steps per variant")
  parser.add_argument("--layers", type=int, default=4)
  parser.add_argument("--width", type=int, default=256)
  parser.add_argument("--heads", type=int, default=4)
  parser.add_argument("--intermediate", type=int, default=688)
  parser.add_argument("--vocab", type=int, default=32000)
  parser.add_argument("--seq", type=int, default=256)
  parser.add_argument("--batch", type=int, default=8)
  parser.add_argument("--fisher_examples", type=int, default=64)
  parser.add_argument("--fisher_length", type=int, default=64)
  parser.add_argument("--fisher_batch", type=int, default=8, help="ours: examples per vmapped call")
  parser.add_argument("--only_fisher", action="store_true",
                      help="time the Fisher pass alone, not the train step's variants")
  parser.add_argument("--worker", choices=list(WORKERS), help=argparse.SUPPRESS)
  args = parser.parse_args()
  if args.steps < 1 or args.warmup < 1:
    parser.error("--steps and --warmup must be at least 1 (the first step compiles)")
  return args


def main():
  args = parse_args()
  if args.worker:
    return harness.print_result(WORKERS[args.worker](args))
  argv = [f"--{name}={value}" for name, value in vars(args).items()
          if name not in ("worker", "only_fisher")] + ["--only_fisher"] * args.only_fisher
  step = "" if args.only_fisher else f", batch {args.batch} x seq {args.seq}"
  print(f"dropout, {model_shape(args)}{step}; Fisher over {args.fisher_examples} examples of "
        f"{args.fisher_length} tokens", flush=True)
  ours = harness.run_cpu_worker(__file__, "ours", argv)
  torch_run = harness.run_cpu_worker(__file__, "torch", argv)
  ours_rate = {k: v["examples_per_sec"] for k, v in ours["fisher"].items()}
  torch_rate = {k: v["examples_per_sec"] for k, v in torch_run["fisher"].items()}
  fisher = {
      "fisher_examples": args.fisher_examples, "fisher_length": args.fisher_length,
      "fisher_batch": args.fisher_batch,
      "ours_fisher_examples_per_sec": round(ours_rate["whole"], 2),
      "torch_fisher_examples_per_sec": round(torch_rate["whole"], 2),
      "torch_fisher_examples_per_sec_by_threads": torch_run["fisher"]["whole"]["by_threads"],
      # Like for like: the whole diagonal on both sides.
      "fisher_speedup_vs_torch": round(ours_rate["whole"] / torch_rate["whole"], 3),
      # Sites only (no untied head) on both sides: what a guided-dropout run needs.
      "ours_fisher_sites_examples_per_sec": round(ours_rate["sites"], 2),
      "torch_fisher_sites_examples_per_sec": round(torch_rate["sites"], 2),
      "fisher_sites_speedup_vs_torch_sites": round(ours_rate["sites"] / torch_rate["sites"], 3),
      # What a guided-dropout run computes against the paper's loop over every parameter.
      "fisher_sites_speedup_vs_torch": round(ours_rate["sites"] / torch_rate["whole"], 3),
      "ours_fisher_compile_seconds": ours["fisher"]["whole"]["compile_seconds"],
  }
  step = {}
  if not args.only_fisher:
    seconds = ours["seconds"]
    median = {variant: statistics.median(s) for variant, s in seconds.items()}
    step = {
        "batch": args.batch, "seq": args.seq, "timed_steps": args.steps,
        "seconds_per_step": {variant: round(s, 4) for variant, s in median.items()},
        "guided_over_none": round(paired_ratio(seconds["guided"], seconds["none"]), 4),
        "guided_over_uniform": round(paired_ratio(seconds["guided"], seconds["uniform"]), 4),
        "uniform_over_none": round(paired_ratio(seconds["uniform"], seconds["none"]), 4),
        "guided_no_probs_over_none": round(paired_ratio(seconds["guided_no_probs"],
                                                        seconds["none"]), 4),
    }
  print(json.dumps(model_shape(args) | {"parameters": ours["parameters"]} | step | fisher | {
      "jax_version": ours["jax_version"], "torch_version": torch_run["torch_version"],
      "transformers_version": torch_run["transformers_version"], "cpu_count": os.cpu_count(),
  }))

if __name__ == "__main__":
  main()
