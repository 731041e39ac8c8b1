"""The miniature replications' base model (issue 14): a small Llama pretrained from scratch.

No pretrained weights can be downloaded, so this stands in for one. Three steps,
from the repository root (`data=DIR,runs=DIR` as in configs/replicate/common.py):

    python -m configs.replicate.prep_corpus
    python -m neft_jax.train --config=configs/replicate/base.py --workdir=runs/replicate/base
    python -m neft_jax.export --workdir=runs/replicate/base --out=runs/replicate/base_hf

**Corpus** (runs/replicate/corpus.jsonl, made by prep_corpus): general text from the
shared data, 11,912 documents: the 1,996 original-Alpaca records of
alpaca_small_2000.json that remain after dropping the 4 whose normalized (instruction,
input) is in the 100-record cleaned file (none is among AlpacaEval's 805), flattened
to text, and the 9,916 rt-polarity sentences of the training split (common.SENTIMENT_SPLIT;
the 746 eval and test sentences are not in it). data.exclude checks all of that again at
load time: the cleaned 100, AlpacaEval's instructions and the held-out sentences. 200
documents of the corpus are held out (data.eval_size) for the held-out perplexity.

**Model**: a 3.15M-parameter Llama (common.BASE_MODEL: width 192, 6 layers, 6 heads of 32,
2 KV heads, MLP 512, 256 positions) with a 2,048-token byte-level BPE tokenizer trained on
the training split (configs/pretrain_small.py's recipe, larger).

**Sizing** (at most 15 minutes on 2 cores): a trial of configs/pretrain_small.py's 1.31M
model (width 128, 4 layers) for 360 steps took 2:45 on the quiet machine (5,500 tokens/s)
and was still improving (held-out loss 5.41 at step 180, 5.09 at 360), so the base is
larger and trains longer: 600 steps of 8 rows x 256 tokens (2,048 tokens a step, rows long
enough for the studies' 256-token prompts) are 1.23M tokens, about 2.5 passes over the
corpus (about 0.5M tokens), at about 1,940 tokens/s about 11 minutes with the tokenizer,
compiling and the four evaluations of 200 documents. The measured time is in
docs/replications.md.
"""

from configs import pretrain_small
from configs.replicate import common


def get_config(arg: str = ""):
  opts = common.options(arg)
  paths = common.files(opts)
  config = pretrain_small.get_config()
  config.pretrain.model = dict(common.BASE_MODEL)
  config.data.path = paths["corpus"]
  config.data.exclude = (paths["alpaca_heldout"], paths["alpaca_eval"],
                         paths["heldout_sentences"])
  config.data.eval_size = 200
  config.data.max_length = 256
  config.data.packing = True
  config.neftune.alpha = 0.0
  config.train.steps = 600
  config.train.batch_size = 8
  config.train.log_every = 20
  config.train.eval_every = 200
  config.optim.learning_rate = 3e-3
  config.optim.warmup_ratio = 0.05
  config.checkpoint.every_steps = 200
  return config
