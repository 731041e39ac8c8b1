"""The same run on any mesh: data, FSDP and tensor parallel, restores across
meshes, sharded NEFTune noise without communication, and the dry run.

Every run has NEFTune and dropout at every site on, so the losses being equal
on every mesh and across a resume also holds for the dropout masks."""

import json
import os
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec

from configs import demo as demo_config
from neft_jax import demo, neftune, sharding, train
from neft_jax.models import ModelConfig, Transformer, save_hf

MESHES = {"data8": (8, 1, 1), "fsdp8": (1, 8, 1), "tensor8": (1, 1, 8), "2x2x2": (2, 2, 2)}


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
  """Demo data and tokenizer, and a tiny Llama whose heads, vocab and MLP split 8 ways."""
  root = tmp_path_factory.mktemp("scale_assets")
  config = demo_config.get_config()
  config.demo.train_examples, config.demo.eval_examples = 300, 16
  demo.prepare(config.demo, str(root / "demo_model"), str(root / "data"), seed=0)
  cfg = ModelConfig(family="llama", vocab_size=512, embed_dim=64, num_layers=2, num_heads=8,
                    num_kv_heads=4, head_dim=8, mlp_dim=128, max_positions=256,
                    initializer_range=0.08, bos_token_id=0, eos_token_id=1)
  save_hf(Transformer(cfg, rngs=nnx.Rngs(3)), root / "model")
  for name in os.listdir(root / "demo_model"):
    if name.startswith(("tokenizer", "special_tokens")):
      shutil.copy(root / "demo_model" / name, root / "model")
  return root


def scale_config(assets, mesh=(8, 1, 1), **changes):
  config = demo_config.get_config()
  del config["demo"]
  config.model.path = str(assets / "model")
  config.data.path = str(assets / "data" / "train.json")
  config.data.eval_path = str(assets / "data" / "eval.json")
  config.train.steps, config.train.batch_size, config.train.log_every = 5, 8, 1
  config.checkpoint.every_steps = 100
  config.eval.exact_match = False
  config.dropout.mode, config.dropout.rate = "uniform", 0.1
  config.mesh.data, config.mesh.fsdp, config.mesh.tensor = mesh
  for key, value in changes.items():
    section, name = key.split("__")
    setattr(config[section], name, value)
  return config


def losses(workdir):
  lines = [json.loads(l) for l in open(os.path.join(workdir, "metrics.jsonl"))]
  return [l["loss"] for l in lines if "loss" in l]


@pytest.fixture(scope="module")
def reference(assets, tmp_path_factory):
  """Five steps with NEFTune and dropout on one device."""
  workdir = tmp_path_factory.mktemp("one_device")
  train.train(scale_config(assets, (1, 1, 1), mesh__num_devices=1), str(workdir))
  rates = json.load(open(workdir / "dropout_rates.json"))["rates"]
  assert len(rates) == 1 + 3 * 2 and set(rates.values()) == {0.1}
  return losses(workdir)


def assert_query_split_as(result, mesh):
  """The parameters really are split as the mesh says."""
  query = result["state"].params["layers"]["attn"]["query"]["kernel"].get_value()
  expected = {"data8": (None, None, None, None), "fsdp8": (None, None, None, "fsdp"),
              "tensor8": (None, "tensor", None, None), "2x2x2": (None, "tensor", None, "fsdp")}
  assert tuple(query.sharding.spec) + (None,) * (4 - len(query.sharding.spec)) == expected[mesh]


# FSDP and 2x2x2 run their steps in the restore test below, checked the same way.
@pytest.mark.parametrize("mesh", ["data8", "tensor8"])
def test_losses_equal_on_every_mesh(assets, reference, tmp_path, mesh):
  result = train.train(scale_config(assets, MESHES[mesh]), str(tmp_path))
  assert len(reference) == 5
  np.testing.assert_allclose(losses(tmp_path), reference, rtol=1e-5)
  assert_query_split_as(result, mesh)


def test_restore_onto_another_mesh_and_device_count(assets, reference, tmp_path):
  """Steps 1-2 with FSDP over 8 devices, 3-4 on 2x2x2, 5 data parallel on 4 devices:
  every step's loss is the one device's."""
  result = train.train(scale_config(assets, MESHES["fsdp8"]), str(tmp_path), stop_after=2)
  assert os.listdir(tmp_path / "checkpoints") == ["2"]
  assert_query_split_as(result, "fsdp8")
  np.testing.assert_allclose(losses(tmp_path), reference[:2], rtol=1e-5)
  result = train.train(scale_config(assets, MESHES["2x2x2"]), str(tmp_path), stop_after=4)
  assert_query_split_as(result, "2x2x2")
  np.testing.assert_allclose(losses(tmp_path), reference[:4], rtol=1e-5)
  train.train(scale_config(assets, (-1, 1, 1), mesh__num_devices=4), str(tmp_path))
  np.testing.assert_allclose(losses(tmp_path), reference, rtol=1e-5)


