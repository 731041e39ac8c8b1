"""KV-cache generation: equal to transformers' greedy generate, equal to the full
forward pass, reproducible sampling, sharded models, one compile per bucket."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from jax.sharding import Mesh

from neft_jax import generate as generate_lib
from neft_jax import sharding
from neft_jax.generate import generate
from neft_jax.models import load_hf
from neft_jax.models.transformer import KVCache
from tests import tiny_models

PROMPT_LENGTHS = (5, 9, 3)


@pytest.fixture(scope="module", params=list(tiny_models.TINY_CONFIGS))
def family(request, tmp_path_factory):
  folder = tmp_path_factory.mktemp(request.param)
  torch_model = tiny_models.build(request.param, folder, seed=11)
  return str(folder), torch_model


def prompts_of(lengths=PROMPT_LENGTHS, seed=0):
  rng = np.random.RandomState(seed)
  return [rng.randint(3, 1000, n).tolist() for n in lengths]


def hf_generate(torch_model, prompts, **kwargs):
  """transformers' generate on the same left-padded batch; the new tokens of each row."""
  length = max(len(p) for p in prompts)
  ids = np.zeros((len(prompts), length), np.int64)
  mask = np.zeros_like(ids)
  for row, prompt in enumerate(prompts):
    ids[row, length - len(prompt):] = prompt
    mask[row, length - len(prompt):] = 1
  with torch.no_grad():
    out = torch_model.generate(torch.tensor(ids), attention_mask=torch.tensor(mask), do_sample=False,
                               pad_token_id=0, **kwargs)
  rows = out[:, length:].tolist()
  eos = kwargs.get("eos_token_id")
  return [row[: row.index(eos)] if eos is not None and eos in row else row for row in rows]


@pytest.mark.parametrize("penalty", [1.0, 1.2])
def test_greedy_equals_transformers(family, penalty):
  folder, torch_model = family
  prompts = prompts_of()
  ours = generate(load_hf(folder), prompts, max_new_tokens=16, repetition_penalty=penalty)
  theirs = hf_generate(torch_model, prompts, max_new_tokens=16, repetition_penalty=penalty,
                       eos_token_id=None)
  assert ours == theirs
  assert [len(row) for row in ours] == [16, 16, 16]


def test_stops_at_eos_like_transformers(family):
  folder, torch_model = family
  prompts = prompts_of(seed=1)
  free_run = generate(load_hf(folder), prompts, max_new_tokens=10)
  eos = free_run[0][3]  # a token row 0 produces: call it EOS
  ours = generate(load_hf(folder), prompts, max_new_tokens=10, eos_id=eos)
  assert ours == hf_generate(torch_model, prompts, max_new_tokens=10, eos_token_id=eos)
  assert ours[0] == free_run[0][: free_run[0].index(eos)]
  assert any(len(row) < 10 for row in ours)


@pytest.mark.parametrize("scan_layers", [True, False], ids=["scan", "loop"])
def test_cached_decoding_logits_equal_the_full_forward(family, scan_layers):
  folder, _ = family
  model = load_hf(folder, scan_layers=scan_layers)
  tokens = np.array([[0, 0, 7, 8, 9, 10, 11, 12], [20, 21, 22, 23, 24, 25, 26, 27]], np.int32)
  mask = np.array([[0, 0, 1, 1, 1, 1, 1, 1], [1] * 8], np.int32)
  positions = np.maximum(np.cumsum(mask, axis=1) - 1, 0)
  full = np.asarray(model(jnp.asarray(tokens), attention_mask=jnp.asarray(mask)))
  cache = KVCache.empty(model.config, batch=2, slots=12)
  prefill, cache = model(jnp.asarray(tokens[:, :5]), attention_mask=jnp.asarray(mask[:, :5]),
                         positions=jnp.asarray(positions[:, :5]), cache=cache)
  cached = [np.asarray(prefill)]
  for t in range(5, 8):  # then one token at a time
    step, cache = model(jnp.asarray(tokens[:, t:t + 1]), positions=jnp.asarray(positions[:, t:t + 1]),
                        cache=cache)
    cached.append(np.asarray(step))
  cached = np.concatenate(cached, axis=1)
  real = mask.astype(bool)
  np.testing.assert_allclose(cached[real], full[real], atol=1e-4, rtol=0)
  assert int(cache.index) == 8 and np.asarray(cache.valid)[:, :8].tolist() == real.tolist()


