"""Benchmark: cuDNN attention against XLA attention on one GPU, same inputs.

Two comparisons in bfloat16 on JAX's default device, each the same inputs
through both implementations:

  kernel  `jax.nn.dot_product_attention(implementation="cudnn")` against
          "xla" on random q, k, v of the 1.1B Llama's attention (batch 8,
          2048 tokens, 32 query heads sharing 4 key/value heads of width 64),
          causal, as the model calls it: the outputs, and the gradients of
          q, k and v for a random cotangent; time of the forward and of
          forward plus backward;
  model   the decoder's forward (the 1.1B shape cut to 2 layers, float32
          parameters, bfloat16 compute) with `model.attention` "cudnn" and
          "xla" on the same parameters, on packed rows (two examples and
          padding per row, so the segment mask is in play): logits of the
          real tokens, greedy-token agreement, and the time of a forward.

"Equal within bfloat16 tolerance" means max |cudnn - xla| <= TOLERANCE *
max |xla|, for each output: 2**-6, four bfloat16 rounding steps (2**-8 each)
at the largest value. The figures beside it (max and mean differences,
relative to the largest value) say how close they are.

Times (`forward_ms` and the like, by role: `candidate` is cudnn, `reference`
xla) are medians of --repeats calls each, the two implementations taking
turns, after one compiling call; each call ends when the device has finished;
`speedup_*` is the reference's time over the candidate's.

    python bench/attention.py                 # on a GPU: cudnn against xla
    python bench/attention.py --cpu-smoke     # tiny shapes, xla against xla (no cuDNN on CPU)

The last line printed is a JSON object.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np

TOLERANCE = 2.0**-6
SEED = 0
# The implementation under test and the one it is compared with, in that order.
ROLES = ("candidate", "reference")

SHAPES = {
    "1b": dict(batch=8, seq=2048, heads=32, kv_heads=4, head_dim=64, hidden=2048,
               intermediate=5632, layers=2, vocab=32000, model_batch=4),
    "tiny": dict(batch=2, seq=128, heads=4, kv_heads=2, head_dim=32, hidden=128,
                 intermediate=352, layers=2, vocab=1000, model_batch=2),
}


def progress(message: str) -> None:
  print(message, flush=True)


def milliseconds(functions: dict, args, repeats: int) -> dict:
  """Median wall milliseconds per call of each function, after one compiling call."""
  for function in functions.values():
    jax.block_until_ready(function(*args))
  times = {name: [] for name in functions}
  for i in range(repeats):
    for name in (list(functions) if i % 2 == 0 else list(functions)[::-1]):
      start = time.perf_counter()
      jax.block_until_ready(functions[name](*args))
      times[name].append(1e3 * (time.perf_counter() - start))
  return {name: round(statistics.median(t), 3) for name, t in times.items()}


def speedup(ms: dict) -> float:
  """How many times faster the candidate ran than the reference."""
  return round(ms["reference"] / ms["candidate"], 3)


def difference(candidate, reference) -> dict:
  """How far `candidate` is from `reference`, in float32, relative to its largest value."""
  candidate = np.asarray(candidate, np.float32)
  reference = np.asarray(reference, np.float32)
  scale = float(np.max(np.abs(reference)))
  error = np.abs(candidate - reference)
  max_error = float(np.max(error))
  return {"max_abs_diff": max_error, "mean_abs_diff": float(np.mean(error)),
          "max_abs_reference": scale, "relative_max_diff": max_error / scale if scale else None,
          "finite": bool(np.all(np.isfinite(candidate))),
          "within_tolerance": bool(np.all(np.isfinite(candidate))
                                   and max_error <= TOLERANCE * scale)}


def kernel_check(shape: dict, implementations: tuple[str, str], repeats: int) -> dict:
  """The attention call alone: outputs, gradients and time of both implementations."""
  b, t, n, k, h = (shape[key] for key in ("batch", "seq", "heads", "kv_heads", "head_dim"))
  keys = jax.random.split(jax.random.key(SEED), 4)
  q_btnh = jax.random.normal(keys[0], (b, t, n, h), jnp.bfloat16)
  k_btkh = jax.random.normal(keys[1], (b, t, k, h), jnp.bfloat16)
  v_btkh = jax.random.normal(keys[2], (b, t, k, h), jnp.bfloat16)
  cotangent_btnh = jax.random.normal(keys[3], (b, t, n, h), jnp.bfloat16)

  def attend(implementation):
    return lambda q, k, v: jax.nn.dot_product_attention(q, k, v, is_causal=True,
                                                        implementation=implementation)

  def gradients(implementation):
    def loss(q, k, v):
      out = attend(implementation)(q, k, v).astype(jnp.float32)
      return jnp.sum(out * cotangent_btnh.astype(jnp.float32))
    return jax.grad(loss, argnums=(0, 1, 2))

  forward = {role: jax.jit(attend(name)) for role, name in zip(ROLES, implementations)}
  backward = {role: jax.jit(gradients(name)) for role, name in zip(ROLES, implementations)}
  args = (q_btnh, k_btkh, v_btkh)
  outputs = {role: forward[role](*args) for role in ROLES}
  grads = {role: backward[role](*args) for role in ROLES}
  checks = {"output": difference(outputs["candidate"], outputs["reference"])}
  for label, index in (("grad_q", 0), ("grad_k", 1), ("grad_v", 2)):
    checks[label] = difference(grads["candidate"][index], grads["reference"][index])
  forward_ms = milliseconds(forward, args, repeats)
  backward_ms = milliseconds(backward, args, repeats)
  progress(f"kernel: forward ms {forward_ms}, forward+backward ms {backward_ms}")
  return {
      "shape": {key: shape[key] for key in ("batch", "seq", "heads", "kv_heads", "head_dim")},
      "checks": checks,
      "equal_within_tolerance": all(c["within_tolerance"] for c in checks.values()),
      "forward_ms": forward_ms,
      "forward_backward_ms": backward_ms,
      "speedup_forward": speedup(forward_ms),
      "speedup_forward_backward": speedup(backward_ms),
  }


def packed_rows(batch: int, seq: int, vocab: int):
  """[batch, seq] token ids and segment ids: two examples, then padding (segment 0)."""
  rng = np.random.default_rng(SEED)
  input_ids = rng.integers(0, vocab, (batch, seq)).astype(np.int32)
  positions = np.arange(seq)
  first, second = int(seq * 0.45), int(seq * 0.9)
  segment_ids = np.where(positions < first, 1, np.where(positions < second, 2, 0))
  return input_ids, np.broadcast_to(segment_ids, (batch, seq)).astype(np.int32)


def model_check(shape: dict, implementations: tuple[str, str], repeats: int) -> dict:
  """The decoder's forward with each attention implementation, same parameters."""
  from flax import nnx

  from neft_jax.models import ModelConfig, Transformer

  def config(attention):
    return ModelConfig(family="llama", vocab_size=shape["vocab"], embed_dim=shape["hidden"],
                       num_layers=shape["layers"], num_heads=shape["heads"],
                       num_kv_heads=shape["kv_heads"], head_dim=shape["head_dim"],
                       mlp_dim=shape["intermediate"], max_positions=shape["seq"],
                       param_dtype="float32", dtype="bfloat16", attention=attention)

  _, params = nnx.split(Transformer(config(implementations[1]), rngs=nnx.Rngs(SEED)), nnx.Param)
  forward = {}
  for role, name in zip(ROLES, implementations):
    graphdef = nnx.split(nnx.eval_shape(lambda: Transformer(config(name), rngs=nnx.Rngs(SEED))),
                         nnx.Param)[0]
    forward[role] = jax.jit(lambda p, ids, seg, graphdef=graphdef:
                            nnx.merge(graphdef, p)(ids, segment_ids=seg))
  input_ids, segment_ids = packed_rows(shape["model_batch"], shape["seq"], shape["vocab"])
  args = (params, jnp.asarray(input_ids), jnp.asarray(segment_ids))
  logits = {role: np.asarray(forward[role](*args)) for role in ROLES}
  real = segment_ids > 0
  check = difference(logits["candidate"][real], logits["reference"][real])
  agreement = float(np.mean(np.argmax(logits["candidate"][real], -1)
                            == np.argmax(logits["reference"][real], -1)))
  forward_ms = milliseconds(forward, args, repeats)
  progress(f"model: logits {check}, greedy agreement {agreement:.4f}, forward ms {forward_ms}")
  return {
      "shape": {key: shape[key] for key in ("layers", "hidden", "intermediate", "heads",
                                            "kv_heads", "head_dim", "vocab", "seq")},
      "batch": shape["model_batch"],
      "real_tokens": int(real.sum()),
      "logits": check,
      "greedy_agreement": agreement,
      "equal_within_tolerance": check["within_tolerance"],
      "forward_ms": forward_ms,
      "speedup_forward": speedup(forward_ms),
  }


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--cpu-smoke", action="store_true",
                      help="tiny shapes, xla against xla: checks this script, not cuDNN")
  parser.add_argument("--repeats", type=int, default=None,
                      help="timed calls of each (default 10, 2 with --cpu-smoke)")
  args = parser.parse_args()
  shape = SHAPES["tiny" if args.cpu_smoke else "1b"]
  implementations = ("xla", "xla") if args.cpu_smoke else ("cudnn", "xla")
  repeats = args.repeats or (2 if args.cpu_smoke else 10)
  device = jax.devices()[0]
  progress(f"attention: {implementations[0]} against {implementations[1]} on {device.platform} "
           f"({device.device_kind}), jax {jax.__version__}")
  result = {"device_kind": device.device_kind, "jax_platform": device.platform,
            "jax_version": jax.__version__, "candidate": implementations[0],
            "reference": implementations[1], "dtype": "bfloat16", "tolerance": TOLERANCE,
            "repeats": repeats}
  for name, check in (("kernel", kernel_check), ("model", model_check)):
    try:
      result[name] = check(shape, implementations, repeats)
    except Exception as error:  # noqa: BLE001 -- e.g. a shape cuDNN rejects: report, go on
      lines = str(error).strip().splitlines()
      result[name] = {"error": f"{type(error).__name__}: {lines[0] if lines else ''}"}
      progress(f"{name} check failed: {result[name]['error']}")
  result["equal_within_tolerance"] = all(result[name].get("equal_within_tolerance", False)
                                         for name in ("kernel", "model"))
  print(json.dumps(result), flush=True)
  raise SystemExit(0 if result["equal_within_tolerance"] else 1)


if __name__ == "__main__":
  main()
