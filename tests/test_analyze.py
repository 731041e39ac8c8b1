"""neft_jax.analyze and the comparison behind it: a planted change is found where it was made."""

import dataclasses

import jax
import numpy as np
import pytest
from flax import nnx

from neft_jax.analysis.compare import cka_sample, compare
from neft_jax.errors import UserError
from neft_jax.models import ModelConfig, Transformer

TINY = ModelConfig(family="llama", vocab_size=64, embed_dim=32, num_layers=4, num_heads=4,
                   num_kv_heads=2, head_dim=8, mlp_dim=64, max_positions=64)


def tiny_model(seed=0, cfg=TINY):
  return Transformer(cfg, rngs=nnx.Rngs(params=jax.random.key(seed)))


def probe_examples(count=6, seed=0):
  rng = np.random.default_rng(seed)
  return [rng.integers(1, TINY.vocab_size, size=int(n)) for n in rng.integers(5, 17, size=count)]


def with_changed_down_projection(model, layer):
  """A copy of `model` whose layer-`layer` MLP down-projection is perturbed, nothing else."""
  graphdef, state = nnx.split(model)
  state = jax.tree.map(lambda x: x, state)  # a copy
  kernel = state["layers"]["mlp"]["down"]["kernel"]
  noise = jax.random.normal(jax.random.key(7), kernel[...].shape[1:]) * 0.5
  kernel.set_value(kernel[...].at[layer].add(noise))
  return nnx.merge(graphdef, state)


def test_only_one_blocks_mlp_changed_shows_from_that_block_on():
  k = 1
  base = tiny_model()
  tuned = with_changed_down_projection(base, k)
  result = compare(base, {"tuned": tuned}, probe_examples(), rows=4, max_tokens=50, seed=3)
  weights = result.weights["tuned"]
  changed = {key for key, change in weights.tensors.items() if change.relative > 0}
  assert changed == {("layers.mlp.down.kernel", k)}
  assert weights.blocks[("mlp", k)].relative > 0 and weights.blocks[("attention", k)].relative == 0
  cka = result.cka_base["tuned"]  # hidden entry i is block i's input: block k's output is entry k + 1
  np.testing.assert_allclose(cka[:k + 1], 1.0, atol=1e-5)
  assert np.all(cka[k + 1:] < 1 - 1e-3), cka
  js = result.attention["tuned"]["js"]  # [layers, heads]: block k's attention precedes its MLP
  assert js.shape == (TINY.num_layers, TINY.num_heads)
  np.testing.assert_allclose(js[:k + 1], 0.0, atol=1e-7)
  assert np.all(js[k + 1:] > 1e-6), js
  np.testing.assert_allclose(result.attention["tuned"]["entropy_base"][:k + 1],
                             result.attention["tuned"]["entropy_tuned"][:k + 1], atol=1e-5)
  np.testing.assert_allclose(result.cka_to_last["base"][-1], 1.0, atol=1e-6)
  assert result.cka_tokens == 50 and result.examples == 6


def test_cka_sample_is_seeded_and_exact_in_size():
  lengths = [3, 7, 5]
  first, again = cka_sample(lengths, 8, seed=1), cka_sample(lengths, 8, seed=1)
  assert [m.shape[0] for m in first] == lengths and sum(m.sum() for m in first) == 8
  assert all(np.array_equal(a, b) for a, b in zip(first, again))
  assert all(m.all() for m in cka_sample(lengths, 100, seed=1))


def test_mismatching_shapes_and_empty_probe_are_user_errors():
  base = tiny_model()
  other = tiny_model(cfg=dataclasses.replace(TINY, mlp_dim=48))
  with pytest.raises(UserError, match="layers.mlp.down.kernel has shape"):
    compare(base, {"tuned": other}, probe_examples())
  with pytest.raises(UserError, match="probe set is empty"):
    compare(base, {"tuned": tiny_model(1)}, [])
