"""Benchmark: load a ~1B-parameter bfloat16 Llama checkpoint, ours vs transformers.

Writes a random Hugging Face Llama checkpoint (TinyLlama's shape by default:
1.1B parameters, grouped-query attention), then loads it in fresh processes
with `neft_jax.models.load_hf` and with
`transformers.AutoModelForCausalLM.from_pretrained(dtype=torch.bfloat16)`,
alternating, and reports the load time (the median of the runs, imports
excluded, until every weight is in memory) and the peak resident memory (the
maximum over the runs) of each.

    python bench/load_hf.py [--dir DIR] [--runs 5]

The last line printed is a JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

# TinyLlama-1.1B's architecture.
CONFIG = dict(vocab_size=32000, hidden_size=2048, intermediate_size=5632, num_hidden_layers=22,
              num_attention_heads=32, num_key_value_heads=4, max_position_embeddings=2048,
              rms_norm_eps=1e-5, tie_word_embeddings=False)


def write_checkpoint(folder: str, layers: int) -> int:
  """A random bfloat16 Llama checkpoint with transformers' names; returns its weight bytes."""
  import torch
  import transformers
  from safetensors.torch import save_file

  config = transformers.LlamaConfig(**(CONFIG | {"num_hidden_layers": layers}), dtype="bfloat16")
  with torch.device("meta"):
    shapes = {k: v.shape for k, v in transformers.LlamaForCausalLM(config).state_dict().items()}
  generator = torch.Generator().manual_seed(0)
  tensors = {name: (torch.randn(shape, generator=generator) * 0.02).to(torch.bfloat16)
             for name, shape in shapes.items()}
  save_file(tensors, os.path.join(folder, "model.safetensors"), metadata={"format": "pt"})
  config.save_pretrained(folder)
  return sum(t.numel() * t.element_size() for t in tensors.values())


def load_ours(folder: str) -> None:
  import jax
  import jax.numpy as jnp
  from neft_jax.models import load_hf
  start = time.perf_counter()
  model = load_hf(folder, param_dtype=jnp.bfloat16)
  jax.block_until_ready(jax.tree.leaves(model))
  return time.perf_counter() - start


def load_transformers(folder: str) -> None:
  """from_pretrained, then one read per page of every parameter.

  transformers can leave parameters as views of the memory-mapped file, read
  from disk on first use; touching them makes "loaded" mean the same as ours:
  the weights are in memory.
  """
  import torch
  import transformers
  start = time.perf_counter()
  model = transformers.AutoModelForCausalLM.from_pretrained(folder, dtype=torch.bfloat16)
  assert next(model.parameters()).dtype == torch.bfloat16
  for param in model.parameters():
    param.detach().reshape(-1).view(torch.uint8)[::4096].sum()
  return time.perf_counter() - start


def peak_rss_bytes() -> int:
  """VmHWM: this process's peak resident set. (getrusage's ru_maxrss would
  also count the parent's memory at fork time, which survives exec.)"""
  with open("/proc/self/status") as f:
    for line in f:
      if line.startswith("VmHWM:"):
        return int(line.split()[1]) * 1024
  raise RuntimeError("no VmHWM in /proc/self/status; this benchmark needs Linux")


def worker(which: str, folder: str) -> None:
  seconds = {"ours": load_ours, "hf": load_transformers}[which](folder)
  print(json.dumps({"seconds": seconds, "peak_rss_bytes": peak_rss_bytes()}))


def run_worker(which: str, folder: str) -> dict:
  env = os.environ | {"JAX_PLATFORMS": "cpu", "HF_HUB_OFFLINE": "1"}
  out = subprocess.run([sys.executable, __file__, "--worker", which, "--dir", folder],
                       check=True, capture_output=True, text=True, env=env)
  return json.loads(out.stdout.strip().splitlines()[-1])


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--dir", help="where to write the checkpoint (default: a temporary folder)")
  parser.add_argument("--layers", type=int, default=CONFIG["num_hidden_layers"])
  parser.add_argument("--runs", type=int, default=5)
  parser.add_argument("--worker", choices=["ours", "hf"], help=argparse.SUPPRESS)
  parser.add_argument("--write", action="store_true", help=argparse.SUPPRESS)
  args = parser.parse_args()
  if args.worker:
    return worker(args.worker, args.dir)
  if args.write:
    return print(write_checkpoint(args.dir, args.layers))

  with tempfile.TemporaryDirectory() as tmp:
    folder = args.dir or tmp
    os.makedirs(folder, exist_ok=True)
    # Written in a child process, so this one stays small for the loaders it forks.
    out = subprocess.run([sys.executable, __file__, "--write", "--dir", folder, "--layers",
                          str(args.layers)], check=True, capture_output=True, text=True)
    checkpoint_bytes = int(out.stdout.split()[-1])
    file_bytes = os.path.getsize(os.path.join(folder, "model.safetensors"))
    print(f"checkpoint: {checkpoint_bytes / 1e9:.2f} GB of bfloat16 weights in {folder}", flush=True)
    runs = {"ours": [], "hf": []}
    for i in range(args.runs):
      for which in runs:
        runs[which].append(run_worker(which, folder))
        print(f"run {i} {which}: {runs[which][-1]}", flush=True)

  ours_seconds = statistics.median(r["seconds"] for r in runs["ours"])
  hf_seconds = statistics.median(r["seconds"] for r in runs["hf"])
  ours_rss = max(r["peak_rss_bytes"] for r in runs["ours"])
  hf_rss = max(r["peak_rss_bytes"] for r in runs["hf"])
  print(json.dumps({
      "checkpoint_bytes": checkpoint_bytes,
      "checkpoint_file_bytes": file_bytes,
      "parameters": checkpoint_bytes // 2,
      "ours_seconds": round(ours_seconds, 3),
      "ours_peak_rss_bytes": ours_rss,
      "hf_seconds": round(hf_seconds, 3),
      "hf_peak_rss_bytes": hf_rss,
      "rss_ratio": round(ours_rss / checkpoint_bytes, 3),
      "hf_rss_ratio": round(hf_rss / checkpoint_bytes, 3),
      "time_ratio": round(ours_seconds / hf_seconds, 3),
      "runs": args.runs,
  }))


if __name__ == "__main__":
  main()
