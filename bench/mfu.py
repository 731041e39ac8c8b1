"""Benchmark: training throughput and MFU of our jitted step on one GPU, vs transformers.

Trains a random Llama-shaped model, the ~1.1B TinyLlama shape by default on a
GPU (vocab 32000, hidden 2048, MLP 5632, 22 layers, 32 query heads sharing 4
key/value heads of width 64), on one random batch of 8 rows x 2048 tokens
(16,384 tokens a step), with float32 master weights and bfloat16 compute, the
same optimizer on both sides (global-norm clipping to 1.0, then AdamW at lr
1e-4, no weight decay) and the loss on every next token:

  ours   `steps.make_train_step` compiled ahead of time under `jax.jit` (state
         donated) on the default device, one device, no mesh: `ModelConfig`
         with param_dtype float32, dtype bfloat16, scanned layers, remat from
         --remat, and cuDNN flash attention on a GPU (XLA's elsewhere), with
         NEFTune alpha=5 (the product's default), and alpha=0 for comparison;
  torch  `transformers.LlamaForCausalLM` with float32 parameters in train mode,
         its forward (and loss) under `torch.autocast(bfloat16)`, attention
         "sdpa" (PyTorch's scaled_dot_product_attention, which picks its flash
         kernel for causal bfloat16 on a GPU), backward, `clip_grad_norm_`,
         `torch.optim.AdamW(fused=True)`, with transformers' NEFTune forward
         hook on the input embeddings for alpha=5 and without it for alpha=0.

Each framework runs in its own process (so they never share a GPU or thread
pool), one after the other, in rounds that alternate which goes first. In each
process a few warmup steps go untimed (our compilation, with one first run of
each step, happens before them and is reported apart as compile_seconds); then
alpha=5 and alpha=0 steps alternate, N of each, each timed until the device
has finished it (`jax.block_until_ready`, `torch.cuda.synchronize`). Time per step is the median over all rounds, and

  tokens/s = batch * seq / time per step          (every position counts)
  MFU      = flops_per_token * tokens/s / peak    (one device)

with flops_per_token from `neft_jax.metrics.train_flops_per_token` (6 per
matmul parameter plus attention; model FLOPs, so remat's recomputation earns
nothing) and the peak from `neft_jax.metrics.peak_flops_per_device` (dense
bfloat16, by device kind: 989 TFLOP/s for any H100 or H200, the SXM figure;
pass --peak_tflops for a PCIe card or an unlisted device). The same
FLOP count and peak give torch's MFU. On a device whose peak is unknown (a CPU)
MFU is null unless --peak_tflops is given.

Memory: the 1.1B model at 8 x 2048 with remat "none" should fit in 80 GB (about
13 GB of float32 weights and Adam moments, 4 GB of gradients, and the
activations of 22 layers), so "none" is the default; if a step runs out of
memory, try --remat dots_no_batch (or full), or a smaller --batch. JAX may take
XLA_PYTHON_CLIENT_MEM_FRACTION (default here 0.9) of the GPU.

Attention: cuDNN flash attention supports only some shapes, dtypes and GPUs;
if our step fails to compile or run with it, the benchmark says why, falls back
to --attention xla and reports both in the JSON (`attention_requested`,
`attention`, `attention_fallback`); --no-attention_fallback makes it an error.
Our model always passes its segment mask (all ones here) to attention, which
cuDNN applies as an additive [batch, 1, seq, seq] bias (and, in this jax,
exports that bias's gradient too); torch's sdpa gets no mask (plain causal).

    python bench/mfu.py                       # the 1.1B preset on a GPU
    python bench/mfu.py --preset tiny --steps 2 --warmup 1    # a CPU smoke run
    python bench/mfu.py [--preset auto|1b|tiny] [--steps N] [--warmup N]
                        [--rounds N] [--remat none|full|dots|dots_no_batch] [--loss_chunk_size C]
                        [--attention auto|cudnn|xla] [--peak_tflops T]
                        [--batch B] [--seq S] [--layers L] [--hidden D] ...
                        [--no-alpha0] [--no-torch]

--preset auto (the default) is "1b" when JAX's default device is a GPU and
"tiny" (2 layers, width 128) otherwise. The last line printed is a JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import time
import traceback

import harness

from harness import BETAS, EPS, GRAD_CLIP_NORM, LEARNING_RATE, NEFTUNE_ALPHA, SEED, SHAPE_KEYS
from harness import alpha_name, progress

PRESETS = {
    # TinyLlama-1.1B's shape: grouped-query attention, 16k tokens a step.
    "1b": dict(vocab=32000, hidden=2048, intermediate=5632, layers=22, heads=32, kv_heads=4,
               head_dim=64, seq=2048, batch=8, steps=20, warmup=3),
    # A smoke check that runs on a CPU in seconds.
    "tiny": dict(vocab=1000, hidden=128, intermediate=352, layers=2, heads=4, kv_heads=2,
                 head_dim=32, seq=128, batch=4, steps=5, warmup=2),
}


def model_shape(args) -> dict:
  return {key: getattr(args, key) for key in SHAPE_KEYS}


def is_out_of_memory(error: BaseException) -> bool:
  message = str(error).lower()
  return "resource_exhausted" in message or "out of memory" in message


def explain(error: BaseException, args, which: str) -> str:
  """The error's first line, with a hint when it is a known kind of failure."""
  lines = str(error).strip().splitlines()
  text = f"{type(error).__name__}: {lines[0] if lines else ''}"
  if is_out_of_memory(error):
    hint = "try --remat dots_no_batch or --remat full, or" if which == "ours" else "try"
    text += (f" -- {which} ran out of device memory at batch {args.batch} x seq {args.seq}"
             f" (remat {args.remat}); {hint} a smaller --batch")
  return text


