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

The last line printed is a JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time

import harness

NEFTUNE_ALPHA = 5.0
LEARNING_RATE = 1e-4
GRAD_CLIP_NORM = 1.0
SEED = 0


def model_shape(args) -> dict:
  head_dim = args.width // args.heads
  return {"layers": args.layers, "hidden": args.width, "heads": args.heads,
          "kv_heads": args.heads, "head_dim": head_dim, "intermediate": args.intermediate,
          "vocab": args.vocab}


def random_token_ids(args):
  """[batch, seq] int32 token ids, the same in every process."""
  import numpy as np
  rng = np.random.default_rng(SEED)
  return rng.integers(0, args.vocab, (args.batch, args.seq)).astype(np.int32)


def progress(message: str) -> None:
  print(message, flush=True)


def time_alternating(run_step, args) -> dict:
  """Warms up, then times alpha=5 and alpha=0 steps in turn; seconds per step of each.

  `run_step(noisy)` runs one step to completion and returns its loss. The
  order within a pair flips every round, so a slow drift in the machine's
  load falls on both settings alike.
  """
  for i in range(args.warmup):
    for noisy in (True, False):
      start = time.perf_counter()
      loss = run_step(noisy)
      progress(f"warmup {i} alpha={NEFTUNE_ALPHA if noisy else 0.0}: "
               f"{time.perf_counter() - start:.2f} s, loss {loss:.4f}")
  seconds = {True: [], False: []}
  for i in range(args.steps):
    order = (True, False) if i % 2 == 0 else (False, True)
    for noisy in order:
      start = time.perf_counter()
      loss = run_step(noisy)
      seconds[noisy].append(time.perf_counter() - start)
      progress(f"step {i} alpha={NEFTUNE_ALPHA if noisy else 0.0}: "
               f"{seconds[noisy][-1]:.2f} s, loss {loss:.4f}")
  return {"noisy_seconds": seconds[True], "clean_seconds": seconds[False]}


# --- ours: JAX / Flax NNX -------------------------------------------------

