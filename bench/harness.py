"""What the benchmark scripts share: workers in fresh processes, pooled timings,
and transformers' NEFTune hook for the PyTorch side.

A worker is the same script run with `--worker NAME`; it prints progress lines
and, last, its result as one JSON line after RESULT_PREFIX.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

RESULT_PREFIX = "RESULT "


def print_result(result: dict) -> None:
  """A worker's last line."""
  print(RESULT_PREFIX + json.dumps(result), flush=True)


def run_worker(script: str, which: str, argv: list[str], env: dict | None = None) -> dict | None:
  """Runs `script --worker which argv` in a fresh process, echoing its progress
  lines with a [which] prefix; its result, or None if it gave none."""
  env = os.environ | {"HF_HUB_OFFLINE": "1"} | (env or {})
  command = [sys.executable, script, "--worker", which, *argv]
  result = None
  with subprocess.Popen(command, stdout=subprocess.PIPE, text=True, env=env) as child:
    for line in child.stdout:
      if line.startswith(RESULT_PREFIX):
        result = json.loads(line[len(RESULT_PREFIX):])
      else:
        print(f"  [{which}] {line}", end="", flush=True)
  return result if child.returncode == 0 or result is not None else None


def run_cpu_worker(script: str, which: str, argv: list[str]) -> dict:
  """run_worker on the CPU; a worker that gives no result stops the benchmark."""
  result = run_worker(script, which, argv, env={"JAX_PLATFORMS": "cpu"})
  if result is None:
    raise SystemExit(f"the {which} worker failed; see above")
  return result


def pool(results: list[dict], keys=("noisy_seconds", "clean_seconds")) -> dict:
  """One worker result with the timings of all rounds concatenated."""
  pooled = dict(results[0])
  for key in keys:
    pooled[key] = [s for r in results for s in r[key]]
  return pooled


def neftune_hook_for(embedding, alpha: float):
  """Registers transformers' NEFTune hook as its Trainer does; returns (handle, source).

  Falls back to an equivalent local hook if this transformers lacks it.
  """
  try:
    from transformers.integrations.neftune import neftune_post_forward_hook as hook
    source = "transformers"
  except ImportError:
    import torch

    def hook(module, inputs, output):
      if not module.training:
        return output
      scale = module.neftune_noise_alpha / (output.size(1) * output.size(2)) ** 0.5
      return output + torch.empty_like(output).uniform_(-scale, scale)

    source = "local"
  embedding.neftune_noise_alpha = alpha
  return embedding.register_forward_hook(hook), source