# --- probe: which device JAX would use -------------------------------------

def probe_worker(args) -> dict:
  import jax
  device = jax.devices()[0]
  return {"platform": device.platform, "device_kind": device.device_kind}


# --- ours: JAX / Flax NNX -------------------------------------------------

def ours_config(args, attention: str):
  return harness.ours_model_config(model_shape(args), args.seq, param_dtype="float32",
                                   dtype="bfloat16", scan_layers=args.scan_layers,
                                   remat=args.remat, attention=attention)


def ours_worker(args) -> dict:
  import dataclasses

  import flax
  import jax
  from flax import nnx

  from neft_jax import loss, metrics, steps
  from neft_jax.models import Transformer

  device = jax.devices()[0]
  requested = args.attention
  if requested == "auto":
    requested = "cudnn" if device.platform == "gpu" else "xla"
  cfg = ours_config(args, requested)
  optimizer, learning_rate = harness.ours_optimizer(2 * (args.warmup + args.steps + 1),
                                                    args.weight_decay)
  token_ids = harness.random_token_ids(model_shape(args), args.batch, args.seq)

  def new_state():
    return harness.ours_state_and_batch(cfg, optimizer, token_ids)[1]

  start = time.perf_counter()
  _, state, batch = harness.ours_state_and_batch(cfg, optimizer, token_ids)
  key = jax.random.key(SEED)
  jax.block_until_ready((state, batch))
  progress(f"ours: jax {jax.__version__} on {device.platform} ({device.device_kind}), "
           f"{cfg.num_params():,} parameters, initialized in {time.perf_counter() - start:.1f} s")

  def compile_steps(cfg):
    """The train steps for alpha=5 (and 0), compiled ahead of time for this state and batch."""
    graphdef = nnx.split(nnx.eval_shape(lambda: Transformer(cfg, rngs=nnx.Rngs(SEED))),
                         nnx.Param)[0]
    compiled = {}
    for noisy in ((True, False) if args.alpha0 else (True,)):
      start = time.perf_counter()
      noise = steps.Noise(NEFTUNE_ALPHA if noisy else 0.0)
      chunk = loss.chunk_size_for(args.loss_chunk_size, cfg.vocab_size)
      step = jax.jit(steps.make_train_step(graphdef, optimizer, learning_rate, noise, chunk),
                     donate_argnums=0)
      compiled[noisy] = step.lower(state, batch, key).compile()
      progress(f"compiled the {alpha_name(noisy)} step (attention {cfg.attention}, "
               f"remat {cfg.remat}) in {time.perf_counter() - start:.1f} s")
    return compiled

  def first_steps(compiled):
    """Runs each compiled step once, so a kernel that fails at run time fails here."""
    nonlocal state
    for step in compiled.values():
      state, step_metrics = step(state, batch, key)
      jax.block_until_ready((state, step_metrics))

  fallback = None
  start = time.perf_counter()
  try:
    compiled = compile_steps(cfg)
    first_steps(compiled)
  except Exception as error:  # noqa: BLE001 -- any cuDNN failure: say why, then fall back
    if cfg.attention != "cudnn" or not args.attention_fallback or is_out_of_memory(error):
      raise
    fallback = explain(error, args, "ours")
    progress(f"WARNING: our step failed with cuDNN attention ({fallback}); "
             f"falling back to --attention xla (--no-attention_fallback makes this an error)")
    cfg = dataclasses.replace(cfg, attention="xla")
    if any(leaf.is_deleted() for leaf in jax.tree.leaves(state)):
      state = new_state()  # donated to a step that then failed
    compiled = compile_steps(cfg)
    first_steps(compiled)
  compile_seconds = time.perf_counter() - start

  def run_step(noisy: bool) -> float:
    nonlocal state
    state, step_metrics = compiled[noisy](state, batch, key)
    jax.block_until_ready((state, step_metrics))
    return float(step_metrics["loss"])

  timings = harness.time_steps(run_step, args.warmup, args.steps, args.alpha0)
  memory = device.memory_stats() or {}
  compiled_memory = compiled[True].memory_analysis()
  peak = metrics.peak_flops_per_device(device.device_kind, args.peak_tflops)
  return timings | {
      "parameters": cfg.num_params(),
      "flops_per_token": metrics.train_flops_per_token(cfg, args.seq),
      "peak_flops_per_device": peak,
      "device_kind": device.device_kind,
      "jax_platform": device.platform,
      "attention_requested": requested,
      "attention": cfg.attention,
      "attention_fallback": fallback,
      "compile_seconds": compile_seconds,
      "peak_memory_bytes": memory.get("peak_bytes_in_use"),
      "device_memory_bytes": memory.get("bytes_limit"),
      "xla_temp_bytes": getattr(compiled_memory, "temp_size_in_bytes", None),
      "jax_version": jax.__version__,
      "flax_version": flax.__version__,
  }


