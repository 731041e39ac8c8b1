"""What the benchmark scripts share: workers in fresh processes, pooled timings,
transformers' NEFTune hook for the PyTorch side, and for the train-step
benchmarks (train_step.py on a CPU, mfu.py on a GPU) the recipe, the model
shape on both sides, the token ids and the timing loop.

A worker is the same script run with `--worker NAME`; it prints progress lines
and, last, its result as one JSON line after RESULT_PREFIX.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time

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


# --- what the train-step benchmarks share -------------------------------------
# The same recipe on both sides: clipping to a global norm of 1.0, then AdamW,
# NEFTune alpha=5 on the noisy steps, the loss on every next token.

NEFTUNE_ALPHA = 5.0
LEARNING_RATE = 1e-4
GRAD_CLIP_NORM = 1.0
BETAS = (0.9, 0.999)
EPS = 1e-8
SEED = 0

# A Llama-shaped model: these keys, as the benchmarks' JSON reports them.
SHAPE_KEYS = ("layers", "hidden", "intermediate", "heads", "kv_heads", "head_dim", "vocab")


def progress(message: str) -> None:
  print(message, flush=True)


def alpha_name(noisy: bool) -> str:
  return f"alpha={NEFTUNE_ALPHA if noisy else 0.0}"


def random_token_ids(shape: dict, batch: int, seq: int):
  """[batch, seq] int32 token ids, the same in every process."""
  import numpy as np
  rng = np.random.default_rng(SEED)
  return rng.integers(0, shape["vocab"], (batch, seq)).astype(np.int32)


def time_steps(run_step, warmup: int, steps: int, alpha0: bool = True) -> dict:
  """Warms up, then times alpha=5 (and alpha=0) steps in turn; seconds per step of each.

  `run_step(noisy)` runs one step to completion and returns its loss. With
  both settings, the order within a pair flips every step, so a slow drift in
  the machine's speed falls on both alike.
  """
  settings = (True, False) if alpha0 else (True,)
  for i in range(warmup):
    for noisy in settings:
      start = time.perf_counter()
      loss = run_step(noisy)
      progress(f"warmup {i} {alpha_name(noisy)}: {time.perf_counter() - start:.3f} s, "
               f"loss {loss:.4f}")
  seconds = {True: [], False: []}
  for i in range(steps):
    for noisy in (settings if i % 2 == 0 else settings[::-1]):
      start = time.perf_counter()
      loss = run_step(noisy)
      seconds[noisy].append(time.perf_counter() - start)
      progress(f"step {i} {alpha_name(noisy)}: {seconds[noisy][-1]:.3f} s, loss {loss:.4f}")
  return {"noisy_seconds": seconds[True], "clean_seconds": seconds[False]}


def median_or_none(seconds: list[float]) -> float | None:
  return statistics.median(seconds) if seconds else None


def overhead(noisy_seconds: list[float], clean_seconds: list[float]) -> float | None:
  """The median over step pairs of noisy / clean - 1: the two steps of a pair ran
  back to back, so a drift in the machine's speed cancels within each pair."""
  if not clean_seconds:
    return None
  return statistics.median(n / c for n, c in zip(noisy_seconds, clean_seconds)) - 1


def ours_model_config(shape: dict, seq: int, **options):
  """Our ModelConfig of the shape (family llama, untied head), with run options
  (param_dtype, dtype, scan_layers, remat, attention)."""
  from neft_jax.models import ModelConfig
  return ModelConfig(family="llama", vocab_size=shape["vocab"], embed_dim=shape["hidden"],
                     num_layers=shape["layers"], num_heads=shape["heads"],
                     num_kv_heads=shape["kv_heads"], head_dim=shape["head_dim"],
                     mlp_dim=shape["intermediate"], max_positions=seq, norm_eps=1e-6, **options)


def ours_optimizer(total_steps: int, weight_decay: float = 0.0):
  """(optimizer, learning-rate schedule): neft_jax.optim with the benchmarks' recipe."""
  import ml_collections

  from neft_jax import optim
  return optim.optimizer(ml_collections.ConfigDict(dict(
      learning_rate=LEARNING_RATE, schedule="constant", warmup_ratio=0.0,
      weight_decay=weight_decay, b1=BETAS[0], b2=BETAS[1], eps=EPS,
      grad_clip_norm=GRAD_CLIP_NORM)), total_steps)


def ours_state_and_batch(cfg, optimizer, token_ids):
  """(graphdef, fresh TrainState, batch): one micro-batch in which every token
  is real and every next token is a target."""
  import jax.numpy as jnp
  from flax import nnx

  from neft_jax import steps
  from neft_jax.models import Transformer
  graphdef, params = nnx.split(Transformer(cfg, rngs=nnx.Rngs(SEED)), nnx.Param)
  state = steps.TrainState(jnp.zeros((), jnp.int32), params, optimizer.init(params))
  input_ids = jnp.asarray(token_ids)[None]  # [accum=1, batch, seq]
  batch = {"input_ids": input_ids, "segment_ids": jnp.ones_like(input_ids),
           "loss_mask": jnp.ones(input_ids.shape, bool)}
  return graphdef, state, batch


def torch_llama(shape: dict, seq: int, **config):
  """transformers' LlamaConfig of the shape, untied, with no key/value cache."""
  import transformers
  return transformers.LlamaConfig(
      vocab_size=shape["vocab"], hidden_size=shape["hidden"],
      intermediate_size=shape["intermediate"], num_hidden_layers=shape["layers"],
      num_attention_heads=shape["heads"], num_key_value_heads=shape["kv_heads"],
      head_dim=shape["head_dim"], rms_norm_eps=1e-6, max_position_embeddings=seq,
      tie_word_embeddings=False, use_cache=False, **config)


def torch_step_runner(model, input_ids, weight_decay: float = 0.0, autocast_device=None):
  """`run_step(noisy)` for a transformers model in train mode: forward with labels
  (under bfloat16 autocast if `autocast_device`), backward, clipping, fused
  AdamW, with transformers' NEFTune hook on the noisy steps; and a callable that
  names the hook's source."""
  import contextlib

  import torch
  optimizer = torch.optim.AdamW(model.parameters(), lr=LEARNING_RATE, betas=BETAS, eps=EPS,
                                weight_decay=weight_decay, fused=True)
  embedding = model.get_input_embeddings()
  hook_source = [None]

  def run_step(noisy: bool) -> float:
    handle = None
    if noisy:
      handle, hook_source[0] = neftune_hook_for(embedding, NEFTUNE_ALPHA)
    optimizer.zero_grad(set_to_none=True)
    autocast = (torch.autocast(autocast_device, dtype=torch.bfloat16) if autocast_device
                else contextlib.nullcontext())
    with autocast:
      loss = model(input_ids=input_ids, labels=input_ids).loss
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), GRAD_CLIP_NORM)
    optimizer.step()
    if handle is not None:
      handle.remove()
    return loss.item()

  return run_step, lambda: hook_source[0]
