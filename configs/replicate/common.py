"""What the miniature replications (issue 14) share: options, data files, splits, the base.

Every replicate/study config takes the same argument, big_vision style:

    --config=configs/study/neftune.py:data=DIR,runs=DIR

  data   the shared data folder (default: $NEFT_JAX_SHARED_DATA, else ../shared/data)
  runs   where the replications' own files are (default: runs/replicate), relative to
         the repository root: corpus.jsonl, heldout_sentences.txt,
         alpaca_train_sample.json and alpaca_eval_sample.json
         (configs/replicate/prep_corpus.py), base/ (the pretraining run of
         configs/replicate/base.py), base_hf/ (its export, the studies' model.path)
         and fisher.json (the Fisher scores of the pretraining corpus, for study C), and
         study_neftune/, study_noise_types/ and study_guided_dropout/, the studies'
         --workdir, which configs/replicate/report.py reads

  model  optional: a real Hugging Face model (a folder or hub id: openai-community/gpt2,
         Qwen/Qwen2-1.5B, meta-llama/Llama-2-7b-hf) makes each study its full-scale
         version (full_scale): that model in bfloat16, FSDP over every device, the papers'
         recipes for 3 epochs. Study C's Fisher file is then RUNS/fisher_<model name>.json

The rt-polarity split is fixed here once for the corpus and studies B and C:
SENTIMENT_SPLIT holds 5% of the 10,662 sentences out for test (533) and 2% for
eval (213), stratified by label, split_seed 0. The pretraining corpus takes only
the rest (the training split), so no evaluated sentence is pretrained on.
"""

import os

SENTIMENT_SPLIT = dict(test_size=0.05, eval_size=0.02, split_seed=0)
SENTIMENT_INSTRUCTION = "Classify the sentiment of this movie review as positive or negative."

# The base model of configs/replicate/base.py: 3.15M parameters, 6 layers.
BASE_MODEL = dict(embed_dim=192, num_layers=6, num_heads=6, num_kv_heads=2, head_dim=32,
                  mlp_dim=512, max_positions=256, initializer_range=0.08)


def options(arg: str = "") -> dict[str, str]:
  """"data=DIR,runs=DIR" -> {"data": ..., "runs": ...} with the defaults filled in."""
  parsed = {"data": os.environ.get("NEFT_JAX_SHARED_DATA", os.path.join("..", "shared", "data")),
            "runs": os.path.join("runs", "replicate"), "model": ""}
  for option in [part.strip() for part in (arg or "").split(",") if part.strip()]:
    key, equals, value = option.partition("=")
    if not equals or key not in parsed:
      raise ValueError(f"unknown option {option!r}; use data=DIR (the shared data folder), "
                       "runs=DIR (the replications' files, default runs/replicate) and/or "
                       "model=PATH (a real model: the full-scale study)")
    parsed[key] = value
  return parsed


def files(opts: dict[str, str]) -> dict[str, str]:
  """Every file the replications read or write, by role."""
  data, runs = opts["data"], opts["runs"]
  return dict(
      alpaca_original=os.path.join(data, "alpaca", "alpaca_small_2000.json"),
      alpaca_train=os.path.join(data, "alpaca", "alpaca_cleaned_0100_4999.json"),
      alpaca_heldout=os.path.join(data, "alpaca", "alpaca_cleaned_0000_0099.json"),
      alpaca_eval=os.path.join(data, "alpaca_eval", "text_davinci_003_model_outputs.json"),
      sentiment=os.path.join(data, "sentiment"),
      corpus=os.path.join(runs, "corpus.jsonl"),
      heldout_sentences=os.path.join(runs, "heldout_sentences.txt"),
      alpaca_train_sample=os.path.join(runs, "alpaca_train_sample.json"),
      alpaca_eval_sample=os.path.join(runs, "alpaca_eval_sample.json"),
      base_run=os.path.join(runs, "base"),
      base_model=os.path.join(runs, "base_hf"),
      fisher=os.path.join(runs, f"fisher_{os.path.basename(os.path.normpath(opts['model']))}.json"
                          if opts.get("model") else "fisher.json"),
  )


# The papers' recipes at full scale (full_scale): study A is the NEFTune paper's Llama-2-7B
# recipe (configs/llama2_alpaca.py: batch 128, 512 tokens, 5e-5, 3% warmup, answers of up to
# 512 tokens); studies B and C are configs/sentiment.py's (batch 32, 2e-5).
FULL_SCALE_NEFTUNE = {"train.batch_size": 128, "data.max_length": 512,
                      "optim.learning_rate": 5e-5, "optim.warmup_ratio": 0.03,
                      "generate.max_new_tokens": 512}
FULL_SCALE_SENTIMENT = {"train.batch_size": 32, "optim.learning_rate": 2e-5}


def full_scale(config, model: str, recipe: dict) -> None:
  """Makes a study's base the full-scale one in place: `model` in bfloat16 compute (float32
  parameters), FSDP over every device with remat, 3 epochs of the data (no step count),
  and the recipe's dotted keys."""
  from neft_jax.study import spec
  config.model.path = model
  config.model.param_dtype, config.model.dtype = "float32", "bfloat16"
  config.model.remat = "dots_no_batch"
  config.mesh.data, config.mesh.fsdp = 1, -1
  config.train.steps, config.train.epochs = 0, 3
  config.checkpoint.every_steps = 500
  for key, value in recipe.items():
    spec.set_key(config, key, value, "the full-scale recipe")


def sentiment_config(opts: dict[str, str]):
  """Studies B and C's base: rt-polarity as instruction tuning of the pretrained base, with
  SENTIMENT_SPLIT, from configs/sentiment.py's task definition."""
  from configs import sentiment
  paths = files(opts)
  config = sentiment.get_config(f"clean,data={paths['sentiment']}")
  config.model.path = paths["base_model"]
  config.model.param_dtype = config.model.dtype = "float32"
  config.data.update(SENTIMENT_SPLIT)
  config.data.instruction = SENTIMENT_INSTRUCTION
  # The base's 2,048-token BPE makes a prompt up to about 200 tokens: 160 dropped 889 training
  # and 46 test examples, 192 still 7 and 1; 256 (the base's positions) keeps every one.
  config.data.max_length = 256
  config.data.packing = True
  config.neftune.alpha = 0.0
  config.train.epochs = 1  # the studies set train.steps, which wins
  config.train.batch_size = 10  # 2,560 tokens a step, about 30 sentences
  config.train.log_every = 5
  config.train.eval_every = 0  # eval after training only:
  # every cell starts from the same base, so its step-0 scores are the same (not scored), and
  # the label scores alone are the metrics (no held-out loss pass): 164 s a cell with both,
  # which would put study B at 34 minutes.
  config.train.eval_at_start = False
  config.eval.loss = False
  config.optim.learning_rate = 1e-3
  config.optim.warmup_ratio = 0.1
  config.checkpoint.every_steps = 20
  return config
