"""The smoke study: NEFTune on and off on the demo's tiny Llama, 2 conditions x 2 seeds.

    python -m neft_jax.study --config=configs/study/smoke.py --workdir=runs/study_smoke

A handful of steps per cell on a few hundred demo examples, on CPU in about a
minute: it checks the machinery (cells, resume, summary), not NEFTune. The
demo's model, tokenizer and data are made once in the study's folder
({study}/demo) with the base's seed, and every cell starts from them.
"""

import ml_collections

from configs import demo


def get_config():
  base = demo.get_config()
  base.demo.train_examples, base.demo.eval_examples = 400, 24
  base.model.path = "{study}/demo/model"
  base.data.path = "{study}/demo/data/train.json"
  base.data.eval_path = "{study}/demo/data/eval.json"
  base.data.max_length = 80
  base.train.steps, base.train.batch_size, base.train.log_every = 4, 4, 1
  base.checkpoint.every_steps = 2
  base.eval.exact_match_examples, base.eval.max_new_tokens = 8, 3
  base.generate.max_new_tokens, base.generate.batch_size = 4, 8  # the evaluate stage

  config = ml_collections.ConfigDict()
  config.study = dict(
      name="smoke",
      base=base,
      # (name, overrides) pairs, in order; overrides are dotted keys of the base.
      conditions=(
          ("clean", {}),
          ("typo_20", {"data.noise.kind": "typo", "data.noise.rate": 0.2}),
      ),
      control="clean",
      seeds=(0, 1),
      stages=("train",),
      contrasts={"typo": ("typo_20", "clean")},
      analyze=dict(max_examples=16, max_tokens=256),
  )
  return config
