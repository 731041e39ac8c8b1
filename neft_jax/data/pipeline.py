"""From config to tokenized train, eval and test sets: tokenizer, records, splits, noise.

    load_tokenizer(path)          the checkpoint's Hugging Face tokenizer
    split_records(data_config)    Splits: train, eval and test records (and where they came from)
    add_noise(data_config, splits, seed)   the splits with data.noise in the training split
    tokenized_splits(data_config, tokenizer, seed, bos=...)   Data: all of it, tokenized

Records are instruction records, or (data.format="classification") text-and-label
rows made into instruction records whose output is the label's name, or
(data.format="conversation") multi-turn conversations (`neft_jax.data.conversations`), or
(data.template="text") plain-text documents, each a Record with the document
in `input` and no instruction or output (`neft_jax.data.text`). The
held-out splits are drawn by data.split_seed, never by the run's seed, so
runs with different seeds share them; for classification they are stratified
by label. Noise goes into the training split only (unless data.noise.eval),
after the split, so the held-out records are the same with and without it.
"""

from __future__ import annotations

import dataclasses
import logging
import os

import ml_collections
import numpy as np

from neft_jax.config_check import names
from neft_jax.data import conversations, dedup, noise, templates, text
from neft_jax.data.sources import Fields, Record, load_classification, load_records
from neft_jax.data.tokenize import TokenizedSet, tokenize
from neft_jax.errors import UserError
from neft_jax.hub import is_hub_id

log = logging.getLogger(__name__)

FORMATS = ("instruction", "classification", "conversation")
SPLITS = ("train", "eval", "test")


def load_tokenizer(path: str, config_key: str = "model.path"):
  """The Hugging Face tokenizer stored with a checkpoint (or a hub id)."""
  import transformers
  if not path:
    raise UserError(f"{config_key} is not set; give the model's folder (or hub id), which holds "
                    "its tokenizer")
  if not os.path.isdir(path) and os.path.exists(path):
    raise UserError(f"{config_key}={path!r} is a file; give the folder that holds the tokenizer")
  unreachable = (f"{config_key}={path!r} is neither a folder nor a reachable hub id; point "
                 f"{config_key} at a folder with the checkpoint and its tokenizer, or at a hub id "
                 "where the hub can be reached")
  if not os.path.isdir(path) and not is_hub_id(path):
    raise UserError(unreachable)
  try:
    return transformers.AutoTokenizer.from_pretrained(path)
  except Exception as e:
    reason = str(e).splitlines()[0] if str(e) else type(e).__name__
    if not os.path.isdir(path):
      raise UserError(f"{unreachable} ({reason})") from None
    raise UserError(f"no tokenizer could be loaded from {config_key}={path!r} ({reason}); point "
                    f"{config_key} at a folder with the tokenizer files, or a hub id") from None


def is_text(config: ml_collections.ConfigDict) -> bool:
  """Whether data config `config` trains on plain text (data.template="text")."""
  return config.template == "text"


def _load(config: ml_collections.ConfigDict, path: str, split: str, key: str) -> list[Record]:
  fields = config.fields
  if is_text(config):
    documents = text.load_documents(
        path, split=split, text_field=fields.text, template="text", config_key=key,
        text_key="data.fields.text", what="plain-text data",
        fields=Fields(instruction=fields.instruction, input=fields.input, output=fields.output))
    return [Record(instruction="", input=document, output="") for document in documents]
  if config.format == "conversation":
    return conversations.load_conversations(path, split=split, field=fields.get("messages", ""),
                                            config_key=key)
  if config.format == "classification":
    return load_classification(path, split=split, labels=names(config.labels),
                               instruction=config.instruction, config_key=key,
                               text_field=fields.text, label_field=fields.label)
  return load_records(path, split=split, config_key=key, fields=Fields(
      instruction=fields.instruction, input=fields.input, output=fields.output))


@dataclasses.dataclass
class Splits:
  """Records of each split, and each record's index in the file(s) it came from."""
  records: dict[str, list[Record]]
  indices: dict[str, np.ndarray]
  sources: dict[str, str]  # split -> the config key it came from

  def __getitem__(self, split: str) -> list[Record]:
    return self.records[split]


def has_held_out(config: ml_collections.ConfigDict) -> bool:
  """Whether data config `config` names an eval or test split (its own data, or a
  share of data.path)."""
  return bool(config.eval_path or config.test_path
              or (config.path and (config.eval_size or config.test_size)))