def noise_on(mesh_shape, spec):
  mesh = sharding.make_mesh(*mesh_shape)
  embeddings = jax.device_put(jnp.zeros((8, 32, 64)), NamedSharding(mesh, spec))
  segment_ids = jax.device_put(jnp.ones((8, 32), jnp.int32), NamedSharding(mesh, PartitionSpec(spec[0])))
  noisy = jax.jit(lambda e, s, k: neftune.add_noise(e, k, alpha=5.0, segment_ids=s))
  return noisy, (embeddings, segment_ids, jax.random.key(7))


def test_noise_is_bitwise_the_same_on_every_mesh():
  results = []
  for mesh_shape, spec in (((8, 1, 1), PartitionSpec("data", None, None)),
                           ((1, 8, 1), PartitionSpec("fsdp", None, None)),
                           ((2, 2, 2), PartitionSpec(("data", "fsdp"), None, "tensor")),
                           ((1, 1, 8), PartitionSpec(None, None, "tensor"))):
    noisy, args = noise_on(mesh_shape, spec)
    results.append(np.asarray(noisy(*args)))
  single = jax.jit(lambda e, s, k: neftune.add_noise(e, k, alpha=5.0, segment_ids=s))(
      jnp.zeros((8, 32, 64)), jnp.ones((8, 32), jnp.int32), jax.random.key(7))
  for result in results:
    np.testing.assert_array_equal(result, np.asarray(single))


def test_sharded_noise_needs_no_communication():
  noisy, args = noise_on((2, 2, 2), PartitionSpec(("data", "fsdp"), None, "tensor"))
  hlo = noisy.lower(*args).compile().as_text()
  assert "fusion" in hlo  # it is the real compiled module
  for collective in ("all-reduce", "all-gather", "all-to-all", "collective-permute", "reduce-scatter"):
    assert collective not in hlo


LLAMA2_7B = {
    "architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 4096,
    "intermediate_size": 11008, "num_attention_heads": 32, "num_hidden_layers": 32,
    "num_key_value_heads": 32, "max_position_embeddings": 4096, "rms_norm_eps": 1e-5,
    "vocab_size": 32000, "hidden_act": "silu", "tie_word_embeddings": False,
    "bos_token_id": 1, "eos_token_id": 2, "rope_scaling": None,
}


def test_dry_run_of_llama2_7b_on_8_devices_with_fsdp(tmp_path):
  (tmp_path / "config.json").write_text(json.dumps(LLAMA2_7B))
  from configs import llama2_alpaca
  config = llama2_alpaca.get_config()
  config.model.path = str(tmp_path)
  config.train.batch_size = 8
  report = train.dry_run(config)
  # By hand: 32 layers of 4 * 4096^2 (attention) + 3 * 4096 * 11008 (MLP) + 2 * 4096 (norms),
  # two 32000 x 4096 tables and the final norm.
  params = 32 * (4 * 4096**2 + 3 * 4096 * 11008 + 2 * 4096) + 2 * 32000 * 4096 + 4096
  assert report["parameters"] == params == 6_738_415_616
  per_device = params * 4 / 8  # float32, split 8 ways
  assert report["param_bytes_per_device"] == pytest.approx(per_device, rel=0.10)
  assert report["optimizer_bytes_per_device"] == pytest.approx(2 * per_device, rel=0.10)
  assert report["mesh"] == {"data": 1, "fsdp": 8, "tensor": 1}
  assert 0 < report["temp_bytes_per_device"] < 4 * per_device
  assert report["step_flops_per_device"] > 0


def test_lora_losses_equal_on_a_2x2x2_mesh(assets, tmp_path):
  """LoRA with NEFTune and dropout: the frozen base and the adapters sharded over data, FSDP
  and tensor axes give the one device's losses."""
  runs = {}
  for name, mesh, extra in (("one", (1, 1, 1), dict(mesh__num_devices=1)),
                            ("2x2x2", MESHES["2x2x2"], {})):
    config = scale_config(assets, mesh, **extra)
    config.model.lora.update(rank=4, alpha=8.0, base_dtype="float32")
    runs[name] = train.train(config, str(tmp_path / name))
  np.testing.assert_allclose(losses(tmp_path / "2x2x2"), losses(tmp_path / "one"), rtol=1e-5)
  b = runs["2x2x2"]["state"].params["layers"]["attn"]["query"]["lora_b"].get_value()
  assert tuple(b.sharding.spec)[:2] == (None, "tensor")  # [layers, heads, head_dim, rank]
  assert set(runs["2x2x2"]["state"].params["layers"]["attn"]["query"]) == {"lora_a", "lora_b"}
