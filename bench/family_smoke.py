"""Smoke run: `python -m neft_jax.train` for 20 steps on each family's real shape, 2 layers.

For each family (GPT-2, Llama-2, Qwen2) this writes a random Hugging Face
checkpoint of the family's real shape (gpt2, Llama-2-7b-hf, Qwen2-1.5B: width,
heads, key/value heads, MLP, vocabulary, tying) cut to 2 layers, initialized
by neft_jax and saved with `save_hf` in bfloat16, so nothing needs torch or a
download; beside it the demo's byte-level BPE tokenizer, trained on the demo's
synthetic Alpaca-format tasks, which are the data. Then it runs the family's
config (configs/gpt2_alpaca.py, llama2_alpaca.py, qwen2_alpaca.py) for 20
steps of 16 packed rows of 512 tokens, bfloat16 compute, cuDNN attention, and
reads the run's metrics.jsonl.

The checkpoint is made in a process of its own (JAX on the default device,
without preallocating its memory), so the training process finds the device
free.

    python bench/family_smoke.py [--workdir DIR] [--families gpt2,llama,qwen2]
    python bench/family_smoke.py --cpu-smoke      # tiny widths, 3 steps, XLA attention

The last line printed is a JSON object: per family the parameter count, the
exit code and wall seconds of the train command (start-up, compile, eval and
the final checkpoint included), the first and last training loss, the held-out
loss before and after, and the median tokens/s and MFU of the logged steps.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RESULT_PREFIX = "RESULT "
SEED = 0

# The shape fields of each family's config.json on the hub, cut to 2 layers.
FAMILIES = {
    "gpt2": dict(config="configs/gpt2_alpaca.py", hf=dict(  # gpt2 (124M)
        model_type="gpt2", vocab_size=50257, n_positions=1024, n_embd=768, n_layer=2, n_head=12,
        activation_function="gelu_new", layer_norm_epsilon=1e-5, tie_word_embeddings=True)),
    "llama": dict(config="configs/llama2_alpaca.py", hf=dict(  # meta-llama/Llama-2-7b-hf
        model_type="llama", vocab_size=32000, hidden_size=4096, intermediate_size=11008,
        num_hidden_layers=2, num_attention_heads=32, num_key_value_heads=32,
        max_position_embeddings=4096, rms_norm_eps=1e-5, rope_theta=10000.0, hidden_act="silu",
        tie_word_embeddings=False)),
    "qwen2": dict(config="configs/qwen2_alpaca.py", hf=dict(  # Qwen/Qwen2-1.5B
        model_type="qwen2", vocab_size=151936, hidden_size=1536, intermediate_size=8960,
        num_hidden_layers=2, num_attention_heads=12, num_key_value_heads=2,
        max_position_embeddings=131072, rms_norm_eps=1e-6, rope_theta=1000000.0,
        hidden_act="silu", use_sliding_window=False, tie_word_embeddings=True)),
}
# --cpu-smoke: the same switches at a width a CPU trains in seconds.
TINY = {
    "gpt2": dict(vocab_size=1024, n_embd=64, n_head=4),
    "llama": dict(vocab_size=1024, hidden_size=64, intermediate_size=128, num_attention_heads=4,
                  num_key_value_heads=4),
    "qwen2": dict(vocab_size=1024, hidden_size=64, intermediate_size=128, num_attention_heads=4,
                  num_key_value_heads=2),
}
# What a run trains on: (train examples, held-out examples, steps, rows, tokens per row).
RUN = {"gpu": dict(train_examples=6000, eval_examples=32, steps=20, batch_size=16, max_length=512),
       "cpu_smoke": dict(train_examples=300, eval_examples=8, steps=3, batch_size=4,
                         max_length=128)}
TOKENIZER_VOCAB = 512


# --- worker: data, tokenizer and a random checkpoint ---------------------------

def write_data(data_dir: str, run: dict) -> None:
  from neft_jax.data import demo_tasks
  os.makedirs(data_dir, exist_ok=True)
  for name, count, seed in (("train", run["train_examples"], SEED),
                            ("eval", run["eval_examples"], SEED + 1)):
    records = demo_tasks.generate(count, seed=seed)
    with open(os.path.join(data_dir, f"{name}.json"), "w") as f:
      json.dump([dataclasses.asdict(r) for r in records], f)


def prepare_worker(args) -> dict:
  """The family's random checkpoint and the tokenizer in args.model_dir."""
  import jax
  import jax.numpy as jnp
  from flax import nnx

  from neft_jax import demo
  from neft_jax.data import templates
  from neft_jax.data.sources import load_records
  from neft_jax.models import Transformer, save_hf
  from neft_jax.models.hf_io import FAMILIES as HF_FAMILIES
  from neft_jax.models.mapping import HFConfig

  start = time.perf_counter()
  records = load_records(os.path.join(args.data_dir, "train.json"))
  texts = [templates.prompt(r, "alpaca") + r.output for r in records]
  tokenizer = demo.train_tokenizer(texts, TOKENIZER_VOCAB, max(2, len(records) // 6))
  tokenizer.save_pretrained(args.model_dir)
  values = FAMILIES[args.family]["hf"] | (TINY[args.family] if args.cpu_smoke else {})
  values |= dict(bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                 pad_token_id=tokenizer.pad_token_id)
  cfg = HF_FAMILIES[values["model_type"]].config_from_hf(HFConfig(values, f"{args.family} shape"))
  model = Transformer(cfg, rngs=nnx.Rngs(params=jax.random.key(SEED)))
  save_hf(model, args.model_dir, dtype=jnp.bfloat16)
  return {"parameters": cfg.num_params(), "vocab_size": cfg.vocab_size,
          "tokenizer_size": len(tokenizer), "layers": cfg.num_layers,
          "embed_dim": cfg.embed_dim, "num_heads": cfg.num_heads,
          "num_kv_heads": cfg.num_kv_heads, "mlp_dim": cfg.mlp_dim,
          "prepare_device": jax.devices()[0].platform,
          "prepare_seconds": round(time.perf_counter() - start, 1)}


# --- driver ------------------------------------------------------------------

def run_prepare(family: str, model_dir: str, data_dir: str, cpu_smoke: bool,
                seconds: float | None) -> dict:
  """prepare_worker in a fresh process; its result, or an error."""
  command = [sys.executable, os.path.abspath(__file__), "--worker", "prepare", "--family", family,
             "--model_dir", model_dir, "--data_dir", data_dir]
  command += ["--cpu-smoke"] if cpu_smoke else []
  env = os.environ | {"XLA_PYTHON_CLIENT_PREALLOCATE": "false", "HF_HUB_OFFLINE": "1"}
  try:
    child = subprocess.run(command, cwd=REPO, env=env, stdout=subprocess.PIPE, text=True,
                           timeout=seconds)
  except subprocess.TimeoutExpired:
    return {"error": f"making the random {family} checkpoint took over {seconds:.0f} s"}
  for line in child.stdout.splitlines():
    if line.startswith(RESULT_PREFIX):
      return json.loads(line[len(RESULT_PREFIX):])
  return {"error": f"making the random {family} checkpoint failed (exit code "
                   f"{child.returncode}); see above"}


def read_metrics(path: str) -> list[dict]:
  if not os.path.exists(path):
    return []
  with open(path) as f:
    return [json.loads(line) for line in f if line.strip()]


def median_of(rows: list[dict], key: str):
  values = [row[key] for row in rows if row.get(key) is not None]
  return round(statistics.median(values), 4) if values else None


def summarize(rows: list[dict]) -> dict:
  """First and last loss, held-out loss before and after, median throughput of logged steps."""
  train = [row for row in rows if "loss" in row]
  evals = [row for row in rows if "eval_loss" in row]
  timed = train[1:] or train  # the first logged step's window holds the compilation
  return {
      "logged_steps": [row["step"] for row in train],
      "first_loss": train[0]["loss"] if train else None,
      "last_loss": train[-1]["loss"] if train else None,
      "eval_loss_before": evals[0]["eval_loss"] if evals else None,
      "eval_loss_after": evals[-1]["eval_loss"] if len(evals) > 1 else None,
      "tokens_per_sec": median_of(timed, "tokens_per_sec"),
      "mfu": median_of(timed, "mfu"),
      "finite": bool(train) and all(math.isfinite(row["loss"]) for row in train),
  }


def tail(path: str, lines: int = 3) -> str:
  with open(path, errors="replace") as f:
    return " | ".join(line.strip() for line in f.read().strip().splitlines()[-lines:])


def smoke_family(family: str, workdir: str, data_dir: str, args, deadline: float | None) -> dict:
  """One family's checkpoint and train run, both done by `deadline` (time.monotonic())."""
  spec, run = FAMILIES[family], RUN["cpu_smoke" if args.cpu_smoke else "gpu"]
  family_dir = os.path.join(workdir, family)
  model_dir, run_dir = os.path.join(family_dir, "model"), os.path.join(family_dir, "run")
  left = lambda: None if deadline is None else max(1.0, deadline - time.monotonic())
  print(f"family_smoke: {family}: a random checkpoint of its shape in {model_dir}", flush=True)
  result = run_prepare(family, model_dir, data_dir, args.cpu_smoke, left())
  if "error" in result:
    return result
  attention = "xla" if args.cpu_smoke else "cudnn"
  command = [sys.executable, "-m", "neft_jax.train", f"--config={spec['config']}",
             f"--workdir={run_dir}", f"--config.model.path={model_dir}",
             f"--config.data.path={os.path.join(data_dir, 'train.json')}",
             f"--config.data.eval_path={os.path.join(data_dir, 'eval.json')}",
             "--config.data.eval_size=0.0", "--config.data.packing=True",
             f"--config.data.max_length={run['max_length']}",
             f"--config.train.steps={run['steps']}",
             f"--config.train.batch_size={run['batch_size']}",
             "--config.train.log_every=1" if args.cpu_smoke else "--config.train.log_every=5",
             "--config.model.dtype=bfloat16", f"--config.model.attention={attention}"]
  print(f"family_smoke: {family}: {' '.join(command[1:])}", flush=True)
  console = os.path.join(family_dir, "console.log")
  start, limit = time.perf_counter(), left()
  with open(console, "w") as log:
    try:
      child = subprocess.run(command, cwd=REPO, stdout=log, stderr=subprocess.STDOUT,
                             env=os.environ | {"HF_HUB_OFFLINE": "1"}, timeout=limit)
      exit_code = child.returncode
    except subprocess.TimeoutExpired:
      exit_code = None
  seconds = time.perf_counter() - start
  result |= {"config": spec["config"], "attention": attention, "steps": run["steps"],
             "batch_size": run["batch_size"], "max_length": run["max_length"],
             "exit_code": exit_code, "train_seconds": round(seconds, 1)}
  result |= summarize(read_metrics(os.path.join(run_dir, "metrics.jsonl")))
  if exit_code != 0:
    why = (f"stopped at its time limit, {limit:.0f} s" if exit_code is None
           else f"exit code {exit_code}")
    result["error"] = f"the train command failed ({why}): {tail(console)}"
  elif not result["finite"] or result["logged_steps"][-1:] != [run["steps"]]:
    result["error"] = f"the run logged steps {result['logged_steps']} with losses that are " \
                      f"not all finite or do not reach step {run['steps']}"
  print(f"family_smoke: {family}: {json.dumps(result)}", flush=True)
  return result


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--cpu-smoke", action="store_true",
                      help="tiny widths, 3 steps, XLA attention: checks this script on a CPU")
  parser.add_argument("--workdir", default="", help="where checkpoints and runs go (default: a "
                      "temporary folder, removed at the end)")
  parser.add_argument("--families", default=",".join(FAMILIES))
  parser.add_argument("--budget_seconds", type=float, default=0,
                      help="time for all families (0: no limit); each family gets an equal share "
                           "of what is left when it starts, and reports an error at its limit")
  parser.add_argument("--worker", choices=("prepare",), help=argparse.SUPPRESS)
  parser.add_argument("--family", choices=list(FAMILIES), help=argparse.SUPPRESS)
  parser.add_argument("--model_dir", help=argparse.SUPPRESS)
  parser.add_argument("--data_dir", help=argparse.SUPPRESS)
  args = parser.parse_args()
  if args.worker:
    print(RESULT_PREFIX + json.dumps(prepare_worker(args)), flush=True)
    return
  families = [f for f in args.families.split(",") if f]
  unknown = sorted(set(families) - set(FAMILIES))
  if unknown:
    parser.error(f"unknown families {unknown}; choose from {list(FAMILIES)}")

  start = time.monotonic()
  with tempfile.TemporaryDirectory(prefix="family_smoke_") as scratch:
    workdir = os.path.abspath(args.workdir or scratch)
    data_dir = os.path.join(workdir, "data")
    write_data(data_dir, RUN["cpu_smoke" if args.cpu_smoke else "gpu"])
    results = {}
    for i, family in enumerate(families):
      deadline = None
      if args.budget_seconds:
        left = args.budget_seconds - (time.monotonic() - start)
        deadline = time.monotonic() + left / (len(families) - i)
      results[family] = smoke_family(family, workdir, data_dir, args, deadline)
  summary = {"cpu_smoke": args.cpu_smoke, "families": results,
             "ok": all("error" not in r for r in results.values())}
  print(json.dumps(summary), flush=True)
  raise SystemExit(0 if summary["ok"] else 1)


if __name__ == "__main__":
  main()