def held_out_count(size: float, total: int) -> int:
  """data.eval_size / data.test_size: a fraction (< 1) of `total`, or a count."""
  return int(round(size * total)) if 0 < size < 1 else int(size)


def held_out_order(records: list[Record], seed: int, stratify: bool) -> np.ndarray:
  """An order of the records whose every prefix is a seeded sample; with `stratify`,
  a sample with each label's share (within one record) of the whole.

  Stratified: each label's records, in a random order, are spread evenly over
  [0, 1) (the j-th of n at (j + u) / n, u uniform per label); sorting by that
  position interleaves the labels in proportion.
  """
  rng = np.random.default_rng([seed, 1])
  if not stratify:
    return rng.permutation(len(records))
  position = np.empty(len(records))
  by_label: dict[str, list[int]] = {}
  for index, record in enumerate(records):
    by_label.setdefault(record.output, []).append(index)
  for label in sorted(by_label):
    members = np.asarray(by_label[label])
    shuffled = members[rng.permutation(len(members))]
    position[shuffled] = (np.arange(len(members)) + rng.random()) / len(members)
  return np.argsort(position, kind="stable")


def split_records(config: ml_collections.ConfigDict) -> Splits:
  """Training, eval and test records: data.eval_path / data.test_path, or data.eval_size /
  data.test_size records of data.path held out (stratified by label for classification)."""
  records = _load(config, config.path, config.split, "data.path")
  exclude = names(config.get("exclude", ()))
  source = None  # each kept record's index in data.path, when data.exclude dropped some
  if exclude:  # whatever is evaluated elsewhere (neft_jax/data/dedup.py)
    records, kept = dedup.drop_excluded(records, exclude)
    source = np.asarray(kept, dtype=np.int64)
  out = Splits({}, {}, {})
  held_out = {}
  for split, path_key, size_key in (("eval", "eval_path", "eval_size"),
                                    ("test", "test_path", "test_size")):
    path, size = config[path_key], config[size_key]
    if path:
      out.records[split] = _load(config, path, config[f"{split}_split"],
                                 f"data.{path_key}")
      out.indices[split] = np.arange(len(out.records[split]))
      out.sources[split] = f"data.{path_key}"
    else:
      held_out[split] = held_out_count(size, len(records)) if size else 0
  if sum(held_out.values()) >= len(records):
    sizes = " and ".join(f"data.{s}_size={config[s + '_size']}" for s in held_out if held_out[s])
    raise UserError(f"{sizes} {'leave' if ' and ' in sizes else 'leaves'} no training records "
                    f"out of {len(records)}")
  order = held_out_order(records, config.split_seed,
                         stratify=config.format == "classification")
  start = 0
  taken = np.zeros(len(records), bool)
  for split in ("test", "eval"):  # the test split first: a larger eval split leaves it as it is
    if split in held_out:
      chosen = np.sort(order[start:start + held_out[split]])
      start += held_out[split]
      taken[chosen] = True
      out.records[split] = [records[i] for i in chosen]
      out.indices[split] = chosen
      out.sources[split] = "data.path"
  out.indices["train"] = np.flatnonzero(~taken)
  fraction = config.get("train_fraction", 1.0)
  if fraction < 1:  # a seeded (stratified) share of the training split, the same for every seed
    train = out.indices["train"]
    count = max(1, int(round(fraction * len(train))))
    order = held_out_order([records[i] for i in train], config.split_seed + 1,
                           stratify=config.format == "classification")
    out.indices["train"] = train[np.sort(order[:count])]
    log.info("data: data.train_fraction=%g keeps %d of %d training records", fraction, count,
             len(train))
  out.records["train"] = [records[i] for i in out.indices["train"]]
  out.sources["train"] = "data.path"
  if source is not None:  # indices into data.path's file(s), as without data.exclude
    for split, where in out.sources.items():
      if where == "data.path":
        out.indices[split] = source[out.indices[split]]
  return out


@dataclasses.dataclass
class NoiseReport:
  """What data.noise changed: the manifest (indices into each split's source) and the
  realized rates of each split corrupted."""
  manifest: list[dict]
  realized: dict[str, noise.Realized]

  def metrics(self) -> dict[str, float]:
    """The realized rates for metrics.jsonl: noise_{split}_{record_rate, ...}."""
    return {f"noise_{split}_{name}": value for split, realized in self.realized.items()
            for name, value in realized.as_dict().items()}


FIELD_ALIASES = {"text": "input", "label": "output"}  # classification's names for them


