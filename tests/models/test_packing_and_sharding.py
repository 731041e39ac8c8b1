"""Packed rows attend within their segments; load_hf places shards directly on a mesh."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from neft_jax import sharding
from neft_jax.models import load_hf
from neft_jax.models.transformer import default_positions
from tests import tiny_models
from tests.models.test_hf_parity import torch_logits

FAMILIES = list(tiny_models.TINY_CONFIGS)


@pytest.fixture(scope="module", params=FAMILIES)
def loaded(request, tmp_path_factory):
  folder = tmp_path_factory.mktemp(request.param)
  torch_model = tiny_models.build(request.param, folder, seed=7)
  return str(folder), torch_model


def test_default_positions_restart_per_segment():
  segment_ids = jnp.array([[1, 1, 1, 2, 2, 3, 0, 0]])
  assert default_positions((1, 8), segment_ids_bt=segment_ids).tolist() == [[0, 1, 2, 0, 1, 0, 0, 1]]
  mask = jnp.array([[0, 0, 1, 1, 1]])  # left padding
  assert default_positions((1, 5), attention_mask_bt=mask).tolist() == [[0, 0, 0, 1, 2]]


@pytest.mark.parametrize("scan_layers", [True, False], ids=["scan", "loop"])
def test_packed_row_equals_sequences_alone(loaded, scan_layers):
  folder, torch_model = loaded
  model = load_hf(folder, scan_layers=scan_layers)
  rng = np.random.RandomState(0)
  first, second = rng.randint(0, 1000, 5), rng.randint(0, 1000, 6)
  packed = np.concatenate([first, second, [0]])[None]  # one padding token at the end
  segment_ids = np.array([[1] * 5 + [2] * 6 + [0]])
  logits = np.asarray(model(jnp.asarray(packed), segment_ids=jnp.asarray(segment_ids)))
  for tokens, span in ((first, slice(0, 5)), (second, slice(5, 11))):
    alone = np.asarray(model(jnp.asarray(tokens[None])))
    np.testing.assert_allclose(logits[0, span], alone[0], atol=1e-4, rtol=0)
    np.testing.assert_allclose(logits[0, span], torch_logits(torch_model, tokens[None])[0],
                               atol=1e-4, rtol=0)


def test_load_onto_a_mesh_places_only_shards(loaded):
  folder, torch_model = loaded
  devices = np.array(jax.devices()[:8]).reshape(1, 4, 2)
  mesh = Mesh(devices, ("data", "fsdp", "tensor"))
  model = load_hf(folder, mesh=mesh, rules=sharding.DEFAULT_RULES)
  embed = model.embed.get_value()  # [vocab, embed]; GPT-2's odd vocab cannot split in two
  vocab_axis = "tensor" if embed.shape[0] % 2 == 0 else None
  assert embed.sharding.spec == PartitionSpec(vocab_axis, "fsdp")
  for leaf in jax.tree.leaves(model):
    assert isinstance(leaf.sharding, NamedSharding) and leaf.sharding.mesh == mesh
    # Each device holds exactly its shard, never the whole tensor.
    expected = leaf.sharding.shard_shape(leaf.shape)
    assert {s.data.shape for s in leaf.addressable_shards} == {expected}
  assert embed.sharding.shard_shape(embed.shape)[1] == embed.shape[1] // 4
  query = model.layers.attn.query.kernel.get_value()  # [layers, heads, head_dim, embed]
  assert query.sharding.spec == PartitionSpec(None, "tensor", None, "fsdp")
  ids = np.random.RandomState(1).randint(0, 1000, (2, 9))
  logits = jax.jit(lambda m, x: m(x))(model, jnp.asarray(ids))
  np.testing.assert_allclose(np.asarray(logits), torch_logits(torch_model, ids), atol=1e-4, rtol=0)


def test_indivisible_dimension_is_replicated():
  mesh = Mesh(np.array(jax.devices()[:8]).reshape(1, 1, 8), ("data", "fsdp", "tensor"))
  # 2 kv heads cannot be split 8 ways: that dimension stays whole.
  spec = sharding.logical_to_spec(("kv_heads", "head_dim", "embed"), sharding.DEFAULT_RULES,
                                  shape=(2, 16, 64), mesh=mesh)
  assert spec == PartitionSpec(None, None, None)
  spec = sharding.logical_to_spec(("heads", "head_dim", "embed"), sharding.DEFAULT_RULES,
                                  shape=(8, 16, 64), mesh=mesh)
  assert spec == PartitionSpec("tensor", None, None)
