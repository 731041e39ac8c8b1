"""The Fisher pass (neft_jax.information, python -m neft_jax.fisher).

The diagonal equals transformers' per-example squared gradients (PyTorch, one
example at a time) tensor by tensor under the Hugging Face names, and a plain
per-example loop in JAX; site scores follow their definition; a fisher.json
that does not fit the model, and Fisher data with no text, are one error.
"""

import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import nnx
from safetensors.numpy import load_file

from neft_jax import defaults, dropout, information, sharding
from neft_jax.demo import train_tokenizer
from neft_jax.errors import UserError
from neft_jax.models import hf_io
from neft_jax.models.config import ModelConfig
from tests import tiny_models

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOLERANCE = 1e-4  # relative to each tensor's largest entry, float32
MAX_LENGTH = 16
# The CPU backend's optimizations cost most of a tiny model's compile time, and change
# no result the tests compare at their tolerance.
FAST_COMPILE = {"xla_backend_optimization_level": 0}
# Documents of the pass: one of a single token (skipped), one longer than MAX_LENGTH
# (cut), and one blank line (skipped).
DOCUMENTS = ["the quick brown fox jumps over the lazy dog", "a stitch in time saves nine",
             "x", "", "all that glitters is not gold, all that wanders is not lost and so on",
             "to be or not to be"]


def tiny_checkpoint(folder, family: str, **overrides):
  """A tiny random HF model (2 layers, width 32) with a 300-token BPE tokenizer; the torch model."""
  tokenizer = train_tokenizer(DOCUMENTS * 3, 300, 2)
  width = dict(n_embd=32) if family == "gpt2" else dict(hidden_size=32, intermediate_size=64)
  model = tiny_models.build(family, folder, vocab_size=len(tokenizer), bos_token_id=tokenizer.bos_token_id,
                            eos_token_id=tokenizer.eos_token_id, **width, **overrides)
  tokenizer.save_pretrained(folder)
  return model, tokenizer


def fisher_config(model_path, data_path):
  config = defaults.base()
  config.model.path, config.model.dtype = str(model_path), "float32"
  config.fisher.data_path, config.fisher.max_length = str(data_path), MAX_LENGTH
  config.fisher.batch_size = 3  # two micro-batches, the last with empty rows
  config.mesh.num_devices = 1
  return config


def torch_fisher(model, examples):
  """transformers' reference: squared gradients of one example at a time, averaged."""
  sums = {name: torch.zeros_like(p) for name, p in model.named_parameters()}
  for ids in examples:
    model.zero_grad()
    input_ids = torch.tensor(np.asarray(ids, np.int64)[None])
    model(input_ids, labels=input_ids).loss.backward()  # mean CE of the next tokens
    for name, p in model.named_parameters():
      sums[name] += p.grad.detach() ** 2
  return {name: (s / len(examples)).numpy() for name, s in sums.items()}


def assert_close(ours: dict, reference: dict):
  assert sorted(ours) == sorted(reference)
  for name in reference:
    assert ours[name].shape == reference[name].shape, name
    scale = np.abs(reference[name]).max()
    assert scale > 0, name  # every tensor gets a gradient
    np.testing.assert_allclose(ours[name], reference[name], rtol=0, atol=TOLERANCE * scale,
                               err_msg=name)


@pytest.mark.parametrize("family", ["gpt2", "llama", "qwen2_tied"])
def test_pass_matches_transformers_per_example_gradients(tmp_path, family):
  """Through the whole pass and the saved diagonal: GPT-2 (fused, transposed c_attn, tied,
  positions), Llama (untied head, BOS, GQA), Qwen2 (tied, q/k/v biases)."""
  torch_model, tokenizer = tiny_checkpoint(tmp_path / "model", family)
  (tmp_path / "docs.txt").write_text("\n".join(DOCUMENTS))
  content = information.fisher_pass(fisher_config("{workdir}/model", "{workdir}/docs.txt"),
                                    str(tmp_path / "out" / "fisher.json"), save_diagonal=True,
                                    workdir=tmp_path, progress=False, compiler_options=FAST_COMPILE)
  # The examples, tokenized here as transformers would: Llama's tokenizer adds BOS
  # (which makes "x" two tokens).
  with_bos = family == "llama"
  examples = [ids[:MAX_LENGTH] for ids in
              tokenizer(DOCUMENTS, add_special_tokens=with_bos)["input_ids"] if len(ids) >= 2]
  assert content["num_examples"] == len(examples) == (5 if with_bos else 4)
  # Tokens repeat within examples: the step sums an example's gradient over the positions
  # of each token before squaring it (and with a tied head, adds the output layer's part).
  assert sum(len(set(ids)) < len(ids) for ids in examples) >= 2
  assert content["tokens"] == sum(map(len, examples)) and content["selection"] == "all"
  assert json.loads((tmp_path / "out" / "fisher.json").read_text()) == content
  diagonal = load_file(str(tmp_path / "out" / information.DIAGONAL_FILE))
  reference = torch_fisher(torch_model, examples)  # a tied head is one parameter there too
  assert_close(diagonal, reference)
  assert list(content["sites"]) == dropout.site_names(2)
  assert content["rates"] == dropout.guided_rates(content["sites"], 0.1, 0.0)


