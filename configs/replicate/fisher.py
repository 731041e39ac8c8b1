"""The Fisher scores of the base model on its pretraining corpus, for study C's guided dropout.

    python -m neft_jax.fisher --config=configs/replicate/fisher.py --out=runs/replicate/fisher.json

The base of configs/study/guided_dropout.py (the same model, dropout sites and
data.max_length), with fisher.data_path the pretraining corpus (runs/replicate/corpus.jsonl):
256 of its documents, up to 256 tokens each, about 0.6 x 65K tokens of forward and backward
per-example passes, about a minute on 2 cores.
"""

from configs.replicate import common


def get_config(arg: str = ""):
  opts = common.options(arg)
  config = common.sentiment_config(opts)
  config.dropout.mode = "guided"
  config.fisher.data_path = common.files(opts)["corpus"]
  config.fisher.text_field = "text"
  config.fisher.num_examples = 256
  config.fisher.max_length = 256
  config.fisher.batch_size = 8
  if opts["model"]:  # the full-scale study's model, on the same corpus
    common.full_scale(config, opts["model"], common.FULL_SCALE_SENTIMENT)
  return config
