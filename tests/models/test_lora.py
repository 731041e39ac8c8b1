"""LoRA on the decoder against PEFT: a fresh adapter is the base, our adapters exported in
PEFT's format give PEFT's logits and the merged export transformers' (GPT-2's fused c_attn,
Llama-2 with GQA, Qwen2 tied), and an adapter PEFT made itself reads back to PEFT's logits."""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers
from flax import nnx

from neft_jax.errors import UserError
from neft_jax.models import adapters, load_hf, lora, save_hf
from tests import tiny_models
from tests.models.test_hf_parity import max_error, right_padded_batch, torch_logits

peft = pytest.importorskip("peft", reason="peft is a test dependency (pip install -e '.[test]')")

FAMILIES = ("gpt2", "llama", "qwen2_tied")
TOLERANCE = 1e-4
RANK, ALPHA = 8, 16.0


def lora_model(folder, targets=("all",), rank=RANK, seed=0):
  family = json.load(open(os.path.join(folder, "config.json")))["model_type"]
  mlp = "plain" if family == "gpt2" else "gated"
  return load_hf(folder, lora_rank=rank, lora_alpha=ALPHA,
                 lora_targets=lora.targets(",".join(targets), mlp, family), lora_seed=seed)


def randomize_b(model, seed=1, scale=0.05):
  """B is zeros at the start; a trained adapter's is not."""
  state = nnx.state(model, lora.LoRAParam)
  leaves, treedef = jax.tree.flatten(state)
  keys = jax.random.split(jax.random.key(seed), len(leaves))
  leaves = [x + scale * jax.random.normal(k, x.shape, x.dtype) for x, k in zip(leaves, keys)]
  nnx.update(model, jax.tree.unflatten(treedef, leaves))
  return model


@pytest.fixture(scope="module", params=FAMILIES)
def checkpoint(request, tmp_path_factory):
  folder = tmp_path_factory.mktemp(request.param)
  model = tiny_models.build(request.param, folder)
  return request.param, str(folder), model


def test_fresh_adapters_are_the_base_model(checkpoint):
  _, folder, torch_model = checkpoint
  ids, mask = right_padded_batch(torch_model.config.vocab_size)
  base = load_hf(folder)(jnp.asarray(ids), attention_mask=jnp.asarray(mask))
  adapted = lora_model(folder)
  a = nnx.state(adapted, lora.LoRAParam)
  assert all(np.abs(np.asarray(x)).max() > 0 for path, x in jax.tree.leaves_with_path(a)
             if "lora_a" in jax.tree_util.keystr(path))
  logits = adapted(jnp.asarray(ids), attention_mask=jnp.asarray(mask))
  np.testing.assert_array_equal(np.asarray(logits), np.asarray(base))


def test_peft_export_gives_peft_logits_and_merged_gives_transformers(checkpoint, tmp_path):
  family, folder, torch_model = checkpoint
  model = randomize_b(lora_model(folder))
  ids, mask = right_padded_batch(torch_model.config.vocab_size)
  ours = np.asarray(model(jnp.asarray(ids), attention_mask=jnp.asarray(mask)))
  base_logits = torch_logits(torch_model, ids, mask)
  assert max_error(ours, base_logits, mask) > 100 * TOLERANCE  # the adapters change the logits

  adapters.save_peft(model, str(tmp_path / "adapter"), base=folder)
  base = transformers.AutoModelForCausalLM.from_pretrained(folder)
  peft_model = peft.PeftModel.from_pretrained(base, str(tmp_path / "adapter"))
  peft_model.eval()
  reference = torch_logits(peft_model, ids, mask)
  assert max_error(ours, reference, mask) < TOLERANCE
  # No missing or unexpected keys: the file holds exactly the adapters PEFT's model has.
  import safetensors.torch
  saved = safetensors.torch.load_file(str(tmp_path / "adapter" / "adapter_model.safetensors"))
  assert set(saved) == set(peft.get_peft_model_state_dict(peft_model))

  save_hf(adapters.merged(model), str(tmp_path / "merged"))
  merged = transformers.AutoModelForCausalLM.from_pretrained(str(tmp_path / "merged")).eval()
  assert max_error(ours, torch_logits(merged, ids, mask), mask) < TOLERANCE


def test_an_adapter_made_by_peft_reads_back_to_peft_logits(checkpoint, tmp_path):
  family, folder, torch_model = checkpoint
  modules = {"gpt2": ["c_attn", "attn.c_proj", "c_fc", "mlp.c_proj"]}.get(
      family, ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"])
  base = transformers.AutoModelForCausalLM.from_pretrained(folder)
  config = peft.LoraConfig(r=RANK, lora_alpha=32.0, target_modules=modules,
                           fan_in_fan_out=family == "gpt2", init_lora_weights=False)
  torch.manual_seed(3)
  made = peft.get_peft_model(base, config)  # init_lora_weights=False: B random, not zeros
  made.save_pretrained(str(tmp_path / "made"))
  made.eval()
  ids, mask = right_padded_batch(torch_model.config.vocab_size)
  reference = torch_logits(made, ids, mask)

  model = lora_model(folder)
  factors = adapters.reshape_like(adapters.read_peft(str(tmp_path / "made"), model.config),
                                  nnx.state(model, lora.LoRAParam))
  state = nnx.state(model, lora.LoRAParam)
  nnx.update(model, nnx.from_flat_state(
      [(p, v.replace(jnp.asarray(factors[".".join(map(str, p))])))
       for p, v in nnx.to_flat_state(state)]))
  ours = np.asarray(model(jnp.asarray(ids), attention_mask=jnp.asarray(mask)))
  assert max_error(ours, reference, mask) < TOLERANCE


def test_unknown_or_absent_targets_are_errors():
  with pytest.raises(UserError, match="names 'gate', which a gpt2 model does not have"):
    lora.targets("query,gate", "plain", "gpt2")
  with pytest.raises(UserError, match="names 'q_proj'"):
    lora.targets("q_proj", "gated", "llama")
  assert lora.targets("value,query", "gated") == ("query", "value")
  assert lora.targets("all", "plain") == ("query", "key", "value", "out", "up", "down")


def test_an_adapter_for_other_targets_is_refused(tmp_path):
  folder = str(tmp_path / "llama")
  tiny_models.build("llama", folder)
  model = randomize_b(lora_model(folder, targets=("query", "value")))
  adapters.save_peft(model, str(tmp_path / "adapter"), base=folder)
  with pytest.raises(UserError, match="adapts other modules than model.lora.targets=query,value,out"):
    adapters.read_peft(str(tmp_path / "adapter"),
                       lora_model(folder, targets=("query", "value", "out")).config)
  with pytest.raises(UserError, match="has rank 8 but model.lora.rank=4"):
    adapters.read_peft(str(tmp_path / "adapter"),
                       lora_model(folder, targets=("query", "value"), rank=4).config)