def test_vmapped_sharded_pass_equals_a_plain_loop(tmp_path):
  """Examples over the batch axes (fsdp), parameters over fsdp and tensor, micro-batches
  padded to two lengths (20; 16 with an empty row), tokens repeated within an example; the
  reference: jax.grad of one unpadded example at a time."""
  tiny_checkpoint(tmp_path, "llama")
  rng = np.random.default_rng(0)
  examples = [rng.integers(0, 300, size).astype(np.int32) for size in (5, 20, 20)]
  examples[0] = np.array([7, 3, 7, 7, 3], np.int32)  # repeated tokens, and one twice in a row
  assert [information.padded_length(n, 20) for n in (20, 5)] == [20, 16]
  mesh = sharding.make_mesh(data=1, fsdp=2, tensor=2, devices=jax.devices()[:4])
  model = hf_io.load_hf(str(tmp_path), mesh=mesh)
  graphdef, params = nnx.split(model, nnx.Param)
  with pytest.raises(UserError, match="fisher.batch_size=3 does not divide over the 2 "
                     "data-parallel devices of 1 process"):
    information.fisher_diagonal(graphdef, params, examples, mesh=mesh,
                                rules=sharding.DEFAULT_RULES, batch_size=3)
  diagonal, _ = information.fisher_diagonal(graphdef, params, examples, mesh=mesh,
                                            rules=sharding.DEFAULT_RULES, batch_size=2,
                                            compiler_options=FAST_COMPILE)
  # Without the untied head (what a pass that saves no diagonal computes): every
  # other entry is the same, and the head's is NaN, not a made-up number.
  no_head, _ = information.fisher_diagonal(graphdef, params, examples, mesh=mesh,
                                           rules=sharding.DEFAULT_RULES, batch_size=2,
                                           compiler_options=FAST_COMPILE, head=False)
  grad = jax.jit(jax.grad(lambda p, ids: information.example_loss(
      graphdef, p, ids, jnp.ones_like(ids))))
  flat = lambda state: {n: np.asarray(v, np.float64) for n, v in information._flat(state).items()}
  params = jax.device_put(params, jax.devices()[0])  # the loop on one device
  loop, compiled = {}, {}
  for ids in examples:
    if len(ids) not in compiled:
      compiled[len(ids)] = grad.lower(params, ids).compile(FAST_COMPILE)
    grads = flat(compiled[len(ids)](params, ids))
    loop = {n: loop.get(n, 0.0) + g**2 / len(examples) for n, g in grads.items()}
  assert_close(flat(diagonal), loop)
  no_head = flat(no_head)
  assert np.isnan(no_head.pop("lm_head")).all()
  assert_close(no_head, {n: v for n, v in loop.items() if n != "lm_head"})


def test_padded_lengths_are_few():
  lengths = [information.padded_length(n, 512) for n in range(2, 513)]
  assert sorted(set(lengths)) == [16, 32, 64, 128, 256, 512]
  assert all(n <= padded <= max(2 * n - 1, 16) for n, padded in zip(range(2, 513), lengths))
  assert information.padded_length(9, 12) == 12  # never past the longest example


# Site scores and rates ---------------------------------------------------------------

def tiny_config(**switches) -> ModelConfig:
  return ModelConfig(family="llama", vocab_size=11, embed_dim=4, num_layers=2, num_heads=2,
                     num_kv_heads=1, head_dim=2, mlp_dim=6, max_positions=8, **switches)


def known_diagonal(cfg: ModelConfig):
  """Every parameter's Fisher drawn at random (a tree like the model's); its flat dict."""
  _, abstract = hf_io.abstract_model(cfg)
  rng = np.random.default_rng(1)
  state = jax.tree.map(lambda a: jnp.asarray(rng.random(a.shape), jnp.float32), abstract)
  return state, {n: np.asarray(v, np.float64) for n, v in information._flat(state).items()}


def layer_mean(array, layer):
  return array[layer].mean()


def test_site_scores_untied_llama_by_hand():
  cfg = tiny_config(tie_embeddings=False)
  state, f = known_diagonal(cfg)
  assert "lm_head" in f and "final_norm.scale" in f  # in no site
  scores = information.site_scores(state, cfg)
  expected = {"embed": f["embed"].mean()}
  for i in range(2):
    expected[f"layers.{i}.attention_probs"] = np.mean([layer_mean(f[n], i) for n in (
        "layers.attn_norm.scale", "layers.attn.query.kernel", "layers.attn.key.kernel",
        "layers.attn.value.kernel")])
    expected[f"layers.{i}.attention_output"] = layer_mean(f["layers.attn.out.kernel"], i)
    expected[f"layers.{i}.mlp_output"] = np.mean([layer_mean(f[n], i) for n in (
        "layers.mlp_norm.scale", "layers.mlp.gate.kernel", "layers.mlp.up.kernel",
        "layers.mlp.down.kernel")])
  assert list(scores) == dropout.site_names(2)
  np.testing.assert_allclose([scores[s] for s in expected], list(expected.values()), rtol=1e-6)


