"""The embedded default: a tiny Llama learns checkable tasks on CPU in minutes.

Nothing is downloaded. The run writes into its workdir a synthetic instruction
dataset (reverse a word, sort letters, add numbers, ...), a byte-level BPE
tokenizer trained on it, and a tiny Llama-architecture model initialized from
scratch in Hugging Face format; then it fine-tunes that model with NEFTune and
prints held-out loss and exact-match answers before and after.

    python -m neft_jax.train --config=configs/demo.py --workdir=runs/demo
    python -m neft_jax.evaluate --workdir=runs/demo
    python -m neft_jax.export --workdir=runs/demo --out=runs/demo_hf
"""

from neft_jax.defaults import base


def get_config():
  config = base()
  config.demo = dict(
      train_examples=6000,
      eval_examples=300,
      vocab_size=512,
      min_merge_fraction=1 / 6,  # a pair merges if seen this often per example
      model=dict(embed_dim=128, num_layers=4, num_heads=4, num_kv_heads=2, head_dim=32,
                 mlp_dim=384, max_positions=256, initializer_range=0.08),
  )
  config.model.path = "{workdir}/demo/model"
  config.model.param_dtype = config.model.dtype = "float32"
  config.data.path = "{workdir}/demo/data/train.json"
  config.data.eval_path = "{workdir}/demo/data/eval.json"
  config.data.max_length = 128
  config.data.packing = True
  config.neftune.alpha = 5.0
  config.train.steps = 400
  config.train.batch_size = 32
  config.train.log_every = 20
  config.optim.learning_rate = 3e-3
  config.optim.weight_decay = 0.0
  config.eval.exact_match = True
  config.eval.max_new_tokens = 8
  # neft_jax.evaluate on the demo run: answers are a few tokens (the model has 256
  # positions), and repeating letters is what its tasks ask, so no repetition penalty.
  config.generate.max_new_tokens = 16
  config.generate.repetition_penalty = 1.0
  config.checkpoint.every_steps = 200
  return config
