"""Qwen2-1.5B on Alpaca with the NEFTune paper's recipe (see llama2_alpaca.py)."""

from neft_jax.defaults import base


def get_config():
  config = base()
  config.model.path = "Qwen/Qwen2-1.5B"
  config.data.path = "tatsu-lab/alpaca"
  config.data.eval_size = 200
  config.mesh.data, config.mesh.fsdp = 1, -1
  return config
