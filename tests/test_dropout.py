"""Dropout sites in the train step: rates per site, Bernoulli and Gaussian, only in
training, reproducible, and free when off; the rate plans and their config checks.

Mesh invariance and exact resumption with dropout on are in test_scale.py, whose
runs all have dropout on.
"""

import functools
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from neft_jax import defaults, dropout, optim, steps, train
from neft_jax.errors import UserError
from tests.test_cli_errors import with_value
from tests.test_steps import CFG, initial_state, make_batch, optim_config
from tests.test_train import shrunk_config

LAYERS = CFG.num_layers


def all_types(rate_of_layer):
  """Rates of every site type: embed 0.3, the layer types from rate_of_layer(kind, layer)."""
  rates = {"embed": np.float32(0.3)}
  for kind in dropout.LAYER_SITE_TYPES:
    rates[kind] = np.array([rate_of_layer(kind, i) for i in range(LAYERS)], np.float32)
  return rates


GUIDED_LIKE = all_types(lambda kind, i: 0.05 + 0.1 * i + 0.2 * dropout.LAYER_SITE_TYPES.index(kind))


@functools.cache
def jitted_step(distribution):
  """(state, jitted train step): one per distribution, compiled once per rates structure."""
  optimizer, lr = optim.optimizer(optim_config(), total_steps=10)
  graphdef, state = initial_state(optimizer)
  return state, jax.jit(steps.make_train_step(graphdef, optimizer, lr, steps.Noise(0.0),
                                              dropout_distribution=distribution))


def step_results(rates, distribution="bernoulli", key=0):
  state, step = jitted_step(distribution)
  new_state, metrics = step(state, make_batch(), jax.random.key(key), rates)
  return float(metrics["loss"]), new_state


def sites_seen(rates, distribution):
  """Every site's (type, rate, kept fraction, mean and variance of out / x, count)
  in one training forward pass of 8 rows of 16 tokens (two packed segments and
  padding, as the train step feeds it), recorded as the decoder applies them."""
  seen = []

  def record(self, kind, x):
    out = dropout.Dropout.__call__(self, kind, x)
    if self.on(kind):
      nonzero = x != 0  # attention probabilities are exact zeros where masked
      ratio = jnp.where(nonzero, out / jnp.where(nonzero, x, 1), 0).astype(jnp.float32)
      count = nonzero.sum()
      mean = ratio.sum() / count
      jax.debug.callback(lambda *v: seen.append((kind, *map(float, v))), self.rates[kind],
                         (nonzero & (out != 0)).sum() / count, mean,
                         jnp.where(nonzero, (ratio - mean) ** 2, 0).sum() / count, count)
    return out

  class Recording(dropout.Dropout):
    __call__ = record

  graphdef, state = initial_state(optim.optimizer(optim_config(), total_steps=1)[0])
  batch = jax.tree.map(lambda x: x[0], make_batch(accum=1, rows=8))
  forward = jax.jit(lambda params, key: nnx.merge(graphdef, params).hidden_states(
      batch["input_ids"], segment_ids=batch["segment_ids"],
      dropout=Recording(key, rates, distribution)))
  jax.block_until_ready(forward(state.params, jax.random.key(0)))
  return seen


def tolerance(p, n):
  """Five standard errors of a kept fraction of n draws at rate p."""
  return 5 * np.sqrt(p * (1 - p) / n)


def test_bernoulli_drops_each_site_at_its_rate():
  seen = sites_seen(GUIDED_LIKE, "bernoulli")
  assert len(seen) == 1 + 3 * LAYERS  # embed, then 3 sites per layer
  expected = [0.3] + [float(r) for kind in dropout.LAYER_SITE_TYPES for r in GUIDED_LIKE[kind]]
  assert sorted(rate for _, rate, *_ in seen) == pytest.approx(sorted(expected))
  for kind, rate, kept, mean, _, count in seen:
    assert abs(kept - (1 - rate)) < tolerance(rate, count), (kind, rate, kept, count)
    # Inverted dropout: kept values are scaled by 1 / (1 - p), so the mean ratio is ~1.
    assert abs(mean - 1) < 5 * np.sqrt(rate / (1 - rate) / count), (kind, rate, mean)