def add_noise(config: ml_collections.ConfigDict, splits: Splits, seed: int
              ) -> tuple[Splits, NoiseReport | None]:
  """The splits with data.noise applied to the training split (and, with
  data.noise.eval, to the others, each with its own seed); the report."""
  settings = config.noise
  if settings.kind == "none":
    return splits, None
  noise_seed = seed if settings.seed == -1 else settings.seed
  fields = tuple(FIELD_ALIASES.get(f, f) for f in names(settings.fields))
  if is_text(config):  # one field, the document's text (a Record's input)
    if settings.kind == "label":
      raise UserError("data.noise.kind='label' needs labels, but data.template='text' trains on "
                      "plain text, which has none; use data.noise.kind='typo' or 'grammar'")
    if any(field != "input" for field in fields):
      raise UserError(f"data.noise.fields={list(names(settings.fields))} names a field plain text "
                      "does not have; with data.template='text' leave data.noise.fields empty "
                      "or name text")
  for field in fields:
    if field not in ("instruction", "input", "output"):
      raise UserError(f"data.noise.fields names {field!r}, which records do not have; name "
                      "instruction, input or output (for classification also text or label)")
  records, manifest, realized = dict(splits.records), [], {}
  corrupted = [s for s in SPLITS if s in records and (s == "train" or settings.eval)]
  for split in corrupted:
    split_seed = noise_seed if split == "train" else int(
        np.random.SeedSequence([noise_seed, SPLITS.index(split)]).generate_state(1)[0])
    try:
      records[split], changes, realized[split] = noise.corrupt(
          records[split], kind=settings.kind, rate=settings.rate, seed=split_seed, fields=fields,
          labels=names(config.labels), label_noise=settings.label_noise,
          typo_ops=names(settings.typo_ops), grammar_ops=names(settings.grammar_ops))
    except UserError as e:
      raise UserError(f"data.noise ({splits.sources[split]}, {split} split): {e}") from None
    for entry in changes:
      entry["index"] = int(splits.indices[split][entry["index"]])
      if is_text(config):
        entry["field"] = "text"
      manifest.append({"split": split, "source": splits.sources[split], **entry})
  return Splits(records, splits.indices, splits.sources), NoiseReport(manifest, realized)


@dataclasses.dataclass
class Data:
  """The tokenized splits (empty when a split has no records) and the noise report."""
  train: TokenizedSet
  eval: TokenizedSet
  test: TokenizedSet
  noise: NoiseReport | None = None


def tokenized_splits(config: ml_collections.ConfigDict, tokenizer, seed: int, *, bos: int | None
                     ) -> Data:
  """Every split, tokenized; `seed` is the run's (for data.noise.seed=-1);
  `bos` the model's start token (tokenize.start_token)."""
  templates.check_template(config.template, tokenizer)
  splits, report = add_noise(config, split_records(config), seed)
  sets = {}
  for name in SPLITS:
    records = splits.records.get(name, [])
    if is_text(config):
      sets[name] = data = text.tokenize_text(records, tokenizer, max_length=config.max_length,
                                             bos=bos)
      if records:
        log.info("%s: %d documents of plain text, %d longer than data.max_length=%d split into "
                 "%d chunks, %d dropped (no token to predict): %d examples", name, len(records),
                 data.num_split, config.max_length, data.num_chunks, data.num_dropped, len(data))
      continue
    if config.format == "conversation":
      sets[name] = data = conversations.tokenize_conversations(
          records, tokenizer, max_length=config.max_length, template=config.template, bos=bos,
          train_on=config.get("train_on", "all_assistant"))
      if records:
        log.info("%s: %d conversations, %d longer than data.max_length=%d cut after their last "
                 "assistant turn that fits, %d cut inside their first assistant turn, %d dropped "
                 "(no assistant token fits): %d examples", name, len(records),
                 data.num_cut_at_turn, config.max_length, data.num_truncated, data.num_dropped,
                 len(data))
      continue
    data = tokenize(records, tokenizer, max_length=config.max_length, template=config.template,
                    bos=bos)
    if data.num_truncated or data.num_dropped:
      log.warning("%s: %d of %d examples were cut at data.max_length=%d and %d dropped (prompt "
                  "alone too long)", name, data.num_truncated, len(records), config.max_length,
                  data.num_dropped)
    sets[name] = data
  if not len(sets["train"]):
    raise UserError(f"no training example fits data.max_length={config.max_length}")
  return Data(**sets, noise=report)
