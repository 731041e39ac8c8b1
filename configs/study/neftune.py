"""Study A (issue 14): NEFTune (Jain et al. 2023) in miniature, alpha 0 against 5, 3 seeds.

    python -m neft_jax.study --config=configs/study/neftune.py --workdir=runs/replicate/study_neftune
    (--config=configs/study/neftune.py:data=DIR,runs=DIR: configs/replicate/common.py)

Fixed before any result was seen, and not to be tuned towards the paper's answer:

- model: configs/replicate/base.py's pretrained 3.15M-parameter Llama (runs/replicate/base_hf)
- data: the 4,900 cleaned-Alpaca training records (alpaca_cleaned_0100_4999.json) less the
  one whose normalized (instruction, input) is in the 100-record cleaned file and any in
  AlpacaEval's 805 (data.exclude); held out: the 100-record cleaned file (eval_loss)
- conditions: alpha_0 (no noise, the control) and alpha_5 (NEFTune, alpha 5, uniform);
  seeds 0, 1, 2; the same 100 steps of 8 packed rows of 256 tokens, learning rate 5e-4
  (cosine, 5% warmup) for all
- stages: train (eval_loss on the held-out 100; test_loss on the first 200 training
  records, runs/replicate/alpaca_train_sample.json, scored after training without noise:
  the training loss without NEFTune's noise, since train_loss is logged on the noisy
  embeddings), then evaluate: greedy answers (repetition penalty 1.2, as the paper
  decoded) to a fixed sample of 200 of AlpacaEval's 805 instructions
  (runs/replicate/alpaca_eval_sample.json, drawn once by configs/replicate/prep_corpus.py),
  up to 64 new tokens, with the response metrics (length in chars and words, rep-2,
  diversity, log-diversity, and ROUGE-L against text-davinci-003's answers); each cell's
  answers are in its eval_step_100/model_outputs.json, ready for alpaca_eval

Sizing (at most 30 minutes on 2 cores): the base trains at about 1,940 tokens/s on the
quiet machine (configs/replicate/base.py), so a cell's 100 steps x 2,048 tokens take about
105 s; scoring the held-out 100 and the 200 training records before and after about 20 s,
the evaluate stage (both again, and 200 answers of up to 64 tokens) about 60 s, compiling
about 25 s for the first cell of each alpha (the others load it from the study's
compilation cache): about 3 minutes a cell, 6 cells, about 18 minutes.
"""

import ml_collections

from configs.replicate import common
from neft_jax.defaults import base as default_config


def get_config(arg: str = ""):
  opts = common.options(arg)
  paths = common.files(opts)
  base = default_config()
  base.model.path = paths["base_model"]
  base.model.param_dtype = base.model.dtype = "float32"
  base.data.path = paths["alpaca_train"]
  base.data.eval_path = paths["alpaca_heldout"]
  base.data.test_path = paths["alpaca_train_sample"]  # training records, scored without noise
  base.data.exclude = (paths["alpaca_heldout"], paths["alpaca_eval"])
  base.data.template = "alpaca"
  base.data.max_length = 256
  base.data.packing = True
  base.neftune.alpha = 0.0
  base.train.steps = 100
  base.train.batch_size = 8
  base.train.log_every = 10
  base.train.eval_every = 0  # before and after training
  base.optim.learning_rate = 5e-4
  base.optim.warmup_ratio = 0.05
  base.checkpoint.every_steps = 50
  base.generate.max_new_tokens = 64
  base.generate.repetition_penalty = 1.2
  base.generate.truncate_prompts = True  # 256 positions: prompt and answer must fit
  if opts["model"]:
    common.full_scale(base, opts["model"], common.FULL_SCALE_NEFTUNE)

  config = ml_collections.ConfigDict()
  config.study = dict(
      name="neftune",
      base=base,
      conditions=(
          ("alpha_0", {"neftune.alpha": 0.0}),
          ("alpha_5", {"neftune.alpha": 5.0}),
      ),
      control="alpha_0",
      seeds=(0, 1, 2),
      stages=("train", "evaluate"),
      contrasts={"neftune": ("alpha_5", "alpha_0")},
      evaluate=dict(prompts=paths["alpaca_eval_sample"]),
      metrics=("eval_loss", "test_loss", "train_loss", "gen_mean_chars", "gen_mean_words",
               "gen_rep_2", "gen_diversity", "gen_log_diversity", "gen_rouge_l"),
  )
  return config
