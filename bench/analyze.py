"""Benchmark: `python -m neft_jax.analyze` on two ~1B-parameter bfloat16 Llama checkpoints.

Writes two random Hugging Face Llama checkpoints of TinyLlama's shape (1.1B
parameters, grouped-query attention; `bench/load_hf.py`'s): a base, and a
"tuned" one, the base plus a small seeded perturbation (so weight change and
CKA are not trivially 0 and 1), each with a byte-level BPE tokenizer trained on
the probe text as the demo trains its own. The probe is `--examples`
instruction records (random words, Alpaca fields), each long enough to fill
`--tokens` tokens. Then it runs, in a fresh child process as a user would,

    python -m neft_jax.analyze --base=BASE --tuned=TUNED --probe=PROBE --out=OUT \\
        --max_examples=64 --config=configs/llama2_alpaca.py \\
        --config.data.max_length=128 --config.model.param_dtype=bfloat16 \
        --config.train.batch_size=8

and reports its wall time (start-up and imports included), the parts the
analyze log names (loading the models, the comparison's forward passes and
metrics, the report), and the child's peak resident memory (ru_maxrss of that
child, from wait4) together with the lowest MemAvailable of the machine seen
while it ran. Nothing here needs the network or ../shared.

    python bench/analyze.py [--layers 2] [--dir DIR] [--rows 8] [--param_dtype bfloat16]

The last line printed is a JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from load_hf import CONFIG, write_checkpoint  # noqa: E402  (bench/ is not a package)

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PERTURBATION = 0.05  # the tuned weights: base + this fraction of the base's init scale (0.02), seeded


def probe_records(examples: int, seed: int = 0) -> list[dict]:
  """Instruction records of random lower-case words: each far over 128 tokens
  for a 512-piece BPE."""
  import numpy as np
  rng = np.random.default_rng(seed)
  letters = np.array(list("abcdefghijklmnopqrstuvwxyz"))

  def words(count: int) -> str:
    return " ".join("".join(rng.choice(letters, rng.integers(2, 9))) for _ in range(count))

  return [{"instruction": f"Summarize the following notes in one sentence: {words(8)}",
           "input": words(120), "output": words(40)} for _ in range(examples)]


def write_tuned(base_dir: str, tuned_dir: str, scale: float, seed: int = 1) -> None:
  """tuned = base + scale * 0.02 * N(0, 1) for every tensor, seeded; the same config."""
  import shutil

  import torch
  from safetensors.torch import load_file, save_file
  base = load_file(os.path.join(base_dir, "model.safetensors"))
  generator = torch.Generator().manual_seed(seed)
  tuned = {}
  for name in sorted(base):
    noise = torch.randn(base[name].shape, generator=generator) * (0.02 * scale)
    tuned[name] = (base[name].float() + noise).to(torch.bfloat16)
    base[name] = None  # let the base tensor go as soon as it is used
  save_file(tuned, os.path.join(tuned_dir, "model.safetensors"), metadata={"format": "pt"})
  shutil.copy(os.path.join(base_dir, "config.json"), tuned_dir)


def write_inputs(folder: str, layers: int, examples: int) -> dict:
  """The two checkpoints, their tokenizer and the probe file; returns what it wrote."""
  from neft_jax.data import templates
  from neft_jax.data.sources import Record
  from neft_jax.demo import train_tokenizer
  base_dir, tuned_dir = os.path.join(folder, "base"), os.path.join(folder, "tuned")
  for path in (base_dir, tuned_dir):
    os.makedirs(path, exist_ok=True)
  records = probe_records(examples)
  probe = os.path.join(folder, "probe.json")
  with open(probe, "w") as f:
    json.dump(records, f)
  texts = [templates.prompt(Record(**r), "alpaca") + r["output"] for r in records]
  tokenizer = train_tokenizer(texts, vocab_size=512, min_frequency=8)
  checkpoint_bytes = write_checkpoint(base_dir, layers)
  write_tuned(base_dir, tuned_dir, PERTURBATION)
  for path in (base_dir, tuned_dir):
    tokenizer.save_pretrained(path)
  return {"base": base_dir, "tuned": tuned_dir, "probe": probe,
          "checkpoint_bytes": checkpoint_bytes}


class MemoryWatch:
  """The machine's lowest MemAvailable (bytes) while it runs, sampled every 0.5 s."""

  def __init__(self):
    self.lowest = self._available()
    self._stop = threading.Event()
    self._thread = threading.Thread(target=self._watch, daemon=True)

  @staticmethod
  def _available() -> int:
    with open("/proc/meminfo") as f:
      for line in f:
        if line.startswith("MemAvailable:"):
          return int(line.split()[1]) * 1024
    raise RuntimeError("no MemAvailable in /proc/meminfo; this benchmark needs Linux")

  def _watch(self) -> None:
    while not self._stop.wait(0.5):
      self.lowest = min(self.lowest, self._available())

  def __enter__(self):
    self._thread.start()
    return self

  def __exit__(self, *exc):
    self._stop.set()
    self._thread.join()


