"""The chunked output layer and loss give the losses, gradients and metrics of the whole one."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx
from jax.sharding import NamedSharding

from neft_jax import loss, sharding, steps
from neft_jax.models import Transformer, hf_io
from tests import tiny_models


def keep_gradients() -> optax.GradientTransformation:
  """An "optimizer" that leaves the parameters and keeps the last gradients as its state."""
  return optax.GradientTransformation(
      lambda params: jax.tree.map(jnp.zeros_like, params),
      lambda grads, state, params=None: (jax.tree.map(jnp.zeros_like, grads), grads))


def make_batch(vocab_size, accum=2, rows=2, length=21, seed=0):
  """Packed rows with padding; a length that no chunk size below divides."""
  rng = np.random.default_rng(seed)
  ids = rng.integers(0, vocab_size, (accum, rows, length)).astype(np.int32)
  segments = np.ones_like(ids)
  segments[..., 17:] = 0
  segments[0, 0, 7:17] = 2
  loss_mask = np.zeros_like(ids, bool)
  loss_mask[..., 3:7] = loss_mask[..., 10:17] = True
  return {"input_ids": jnp.asarray(ids), "segment_ids": jnp.asarray(segments),
          "loss_mask": jnp.asarray(loss_mask)}


def greedy_targets(model, batch, positions=(3, 4, 5)):
  """The input ids with the model's own argmax as the next token after `positions` of
  the first row, so that some predictions are right."""
  ids = np.array(batch["input_ids"])
  graphdef, state = nnx.split(model)
  # The weights are an argument, not constants folded into the compiled program.
  forward = jax.jit(lambda state, ids, segment_ids: nnx.merge(graphdef, state)(
      ids, segment_ids=segment_ids))
  for t in positions:  # the prediction at t depends only on the tokens up to t
    logits = forward(state, jnp.asarray(ids[0]), batch["segment_ids"][0])
    ids[0, 0, t + 1] = int(jnp.argmax(logits[0, t]))
  return jnp.asarray(ids)


@pytest.mark.parametrize("name", ["gpt2", "qwen2_untied"])
def test_chunked_loss_gradients_and_metrics_equal_the_whole(name, tmp_path):
  tiny_models.hf_config(name).save_pretrained(tmp_path)
  cfg = hf_io.read_config(str(tmp_path)).with_options(param_dtype="float32", dtype="float32")
  assert cfg.tie_embeddings == (name in ("gpt2", "qwen2_tied"))
  graphdef, params = nnx.split(Transformer(cfg, rngs=nnx.Rngs(0)), nnx.Param)
  optimizer = keep_gradients()
  state = steps.TrainState(jnp.zeros((), jnp.int32), params, optimizer.init(params))
  batch = make_batch(cfg.vocab_size)
  batch["input_ids"] = greedy_targets(nnx.merge(graphdef, params), batch)
  key = jax.random.key(3)

  def train_results(chunk_size):
    step = jax.jit(steps.make_train_step(graphdef, optimizer, optax.constant_schedule(0.0),
                                         steps.Noise(5.0), loss_chunk_size=chunk_size))
    new_state, metrics = step(state, batch, key)
    return metrics, new_state.opt_state

  def eval_results(chunk_size):
    eval_step = jax.jit(steps.make_eval_step(graphdef, loss_chunk_size=chunk_size))
    return eval_step(params, jax.tree.map(lambda x: x[0], batch))

  whole_metrics, whole_grads = train_results(0)
  whole_eval = eval_results(0)
  assert int(whole_eval["correct"]) > 0  # the accuracy check below compares something
  for chunk_size in (8,):  # three chunks, the last one padded
    metrics, grads = train_results(chunk_size)
    assert float(metrics["loss"]) == pytest.approx(float(whole_metrics["loss"]), rel=1e-6)
    assert float(metrics["grad_norm"]) == pytest.approx(float(whole_metrics["grad_norm"]), rel=1e-5)
    flat, whole_flat = dict(nnx.to_flat_state(grads)), dict(nnx.to_flat_state(whole_grads))
    assert flat.keys() == whole_flat.keys()
    # Rounding differs (the head's gradient is summed over chunks), so entries that
    # are zero up to rounding (e.g. of the key biases) compare against the largest.
    largest = max(float(jnp.abs(g.get_value()).max()) for g in whole_flat.values())
    for path, grad in flat.items():
      np.testing.assert_allclose(np.asarray(grad.get_value()), whole_flat[path].get_value(),
                                 rtol=1e-4, atol=1e-6 * largest, err_msg=str(path))
    chunked_eval = eval_results(chunk_size)
    assert float(chunked_eval["loss_sum"]) == pytest.approx(float(whole_eval["loss_sum"]), rel=1e-6)
    assert int(chunked_eval["tokens"]) == int(whole_eval["tokens"])
    assert int(chunked_eval["correct"]) == int(whole_eval["correct"])


@pytest.mark.parametrize("mesh_shape", [(1, 8, 1), (1, 1, 8), (2, 2, 2)])
def test_chunked_loss_is_the_same_on_every_mesh(mesh_shape):
  """Rows split over data and FSDP (the head's gradient summed per device), the head
  split over the vocabulary by tensor parallelism: the unsharded whole loss's values."""
  rng = np.random.default_rng(1)
  hidden = jnp.asarray(rng.normal(size=(8, 20, 16)), jnp.float32)
  head = jnp.asarray(rng.normal(size=(64, 16)) * 0.5, jnp.float32)
  targets = jnp.asarray(rng.integers(0, 64, (8, 20)), jnp.int32)
  mask = jnp.asarray(rng.random((8, 20)) < 0.7)

  def results(hidden, head, chunk_size):
    value, grads = jax.value_and_grad(loss.masked_loss_sum, argnums=(0, 1))(
        hidden, head, targets, mask, chunk_size)
    return value, grads, loss.token_losses_and_hits(hidden, head, targets, chunk_size)

  expected = jax.jit(results, static_argnums=2)(hidden, head, 0)
  mesh = sharding.make_mesh(*mesh_shape)
  place = lambda x, axes: jax.device_put(x, NamedSharding(
      mesh, sharding.logical_to_spec(axes, sharding.DEFAULT_RULES, x.shape, mesh)))
  with sharding.activation_rules(mesh, sharding.DEFAULT_RULES):
    chunked = jax.jit(results, static_argnums=2)(
        place(hidden, ("batch", "length", "embed")), place(head, ("vocab", "embed")), 8)
  for got, want in zip(jax.tree.leaves(chunked), jax.tree.leaves(expected)):
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-5, atol=1e-5)


def test_chunk_size_by_vocabulary_size():
  """-1 chunks the real families' vocabularies and keeps small ones whole; other values stand."""
  for vocab in (32_000, 50_257, 151_936):
    assert loss.chunk_size_for(-1, vocab) == loss.AUTO_CHUNK_SIZE
  assert loss.chunk_size_for(-1, 512) == 0
  assert loss.chunk_size_for(-1, loss.AUTO_MIN_VOCAB - 1) == 0
  assert loss.chunk_size_for(0, 151_936) == 0
  assert loss.chunk_size_for(32, 512) == 32
