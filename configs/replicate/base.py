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

**Model**: configs/pretrain_small.py's 1.31M-parameter Llama (width 128, 4 layers, 4
heads, 2 KV heads, MLP 384) with a 2,048-token byte-level BPE tokenizer trained on the
training split, 256 positions.

**Sizing** (at most 15 minutes on 2 cores): configs/pretrain_small.py measured 6:16 for
200 steps of 16 x 128 = 2,048 tokens at 1.31M parameters on a loaded machine, 1.88 s a
step, about 1,090 tokens/s. 360 steps of 8 rows x 256 tokens (the same 2,048 tokens a
step, rows twice as long so the studies' 256-token prompts are positions it has seen)
are 737K tokens, about 1.5 passes over the corpus (1.85M characters, 326K words,
roughly 0.5M tokens): 360 x 1.88 s = 677 s = 11.3 minutes of steps, plus about 1.5 for the
tokenizer, compiling and the three evaluations of 200 documents: about 13 minutes.
The measured time goes into docs/replications.md.
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
  config.train.steps = 360
  config.train.batch_size = 8
  config.train.log_every = 20
  config.train.eval_every = 180
  config.optim.learning_rate = 3e-3
  config.optim.warmup_ratio = 0.05
  config.checkpoint.every_steps = 120
  return config
