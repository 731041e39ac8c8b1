"""Benchmark: training-step throughput on CPU, our jitted step vs transformers.

Trains the same small random Llama (4 layers, width 256, 4 heads, vocab 32000
by default) on the same random batch of token ids, with the same optimizer
(global-norm clipping to 1.0, then AdamW at lr 1e-4, no weight decay) and the
loss on every next token:

  ours   `steps.make_train_step` under `jax.jit` (state donated), with
         NEFTune alpha=5 and alpha=0 as two jitted functions; the layers
         unrolled (model.scan_layers=False, the better choice for 4 layers;
         --scan_layers for lax.scan);
  torch  `transformers.LlamaForCausalLM` in train mode: forward with labels,
         backward, `clip_grad_norm_`, `torch.optim.AdamW` (fused, the
         Trainer's default), with transformers' NEFTune forward hook on the
         input embeddings for alpha=5 and without it for alpha=0.

Each framework runs in its own process, so their thread pools never compete,
in rounds that alternate which goes first. In each process, a few warmup steps
(our JIT compilation among them) go untimed; then the alpha=5 and alpha=0
steps alternate, N of each, each timed until its results are computed. Time
per step is the median over all rounds; tokens/s is batch * seq / time per
step, and the NEFTune overhead is time(alpha=5) / time(alpha=0) - 1, the
median over pairs of steps that ran back to back.

    python bench/train_step.py [--rounds 3] [--steps 6] [--warmup 2] [--layers 4]
                               [--width 256] [--heads 4] [--seq 256] [--batch 8]
                               [--scan_layers] [--loss_chunk_size C]

The last line printed is a JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time

import harness

from harness import NEFTUNE_ALPHA, SEED, progress


def model_shape(args) -> dict:
  return {"layers": args.layers, "hidden": args.width, "heads": args.heads,
          "kv_heads": args.heads, "head_dim": args.width // args.heads,
          "intermediate": args.intermediate, "vocab": args.vocab}


# --- ours: JAX / Flax NNX -------------------------------------------------

def ours_worker(args) -> dict:
  import jax

  from neft_jax import loss, steps

  cfg = harness.ours_model_config(model_shape(args), args.seq, param_dtype="float32",
                                  dtype="float32", scan_layers=args.scan_layers)
  optimizer, learning_rate = harness.ours_optimizer(2 * (args.warmup + args.steps))
  graphdef, state, batch = harness.ours_state_and_batch(
      cfg, optimizer, harness.random_token_ids(model_shape(args), args.batch, args.seq))
  train_steps = {
      noisy: jax.jit(steps.make_train_step(graphdef, optimizer, learning_rate,
                                           steps.Noise(NEFTUNE_ALPHA if noisy else 0.0),
                                           loss.chunk_size_for(args.loss_chunk_size, args.vocab)),
                     donate_argnums=0)
      for noisy in (True, False)}
  key = jax.random.key(SEED)
  jax.block_until_ready((state, batch))

  def run_step(noisy: bool) -> float:
    nonlocal state
    state, metrics = train_steps[noisy](state, batch, key)
    jax.block_until_ready((state, metrics))
    return float(metrics["loss"])

  progress(f"ours: jax {jax.__version__} on {jax.devices()[0].platform}, "
           f"{cfg.num_params():,} parameters")
  timings = harness.time_steps(run_step, args.warmup, args.steps)
  return timings | noise_cost(args, train_steps, state, batch, key) | {
      "parameters": cfg.num_params(), "jax_version": jax.__version__,
      "jax_platform": jax.devices()[0].platform}


def noise_cost(args, train_steps, state, batch, key) -> dict:
  """What NEFTune adds, measured two steadier ways than step-time differences:
  the noise function alone on the embeddings (many repetitions), and the
  compiled steps' floating-point operation counts from XLA."""
  import jax
  import jax.numpy as jnp
  from neft_jax import neftune

  embeddings = jnp.zeros((args.batch, args.seq, args.width), jnp.float32)
  segment_ids = batch["segment_ids"][0]
  add_noise = jax.jit(lambda e, k: neftune.add_noise(e, k, alpha=NEFTUNE_ALPHA, segment_ids=segment_ids))
  jax.block_until_ready(add_noise(embeddings, key))
  repeats = 200
  start = time.perf_counter()
  for _ in range(repeats):
    out = add_noise(embeddings, key)
  jax.block_until_ready(out)
  flops = {}
  for noisy, step in train_steps.items():
    cost = step.lower(state, batch, key).compile().cost_analysis()
    cost = cost[0] if isinstance(cost, list) else cost
    flops[noisy] = float(cost.get("flops", 0.0))
  return {"noise_seconds": (time.perf_counter() - start) / repeats,
          "step_flops": flops[False], "noisy_step_flops": flops[True]}


