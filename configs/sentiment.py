"""Sentiment classification as instruction tuning (rt-polarity), clean or with one kind of noise.

The conditions of Li & Sen's noise study, one per run, chosen by the config's
argument (big_vision style):

    python -m neft_jax.train --config=configs/sentiment.py:label --workdir=runs/sst_label

  clean     no noise (the default)
  label     20% of the training labels flipped to the other class
  typo      typographical errors in 10% of the sentences' words
  grammar   grammatical errors in 10% of the eligible words

Every record becomes an Alpaca prompt: the instruction below, the sentence as
the input, the label's name as the response. Evaluation scores both labels'
completions (label + EOS) by log-likelihood: eval_accuracy and eval_macro_f1
during training, test_accuracy and test_macro_f1 at the end. The noise goes
into the training split only; noise_manifest.jsonl in the workdir lists every
change.

The data is the hub's cornell-movie-review-data/rotten_tomatoes (its train,
validation and test splits). `data=PATH` in the argument reads a local copy
instead, the original release's folder with rt-polarity.pos and
rt-polarity.neg (or any file with text and label columns), and holds 10% out
for eval and 10% for test, stratified by label and seeded by data.split_seed:

    python -m neft_jax.train --config=configs/sentiment.py:typo,data=DIR/sentiment ...

The model is GPT-2 (124M), as in the paper; any family works (model.path).
"""

from neft_jax.defaults import base

CONDITIONS = {
    "clean": {},
    "label": dict(kind="label", rate=0.2),
    "typo": dict(kind="typo", rate=0.1),
    "grammar": dict(kind="grammar", rate=0.1),
}
HUB_DATASET = "cornell-movie-review-data/rotten_tomatoes"


def parse_arg(arg: str) -> tuple[str, dict[str, str]]:
  """"condition[,key=value...]" -> (condition, options)."""
  condition, *options = [part.strip() for part in (arg or "clean").split(",")]
  parsed = {}
  for option in options:
    key, equals, value = option.partition("=")
    if not equals or key not in ("data",):
      raise ValueError(f"configs/sentiment.py: unknown option {option!r}; use data=PATH")
    parsed[key] = value
  if condition not in CONDITIONS:
    raise ValueError(f"configs/sentiment.py:{condition}: the condition is one of "
                     f"{', '.join(CONDITIONS)}")
  return condition, parsed


def get_config(arg: str = "clean"):
  condition, options = parse_arg(arg)
  config = base()
  config.model.path = "openai-community/gpt2"
  config.data.format = "classification"
  config.data.labels = ("negative", "positive")
  config.data.instruction = "Classify the sentiment of this movie review as positive or negative."
  if "data" in options:
    config.data.path = options["data"]
    config.data.eval_size = 0.1
    config.data.test_size = 0.1
  else:
    config.data.path = config.data.eval_path = config.data.test_path = HUB_DATASET
    config.data.eval_split, config.data.test_split = "validation", "test"
  # The longest rt-polarity prompt with its label and EOS: 139 tokens for GPT-2's tokenizer,
  # 152 for Llama-2's, 126 for Qwen2's; every label must be scored whole.
  config.data.max_length = 160
  config.data.packing = True
  config.data.noise.update(CONDITIONS[condition])
  config.neftune.alpha = 0.0  # the noise study's runs: data noise only
  config.train.epochs = 3
  config.train.batch_size = 32
  config.train.eval_every = 100
  config.optim.learning_rate = 2e-5
  config.checkpoint.every_steps = 1000
  return config
