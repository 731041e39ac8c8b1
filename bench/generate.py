"""Benchmark: KV-cache decoding on CPU, our `generate` vs transformers' `generate`.

Both decode the same random tiny Llama (4 layers, width 256, 4 heads,
vocabulary 32000 by default, float32) greedily from the same batch of 8
left-padded prompts of different lengths (16 to 64 tokens), 128 new tokens
each with no EOS, so every run produces batch * 128 tokens. The model is
saved once with transformers and loaded by both sides.

Each framework runs in its own process, in rounds that alternate which goes
first; in each, one untimed call (our compilation) precedes the timed calls.
Decode tokens/s is new tokens / seconds of a whole generate call (prefill
included), the median over all calls; ratio is ours / transformers.

    python bench/generate.py [--rounds 2] [--calls 3] [--new_tokens 128] [--batch 8]

The last line printed is a JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time

import harness

SEED = 0


def prompts_for(args) -> list[list[int]]:
  import numpy as np
  rng = np.random.default_rng(SEED)
  lengths = np.linspace(16, 64, args.batch).astype(int)
  return [rng.integers(3, args.vocab, n).tolist() for n in lengths]


def write_model(args, folder: str) -> int:
  import torch
  import transformers
  torch.manual_seed(SEED)
  config = transformers.LlamaConfig(
      vocab_size=args.vocab, hidden_size=args.width, intermediate_size=args.intermediate,
      num_hidden_layers=args.layers, num_attention_heads=args.heads, num_key_value_heads=args.heads,
      max_position_embeddings=512, tie_word_embeddings=False)
  model = transformers.LlamaForCausalLM(config)
  model.save_pretrained(folder)
  return sum(p.numel() for p in model.parameters())


def time_calls(run, calls: int) -> tuple[list[float], list[list[int]]]:
  first = run()  # compiles (ours) or warms up (transformers)
  seconds = []
  for _ in range(calls):
    start = time.perf_counter()
    out = run()
    seconds.append(time.perf_counter() - start)
  assert out == first, "greedy decoding changed between calls"
  return seconds, out


def ours_worker(args) -> dict:
  import jax
  from neft_jax.generate import generate
  from neft_jax.models import load_hf
  model = load_hf(args.folder)
  prompts = prompts_for(args)
  seconds, out = time_calls(lambda: generate(model, prompts, max_new_tokens=args.new_tokens), args.calls)
  return {"seconds": seconds, "tokens": out, "version": jax.__version__}


def hf_worker(args) -> dict:
  import numpy as np
  import torch
  import transformers
  torch.set_num_threads(os.cpu_count())
  model = transformers.AutoModelForCausalLM.from_pretrained(args.folder).eval()
  prompts = prompts_for(args)
  length = max(len(p) for p in prompts)
  ids = np.zeros((len(prompts), length), np.int64)
  mask = np.zeros_like(ids)
  for row, prompt in enumerate(prompts):
    ids[row, length - len(prompt):] = prompt
    mask[row, length - len(prompt):] = 1
  ids, mask = torch.tensor(ids), torch.tensor(mask)

  def run():
    with torch.no_grad():
      out = model.generate(ids, attention_mask=mask, do_sample=False, max_new_tokens=args.new_tokens,
                           min_new_tokens=args.new_tokens, pad_token_id=0, eos_token_id=None)
    return out[:, length:].tolist()

  seconds, out = time_calls(run, args.calls)
  return {"seconds": seconds, "tokens": out, "version": transformers.__version__}


WORKERS = {"ours": ours_worker, "hf": hf_worker}


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--rounds", type=int, default=2)
  parser.add_argument("--calls", type=int, default=3, help="timed generate calls per round")
  parser.add_argument("--new_tokens", type=int, default=128)
  parser.add_argument("--batch", type=int, default=8)
  parser.add_argument("--layers", type=int, default=4)
  parser.add_argument("--width", type=int, default=256)
  parser.add_argument("--heads", type=int, default=4)
  parser.add_argument("--intermediate", type=int, default=688)
  parser.add_argument("--vocab", type=int, default=32000)
  parser.add_argument("--folder", help=argparse.SUPPRESS)
  parser.add_argument("--worker", choices=list(WORKERS), help=argparse.SUPPRESS)
  args = parser.parse_args()
  if args.worker:
    return harness.print_result(WORKERS[args.worker](args))

  with tempfile.TemporaryDirectory() as folder:
    parameters = write_model(args, folder)
    argv = [f"--{k}={v}" for k, v in vars(args).items() if k not in ("worker", "folder", "rounds")]
    argv.append(f"--folder={folder}")
    runs = {"ours": [], "hf": []}
    for round_index in range(args.rounds):
      for which in (("ours", "hf") if round_index % 2 == 0 else ("hf", "ours")):
        runs[which].append(harness.run_cpu_worker(__file__, which, argv))
        print(f"round {round_index + 1} {which}: seconds {runs[which][-1]['seconds']}", flush=True)

  new_tokens = args.batch * args.new_tokens
  ours = statistics.median(s for r in runs["ours"] for s in r["seconds"])
  hf = statistics.median(s for r in runs["hf"] for s in r["seconds"])
  print(json.dumps({
      "layers": args.layers, "width": args.width, "heads": args.heads, "vocab": args.vocab,
      "parameters": parameters, "batch": args.batch, "prompt_lengths": [len(p) for p in prompts_for(args)],
      "new_tokens_per_prompt": args.new_tokens, "rounds": args.rounds, "calls_per_round": args.calls,
      "ours_seconds": round(ours, 4), "hf_seconds": round(hf, 4),
      "ours_tokens_per_sec": round(new_tokens / ours, 1),
      "hf_tokens_per_sec": round(new_tokens / hf, 1),
      "ratio": round(hf / ours, 3),
      "same_tokens": runs["ours"][0]["tokens"] == runs["hf"][0]["tokens"],
      "jax_version": runs["ours"][0]["version"], "transformers_version": runs["hf"][0]["version"],
      "cpu_count": os.cpu_count(),
  }))


if __name__ == "__main__":
  main()