# --- torch: transformers ---------------------------------------------------

def torch_worker(args) -> dict:
  import torch
  import transformers

  torch.set_num_threads(os.cpu_count())
  torch.manual_seed(SEED)
  shape = model_shape(args)
  config = harness.torch_llama(shape, args.seq)
  model = transformers.LlamaForCausalLM(config).to(torch.float32)
  model.train()
  input_ids = torch.from_numpy(harness.random_token_ids(shape, args.batch, args.seq)).long()
  run_step, hook_source = harness.torch_step_runner(model, input_ids)
  parameters = sum(p.numel() for p in model.parameters())
  progress(f"torch: torch {torch.__version__}, transformers {transformers.__version__}, "
           f"{torch.get_num_threads()} threads, attention {config._attn_implementation}, "
           f"{parameters:,} parameters")
  return harness.time_steps(run_step, args.warmup, args.steps) | {
      "parameters": parameters, "torch_version": torch.__version__,
      "transformers_version": transformers.__version__, "torch_threads": torch.get_num_threads(),
      "torch_attention": config._attn_implementation, "torch_neftune_hook": hook_source()}


# --- driver -----------------------------------------------------------------

WORKERS = {"ours": ours_worker, "torch": torch_worker}


def tokens_per_sec(args, seconds: list[float]) -> float:
  return args.batch * args.seq / statistics.median(seconds)


def parse_args():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--steps", type=int, default=6, help="timed steps per alpha and round")
  parser.add_argument("--rounds", type=int, default=3, help="runs of each framework, alternating")
  parser.add_argument("--warmup", type=int, default=2, help="untimed steps per alpha")
  parser.add_argument("--layers", type=int, default=4)
  parser.add_argument("--width", type=int, default=256, help="hidden size")
  parser.add_argument("--heads", type=int, default=4, help="attention heads (= kv heads)")
  parser.add_argument("--intermediate", type=int, default=688, help="MLP width")
  parser.add_argument("--vocab", type=int, default=32000)
  parser.add_argument("--seq", type=int, default=256, help="sequence length")
  parser.add_argument("--batch", type=int, default=8, help="rows per step")
  parser.add_argument("--scan_layers", action=argparse.BooleanOptionalAction, default=False,
                      help="ours: lax.scan over layers (default: unrolled, as suits 4 layers)")
  parser.add_argument("--loss_chunk_size", type=int, default=-1,
                      help="ours: positions per chunk of the output layer and loss "
                           "(train.loss_chunk_size; 0: all at once; -1, the default: by vocabulary size)")
  parser.add_argument("--worker", choices=list(WORKERS), help=argparse.SUPPRESS)
  args = parser.parse_args()
  if args.steps < 1 or args.warmup < 1:
    parser.error("--steps and --warmup must be at least 1 (the first step compiles)")
  if args.width % args.heads:
    parser.error(f"--width {args.width} is not a multiple of --heads {args.heads}")
  return args