def ours_worker(args) -> dict:
  import jax
  import jax.numpy as jnp
  import ml_collections
  from flax import nnx

  from neft_jax import optim, steps
  from neft_jax.models import ModelConfig, Transformer

  cfg = ModelConfig(family="llama", vocab_size=args.vocab, embed_dim=args.width,
                    num_layers=args.layers, num_heads=args.heads, num_kv_heads=args.heads,
                    head_dim=args.width // args.heads, mlp_dim=args.intermediate,
                    max_positions=args.seq, param_dtype="float32", dtype="float32",
                    scan_layers=args.scan_layers)
  optim_config = ml_collections.ConfigDict(dict(
      learning_rate=LEARNING_RATE, schedule="constant", warmup_ratio=0.0, weight_decay=0.0,
      b1=0.9, b2=0.999, eps=1e-8, grad_clip_norm=GRAD_CLIP_NORM))
  total_steps = 2 * (args.warmup + args.steps)
  optimizer, learning_rate = optim.optimizer(optim_config, total_steps)
  graphdef, params = nnx.split(Transformer(cfg, rngs=nnx.Rngs(SEED)), nnx.Param)
  state = steps.TrainState(jnp.zeros((), jnp.int32), params, optimizer.init(params))
  train_steps = {
      noisy: jax.jit(steps.make_train_step(graphdef, optimizer, learning_rate,
                                           steps.Noise(NEFTUNE_ALPHA if noisy else 0.0)),
                     donate_argnums=0)
      for noisy in (True, False)}
  # One micro-batch; every token is real and every next token is a target.
  input_ids = jnp.asarray(random_token_ids(args))[None]  # [accum=1, batch, seq]
  batch = {"input_ids": input_ids, "segment_ids": jnp.ones_like(input_ids),
           "loss_mask": jnp.ones(input_ids.shape, bool)}
  key = jax.random.key(SEED)
  jax.block_until_ready((state, batch))

  def run_step(noisy: bool) -> float:
    nonlocal state
    state, metrics = train_steps[noisy](state, batch, key)
    jax.block_until_ready((state, metrics))
    return float(metrics["loss"])

  progress(f"ours: jax {jax.__version__} on {jax.devices()[0].platform}, "
           f"{cfg.num_params():,} parameters")
  timings = time_alternating(run_step, args)
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
  config = transformers.LlamaConfig(
      vocab_size=args.vocab, hidden_size=args.width, intermediate_size=args.intermediate,
      num_hidden_layers=args.layers, num_attention_heads=args.heads,
      num_key_value_heads=args.heads, head_dim=shape["head_dim"],
      max_position_embeddings=args.seq, tie_word_embeddings=False,
      use_cache=False)  # a training step keeps no key/value cache
  model = transformers.LlamaForCausalLM(config).to(torch.float32)
  model.train()
  optimizer = torch.optim.AdamW(model.parameters(), lr=LEARNING_RATE, betas=(0.9, 0.999),
                                eps=1e-8, weight_decay=0.0, fused=True)
  input_ids = torch.from_numpy(random_token_ids(args)).long()
  embedding = model.get_input_embeddings()
  hook_source = None

  def run_step(noisy: bool) -> float:
    nonlocal hook_source
    handle = None
    if noisy:
      handle, hook_source = harness.neftune_hook_for(embedding, NEFTUNE_ALPHA)
    optimizer.zero_grad()
    loss = model(input_ids, labels=input_ids).loss
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), GRAD_CLIP_NORM)
    optimizer.step()
    if handle is not None:
      handle.remove()
    return loss.item()

  parameters = sum(p.numel() for p in model.parameters())
  progress(f"torch: torch {torch.__version__}, transformers {transformers.__version__}, "
           f"{torch.get_num_threads()} threads, attention {config._attn_implementation}, "
           f"{parameters:,} parameters")
  return time_alternating(run_step, args) | {
      "parameters": parameters, "torch_version": torch.__version__,
      "transformers_version": transformers.__version__, "torch_threads": torch.get_num_threads(),
      "torch_attention": config._attn_implementation, "torch_neftune_hook": hook_source}


# --- driver -----------------------------------------------------------------

WORKERS = {"ours": ours_worker, "torch": torch_worker}


def tokens_per_sec(args, seconds: list[float]) -> float:
  return args.batch * args.seq / statistics.median(seconds)


def overhead(noisy_seconds: list[float], clean_seconds: list[float]) -> float:
  """The median over step pairs of noisy / clean - 1: the two steps of a pair ran
  back to back, so a drift in the machine's speed cancels within each pair."""
  return statistics.median(n / c for n, c in zip(noisy_seconds, clean_seconds)) - 1


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
      "parameters": ours["parameters"],
      "torch_parameters": torch_run["parameters"],
      "ours_tokens_per_sec": round(ours_tps, 1),
      "torch_tokens_per_sec": round(torch_tps, 1),
      "ratio_vs_torch": round(ours_tps / torch_tps, 3),
      "ours_alpha0_tokens_per_sec": round(tokens_per_sec(args, ours["clean_seconds"]), 1),
      "torch_alpha0_tokens_per_sec": round(tokens_per_sec(args, torch_run["clean_seconds"]), 1),
      "neftune_overhead": round(overhead(ours["noisy_seconds"], ours["clean_seconds"]), 4),
      # Steadier views of the same cost: the noise alone against a clean step,
      # and the extra floating-point operations of the noisy step.
      "neftune_noise_ms": round(1000 * ours["noise_seconds"], 3),
      "neftune_noise_fraction_of_step": round(
          ours["noise_seconds"] / statistics.median(ours["clean_seconds"]), 5),
      "neftune_flops_overhead": round(ours["noisy_step_flops"] / ours["step_flops"] - 1, 6),
      "torch_neftune_overhead": round(overhead(torch_run["noisy_seconds"],
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
