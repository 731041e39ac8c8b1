"""Runs that make their own model (configs/demo.py, configs/pretrain_small.py): no downloads.

`prepare` (the demo's `demo` section) writes, once per workdir:
  * a synthetic instruction dataset with exactly checkable answers
    (train and held-out splits, Alpaca-format JSON);
  * a byte-level BPE tokenizer trained on that data with `tokenizers`;
  * a tiny Llama-architecture model initialized from scratch and saved in
    Hugging Face format, so that training starts through `load_hf` as it
    would from a real checkpoint.

`prepare_pretrain` (a `pretrain` section) makes the same kind of tokenizer,
trained on the training split of data.path's plain text, and a randomly
initialized model of the section's sizes, for pretraining from scratch.
Both are made by `train_tokenizer` and `make_model`.
"""

from __future__ import annotations

import dataclasses
import json
import logging

import jax
import ml_collections
from etils import epath
from flax import nnx

from neft_jax.data import demo_tasks, templates
from neft_jax.errors import UserError
from neft_jax.models import ModelConfig, Transformer, save_hf
from neft_jax.run import in_bucket

log = logging.getLogger(__name__)

SPECIAL_TOKENS = ("<s>", "</s>", "<pad>")


def _write_records(path: epath.Path, records) -> None:
  path.write_text(json.dumps([dataclasses.asdict(r) for r in records], indent=1))


def train_tokenizer(texts, vocab_size: int, min_frequency: int):
  """A byte-level BPE tokenizer that adds <s> in front, as Llama's does.

  Only pairs seen `min_frequency` times merge: the template's words become
  single tokens while the random task words stay spelled letter by letter.
  """
  import tokenizers
  import transformers
  from tokenizers import decoders, models, pre_tokenizers, processors, trainers

  bpe = tokenizers.Tokenizer(models.BPE())
  bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
  bpe.decoder = decoders.ByteLevel()
  trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=list(SPECIAL_TOKENS),
                                min_frequency=min_frequency,
                                initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                show_progress=False)
  bpe.train_from_iterator(texts, trainer)
  bos = bpe.token_to_id("<s>")
  bpe.post_processor = processors.TemplateProcessing(
      single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", bos)])
  return transformers.PreTrainedTokenizerFast(
      tokenizer_object=bpe, bos_token="<s>", eos_token="</s>", pad_token="<pad>")


def make_model(sizes, tokenizer, model_dir: epath.Path, seed: int) -> ModelConfig:
  """A Llama-architecture model of `sizes` (ModelConfig fields) for `tokenizer`, initialized
  from `seed` and saved with the tokenizer in Hugging Face format in `model_dir`."""
  model_dir.mkdir(parents=True, exist_ok=True)
  tokenizer.save_pretrained(str(model_dir))
  cfg = ModelConfig(family="llama", vocab_size=len(tokenizer),
                    bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                    pad_token_id=tokenizer.pad_token_id, **sizes)
  model = Transformer(cfg, rngs=nnx.Rngs(params=jax.random.fold_in(jax.random.key(seed), 0)))
  save_hf(model, str(model_dir))
  return cfg


def _check_local(paths: dict[str, str], what: str) -> None:
  for key, path in paths.items():
    if in_bucket(path):
      raise UserError(f"{key}={path} is in a bucket, but models and data are read from local "
                      f"paths; with a bucket --workdir, set {key} (and data.eval_path) to a "
                      f"local folder for {what}")


def _sync(name: str) -> None:
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils
    multihost_utils.sync_global_devices(name)


def prepare(config: ml_collections.ConfigDict, model_dir: str, data_dir: str, seed: int) -> None:
  """Writes the demo's data, tokenizer and initial model, unless already there.

  The files go through epath, but the model and data loaders read local paths
  only, so with a bucket workdir the demo's model and data must be set local.
  """
  _check_local({"model.path": model_dir, "data.path": data_dir}, "the demo's files")
  model_dir, data_dir = epath.Path(model_dir), epath.Path(data_dir)
  if jax.process_index() == 0 and not (model_dir / "config.json").exists():
    data_dir.mkdir(parents=True, exist_ok=True)
    train = demo_tasks.generate(config.train_examples, seed=seed)
    held_out = demo_tasks.generate(config.eval_examples, seed=seed + 1)
    _write_records(data_dir / "train.json", train)
    _write_records(data_dir / "eval.json", held_out)
    texts = [templates.prompt(r, "alpaca") + r.output for r in train]
    tokenizer = train_tokenizer(texts, config.vocab_size,
                                max(2, int(config.min_merge_fraction * len(train))))
    cfg = make_model(config.model, tokenizer, model_dir, seed)
    log.info("demo: wrote %d train and %d held-out examples, a %d-token tokenizer and a "
             "%.2fM-parameter model", len(train), len(held_out), len(tokenizer),
             cfg.num_params() / 1e6)
  _sync("neft_jax demo assets")


def prepare_pretrain(config: ml_collections.ConfigDict, model_dir: str,
                     data_config: ml_collections.ConfigDict, seed: int) -> None:
  """Writes a tokenizer trained on the training split of `data_config`'s text (data.path
  less the held-out records) and a randomly initialized model, unless already there."""
  from neft_jax.data import pipeline
  _check_local({"model.path": model_dir}, "the model the run makes")
  model_dir = epath.Path(model_dir)
  if jax.process_index() == 0 and not (model_dir / "config.json").exists():
    train = pipeline.split_records(data_config)["train"]
    texts = [templates.prompt(r, data_config.template) + r.output for r in train]
    tokenizer = train_tokenizer(texts, config.vocab_size, config.min_frequency)
    cfg = make_model(config.model, tokenizer, model_dir, seed)
    log.info("pretrain: trained a %d-token tokenizer on %d training documents of data.path and "
             "wrote a randomly initialized %.2fM-parameter model", len(tokenizer), len(train),
             cfg.num_params() / 1e6)
  _sync("neft_jax pretrain assets")
