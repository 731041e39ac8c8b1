"""End to end: configs/sentiment.py on a tiny model, clean and with each kind of noise.

A small Llama-architecture model is initialized at random (no pretrained
weights can be downloaded), with a byte-level BPE tokenizer trained on the
training split's prompts (the Alpaca template around each sentence), and saved in Hugging Face format. Then each
condition of configs/sentiment.py (clean, label, typo, grammar) fine-tunes it
on the local rt-polarity release through `neft_jax.train.train`, with 10% of
the sentences held out for eval and 10% for test (stratified, split_seed 0),
and the final eval and test accuracy and macro F1 are reported. Chance is 0.5.

    python bench/sentiment.py [--data ../shared/data/sentiment] [--steps 300]
        [--conditions clean,label,typo,grammar] [--workdir runs/bench_sentiment]

The last line printed is a JSON object.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import jax  # noqa: E402
from flax import nnx  # noqa: E402

from configs import sentiment  # noqa: E402
from neft_jax import train  # noqa: E402
from neft_jax.data import pipeline, templates  # noqa: E402
from neft_jax.demo import train_tokenizer  # noqa: E402
from neft_jax.models import ModelConfig, Transformer, save_hf  # noqa: E402

MODEL = dict(embed_dim=128, num_layers=2, num_heads=4, num_kv_heads=2, head_dim=32, mlp_dim=384,
             max_positions=256, initializer_range=0.05)


def make_model(folder: str, data: str, vocab_size: int) -> float:
  """The tiny model and its tokenizer (trained on the training split's prompts and labels,
  as the demo's is); its size in millions of parameters."""
  config = sentiment.get_config(f"clean,data={data}")
  texts = [templates.prompt(r, "alpaca") + r.output
           for r in pipeline.split_records(config.data)["train"]]
  tokenizer = train_tokenizer(texts, vocab_size, min_frequency=2)
  tokenizer.save_pretrained(folder)
  model_config = ModelConfig(family="llama", vocab_size=len(tokenizer),
                             bos_token_id=tokenizer.bos_token_id,
                             eos_token_id=tokenizer.eos_token_id,
                             pad_token_id=tokenizer.pad_token_id, **MODEL)
  save_hf(Transformer(model_config, rngs=nnx.Rngs(params=jax.random.key(0))), folder)
  return model_config.num_params() / 1e6


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  shared = os.environ.get("NEFT_JAX_SHARED_DATA", os.path.join("..", "shared", "data"))
  parser.add_argument("--data", default=os.path.join(shared, "sentiment"))
  parser.add_argument("--workdir", default=os.path.join("runs", "bench_sentiment"))
  parser.add_argument("--conditions", default=",".join(sentiment.CONDITIONS))
  parser.add_argument("--steps", type=int, default=300)
  parser.add_argument("--vocab", type=int, default=2048)
  parser.add_argument("--learning_rate", type=float, default=1e-3)
  args = parser.parse_args()
  logging.basicConfig(level=logging.WARNING)
  model_dir = os.path.join(args.workdir, "model")
  if not os.path.exists(os.path.join(model_dir, "config.json")):
    millions = make_model(model_dir, args.data, args.vocab)
    print(f"a {millions:.2f}M-parameter model and a {args.vocab}-token tokenizer in {model_dir}",
          flush=True)
  results = {}
  for condition in args.conditions.split(","):
    config = sentiment.get_config(f"{condition},data={args.data}")
    config.model.path = model_dir
    config.model.param_dtype = config.model.dtype = "float32"
    config.train.steps, config.train.eval_every = args.steps, 0
    config.optim.learning_rate = args.learning_rate
    config.optim.weight_decay = 0.0
    config.checkpoint.async_save = False
    started = time.perf_counter()
    after = train.train(config, os.path.join(args.workdir, condition))["after"]
    results[condition] = {k: round(v, 4) for k, v in after.items()
                          if k.endswith(("_accuracy", "_macro_f1", "_loss"))}
    results[condition]["seconds"] = round(time.perf_counter() - started, 1)
    print(f"{condition}: {results[condition]}", flush=True)
  print(json.dumps({"steps": args.steps, "batch_size": 32, "model": MODEL, "vocab": args.vocab,
                    "learning_rate": args.learning_rate, "chance": 0.5, "conditions": results}))


if __name__ == "__main__":
  main()
