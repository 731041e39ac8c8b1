"""Llama-2-7B on Alpaca with the NEFTune paper's recipe.

alpha 5, AdamW (weight decay 0) at 5e-5 with cosine decay after 3% warmup,
gradient clipping at 1.0, 3 epochs, batch 128, max length 512, bfloat16
compute. Parameters are sharded FSDP-style over all devices.

    python -m neft_jax.train --config=configs/llama2_alpaca.py --workdir=runs/llama2 \\
        --config.model.path=/path/to/Llama-2-7b-hf --config.data.path=/path/to/alpaca_data.json
"""

from neft_jax.defaults import base


def get_config():
  config = base()
  config.model.path = "meta-llama/Llama-2-7b-hf"
  config.data.path = "tatsu-lab/alpaca"
  config.data.eval_size = 200
  config.mesh.data, config.mesh.fsdp = 1, -1
  config.model.remat = "dots_no_batch"
  return config
