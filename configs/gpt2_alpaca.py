"""GPT-2 (124M) on Alpaca with the NEFTune paper's recipe (see llama2_alpaca.py)."""

from neft_jax.defaults import base


def get_config():
  config = base()
  config.model.path = "gpt2"
  config.data.path = "tatsu-lab/alpaca"
  config.data.eval_size = 200
  return config
