"""Writes the base model's pretraining corpus and the rt-polarity held-out sentences.

    python -m configs.replicate.prep_corpus [data=DIR,runs=DIR]

into RUNS (default runs/replicate; see configs/replicate/common.py):

  corpus.jsonl            one {"text": ...} document a line: the original-Alpaca
                          records (alpaca_small_2000.json) flattened to text
                          (instruction, input, output joined by a blank line), less
                          every record whose normalized (instruction, input) is in
                          the 100-record cleaned file or AlpacaEval's 805
                          instructions (neft_jax/data/dedup.py); then the training
                          split of the rt-polarity sentences (common.SENTIMENT_SPLIT)
  heldout_sentences.txt   the eval and test sentences of that split, one a line:
                          configs/replicate/base.py excludes them again (data.exclude)
  alpaca_train_sample.json  the first TRAIN_SAMPLE records of study A's training data
                          (the cleaned 4,900 less the held-out 100 and AlpacaEval):
                          its test split, scored without noise after training, is
                          study A's training loss without NEFTune's noise
  alpaca_eval_sample.json EVAL_SAMPLE of AlpacaEval's 805 instructions, drawn once
                          by numpy's default_rng(EVAL_SAMPLE_SEED) and kept in file
                          order, with text-davinci-003's outputs as references (for
                          ROUGE-L) and their `dataset`: study A's evaluate prompts

It prints the counts. The order is fixed (Alpaca in file order, then the
negative and the positive sentences in file order), so the file is the same
bytes every time.
"""

import json
import logging
import os
import sys

import numpy as np

from configs.replicate import common
from neft_jax import cli, defaults
from neft_jax.data import dedup, pipeline, templates
from neft_jax.data.sources import load_records
from neft_jax.errors import UserError

TRAIN_SAMPLE = 200
EVAL_SAMPLE, EVAL_SAMPLE_SEED = 200, 0


def alpaca_eval_sample(path: str) -> list[dict]:
  """The fixed sample of AlpacaEval's instructions (see the module's doc)."""
  with open(path, encoding="utf-8") as f:
    records = json.load(f)
  chosen = np.sort(np.random.default_rng(EVAL_SAMPLE_SEED).choice(len(records), EVAL_SAMPLE,
                                                                  replace=False))
  return [{key: records[i][key] for key in ("instruction", "output", "dataset")} for i in chosen]


def sentiment_splits(paths):
  data = defaults.base().data
  data.path = paths["sentiment"]
  data.format = "classification"
  data.labels = ("negative", "positive")
  data.instruction = common.SENTIMENT_INSTRUCTION
  data.update(common.SENTIMENT_SPLIT)
  return pipeline.split_records(data)


def main(arg: str = "") -> dict[str, int]:
  logging.basicConfig(level=logging.INFO, format="%(message)s")
  opts = common.options(arg)
  paths = common.files(opts)
  alpaca = load_records(paths["alpaca_original"])
  kept, _ = dedup.drop_excluded(alpaca, (paths["alpaca_heldout"], paths["alpaca_eval"]),
                                      what=paths["alpaca_original"])
  dropped = len(alpaca) - len(kept)
  splits = sentiment_splits(paths)
  documents = [templates.flatten(r) for r in kept] + [r.input for r in splits["train"]]
  os.makedirs(opts["runs"], exist_ok=True)
  with open(paths["corpus"], "w", encoding="utf-8") as f:
    for document in documents:
      f.write(json.dumps({"text": document}, ensure_ascii=False) + "\n")
  held_out = [r.input for split in ("eval", "test") for r in splits[split]]
  with open(paths["heldout_sentences"], "w", encoding="utf-8") as f:
    f.write("".join(sentence + "\n" for sentence in held_out))
  train, _ = dedup.drop_excluded(load_records(paths["alpaca_train"]),
                                 (paths["alpaca_heldout"], paths["alpaca_eval"]),
                                 what=paths["alpaca_train"])
  sample = [dict(instruction=r.instruction, input=r.input, output=r.output)
            for r in train[:TRAIN_SAMPLE]]
  with open(paths["alpaca_train_sample"], "w", encoding="utf-8") as f:
    json.dump(sample, f, indent=1, ensure_ascii=False)
  eval_sample = alpaca_eval_sample(paths["alpaca_eval"])
  with open(paths["alpaca_eval_sample"], "w", encoding="utf-8") as f:
    json.dump(eval_sample, f, indent=1, ensure_ascii=False)
  counts = dict(train_sample=len(sample), eval_sample=len(eval_sample), alpaca=len(kept), alpaca_dropped=dropped, sentences=len(splits["train"]),
                held_out_sentences=len(held_out), documents=len(documents))
  print(f"{paths['corpus']}: {len(kept)} Alpaca records ({dropped} dropped as evaluated "
        f"elsewhere) + {len(splits['train'])} rt-polarity training sentences = "
        f"{len(documents)} documents; {paths['heldout_sentences']}: {len(held_out)} held-out "
        f"sentences; {paths['alpaca_train_sample']}: {len(sample)} training records; "
        f"{paths['alpaca_eval_sample']}: {len(eval_sample)} AlpacaEval instructions")
  return counts


if __name__ == "__main__":
  try:
    main(sys.argv[1] if len(sys.argv) > 1 else "")
  except UserError as e:
    cli.fail(f"{e} (the shared data folder is the data=DIR argument, default "
             "$NEFT_JAX_SHARED_DATA or ../shared/data)")