def test_site_scores_tied_gpt2_layout_by_hand():
  """LayerNorm biases, every projection's bias, learned positions; the tied head is the embedding."""
  cfg = tiny_config(norm="layernorm", positions="learned", mlp="plain", qkv_bias=True,
                    out_bias=True, mlp_bias=True, tie_embeddings=True)
  state, f = known_diagonal(cfg)
  assert "lm_head" not in f
  scores = information.site_scores(state, cfg)
  assert scores["embed"] == pytest.approx(np.mean([f["embed"].mean(), f["pos_embed"].mean()]))
  for i in range(2):
    probs = [layer_mean(f[f"layers.{n}"], i) for n in (
        "attn_norm.scale", "attn_norm.bias", "attn.query.kernel", "attn.query.bias",
        "attn.key.kernel", "attn.key.bias", "attn.value.kernel", "attn.value.bias")]
    out = [layer_mean(f[f"layers.attn.out.{n}"], i) for n in ("kernel", "bias")]
    mlp = [layer_mean(f[f"layers.{n}"], i) for n in (
        "mlp_norm.scale", "mlp_norm.bias", "mlp.up.kernel", "mlp.up.bias", "mlp.down.kernel",
        "mlp.down.bias")]
    assert scores[f"layers.{i}.attention_probs"] == pytest.approx(np.mean(probs))
    assert scores[f"layers.{i}.attention_output"] == pytest.approx(np.mean(out))
    assert scores[f"layers.{i}.mlp_output"] == pytest.approx(np.mean(mlp))


def test_guided_rates_ranks_with_ties_and_one_site():
  scores = {"embed": 2.0, "layers.0.attention_probs": 1.0, "layers.0.attention_output": 1.0,
            "layers.0.mlp_output": 3.0, "layers.1.attention_probs": 0.5}
  rates = dropout.guided_rates(scores, max_rate=0.1, min_rate=0.02)
  # Ascending: 0.5, then the tie 1.0 in site order, 2.0, 3.0; linear in the rank.
  assert rates == pytest.approx({"layers.1.attention_probs": 0.1, "layers.0.attention_probs": 0.08,
                                 "layers.0.attention_output": 0.06, "embed": 0.04,
                                 "layers.0.mlp_output": 0.02})
  assert dropout.guided_rates({"embed": 5.0}, 0.1, 0.0) == {"embed": 0.1}


def write_fisher_json(path, num_layers):
  sites = dropout.site_names(num_layers)
  path.write_text(json.dumps({"sites": {s: float(i % 3) for i, s in enumerate(sites)},
                              "rates": {s: 0.5 for s in sites}}))


def test_guided_rates_are_recomputed_from_the_scores(tmp_path):
  write_fisher_json(tmp_path / "fisher.json", 1)  # scores 0, 1, 2, 0
  assert information.read_scores(str(tmp_path / "fisher.json"), 1) == {
      "embed": 0.0, "layers.0.attention_probs": 1.0, "layers.0.attention_output": 2.0,
      "layers.0.mlp_output": 0.0}
  rates = dropout.guided_rates(information.read_scores(str(tmp_path / "fisher.json"), 1),
                               max_rate=0.3, min_rate=0.0)
  assert list(rates) == dropout.site_names(1)
  assert rates == pytest.approx({"embed": 0.3, "layers.0.attention_probs": 0.1,
                                 "layers.0.attention_output": 0.0, "layers.0.mlp_output": 0.2})


def test_fisher_json_with_the_wrong_layer_count_is_one_error(tmp_path):
  path = tmp_path / "fisher.json"
  write_fisher_json(path, 2)
  with pytest.raises(UserError) as info:
    information.read_scores(str(path), 3)
  assert str(info.value) == (
      f"{path} scores the 7 dropout sites of a 2-layer model, but this model has 3 layers "
      "(10 sites); run python -m neft_jax.fisher for this model, or point dropout.fisher at its "
      "fisher.json")


def test_fisher_data_with_no_text_is_one_error_line(tmp_path):
  train_tokenizer(DOCUMENTS, 300, 2).save_pretrained(str(tmp_path / "model"))  # read before the model
  (tmp_path / "blank.txt").write_text("\n  \n\n")
  out = tmp_path / "out" / "fisher.json"
  result = subprocess.run(
      [sys.executable, "-m", "neft_jax.fisher", "--config=configs/gpt2_alpaca.py", f"--out={out}",
       f"--config.model.path={tmp_path / 'model'}",
       f"--config.fisher.data_path={tmp_path / 'blank.txt'}"],
      cwd=REPO, capture_output=True, text=True, timeout=120,
      env=os.environ | {"JAX_PLATFORMS": "cpu"})
  assert result.returncode == 1, result.stderr[-2000:]
  errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
  assert errors == [f"error: fisher.data_path='{tmp_path / 'blank.txt'}': Fisher data with no text "
                    "(every document is empty); give a file with at least one non-blank document"]
  assert result.stderr.splitlines()[-1] == errors[0] and "Traceback" not in result.stderr
  assert not out.parent.exists()
