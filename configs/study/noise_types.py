"""Study B (issue 14): noise types (Li & Sen 2026) in miniature: clean, label, typo, grammar.

    python -m neft_jax.study --config=configs/study/noise_types.py --workdir=runs/replicate/study_noise_types
    (--config=configs/study/noise_types.py:data=DIR,runs=DIR: configs/replicate/common.py)

Fixed before any result was seen, and not to be tuned towards the paper's answer:

- model: configs/replicate/base.py's pretrained 3.15M-parameter Llama (runs/replicate/base_hf)
- task: rt-polarity sentiment as instruction tuning (configs/sentiment.py's task), the
  fixed stratified split of common.SENTIMENT_SPLIT (split_seed 0): 533 test sentences,
  213 eval, 9,916 train; none of the eval and test sentences is in the pretraining corpus
- conditions: clean (the control), label_30 (30% of the training labels flipped), typo_30
  and grammar_30 (30% of the eligible words); seeds 0, 1, 2; 32 steps of 10 packed rows of
  256 tokens (about 30 sentences a step), learning rate 1e-3 (cosine, 10% warmup), no NEFTune, no dropout
- stages: train (test_accuracy, test_macro_f1 on the clean test split), then analyze
  against the base: weight change, CKA and attention JS by layer, and a linear probe of the
  task by layer (probe_labels) on the 213 held-out (eval) examples. No evaluate stage: on
  classification data it scores the same eval and test splits again (the numbers train
  already reports) plus a few generations, about 40 s a cell, 8 minutes the study, which
  the budget does not have
- contrasts: label vs typo and label vs grammar (each condition is also compared with clean)

Sizing (at most 30 minutes on 2 cores). A first start at 164 s a cell (12 cells, 34
minutes) was stopped after 2 cells, before any result was read: scoring the held-out loss
besides the labels, and the eval split before training too, took over half of each cell. Now
(common.sentiment_config) the labels alone are scored, after training: a cell's 32 steps x
2,560 tokens about 50 s, the eval split's labels about 10 s, the test split's about 25 s,
analyze (two models' forward passes on 213 examples, the probes) about 17 s: about 105 s a
cell, 12 cells, about 21 minutes. The rate 0.1 would need 9 more cells, past the budget,
so it is left out.
"""

import ml_collections

from configs.replicate import common


def get_config(arg: str = ""):
  opts = common.options(arg)
  base = common.sentiment_config(opts)
  base.train.steps = 32
  if opts["model"]:
    common.full_scale(base, opts["model"], common.FULL_SCALE_SENTIMENT)

  config = ml_collections.ConfigDict()
  config.study = dict(
      name="noise_types",
      base=base,
      conditions=(
          ("clean", {}),
          ("label_30", {"data.noise.kind": "label", "data.noise.rate": 0.3}),
          ("typo_30", {"data.noise.kind": "typo", "data.noise.rate": 0.3}),
          ("grammar_30", {"data.noise.kind": "grammar", "data.noise.rate": 0.3}),
      ),
      control="clean",
      seeds=(0, 1, 2),
      stages=("train", "analyze"),
      metrics=("test_accuracy", "test_macro_f1", "eval_accuracy", "train_loss"),
      contrasts={"label_vs_typo": ("label_30", "typo_30"),
                 "label_vs_grammar": ("label_30", "grammar_30")},
      analyze=dict(max_examples=256, max_tokens=4096, probe_labels=True),
  )
  return config
