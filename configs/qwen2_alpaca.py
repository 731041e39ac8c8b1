"""Qwen2-1.5B on Alpaca with the NEFTune paper's recipe (see llama2_alpaca.py).

Memory, from `--dry_run` on 8 simulated devices (FSDP 8) at the recipe's batch
(128 rows of 512 tokens, so 16 rows per device), per device:

  model.remat      temporaries   peak (with parameters and Adam moments)
  none             about 74 GiB  about 76 GiB  more than an 80 GB GPU holds (74.5 GiB)
  dots_no_batch    26.0 GiB      28.2 GiB      the default: matmul outputs kept
  full             about 6 GiB   about 8 GiB   everything recomputed

so `dots_no_batch` is the least recomputation that fits one 80 GB GPU per
device. The output layer and its loss run 64 positions of every row at a time
(`train.loss_chunk_size`): the 151,936-token vocabulary's float32 logits would
otherwise be the step's largest tensor (2.3 GiB for 8 rows of 512 tokens).
"""

from neft_jax.defaults import base


def get_config():
  config = base()
  config.model.path = "Qwen/Qwen2-1.5B"
  config.data.path = "tatsu-lab/alpaca"
  config.data.eval_size = 200
  config.mesh.data, config.mesh.fsdp = 1, -1
  config.model.remat = "dots_no_batch"
  config.train.loss_chunk_size = 64
  return config
