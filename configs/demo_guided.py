"""The demo with guided dropout, end to end on CPU: the Fisher pass, then fine-tuning.

The run first makes the demo's data, tokenizer and model (configs/demo.py);
then, as `dropout.mode=guided` finds no fisher.json in the workdir, it runs the
Fisher pass of that model over `fisher.data_path` and writes
`{workdir}/fisher.json`; then it fine-tunes with every dropout site at its
guided rate (0.1 for the least informative site down to 0 for the most).

The Fisher pass should read general text that the model was pretrained on. The
demo's model is random and the demo has no other text, so here it reads the
demo's own training records as text: the pipeline is the paper's, the
corpus is not (see configs/gpt2_alpaca.py for a real one).

    python -m neft_jax.train --config=configs/demo_guided.py --workdir=runs/demo_guided
"""

from configs import demo


def get_config():
  config = demo.get_config()
  config.dropout.mode = "guided"
  config.dropout.max_rate = 0.1
  config.dropout.min_rate = 0.0
  config.fisher.data_path = "{workdir}/demo/data/train.json"
  config.fisher.num_examples = 256
  config.fisher.max_length = config.data.max_length
  config.fisher.batch_size = 8
  return config