def test_gaussian_has_mean_one_and_variance_p_over_1_minus_p_and_off_types_are_not_drawn():
  layer_types = {kind: GUIDED_LIKE[kind] for kind in dropout.LAYER_SITE_TYPES}  # embed off
  seen = sites_seen(layer_types, "gaussian")
  assert [kind for kind, *_ in seen] == list(dropout.LAYER_SITE_TYPES) * LAYERS
  for kind, rate, kept, mean, variance, count in seen:
    sigma2 = rate / (1 - rate)
    assert kept == 1.0  # nothing is zeroed
    assert abs(mean - 1) < 5 * np.sqrt(sigma2 / count), (kind, rate, mean)
    # A sample variance of n normals has standard error sqrt(2 / n) sigma^2.
    assert abs(variance - sigma2) < 5 * np.sqrt(2 / count) * sigma2, (kind, rate, variance)


@pytest.mark.parametrize("distribution", dropout.DISTRIBUTIONS)
def test_rates_of_zero_are_bitwise_no_dropout(distribution):
  zeros = jax.tree.map(np.zeros_like, GUIDED_LIKE)
  loss_none, state_none = step_results(None)
  loss_zero, state_zero = step_results(zeros, distribution)
  assert loss_zero == loss_none
  for a, b in zip(jax.tree.leaves(state_none.params), jax.tree.leaves(state_zero.params)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_same_key_same_masks_and_another_key_other_masks():
  first, _ = step_results(GUIDED_LIKE, key=3)
  again, _ = step_results(GUIDED_LIKE, key=3)
  other, _ = step_results(GUIDED_LIKE, key=4)
  none, _ = step_results(None, key=3)
  assert first == again
  assert other != first and none != first


def test_eval_step_never_drops():
  """The eval step takes no dropout: the train step's loss without dropout is
  the eval step's mean over the same tokens, and with dropout it is not."""
  graphdef, state = initial_state(optim.optimizer(optim_config(), total_steps=1)[0])
  eval_step = jax.jit(steps.make_eval_step(graphdef))
  sums = [eval_step(state.params, jax.tree.map(lambda x: x[i], make_batch())) for i in range(2)]
  mean = sum(float(s["loss_sum"]) for s in sums) / sum(int(s["tokens"]) for s in sums)
  assert step_results(None)[0] == pytest.approx(mean, rel=1e-6)
  assert step_results(GUIDED_LIKE)[0] != pytest.approx(mean, rel=1e-3)


# Rate plans ------------------------------------------------------------------------------

def settings(**changes):
  section = defaults.base().dropout
  for key, value in changes.items():
    section[key] = value
  return section


def test_uniform_and_hf_rates_follow_the_site_types():
  gpt2 = CFG.__class__(**{**CFG.__dict__, "family": "gpt2", "hf_dropout": (
      ("embed", 0.1), ("attention_probs", 0.2), ("attention_output", 0.3), ("mlp_output", 0.3))})
  rates = dropout.site_rates(settings(mode="hf", sites="embed,attention_probs,mlp_output"), gpt2)
  assert rates == {"embed": 0.1, "layers.0.attention_probs": 0.2, "layers.0.attention_output": 0.0,
                   "layers.0.mlp_output": 0.3, "layers.1.attention_probs": 0.2,
                   "layers.1.attention_output": 0.0, "layers.1.mlp_output": 0.3}
  uniform = dropout.site_rates(settings(mode="uniform", rate=0.25, sites="attention_output"), CFG)
  assert [site for site, r in uniform.items() if r] == ["layers.0.attention_output",
                                                       "layers.1.attention_output"]
  assert set(uniform.values()) == {0.0, 0.25}
  assert dropout.rates_by_type(dropout.site_rates(settings(mode="none"), CFG), LAYERS) == {}
  by_type = dropout.rates_by_type(uniform, LAYERS)
  assert list(by_type) == ["attention_output"] and by_type["attention_output"].shape == (LAYERS,)


def test_guided_rates_are_linear_in_the_rank():
  scores = {"embed": 5.0, "layers.0.attention_probs": 1.0, "layers.0.attention_output": 3.0,
            "layers.0.mlp_output": 1.0, "layers.1.attention_probs": 9.0,
            "layers.1.attention_output": 0.5, "layers.1.mlp_output": 2.0}
  rates = dropout.guided_rates(scores, max_rate=0.1, min_rate=0.0)
  # Ascending: 0.5, 1.0 (attention_probs first: site order), 1.0, 2.0, 3.0, 5.0, 9.0.
  order = ["layers.1.attention_output", "layers.0.attention_probs", "layers.0.mlp_output",
           "layers.1.mlp_output", "layers.0.attention_output", "embed", "layers.1.attention_probs"]
  assert [rates[site] for site in order] == pytest.approx([0.1 - 0.1 * r / 6 for r in range(7)])
  assert rates["layers.1.attention_probs"] == 0.0 and rates["layers.1.attention_output"] == 0.1
  assert dropout.guided_rates({"embed": 2.0}, 0.1, 0.02) == {"embed": 0.1}
  # Ranked over the site types that are on only.
  on = dropout.site_rates(settings(mode="guided", sites="mlp_output", min_rate=0.02), CFG, scores)
  assert on["layers.0.mlp_output"] == 0.1 and on["layers.1.mlp_output"] == 0.02
  assert on["embed"] == 0.0


@pytest.mark.parametrize("key, value, message", [
    ("dropout.mode", "random", "dropout.mode='random' is not one of 'none', 'uniform', 'hf', 'guided'"),
    ("dropout.distribution", "uniform", "dropout.distribution='uniform' is not one of 'bernoulli', 'gaussian'"),
    ("dropout.sites", "embed,ffn", "dropout.sites='embed,ffn' has unknown site type 'ffn'; use a "
     "comma-separated list of embed, attention_probs, attention_output, mlp_output"),
    ("dropout.rate", 1.0, "dropout.rate=1.0 must be in [0, 1)"),
    ("dropout.max_rate", -0.1, "dropout.max_rate=-0.1 must be in [0, 1)"),
    ("dropout.min_rate", 0.2, "dropout.min_rate=0.2 is more than dropout.max_rate=0.1"),
])
def test_bad_dropout_setting_is_one_line_before_anything_is_written(tmp_path, key, value, message):
  config = with_value(shrunk_config(str(tmp_path / "assets")), key, value)
  with pytest.raises(UserError) as info:
    train.train(config, str(tmp_path / "run"))
  assert str(info.value) == f"{message} (set them in the config file or with --config.KEY=VALUE)"
  assert not (tmp_path / "run").exists()


def test_fisher_json_of_another_model_stops_training_before_any_checkpoint(tmp_path):
  """A fisher.json for 3 layers given to a 4-layer model (the demo's)."""
  fisher = tmp_path / "fisher.json"
  fisher.write_text(json.dumps({"sites": dict.fromkeys(dropout.site_names(3), 1.0)}))
  config = with_value(shrunk_config(str(tmp_path / "assets")), "dropout.mode", "guided")
  config = with_value(config, "dropout.fisher", str(fisher))
  with pytest.raises(UserError) as info:
    train.train(config, str(tmp_path / "run"))
  assert str(info.value).startswith(
      f"{fisher} scores the 10 dropout sites of a 3-layer model, but this model has 4 layers "
      "(13 sites); run python -m neft_jax.fisher")
  assert not (tmp_path / "run" / "checkpoints").exists()
  assert not (tmp_path / "run" / "config.json").exists()
