"""Logits equal to transformers (PyTorch) for GPT-2, Llama-2 (GQA) and Qwen2 (tied and untied)."""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers

from neft_jax.models import load_hf, save_hf
from tests import tiny_models

FAMILIES = list(tiny_models.TINY_CONFIGS)
TOLERANCE = 1e-4


def right_padded_batch(vocab_size: int, seed: int = 0):
  """Three rows: full length, and two right-padded ones."""
  rng = np.random.RandomState(seed)
  ids = rng.randint(0, vocab_size, (3, 12))
  mask = np.ones_like(ids)
  mask[1, 7:] = 0
  mask[2, 3:] = 0
  return ids, mask


def torch_logits(model, ids, mask=None):
  with torch.no_grad():
    mask_t = None if mask is None else torch.tensor(mask)
    return model(torch.tensor(ids), attention_mask=mask_t).logits.float().numpy()


def max_error(ours, reference, mask):
  """Max |difference| over real (non-padding) positions."""
  real = np.asarray(mask, bool)
  return float(np.abs(np.asarray(ours) - reference)[real].max())


@pytest.fixture(scope="module", params=FAMILIES)
def checkpoint(request, tmp_path_factory):
  folder = tmp_path_factory.mktemp(request.param)
  model = tiny_models.build(request.param, folder)
  return request.param, str(folder), model


def test_logits_match_transformers_scanned_and_looped(checkpoint):
  """Both layer stacks (nnx.scan over stacked weights and a Python loop) equal the
  reference, and each other more tightly still."""
  _, folder, torch_model = checkpoint
  ids, mask = right_padded_batch(torch_model.config.vocab_size)
  reference = torch_logits(torch_model, ids, mask)
  assert np.abs(reference).max() > 1.0, "reference logits too small to tell a wrong mapping"
  logits = {}
  for scan_layers in (True, False):
    model = load_hf(folder, scan_layers=scan_layers)
    logits[scan_layers] = model(jnp.asarray(ids), attention_mask=jnp.asarray(mask))
    assert logits[scan_layers].shape == (3, 12, torch_model.config.vocab_size)
    assert logits[scan_layers].dtype == jnp.float32
    assert max_error(logits[scan_layers], reference, mask) <= TOLERANCE, f"scan_layers={scan_layers}"
  assert max_error(logits[True], np.asarray(logits[False]), mask) <= 1e-5


def test_save_hf_loads_in_transformers(checkpoint, tmp_path):
  name, folder, torch_model = checkpoint
  ids, mask = right_padded_batch(torch_model.config.vocab_size, seed=2)
  save_hf(load_hf(folder), tmp_path)
  reloaded, info = transformers.AutoModelForCausalLM.from_pretrained(tmp_path, output_loading_info=True)
  assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"]
  assert type(reloaded) is type(torch_model)
  reference = torch_logits(torch_model, ids, mask)
  assert max_error(torch_logits(reloaded.eval(), ids, mask), reference, mask) <= TOLERANCE
  # ...and our own loader reads the saved folder back to the same logits.
  ours = load_hf(tmp_path)(jnp.asarray(ids), attention_mask=jnp.asarray(mask))
  assert max_error(ours, reference, mask) <= TOLERANCE


def test_sharded_save_writes_index_and_loads(checkpoint, tmp_path):
  _, folder, torch_model = checkpoint
  written = save_hf(load_hf(folder), tmp_path, max_shard_size="1MB")
  assert "model.safetensors.index.json" in written
  index = json.loads((tmp_path / "model.safetensors.index.json").read_text())
  shards = set(index["weight_map"].values())
  assert len(shards) > 1 and all(os.path.exists(tmp_path / s) for s in shards)
  assert set(index["weight_map"]) == set(torch_model.state_dict()) - (
      {"lm_head.weight"} if torch_model.config.tie_word_embeddings else set())
  reloaded, info = transformers.AutoModelForCausalLM.from_pretrained(tmp_path, output_loading_info=True)
  assert not info["missing_keys"] and not info["unexpected_keys"]
  ids, mask = right_padded_batch(torch_model.config.vocab_size, seed=3)
  reference = torch_logits(torch_model, ids, mask)
  assert max_error(torch_logits(reloaded.eval(), ids, mask), reference, mask) <= TOLERANCE
  ours = load_hf(tmp_path)(jnp.asarray(ids), attention_mask=jnp.asarray(mask))
  assert max_error(ours, reference, mask) <= TOLERANCE


def test_pytorch_bin_checkpoint(tmp_path):
  """pytorch_model.bin, single and sharded with an index, loads to the same logits."""
  torch_model = tiny_models.build("llama", tmp_path / "safe")
  state = torch_model.state_dict()
  single, sharded = tmp_path / "single", tmp_path / "sharded"
  for folder in (single, sharded):
    folder.mkdir()
    (folder / "config.json").write_text((tmp_path / "safe" / "config.json").read_text())
  torch.save(state, single / "pytorch_model.bin")
  names = sorted(state)
  halves = {"pytorch_model-00001-of-00002.bin": names[::2], "pytorch_model-00002-of-00002.bin": names[1::2]}
  for file_name, part in halves.items():
    torch.save({n: state[n] for n in part}, sharded / file_name)
  index = {"weight_map": {n: f for f, part in halves.items() for n in part}}
  (sharded / "pytorch_model.bin.index.json").write_text(json.dumps(index))
  ids, mask = right_padded_batch(32000, seed=4)
  reference = torch_logits(torch_model, ids, mask)
  for folder in (single, sharded):
    logits = load_hf(folder)(jnp.asarray(ids), attention_mask=jnp.asarray(mask))
    assert max_error(logits, reference, mask) <= TOLERANCE


def test_gpt2_checkpoint_without_prefix_and_with_buffers(tmp_path):
  """The hub's `gpt2` stores names without 'transformer.' and carries attn.bias buffers."""
  torch_model = tiny_models.build("gpt2", tmp_path / "hf")
  state = {k.removeprefix("transformer."): v for k, v in torch_model.state_dict().items()
           if k != "lm_head.weight"}
  for layer in range(torch_model.config.n_layer):
    state[f"h.{layer}.attn.bias"] = torch.tril(torch.ones(1, 1, 128, 128))
  folder = tmp_path / "old_style"
  folder.mkdir()
  (folder / "config.json").write_text((tmp_path / "hf" / "config.json").read_text())
  torch.save(state, folder / "pytorch_model.bin")
  ids, mask = right_padded_batch(50257, seed=5)
  logits = load_hf(folder)(jnp.asarray(ids), attention_mask=jnp.asarray(mask))
  assert max_error(logits, torch_logits(torch_model, ids, mask), mask) <= TOLERANCE


def test_bfloat16_parameters(checkpoint):
  _, folder, torch_model = checkpoint
  model = load_hf(folder, param_dtype=jnp.bfloat16)
  assert all(leaf.dtype == jnp.bfloat16 for leaf in jax.tree.leaves(model))
  ids, mask = right_padded_batch(torch_model.config.vocab_size, seed=6)
  logits = model(jnp.asarray(ids), attention_mask=jnp.asarray(mask))
  reference = torch_logits(torch_model, ids, mask)
  # bfloat16 keeps ~3 significant digits: the logits agree loosely but surely.
  real = mask.astype(bool)
  correlation = np.corrcoef(np.asarray(logits)[real].ravel(), reference[real].ravel())[0, 1]
  assert correlation > 0.99