# --- torch: transformers ---------------------------------------------------

def torch_worker(args) -> dict:
  import torch
  import transformers

  device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
  if device.type == "cpu":
    torch.set_num_threads(os.cpu_count())
  torch.manual_seed(SEED)
  config = harness.torch_llama(model_shape(args), args.seq,
                               attn_implementation=args.torch_attention)
  start = time.perf_counter()
  with device:  # initialize on the device, not on the host and then copy
    model = transformers.LlamaForCausalLM(config).to(torch.float32)
  model.train()
  input_ids = torch.from_numpy(harness.random_token_ids(model_shape(args), args.batch, args.seq))
  # float32 weights, bfloat16 matmuls: our param_dtype float32, dtype bfloat16.
  train_step, hook_source = harness.torch_step_runner(
      model, input_ids.long().to(device), args.weight_decay, autocast_device=device.type)

  def synchronize():
    if device.type == "cuda":
      torch.cuda.synchronize(device)

  def run_step(noisy: bool) -> float:
    loss = train_step(noisy)
    synchronize()
    return loss

  synchronize()
  parameters = sum(p.numel() for p in model.parameters())
  device_name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
  progress(f"torch: torch {torch.__version__}, transformers {transformers.__version__} on "
           f"{device_name}, attention {model.config._attn_implementation}, {parameters:,} "
           f"parameters, initialized in {time.perf_counter() - start:.1f} s")
  if device.type == "cuda":
    torch.cuda.reset_peak_memory_stats(device)
  timings = harness.time_steps(run_step, args.warmup, args.steps, args.alpha0)
  return timings | {
      "parameters": parameters,
      "device": device.type,
      "device_name": device_name,
      "attention": model.config._attn_implementation,
      "neftune_hook": hook_source(),
      "peak_memory_bytes": (torch.cuda.max_memory_allocated(device)
                            if device.type == "cuda" else None),
      "threads": torch.get_num_threads(),
      "torch_version": torch.__version__,
      "transformers_version": transformers.__version__,
  }


