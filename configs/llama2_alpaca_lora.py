"""Llama-2-7B on Alpaca with NEFTune and LoRA, on one GPU.

The NEFTune paper's recipe (configs/llama2_alpaca.py: alpha 5, cosine with 3% warmup,
clipping at 1.0, 3 epochs, batch 128, max length 512, bfloat16 compute) with LoRA
adapters of rank 16 on every projection (query, key, value, out, gate, up, down),
alpha 32, and the learning rate LoRA usually takes, 2e-4. The frozen base is
bfloat16 (13.5 GB); the adapters (40M parameters) and their AdamW moments are
float32. Batch 128 is 32 micro-batches of 4 rows of 512 tokens with remat, on one
device. Only the adapters are checkpointed; export them for PEFT with

    python -m neft_jax.export --workdir=runs/llama2_lora --out=runs/llama2_lora_adapter --adapter

    python -m neft_jax.train --config=configs/llama2_alpaca_lora.py --workdir=runs/llama2_lora \\
        --config.model.path=/path/to/Llama-2-7b-hf --config.data.path=/path/to/alpaca_data.json
"""

from configs import llama2_alpaca


def get_config():
  config = llama2_alpaca.get_config()
  config.model.lora.update(rank=16, alpha=32.0, targets="all", base_dtype="bfloat16")
  config.optim.learning_rate = 2e-4
  config.train.grad_accum_steps = 32  # 4 rows of 512 tokens per micro-batch
  config.mesh.data, config.mesh.fsdp = 1, -1  # one GPU (FSDP over more, if there are more)
  config.model.remat = "full"
  return config
