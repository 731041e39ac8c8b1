"""Benchmark: a LoRA train step against full fine-tuning, the same model, batch and recipe.

Two shapes (Llama family, untied head, vocab 32000):

  small  the train-step benchmark's model (bench/train_step.py): 4 layers, width 256,
         4 heads, MLP 688
  1.1b   TinyLlama-1.1B's shape: 22 layers, width 2048, 32 heads, 4 KV heads, MLP 5632

For each, `full` trains every parameter (float32, AdamW moments float32) and `lora`
trains rank-16 adapters on every projection (alpha 32) of a frozen base in
bfloat16 (model.lora.base_dtype's default), with float32 compute on this CPU, the
same jitted `steps.make_train_step`, NEFTune alpha 5. Each (shape, mode) runs in its
own process and reports:

  step_seconds     the median of --steps timed steps (after --warmup untimed ones)
  peak_bytes       XLA's peak of the compiled step: arguments + outputs - aliased +
                   temporaries (what the dry run reports)
  max_rss_bytes    the process's peak resident memory
  param_bytes, frozen_bytes, optimizer_bytes   trained parameters, the frozen base,
                   the optimizer state

    python bench/lora.py [--shapes small,1.1b] [--steps 3] [--warmup 1] [--batch 4] [--seq 256]

The last line printed is a JSON object.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import time

import harness

SHAPES = {
    "small": {"layers": 4, "hidden": 256, "heads": 4, "kv_heads": 4, "head_dim": 64,
              "intermediate": 688, "vocab": 32000},
    "1.1b": {"layers": 22, "hidden": 2048, "heads": 32, "kv_heads": 4, "head_dim": 64,
             "intermediate": 5632, "vocab": 32000},
}
RANK, ALPHA = 16, 32.0


def worker(args) -> dict:
  import jax
  import jax.numpy as jnp
  from flax import nnx

  from neft_jax import loss, steps
  from neft_jax.models import Transformer, lora

  shape_name, mode = args.worker.split(":")
  shape = SHAPES[shape_name]
  options = dict(param_dtype="float32", dtype="float32", scan_layers=True)
  if mode == "lora":
    options |= dict(param_dtype="bfloat16", lora_rank=RANK, lora_alpha=ALPHA,
                    lora_targets=lora.family_projections("gated"))
  cfg = harness.ours_model_config(shape, args.seq, **options)
  optimizer, learning_rate = harness.ours_optimizer(args.warmup + args.steps)
  model = Transformer(cfg, rngs=nnx.Rngs(harness.SEED))
  if mode == "lora":
    graphdef, params, frozen = nnx.split(model, lora.LoRAParam, ...)
  else:
    (graphdef, params), frozen = nnx.split(model, nnx.Param), None
  del model
  state = steps.TrainState(jnp.zeros((), jnp.int32), params, optimizer.init(params))
  input_ids = jnp.asarray(harness.random_token_ids(shape, args.batch, args.seq))[None]
  batch = {"input_ids": input_ids, "segment_ids": jnp.ones_like(input_ids),
           "loss_mask": jnp.ones(input_ids.shape, bool)}
  chunk = loss.chunk_size_for(-1, shape["vocab"])
  step = jax.jit(steps.make_train_step(graphdef, optimizer, learning_rate,
                                       steps.Noise(harness.NEFTUNE_ALPHA), chunk), donate_argnums=0)
  key = jax.random.key(harness.SEED)
  start = time.perf_counter()
  compiled = step.lower(state, batch, key, None, frozen).compile()
  compile_seconds = time.perf_counter() - start
  memory = compiled.memory_analysis()
  nbytes = lambda tree: int(sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(tree)))  # noqa: E731
  sizes = {"param_bytes": nbytes(state.params), "optimizer_bytes": nbytes(state.opt_state),
           "frozen_bytes": 0 if frozen is None else nbytes(frozen)}
  seconds = []
  for i in range(args.warmup + args.steps):
    start = time.perf_counter()
    state, metrics = compiled(state, batch, key, None, frozen)
    step_loss = float(metrics["loss"])
    if i >= args.warmup:
      seconds.append(time.perf_counter() - start)
    harness.progress(f"{shape_name} {mode} step {i}: {time.perf_counter() - start:.3f} s, "
                     f"loss {step_loss:.4f}")
  return sizes | {
      "shape": shape_name, "mode": mode, "step_seconds": statistics.median(seconds),
      "compile_seconds": round(compile_seconds, 1),
      "peak_bytes": int(memory.argument_size_in_bytes + memory.output_size_in_bytes
                        - memory.alias_size_in_bytes + memory.temp_size_in_bytes),
      "max_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
  }


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--shapes", default="small,1.1b")
  parser.add_argument("--steps", type=int, default=3)
  parser.add_argument("--warmup", type=int, default=1)
  parser.add_argument("--batch", type=int, default=4)
  parser.add_argument("--seq", type=int, default=256)
  parser.add_argument("--worker", help=argparse.SUPPRESS)
  args = parser.parse_args()
  if args.worker:
    return harness.print_result(worker(args))
  argv = [f"--steps={args.steps}", f"--warmup={args.warmup}", f"--batch={args.batch}",
          f"--seq={args.seq}"]
  results = {}
  for shape in args.shapes.split(","):
    for mode in ("full", "lora"):
      print(f"{shape} {mode}: batch {args.batch} x seq {args.seq}", flush=True)
      results[f"{shape}_{mode}"] = harness.run_cpu_worker(__file__, f"{shape}:{mode}", argv)
  summary = {}
  for shape in args.shapes.split(","):
    full, adapted = results[f"{shape}_full"], results[f"{shape}_lora"]
    summary[shape] = {"full": full, "lora": adapted,
                      "lora_over_full_step_time": adapted["step_seconds"] / full["step_seconds"],
                      "lora_over_full_peak_bytes": adapted["peak_bytes"] / full["peak_bytes"]}
  print(json.dumps({"rank": RANK, "alpha": ALPHA, "batch": args.batch, "seq": args.seq,
                    "results": summary}))


if __name__ == "__main__":
  main()
