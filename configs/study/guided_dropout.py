"""Study C (issue 14): guided dropout (Sharma et al. 2024) in miniature, at 10% and 100% data.

    python -m neft_jax.fisher --config=configs/replicate/fisher.py --out=runs/replicate/fisher.json
    python -m neft_jax.study --config=configs/study/guided_dropout.py --workdir=runs/replicate/study_guided_dropout
    (:data=DIR,runs=DIR on both configs: configs/replicate/common.py)

Fixed before any result was seen, and not to be tuned towards the paper's answer:

- model: configs/replicate/base.py's pretrained 3.15M-parameter Llama (runs/replicate/base_hf)
- task: study B's (rt-polarity, common.SENTIMENT_SPLIT: 533 test, 213 eval, 9,916 train)
- sizes: data.train_fraction 1.0 (9,916 sentences) and 0.1 (992, a stratified sample drawn
  by split_seed, the same for every cell)
- conditions at each size: no dropout, uniform dropout 0.1 at every site, guided dropout
  (rates from 0 to max 0.1 by the Fisher scores of the base on 256 documents of the
  pretraining corpus, runs/replicate/fisher.json, made once beforehand); seeds 0, 1, 2;
  24 steps of 10 packed rows of 256 tokens, learning rate 1e-3, for every cell
- stage: train (test accuracy and macro-F1 on the clean test split)
- contrasts: guided vs uniform at each size (and uniform vs none at each size)

Sizing (at most 30 minutes on 2 cores): only the test split's labels are scored, after
training (eval.splits, common.sentiment_config): 24 steps x 2,560 tokens about 40 s (a little
more with dropout), the test about 25 s: about 70 s a cell, 18 cells, about 21 minutes; the
Fisher pass once, about a minute, before.

What this size can show: 24 steps of about 32 sentences see about 770 sentences, less than
the 992 of the 10% split, so the two sizes differ in how varied the examples are more
than in how often each is seen; docs/replications.md must say so with the result.
"""

import ml_collections

from configs.replicate import common


def get_config(arg: str = ""):
  opts = common.options(arg)
  base = common.sentiment_config(opts)
  base.train.steps = 24
  base.eval.splits = ("test",)  # the only split study C reads
  base.dropout.fisher = common.files(opts)["fisher"]
  base.dropout.max_rate, base.dropout.min_rate = 0.1, 0.0
  if opts["model"]:
    common.full_scale(base, opts["model"], common.FULL_SCALE_SENTIMENT)

  none = {"dropout.mode": "none"}
  uniform = {"dropout.mode": "uniform", "dropout.rate": 0.1}
  guided = {"dropout.mode": "guided"}
  conditions = []
  for size, fraction in (("100", 1.0), ("10", 0.1)):
    for name, overrides in (("none", none), ("uniform", uniform), ("guided", guided)):
      conditions.append((f"{name}_{size}", {**overrides, "data.train_fraction": fraction}))

  config = ml_collections.ConfigDict()
  config.study = dict(
      name="guided_dropout",
      base=base,
      conditions=tuple(conditions),
      control="none_100",
      seeds=(0, 1, 2),
      stages=("train",),
      metrics=("test_accuracy", "test_macro_f1", "train_loss"),
      contrasts={"guided_vs_uniform_100": ("guided_100", "uniform_100"),
                 "guided_vs_uniform_10": ("guided_10", "uniform_10"),
                 "uniform_vs_none_100": ("uniform_100", "none_100"),
                 "uniform_vs_none_10": ("uniform_10", "none_10")},
  )
  return config
