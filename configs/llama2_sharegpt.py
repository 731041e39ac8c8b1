"""Llama-2-7B on ShareGPT conversations with NEFTune (the paper's ShareGPT run).

The Alpaca recipe of llama2_alpaca.py (alpha 5, AdamW at 5e-5, cosine after 3%
warmup, clip 1.0, 3 epochs, batch 128, bfloat16) on multi-turn data: every
assistant reply carries loss, rendered with `plain_chat` since the Llama-2 base
model ships no chat template. ShareGPT's conversations are long, so rows are
2048 tokens (our choice; Llama-2 has 4096 positions), as 4 micro-batches of 32
rows, which keeps a micro-batch's tokens those of the Alpaca recipe's batch.
A conversation longer than that is cut after its last reply that fits.

`--dry_run` on 8 simulated devices (FSDP 8, remat dots_no_batch): per device,
parameters 3.14 GiB, optimizer state 6.28 GiB, temporaries 55.41 GiB, peak
64.83 GiB, within an 80 GB GPU (the Alpaca recipe: 60.61 GiB).

    python -m neft_jax.train --config=configs/llama2_sharegpt.py --workdir=runs/llama2_sharegpt \\
        --config.model.path=/path/to/Llama-2-7b-hf \\
        --config.data.path=/path/to/ShareGPT_V3_unfiltered_cleaned_split.json
"""

from configs import llama2_alpaca


def get_config():
  config = llama2_alpaca.get_config()
  config.data.path = ""  # a ShareGPT .json / .jsonl file, or a hub dataset of conversations
  config.data.format = "conversation"
  config.data.template = "plain_chat"
  config.data.max_length = 2048
  config.train.grad_accum_steps = 4
  config.generate.max_new_tokens = 1024
  return config
