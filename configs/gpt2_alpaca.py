"""GPT-2 (124M) on Alpaca with the NEFTune paper's recipe (see llama2_alpaca.py).

Memory, from `--dry_run` on 8 simulated devices (data parallel) at the
recipe's batch (128 rows of 512 tokens, so 16 rows per device), per device:

  model.remat      temporaries   peak (with parameters and Adam moments)
  none             18.8 GiB      20.2 GiB   the default: nothing recomputed
  dots_no_batch     6.4 GiB       7.8 GiB
  full              4.1 GiB       5.5 GiB

so `none` fits one 80 GB GPU per device with room to spare (these figures
computed the output layer over the whole micro-batch; the default
`train.loss_chunk_size=-1` now runs it 64 positions at a time for the
50,257-token vocabulary, which only lowers them).

Dropout as transformers fine-tunes GPT-2: `dropout.mode="hf"` applies the
checkpoint's own embd_pdrop, attn_pdrop and resid_pdrop (0.1 each for `gpt2`).
Guided dropout instead, from the Fisher information of the pretraining loss:

    python -m neft_jax.fisher --config=configs/gpt2_alpaca.py --out=runs/gpt2_fisher/fisher.json \
        --config.fisher.data_path=/data/openwebtext_subset.jsonl
    python -m neft_jax.train --config=configs/gpt2_alpaca.py --workdir=runs/gpt2_guided \
        --config.dropout.mode=guided --config.dropout.fisher=runs/gpt2_fisher/fisher.json
"""

from neft_jax.defaults import base


def get_config():
  config = base()
  config.model.path = "gpt2"
  config.data.path = "tatsu-lab/alpaca"
  config.data.eval_size = 200
  config.model.remat = "none"
  config.dropout.mode = "hf"
  return config