# --- driver -----------------------------------------------------------------

WORKERS = {"probe": probe_worker, "ours": ours_worker, "torch": torch_worker}


def worker_main(args) -> None:
  """Runs one worker; its result (or its error) is the last line, after RESULT."""
  try:
    result = WORKERS[args.worker](args)
  except Exception as error:  # noqa: BLE001 -- reported to the driver, traceback to stderr
    traceback.print_exc()
    result = {"error": explain(error, args, args.worker)}
  harness.print_result(result)


def run_worker(which: str, argv: list[str]) -> dict:
  """Runs one framework in a fresh process; its result or an error."""
  env = {"XLA_PYTHON_CLIENT_MEM_FRACTION": os.environ.get("XLA_PYTHON_CLIENT_MEM_FRACTION", "0.9")}
  if which == "probe":  # it only asks which device there is
    env["XLA_PYTHON_CLIENT_PREALLOCATE"] = "false"
  result = harness.run_worker(__file__, which, argv, env=env)
  if result is None:
    result = {"error": f"the {which} worker exited with no result; see above"}
  return result


def rounded(value, digits: int):
  return None if value is None else round(value, digits)


def summary(args, ours: dict, torch_run: dict | None, torch_error: str | None) -> dict:
  """The JSON line: context, then ours, then torch and the ratios."""
  tokens_per_step = args.batch * args.seq

  def throughput(seconds):
    median = harness.median_or_none(seconds)
    return None if median is None else tokens_per_step / median

  def mfu(tokens_per_sec):
    peak = ours["peak_flops_per_device"]
    if tokens_per_sec is None or not peak:
      return None
    return ours["flops_per_token"] * tokens_per_sec / peak

  def overhead(run):
    noisy, clean = harness.median_or_none(run["noisy_seconds"]), harness.median_or_none(run["clean_seconds"])
    return None if clean is None else noisy / clean - 1

  def gib(value):
    return None if value is None else round(value / 2**30, 2)

  tps = throughput(ours["noisy_seconds"])
  torch_tps = throughput(torch_run["noisy_seconds"]) if torch_run else None
  torch_run = torch_run or {}
  return {
      "device_kind": ours["device_kind"],
      "jax_platform": ours["jax_platform"],
      "torch_device": torch_run.get("device_name"),
      "preset": args.preset,
      **model_shape(args),
      "parameters": ours["parameters"],
      "torch_parameters": torch_run.get("parameters"),
      "batch": args.batch,
      "seq": args.seq,
      "tokens_per_step": tokens_per_step,
      "steps": args.steps,
      "warmup": args.warmup,
      "rounds": args.rounds,
      "param_dtype": "float32",
      "compute_dtype": "bfloat16",
      "remat": args.remat,
      "scan_layers": args.scan_layers,
      "loss_chunk_size": args.loss_chunk_size,
      "attention_requested": ours["attention_requested"],
      "attention": ours["attention"],
      "attention_fallback": ours["attention_fallback"],
      "torch_attention": torch_run.get("attention"),
      "neftune_alpha": NEFTUNE_ALPHA,
      "torch_neftune_hook": torch_run.get("neftune_hook"),
      "optimizer": f"clip_by_global_norm({GRAD_CLIP_NORM}) + AdamW(lr={LEARNING_RATE}, "
                   f"betas={BETAS}, eps={EPS}, weight_decay={args.weight_decay})",
      "torch_optimizer": "AdamW(fused=True)" if torch_run else None,
      "peak_flops_per_device": ours["peak_flops_per_device"],
      "flops_per_token": ours["flops_per_token"],
      "tokens_per_sec": rounded(tps, 1),
      "mfu": rounded(mfu(tps), 4),
      "seconds_per_step": rounded(harness.median_or_none(ours["noisy_seconds"]), 4),
      "min_seconds_per_step": rounded(min(ours["noisy_seconds"]), 4),
      "alpha0_tokens_per_sec": rounded(throughput(ours["clean_seconds"]), 1),
      "alpha0_mfu": rounded(mfu(throughput(ours["clean_seconds"])), 4),
      "neftune_overhead": rounded(overhead(ours), 4),
      "compile_seconds": round(ours["compile_seconds"], 1),
      "peak_memory_gib": gib(ours["peak_memory_bytes"]),
      "device_memory_gib": gib(ours["device_memory_bytes"]),
      "xla_temp_gib": gib(ours["xla_temp_bytes"]),
      "torch_tokens_per_sec": rounded(torch_tps, 1),
      "torch_mfu": rounded(mfu(torch_tps), 4),
      "torch_seconds_per_step": rounded(harness.median_or_none(torch_run.get("noisy_seconds", [])), 4),
      "torch_min_seconds_per_step": rounded(min(torch_run["noisy_seconds"]), 4)
                                    if torch_run else None,
      "torch_alpha0_tokens_per_sec": rounded(throughput(torch_run.get("clean_seconds", [])), 1),
      "torch_neftune_overhead": rounded(overhead(torch_run), 4) if torch_run else None,
      "torch_peak_memory_gib": gib(torch_run.get("peak_memory_bytes")),
      "ratio_vs_torch": rounded(tps / torch_tps, 3) if torch_tps else None,
      "torch_error": torch_error,
      "jax_version": ours["jax_version"],
      "flax_version": ours["flax_version"],
      "torch_version": torch_run.get("torch_version"),
      "transformers_version": torch_run.get("transformers_version"),
      "torch_threads": torch_run.get("threads"),
  }


