"""`Transformer.intermediates` equals transformers' `output_hidden_states=True` and
`output_attentions=True` (eager attention) for GPT-2, Llama-2 (GQA) and Qwen2 (one
kv head), with padding and with packed segments, scanned and unrolled."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import nnx

from neft_jax.models import load_hf
from neft_jax.models.transformer import default_positions
from tests import tiny_models

FAMILIES = ["gpt2", "llama", "qwen2_untied"]
TOLERANCE = 1e-5


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
  """family -> (folder, torch model), each built once for the module, when first asked."""
  built = {}

  def get(name):
    if name not in built:
      folder = tmp_path_factory.mktemp(name)
      torch_model = tiny_models.build(name, folder)
      torch_model.set_attn_implementation("eager")  # the only one that returns probabilities
      built[name] = str(folder), torch_model
    return built[name]
  return get


@pytest.fixture(params=FAMILIES)
def checkpoint(request, checkpoints):
  return checkpoints(request.param)


def intermediates(model, ids, **inputs):
  """`model.intermediates` jitted (one compile is faster than running op by op), as numpy."""
  graphdef, state = nnx.split(model)
  run = jax.jit(lambda state, ids, inputs: nnx.merge(graphdef, state).intermediates(ids, **inputs))
  return jax.tree.map(np.asarray, run(state, jnp.asarray(ids), jax.tree.map(jnp.asarray, inputs)))


def torch_intermediates(model, ids, mask=None, positions=None):
  """transformers' (hidden states [layers + 1, batch, length, embed],
  probabilities [layers, batch, heads, query, key], logits) as numpy arrays."""
  as_tensor = lambda x: None if x is None else torch.tensor(np.asarray(x))
  with torch.no_grad():
    out = model(as_tensor(ids), attention_mask=as_tensor(mask), position_ids=as_tensor(positions),
                output_hidden_states=True, output_attentions=True)
  return (np.stack([h.float().numpy() for h in out.hidden_states]),
          np.stack([a.float().numpy() for a in out.attentions]), out.logits.float().numpy())


def padded_batch(vocab_size: int):
  """Three rows of 10: full, right-padded to 6 real tokens, left-padded to 4."""
  ids = np.random.RandomState(0).randint(0, vocab_size, (3, 10))
  mask = np.ones_like(ids)
  mask[1, 6:] = 0
  mask[2, :6] = 0
  return ids, mask


def test_padded_batch_matches_transformers(checkpoint):
  """Every hidden state and probability of every real query position; transformers
  gets the same positions (left padding skipped), as `generate` passes them."""
  folder, torch_model = checkpoint
  cfg = torch_model.config
  ids, mask = padded_batch(cfg.vocab_size)
  model = load_hf(folder)
  hidden, probs = intermediates(model, ids, attention_mask=mask)
  positions = default_positions(ids.shape, jnp.asarray(mask))
  ref_hidden, ref_probs, ref_logits = torch_intermediates(torch_model, ids, mask, positions)
  layers, heads = cfg.num_hidden_layers, cfg.num_attention_heads
  assert hidden.shape == (layers + 1, 3, 10, cfg.hidden_size) and hidden.dtype == np.float32
  assert probs.shape == (layers, 3, heads, 10, 10) and probs.dtype == np.float32
  real = mask.astype(bool)
  hidden_error = np.abs(hidden - ref_hidden)[:, real].max(axis=(1, 2))  # per entry
  probs_error = np.abs(np.transpose(probs - ref_probs, (0, 1, 3, 2, 4))[:, real]).max()
  assert hidden_error.max() <= TOLERANCE, f"max |error| per hidden-state entry: {hidden_error}"
  assert probs_error <= TOLERANCE
  # The last entry is the final-normed state that the output layer maps to logits.
  logits = np.einsum("btd,vd->btv", hidden[-1], np.asarray(model.head()))
  assert np.abs(logits - ref_logits)[real].max() <= 1e-4
  # Padding keys get nothing, and each real query's probabilities sum to one.
  assert np.abs(probs[:, 2, :, 6:, :6]).max() == 0.0
  np.testing.assert_allclose(probs.sum(-1).transpose(1, 3, 0, 2)[real], 1.0, atol=1e-6)


def packed_row():
  """Segments 1, 2, 3 of lengths 5, 4, 3, then 2 padding tokens (segment 0)."""
  return np.array([[1] * 5 + [2] * 4 + [3] * 3 + [0] * 2])


def test_packed_segments_match_transformers(checkpoint):
  """Each packed segment equals transformers run on that segment alone, and attends
  to nothing outside itself."""
  folder, torch_model = checkpoint
  segment_ids = packed_row()
  ids = np.random.RandomState(1).randint(0, torch_model.config.vocab_size, segment_ids.shape)
  hidden, probs = intermediates(load_hf(folder), ids, segment_ids=segment_ids)
  for segment in (1, 2, 3):
    where = (segment_ids[0] == segment).nonzero()[0]
    start, end = where[0], where[-1] + 1
    ref_hidden, ref_probs, _ = torch_intermediates(torch_model, ids[:, start:end])
    assert np.abs(hidden[:, :, start:end] - ref_hidden).max() <= TOLERANCE, f"segment {segment}"
    assert np.abs(probs[:, :, :, start:end, start:end] - ref_probs).max() <= TOLERANCE
    outside = np.ones(segment_ids.shape[1], bool)
    outside[start:end] = False
    assert np.abs(probs[:, :, :, start:end][..., outside]).max() == 0.0


def test_scanned_and_unrolled_layers_agree(checkpoints):
  """Both layer stacks give the same intermediates, with padding and segments (on
  Llama: the layer loop is the same for every family)."""
  folder, _ = checkpoints("llama")
  segment_ids = np.concatenate([packed_row(), [[1] * 10 + [0] * 4]])
  ids = np.random.RandomState(2).randint(0, 32000, segment_ids.shape)
  scanned = intermediates(load_hf(folder, scan_layers=True), ids, segment_ids=segment_ids)
  unrolled = intermediates(load_hf(folder, scan_layers=False), ids, segment_ids=segment_ids)
  assert jax.tree.map(np.shape, scanned) == ((3, 2, 14, 64), (2, 2, 4, 14, 14))
  for ours, theirs in zip(scanned, unrolled):
    np.testing.assert_allclose(ours, theirs, atol=1e-6)