def main():
  args = parse_args()
  if args.worker:
    return harness.print_result(WORKERS[args.worker](args))

  argv = [(f"--{name}" if value else f"--no-{name}") if isinstance(value, bool) else f"--{name}={value}"
          for name, value in vars(args).items() if name not in ("worker", "rounds")]
  print(f"train step, {model_shape(args)}, batch {args.batch} x seq {args.seq}, "
        f"{args.warmup} warmup + {args.steps} timed steps per alpha, "
        f"{os.cpu_count()} CPU threads", flush=True)
  # Rounds alternate the frameworks (ours first in even rounds), and all timed
  # steps are pooled, so a drift in the machine's speed falls on both alike.
  runs = {"ours": [], "torch": []}
  for round_index in range(args.rounds):
    order = ("ours", "torch") if round_index % 2 == 0 else ("torch", "ours")
    for which in order:
      print(f"round {round_index + 1}/{args.rounds}: {which}", flush=True)
      runs[which].append(harness.run_cpu_worker(__file__, which, argv))
  ours, torch_run = (harness.pool(runs[which]) for which in ("ours", "torch"))

  ours_tps = tokens_per_sec(args, ours["noisy_seconds"])
  torch_tps = tokens_per_sec(args, torch_run["noisy_seconds"])
  print(json.dumps(model_shape(args) | {
      "batch": args.batch,
      "seq": args.seq,
      "dtype": "float32",
      "neftune_alpha": NEFTUNE_ALPHA,
      "warmup_steps": args.warmup,
      "timed_steps": args.steps,
      "rounds": args.rounds,
      "scan_layers": args.scan_layers,
      "loss_chunk_size": args.loss_chunk_size,
      "parameters": ours["parameters"],
      "torch_parameters": torch_run["parameters"],
      "ours_tokens_per_sec": round(ours_tps, 1),
      "torch_tokens_per_sec": round(torch_tps, 1),
      "ratio_vs_torch": round(ours_tps / torch_tps, 3),
      "ours_alpha0_tokens_per_sec": round(tokens_per_sec(args, ours["clean_seconds"]), 1),
      "torch_alpha0_tokens_per_sec": round(tokens_per_sec(args, torch_run["clean_seconds"]), 1),
      "neftune_overhead": round(harness.overhead(ours["noisy_seconds"], ours["clean_seconds"]), 4),
      # Steadier views of the same cost: the noise alone against a clean step,
      # and the extra floating-point operations of the noisy step.
      "neftune_noise_ms": round(1000 * ours["noise_seconds"], 3),
      "neftune_noise_fraction_of_step": round(
          ours["noise_seconds"] / statistics.median(ours["clean_seconds"]), 5),
      "neftune_flops_overhead": round(ours["noisy_step_flops"] / ours["step_flops"] - 1, 6),
      "torch_neftune_overhead": round(harness.overhead(torch_run["noisy_seconds"],
                                               torch_run["clean_seconds"]), 4),
      "ours_seconds_per_step": round(statistics.median(ours["noisy_seconds"]), 4),
      "torch_seconds_per_step": round(statistics.median(torch_run["noisy_seconds"]), 4),
      # The fastest step: what the machine gives when nothing else competes for it.
      "ours_min_seconds_per_step": round(min(ours["noisy_seconds"]), 4),
      "torch_min_seconds_per_step": round(min(torch_run["noisy_seconds"]), 4),
      "torch_neftune_hook": torch_run["torch_neftune_hook"],
      "torch_attention": torch_run["torch_attention"],
      "torch_optimizer": "AdamW(fused=True)",
      "jax_version": ours["jax_version"],
      "jax_platform": ours["jax_platform"],
      "torch_version": torch_run["torch_version"],
      "transformers_version": torch_run["transformers_version"],
      "torch_threads": torch_run["torch_threads"],
      "cpu_count": os.cpu_count(),
  }))


if __name__ == "__main__":
  main()
