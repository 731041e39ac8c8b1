"""Every config key with its default: the base that configs/*.py start from.

A config file returns `base()` with its own values set; `--config.a.b=value`
overrides any key from the command line (a misspelt key fails).
"""

from __future__ import annotations

import ml_collections

from neft_jax.data.noise import GRAMMAR_OPS, TYPO_OPS
from neft_jax.sharding import DEFAULT_RULES


def base() -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()
  config.seed = 0

  config.model = dict(
      path="",          # Hugging Face checkpoint folder or hub id; holds the tokenizer too
      tokenizer="",     # another tokenizer folder or hub id (default: model.path)
      param_dtype="float32",  # parameters (the optimizer moments are always float32)
      dtype="bfloat16",       # compute
      scan_layers=True,
      remat="none",     # none | full | dots | dots_no_batch
      attention="xla",  # xla | cudnn
      # LoRA (neft_jax.models.lora): rank 0 is full fine-tuning. With rank > 0 only the
      # adapters are trained; the base stays frozen in base_dtype, loaded from model.path.
      lora=dict(
          rank=0,
          alpha=16.0,        # B A is scaled by alpha / rank, as PEFT does
          dropout=0.0,       # PEFT's lora_dropout; only 0 is supported
          targets="all",     # "all", or projections: "query,key,value,out,gate,up,down"
          base_dtype="bfloat16",
          init_seed=-1,      # the fresh adapters' A (-1: the run's seed)
          init_from="",      # a PEFT adapter folder to start from
      ),
  )
  config.data = dict(
      path="",          # hub dataset id, or a local .json/.jsonl/.csv/.parquet file or folder
      split="train",    # split of a hub dataset
      format="instruction",  # instruction (records) | classification (text and label: data.labels)
                             # | conversation (ShareGPT or messages turns: data.template chat/plain_chat)
      eval_path="",     # held-out data; if empty, data.eval_size records of data.path
      eval_split="train",
      eval_size=0.0,    # count (>= 1) or fraction (< 1) of data.path held out for eval
      test_path="",     # a test split, scored at the end; if empty, data.test_size records of data.path
      test_split="test",
      test_size=0.0,    # count or fraction of data.path held out for test (stratified by label)
      exclude=(),       # files whose records are dropped from data.path (neft_jax/data/dedup.py)
      train_fraction=1.0,  # a seeded share of the training split (stratified by label), by split_seed
      split_seed=0,     # the held-out splits' seed (not the run's seed: every run gets the same ones)
      template="alpaca",  # alpaca | chat (the tokenizer's template) | plain_chat (ours) | text
      train_on="all_assistant",  # conversations: all_assistant | last_assistant turns carry loss
      max_length=512,
      packing=False,
      fields=dict(instruction="instruction", input="input", output="output",
                  text="text", label="label",  # text: classification's and data.template=text's
                  messages=""),  # conversations' turns ("": conversations or messages)
      labels=(),        # the class names in order (integer labels index them); label noise's set
      instruction="",   # classification: the prompt's instruction ("" : "Classify the text as ...")
      noise=dict(       # controlled noise in the training split: neft_jax/data/noise.py
          kind="none",  # none | label | typo | grammar
          rate=0.0,     # label: fraction of records; typo, grammar: of eligible words
          seed=-1,      # -1: the run's seed
          fields=(),    # (): the label (label noise), else the input text; or instruction, input, output
          label_noise="symmetric",  # symmetric | pair (labels[k] -> labels[k + 1])
          typo_ops=TYPO_OPS,
          grammar_ops=GRAMMAR_OPS,
          eval=False,   # corrupt the eval and test splits too (robustness tests)
      ),
  )
  config.neftune = dict(
      alpha=5.0,        # 0 turns the noise off
      distribution="uniform",  # uniform | gaussian
  )
  config.dropout = dict(  # sites and rates: neft_jax/dropout.py
      mode="none",      # none | uniform (dropout.rate everywhere) | hf (config.json's) | guided (Fisher)
      rate=0.1,         # mode=uniform
      distribution="bernoulli",  # bernoulli (inverted dropout) | gaussian (x * N(1, p / (1 - p)))
      sites="embed,attention_probs,attention_output,mlp_output",  # site types that are on
      max_rate=0.1,     # mode=guided: the rate of the lowest-scored site ...
      min_rate=0.0,     # ... and of the highest
      fisher="",        # mode=guided: a fisher.json; empty: {workdir}/fisher.json, made first if absent
  )
  config.fisher = dict(  # python -m neft_jax.fisher, and dropout.mode=guided without a fisher.json
      data_path="",     # .txt (one document a line), json/jsonl/hub with a text field, or instruction records
      split="train",
      text_field="text",
      num_examples=1024,
      max_length=512,
      batch_size=8,     # examples per vmapped call, over all devices
  )
  config.train = dict(
      steps=0,          # 0: train.epochs passes over the data
      epochs=3,
      batch_size=128,   # rows per optimizer step, over all devices and hosts
      grad_accum_steps=1,
      log_every=10,
      eval_every=0,     # 0: evaluate before and after training only
      eval_at_start=True,  # False: no evaluation before the first step
      peak_tflops=0.0,  # per-device peak for MFU; 0: from the device kind (TPU v4-v6e, H100/H200)
      loss_chunk_size=-1,  # positions per chunk of the head and loss; 0: all; -1: by vocabulary size
      # Stop when an eval metric (evaluated every train.eval_every steps) has not improved by
      # more than min_delta for `patience` evaluations; metric "" is off.
      early_stopping=dict(metric="", mode="min", patience=3, min_delta=0.0),
  )
  config.optim = dict(
      learning_rate=5e-5,
      schedule="cosine",  # cosine | linear | constant, after linear warmup
      warmup_ratio=0.03,
      weight_decay=0.0,
      b1=0.9,
      b2=0.999,
      eps=1e-8,
      grad_clip_norm=1.0,  # 0: no clipping
  )
  config.eval = dict(
      exact_match=False,  # greedy answers compared with the outputs (checkable tasks)
      exact_match_examples=200,  # also: held-out prompts generated for by neft_jax.evaluate
      max_new_tokens=32,
      show_answers=8,
      metrics_prefix_tokens=128,  # whitespace tokens of each answer for repetition/diversity
      splits=("eval", "test"),  # the held-out splits training and neft_jax.evaluate score
      loss=True,  # held-out loss; False on classification data scores only the labels
  )
  config.generate = dict(  # neft_jax.evaluate; the NEFTune paper decoded greedily with penalty 1.2
      max_new_tokens=512,
      temperature=0.0,  # 0: greedy
      top_k=0,          # 0: off
      top_p=1.0,
      repetition_penalty=1.2,
      batch_size=16,
      seed=0,
      truncate_prompts=False,  # cut over-long prompts from the left instead of failing
  )
  config.checkpoint = dict(
      every_steps=500, max_to_keep=3, async_save=True,
      # The `count` best checkpoints by an eval metric, kept beside the max_to_keep latest;
      # every evaluation then saves one. metric "" is off.
      keep_best=dict(metric="", mode="min", count=1),
  )
  config.mesh = dict(
      data=-1, fsdp=1, tensor=1,  # -1: the rest of the devices
      num_devices=0,  # use only the first N devices of a single process (0: all)
  )
  config.sharding = dict(rules=DEFAULT_RULES)
  return config