def parse_args():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--preset", choices=("auto", *PRESETS), default="auto",
                      help="model shape, batch and step counts; auto: 1b on a GPU, else tiny")
  parser.add_argument("--steps", type=int, help="timed steps per alpha and round")
  parser.add_argument("--warmup", type=int, help="untimed steps per alpha, after compiling")
  parser.add_argument("--rounds", type=int, default=1, help="runs of each framework, alternating")
  for name, help_text in (("layers", None), ("hidden", "hidden size"),
                          ("intermediate", "MLP width"), ("heads", "query heads"),
                          ("kv_heads", "key/value heads"), ("head_dim", None),
                          ("vocab", None), ("seq", "sequence length"),
                          ("batch", "rows per step")):
    parser.add_argument(f"--{name}", type=int, help=help_text)
  parser.add_argument("--remat", choices=("none", "full", "dots", "dots_no_batch"),
                      default="none", help="our activation checkpointing policy")
  parser.add_argument("--scan_layers", action=argparse.BooleanOptionalAction, default=True,
                      help="run our layers under jax.lax.scan")
  parser.add_argument("--loss_chunk_size", type=int, default=-1,
                      help="our train.loss_chunk_size: positions per chunk of the output "
                           "layer and loss (0: all at once; -1: by vocabulary size)")
  parser.add_argument("--attention", choices=("auto", "cudnn", "xla"), default="auto",
                      help="our attention; auto: cudnn on a GPU, else xla")
  parser.add_argument("--attention_fallback", action=argparse.BooleanOptionalAction,
                      default=True, help="fall back to xla attention if cudnn fails")
  parser.add_argument("--torch_attention", default="sdpa",
                      help="transformers attn_implementation (sdpa, eager, flash_attention_2)")
  parser.add_argument("--weight_decay", type=float, default=0.0,
                      help="AdamW weight decay (ours skips norm scales, torch does not)")
  parser.add_argument("--peak_tflops", type=float, default=0.0,
                      help="peak dense bf16 TFLOP/s of one device; 0: look it up by device kind")
  parser.add_argument("--alpha0", action=argparse.BooleanOptionalAction, default=True,
                      help="also time alpha=0 steps, for the NEFTune overhead")
  parser.add_argument("--torch", action=argparse.BooleanOptionalAction, default=True,
                      help="also run the transformers baseline")
  parser.add_argument("--worker", choices=list(WORKERS), help=argparse.SUPPRESS)
  args = parser.parse_args()
  if args.worker == "probe":
    return args
  if args.preset == "auto":
    probe = run_worker("probe", [])
    if "error" in probe:
      parser.error(f"could not start JAX: {probe['error']}")
    args.preset = "1b" if probe["platform"] == "gpu" else "tiny"
  for name, value in PRESETS.get(args.preset, {}).items():
    if getattr(args, name) is None:
      setattr(args, name, value)
  if args.steps < 1 or args.warmup < 1:
    parser.error("--steps and --warmup must be at least 1")
  if args.heads % args.kv_heads:
    parser.error(f"--heads {args.heads} is not a multiple of --kv_heads {args.kv_heads}")
  return args