def run_analyze(inputs: dict, out: str, args) -> dict:
  """The analyze command in a child process: (seconds, peak RSS, exit code, output)."""
  command = [sys.executable, "-m", "neft_jax.analyze", f"--base={inputs['base']}",
             f"--tuned={inputs['tuned']}", f"--probe={inputs['probe']}", f"--out={out}",
             f"--max_examples={args.examples}", f"--max_tokens={args.max_tokens}",
             "--config=configs/llama2_alpaca.py", f"--config.data.max_length={args.tokens}",
             f"--config.model.param_dtype={args.param_dtype}"]
  if args.rows:
    command.append(f"--config.train.batch_size={args.rows}")
  env = os.environ | {"JAX_PLATFORMS": "cpu", "HF_HUB_OFFLINE": "1"}
  log_path = os.path.join(out, "console.txt")
  os.makedirs(out, exist_ok=True)
  with open(log_path, "w") as console, MemoryWatch() as memory:
    start = time.perf_counter()
    child = subprocess.Popen(command, cwd=REPO, env=env, stdout=console, stderr=subprocess.STDOUT)
    _, status, usage = os.wait4(child.pid, 0)
    seconds = time.perf_counter() - start
    child.returncode = os.waitstatus_to_exitcode(status)
  with open(log_path) as f:
    output = f.read()
  return {"seconds": seconds, "peak_rss_bytes": usage.ru_maxrss * 1024,
          "lowest_mem_available_bytes": memory.lowest, "returncode": child.returncode,
          "output": output, "command": command}


def logged_parts(out: str) -> dict:
  """The seconds of each part that analyze.log times ("analyze: models loaded in 1.0 s"):
  {"loaded": ..., "compared": ..., "written": ...}."""
  path = os.path.join(out, "analyze.log")
  if not os.path.exists(path):
    return {}
  with open(path) as f:
    return {m.group(1): float(m.group(2))
            for m in re.finditer(r"analyze: \w+ (\w+) .*?in ([0-9.]+) s", f.read())}


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--dir", help="where to write the checkpoints and outputs (default: a "
                      "temporary folder)")
  parser.add_argument("--layers", type=int, default=CONFIG["num_hidden_layers"])
  parser.add_argument("--examples", type=int, default=64)
  parser.add_argument("--tokens", type=int, default=128, help="tokens per probe example")
  parser.add_argument("--max_tokens", type=int, default=4096, help="analyze's CKA token sample")
  parser.add_argument("--rows", type=int, default=8, help="analyze's batch rows "
                      "(config.train.batch_size); 0: the config's (128, cut to the 64 examples), "
                      "which at 22 layers holds ~3 GB of attention probabilities per model")
  parser.add_argument("--param_dtype", default="bfloat16", help="config.model.param_dtype")
  parser.add_argument("--write", action="store_true", help=argparse.SUPPRESS)
  args = parser.parse_args()
  if args.write:
    return print(json.dumps(write_inputs(args.dir, args.layers, args.examples)))

  with tempfile.TemporaryDirectory() as tmp:
    folder = args.dir or tmp
    os.makedirs(folder, exist_ok=True)
    start = time.perf_counter()
    # Written in a child process, so this one stays small for the analysis it forks.
    written = subprocess.run([sys.executable, __file__, "--write", "--dir", folder, "--layers",
                              str(args.layers), "--examples", str(args.examples)],
                             check=True, capture_output=True, text=True, cwd=REPO,
                             env=os.environ | {"JAX_PLATFORMS": "cpu"})
    inputs = json.loads(written.stdout.strip().splitlines()[-1])
    print(f"wrote two {inputs['checkpoint_bytes'] / 1e9:.2f} GB bfloat16 checkpoints and "
          f"{args.examples} probe records in {time.perf_counter() - start:.0f} s", flush=True)
    out = os.path.join(folder, "out")
    result = run_analyze(inputs, out, args)
    if result["returncode"] != 0:
      sys.exit(f"analyze failed ({result['returncode']}):\n{result['output'][-4000:]}")
    print(result["output"][-3000:], flush=True)
    parts = logged_parts(out)
    with open(os.path.join(out, "analysis.json")) as f:
      analysis = json.load(f)

  summary = {
      "layers": args.layers,
      "parameters_per_model": inputs["checkpoint_bytes"] // 2,
      "examples": analysis.get("examples", args.examples),
      "tokens": analysis.get("tokens"),
      "cka_tokens": analysis.get("cka_tokens"),
      "rows": args.rows or min(128, args.examples),
      "param_dtype": args.param_dtype,
      "seconds": round(result["seconds"], 1),
      **{f"{part}_seconds": round(value, 1) for part, value in parts.items()},
      "peak_rss_bytes": result["peak_rss_bytes"],
      "lowest_mem_available_bytes": result["lowest_mem_available_bytes"],
      "cpus": os.cpu_count(),
  }
  print(json.dumps(summary))


if __name__ == "__main__":
  main()
