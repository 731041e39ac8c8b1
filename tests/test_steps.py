"""The train step: noise only in training, accumulation, the loss it averages."""

import functools

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest
from flax import nnx

from neft_jax import optim, steps
from neft_jax.models import ModelConfig, Transformer

CFG = ModelConfig(family="llama", vocab_size=64, embed_dim=32, num_layers=2, num_heads=4,
                  num_kv_heads=2, head_dim=8, mlp_dim=64, max_positions=64, initializer_range=0.2)


def optim_config(**overrides):
  return ml_collections.ConfigDict(dict(
      learning_rate=1e-2, schedule="constant", warmup_ratio=0.0, weight_decay=0.0, b1=0.9,
      b2=0.999, eps=1e-8, grad_clip_norm=1.0) | overrides)


def make_batch(accum=2, rows=2, length=16, seed=0):
  rng = np.random.default_rng(seed)
  ids = rng.integers(0, 64, (accum, rows, length)).astype(np.int32)
  segments = np.ones_like(ids)
  segments[..., 12:] = 0  # padding
  segments[0, 0, 6:12] = 2  # a second packed example
  loss_mask = np.zeros_like(ids, bool)
  loss_mask[..., 3:6] = loss_mask[..., 9:12] = True
  return {"input_ids": jnp.asarray(ids), "segment_ids": jnp.asarray(segments),
          "loss_mask": jnp.asarray(loss_mask)}


def initial_state(optimizer):
  graphdef, params = nnx.split(Transformer(CFG, rngs=nnx.Rngs(0)), nnx.Param)
  return graphdef, steps.TrainState(jnp.zeros((), jnp.int32), params, optimizer.init(params))


OPTIMIZERS = {  # name -> (optimizer, learning-rate schedule)
    "adam": lambda: optim.optimizer(optim_config(), total_steps=10),
    # Plain SGD, so the updated parameters compare the gradients themselves (Adam's
    # first step divides by |g| and would amplify rounding in near-zero entries).
    "sgd": lambda: (optax.sgd(0.5), optax.constant_schedule(0.5)),
    "cosine_warmup": lambda: optim.optimizer(optim_config(schedule="cosine", warmup_ratio=0.5),
                                             total_steps=4),
}


@functools.cache
def jitted_step(alpha, optimizer_name):
  """(graphdef, initial state, schedule, jitted train step) for NEFTune's alpha and an
  optimizer of OPTIMIZERS; one per pair, shared by the tests, as each compile takes seconds."""
  optimizer, lr = OPTIMIZERS[optimizer_name]()
  graphdef, state = initial_state(optimizer)
  step = jax.jit(steps.make_train_step(graphdef, optimizer, lr, steps.Noise(alpha)))
  return graphdef, state, lr, step


def run_step(alpha, batch, key=0, optimizer="adam"):
  """One step from the initial state (never donated, so it serves every call)."""
  graphdef, state, _, step = jitted_step(alpha, optimizer)
  return graphdef, state, step(state, batch, jax.random.key(key))


def reference_loss(graphdef, params, batch):
  """Mean cross-entropy over response targets, computed directly in numpy."""
  total, count = 0.0, 0
  # The model's forward pass compiled once (op by op, every op compiles on its own).
  forward = jax.jit(lambda params, ids, segments: nnx.merge(graphdef, params)(
      ids, segment_ids=segments))
  for micro in range(batch["input_ids"].shape[0]):
    ids = np.asarray(batch["input_ids"][micro])
    segments = np.asarray(batch["segment_ids"][micro])
    logits = np.asarray(forward(params, ids, segments), np.float64)
    log_probs = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    for row in range(ids.shape[0]):
      for t in range(ids.shape[1] - 1):
        same = segments[row, t + 1] == segments[row, t] != 0
        if same and batch["loss_mask"][micro, row, t + 1]:
          total -= log_probs[row, t, ids[row, t + 1]]
          count += 1
  return total / count


def test_loss_is_the_mean_over_response_tokens_of_the_accumulated_batch():
  batch = make_batch()
  graphdef, state, (_, metrics) = run_step(0.0, batch)
  assert float(metrics["loss"]) == pytest.approx(reference_loss(graphdef, state.params, batch), rel=1e-5)
  assert int(metrics["loss_tokens"]) == int(steps.target_mask(batch).sum())


def test_train_step_adds_noise_and_eval_step_does_not():
  batch = make_batch()
  graphdef, state, (_, clean) = run_step(0.0, batch)
  _, _, (_, noisy) = run_step(5.0, batch, key=0)
  _, _, (_, noisy_again) = run_step(5.0, batch, key=0)
  _, _, (_, other_key) = run_step(5.0, batch, key=1)
  assert float(noisy["loss"]) != float(clean["loss"])
  assert float(noisy["loss"]) == float(noisy_again["loss"])
  assert float(noisy["loss"]) != float(other_key["loss"])
  # The eval step takes no key and gives the noiseless loss.
  eval_step = jax.jit(steps.make_eval_step(graphdef))
  sums = [eval_step(state.params, jax.tree.map(lambda x: x[i], batch)) for i in range(2)]
  eval_loss = sum(float(s["loss_sum"]) for s in sums) / sum(int(s["tokens"]) for s in sums)
  assert eval_loss == pytest.approx(float(clean["loss"]), rel=1e-6)


def test_accumulation_equals_one_big_batch():
  batch = make_batch(accum=2, rows=2)
  whole = jax.tree.map(lambda x: x.reshape(1, 4, -1), batch)
  _, _, (state_accum, m_accum) = run_step(0.0, batch, optimizer="sgd")  # see OPTIMIZERS
  _, _, (state_whole, m_whole) = run_step(0.0, whole, optimizer="sgd")
  assert float(m_accum["loss"]) == pytest.approx(float(m_whole["loss"]), rel=1e-6)
  assert float(m_accum["grad_norm"]) == pytest.approx(float(m_whole["grad_norm"]), rel=1e-5)
  for a, b in zip(jax.tree.leaves(state_accum.params), jax.tree.leaves(state_whole.params)):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-6)


def test_step_counter_and_learning_rate_schedule():
  _, state, (state, metrics) = run_step(0.0, make_batch(), optimizer="cosine_warmup")
  assert int(state.step) == 1
  assert float(metrics["learning_rate"]) == 0.0  # the first warmup step
  lr = jitted_step(0.0, "cosine_warmup")[2]
  assert float(lr(2)) == pytest.approx(1e-2) and float(lr(4)) == pytest.approx(0.0, abs=1e-9)


def test_weight_decay_skips_norms_and_biases():
  optimizer, _ = optim.optimizer(optim_config(weight_decay=0.1), total_steps=1)
  params = nnx.state(Transformer(CFG, rngs=nnx.Rngs(0)), nnx.Param)
  zero_grads = jax.tree.map(jnp.zeros_like, params)
  updates, _ = jax.jit(optimizer.update)(zero_grads, jax.jit(optimizer.init)(params), params)
  flat = dict(nnx.to_flat_state(updates))
  assert np.all(np.asarray(flat[("layers", "attn_norm", "scale")].get_value()) == 0)
  assert np.any(np.asarray(flat[("layers", "attn", "query", "kernel")].get_value()) != 0)