def main():
  args = parse_args()
  if args.worker:
    return worker_main(args)

  argv = [f"--{name}={value}" for name, value in vars(args).items()
          if name not in ("worker", "rounds", "torch", "alpha0", "scan_layers",
                          "attention_fallback")]
  argv += [f"--{'' if getattr(args, name) else 'no-'}{name}"
           for name in ("alpha0", "scan_layers", "attention_fallback")]
  print(f"mfu: preset {args.preset}, {model_shape(args)}, batch {args.batch} x seq {args.seq}, "
        f"remat {args.remat}, {args.warmup} warmup + {args.steps} timed steps per alpha, "
        f"{args.rounds} round(s)", flush=True)
  frameworks = ("ours", "torch") if args.torch else ("ours",)
  runs = {which: [] for which in frameworks}
  errors = {}
  for round_index in range(args.rounds):
    order = frameworks if round_index % 2 == 0 else frameworks[::-1]
    for which in order:
      if which in errors:
        continue
      print(f"round {round_index + 1}/{args.rounds}: {which}", flush=True)
      result = run_worker(which, argv)
      if "error" in result:
        errors[which] = result["error"]
        print(f"{which} failed: {result['error']}", flush=True)
      else:
        runs[which].append(result)

  if "ours" in errors:
    print(json.dumps({"error": errors["ours"], "preset": args.preset, **model_shape(args),
                      "batch": args.batch, "seq": args.seq, "remat": args.remat}))
    raise SystemExit(1)
  ours = harness.pool(runs["ours"])
  torch_run = harness.pool(runs["torch"]) if runs.get("torch") else None
  if torch_run and (torch_run["device"] == "cuda") != (ours["jax_platform"] == "gpu"):
    print(f"WARNING: ours ran on {ours['jax_platform']} and torch on {torch_run['device']}; "
          "ratio_vs_torch compares different devices", flush=True)
  print(json.dumps(summary(args, ours, torch_run, errors.get("torch"))), flush=True)


if __name__ == "__main__":
  main()
