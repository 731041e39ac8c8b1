"""Pretrain a small Llama from scratch on a plain-text corpus, on CPU in minutes.

Nothing is downloaded. The run trains a byte-level BPE tokenizer on the
training split of the corpus (`data.path`), writes it with a randomly
initialized Llama-architecture model in Hugging Face format into the workdir,
then trains that model through `load_hf`, as it would a real checkpoint, with
the loss on every token (data.template="text": neft_jax/data/text.py).

The corpus is a .txt file (one document a line), json / jsonl / parquet with a
`text` field (data.fields.text), or instruction records, which are flattened
to text (instruction, input and output joined by a blank line), e.g. Alpaca:

    python -m neft_jax.train --config=configs/pretrain_small.py --workdir=runs/pretrain \\
        --config.data.path=alpaca_data.json
    python -m neft_jax.evaluate --workdir=runs/pretrain

The result is a small base model for continued pretraining or fine-tuning
(point model.path at runs/pretrain after exporting it with neft_jax.export).
"""

from neft_jax.defaults import base


def get_config():
  config = base()
  config.pretrain = dict(
      vocab_size=2048,
      min_frequency=2,  # a pair merges if seen this often in the corpus
      model=dict(embed_dim=128, num_layers=4, num_heads=4, num_kv_heads=2, head_dim=32,
                 mlp_dim=384, max_positions=256, initializer_range=0.08),
  )
  config.model.path = "{workdir}/pretrain/model"
  config.model.param_dtype = config.model.dtype = "float32"
  config.data.path = ""  # the corpus: set it (--config.data.path=...)
  config.data.template = "text"
  config.data.eval_size = 200  # documents of data.path held out for eval_loss
  config.data.max_length = 128  # longer documents are split into chunks of this many tokens
  config.data.packing = True
  config.neftune.alpha = 0.0  # pretraining from scratch; set it to study NEFTune on text
  config.train.steps = 200
  config.train.batch_size = 16
  config.train.log_every = 20
  config.train.eval_every = 100
  config.optim.learning_rate = 3e-3
  config.optim.warmup_ratio = 0.05
  config.generate.max_new_tokens = 64
  config.generate.repetition_penalty = 1.0
  config.checkpoint.every_steps = 100
  return config