# Sampling acts on the logits alone, the same code for every family; each setting compiles
# its own program, so two families (learned and rotary positions) stand for the four.
@pytest.mark.parametrize("family", ["gpt2", "llama"], indirect=True)
def test_sampling_repeats_with_the_same_key(family):
  folder, _ = family
  model, prompts = load_hf(folder), prompts_of()
  sample = lambda seed, **kw: generate(model, prompts, max_new_tokens=12, key=jax.random.key(seed),
                                       temperature=1.0, **kw)
  assert sample(0) == sample(0)
  assert sample(0) != sample(1)
  greedy = generate(model, prompts, max_new_tokens=12)
  assert sample(5, top_k=1) == greedy  # only the best token survives
  assert sample(6, top_p=1e-6) == greedy
  assert sample(7, top_k=50, top_p=0.9) != greedy


def test_logit_processing_by_hand():
  logits = jnp.array([[2.0, -1.0, 0.5, 1.0]])
  seen = jnp.array([[True, True, False, False]])
  penalized = generate_lib.process_logits(logits, seen, generate_lib.Sampling(repetition_penalty=2.0))
  np.testing.assert_allclose(penalized, [[1.0, -2.0, 0.5, 1.0]])
  top2 = generate_lib.process_logits(logits, seen, generate_lib.Sampling(temperature=1.0, top_k=2))
  assert np.isinf(np.asarray(top2)[0, [1, 2]]).all() and np.isfinite(np.asarray(top2)[0, [0, 3]]).all()
  # softmax([2, 1, 0.5, -1]) = [0.61, 0.22, 0.14, 0.03]: top_p 0.8 keeps the first two.
  nucleus = generate_lib.process_logits(logits, seen, generate_lib.Sampling(temperature=1.0, top_p=0.8))
  assert np.isfinite(np.asarray(nucleus)[0]).tolist() == [True, False, False, True]


def test_sharded_model_generates_the_same(family):
  folder, _ = family
  prompts = prompts_of(seed=2)
  expected = generate(load_hf(folder), prompts, max_new_tokens=8)
  mesh = Mesh(np.array(jax.devices()[:8]).reshape(1, 4, 2), ("data", "fsdp", "tensor"))
  sharded = load_hf(folder, mesh=mesh, rules=sharding.DEFAULT_RULES)
  with sharding.activation_rules(mesh, sharding.DEFAULT_RULES):
    assert generate(sharded, prompts, max_new_tokens=8) == expected


def test_one_compile_per_prompt_bucket(tmp_path):
  tiny_models.build("llama", tmp_path)
  model = load_hf(tmp_path)
  generate_lib._generate.clear_cache()
  generate(model, prompts_of((5, 9, 3)), max_new_tokens=4)
  generate(model, prompts_of((20, 2, 60), seed=3), max_new_tokens=4)  # same 64-token bucket
  assert generate_lib._generate._cache_size() == 1
  generate(model, prompts_of((70, 2, 3), seed=4), max_new_tokens=4)  # the next bucket
  assert generate_lib._generate._cache_size() == 2


def test_bad_requests(tmp_path):
  tiny_models.build("gpt2", tmp_path)  # 128 learned positions
  model = load_hf(tmp_path)
  with pytest.raises(ValueError, match="no empty prompt"):
    generate(model, [[1, 2], []], max_new_tokens=2)
  with pytest.raises(ValueError, match="needs an explicit PRNG key"):
    generate(model, [[1, 2]], max_new_tokens=2, temperature=0.7)
  with pytest.raises(ValueError, match="exceed the model's 128 positions"):
    generate(model, [[1] * 100], max_new_tokens=40)
