"""neft_jax.analysis against float64 numpy references written from the papers' formulas."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from neft_jax.analysis import (CKAAccumulator, CKATable, attention_divergence, linear_cka,
                               weight_change)
from neft_jax.errors import UserError


# Linear CKA ---------------------------------------------------------------------------

def correlated_features(rng, n=40, d1=6, d2=9, offset=5.0):
  """x [n, d1] and y [n, d2] sharing part of their signal; a large mean offset
  checks that the centering is exact."""
  x = rng.normal(size=(n, d1)) + offset
  y = x @ rng.normal(size=(d1, d2)) + 2.0 * rng.normal(size=(n, d2)) - offset
  return x, y


def centering(n):
  return np.eye(n) - np.ones((n, n)) / n


def hsic_ratio_reference(x, y):
  """Kornblith et al. (2019): HSIC(K, L) / sqrt(HSIC(K, K) HSIC(L, L)), K = X X^T, L = Y Y^T,
  HSIC(K, L) = tr(K H L H) / (n - 1)^2."""
  h = centering(x.shape[0])
  hsic = lambda k, l: np.trace(k @ h @ l @ h) / (x.shape[0] - 1) ** 2
  k, l = x @ x.T, y @ y.T
  return hsic(k, l) / np.sqrt(hsic(k, k) * hsic(l, l))


def unbiased_hsic_ratio_reference(x, y):
  """The same ratio with Song et al.'s (2012) unbiased HSIC on the uncentered Grams:
  [tr(K~L~) + 1'K~1 1'L~1 / ((n-1)(n-2)) - 2/(n-2) 1'K~L~1] / (n(n-3)), K~ = K - diag(K)."""
  n = x.shape[0]
  ones = np.ones(n)

  def hsic(k, l):
    k, l = k - np.diag(np.diag(k)), l - np.diag(np.diag(l))
    return (np.trace(k @ l) + (ones @ k @ ones) * (ones @ l @ ones) / ((n - 1) * (n - 2))
            - 2 / (n - 2) * ones @ k @ l @ ones) / (n * (n - 3))

  k, l = x @ x.T, y @ y.T
  return hsic(k, l) / np.sqrt(hsic(k, k) * hsic(l, l))


@pytest.mark.parametrize("debiased", [False, True])
def test_cka_of_features_with_themselves_is_one(debiased):
  x, _ = correlated_features(np.random.default_rng(0))
  assert linear_cka(x, x, debiased) == pytest.approx(1.0, abs=1e-12)


def test_cka_equals_the_hsic_ratio_and_is_below_one_for_different_features():
  rng = np.random.default_rng(1)
  x, y = correlated_features(rng)
  expected = hsic_ratio_reference(x, y)
  assert 0.2 < expected < 0.95
  assert linear_cka(x, y) == pytest.approx(expected, abs=1e-6)
  # float32 features, as models give them
  assert linear_cka(x.astype(np.float32), y.astype(np.float32)) == pytest.approx(
      hsic_ratio_reference(x.astype(np.float32).astype(np.float64),
                           y.astype(np.float32).astype(np.float64)), abs=1e-6)
  unrelated = rng.normal(size=y.shape)
  assert linear_cka(x, unrelated) == pytest.approx(hsic_ratio_reference(x, unrelated), abs=1e-6)
  assert linear_cka(x, unrelated) < expected


def test_debiased_cka_equals_the_unbiased_hsic_ratio():
  rng = np.random.default_rng(2)
  for n in (6, 40):
    x, y = correlated_features(rng, n=n)
    expected = unbiased_hsic_ratio_reference(x, y)
    assert linear_cka(x, y, debiased=True) == pytest.approx(expected, abs=1e-6)
    assert abs(expected - hsic_ratio_reference(x, y)) > 1e-3  # the two estimators differ


def test_debiased_cka_removes_the_bias_of_few_tokens_in_many_dimensions():
  # y = x + noise of equal variance: the population CKA is ||I||^2 / (||I|| ||2 I||) = 1/2.
  rng = np.random.default_rng(13)
  x = rng.normal(size=(100, 64))
  y = x + rng.normal(size=x.shape)
  assert linear_cka(x, y) > 0.65
  assert linear_cka(x, y, debiased=True) == pytest.approx(0.5, abs=0.03)


@pytest.mark.parametrize("debiased", [False, True])
def test_cka_is_invariant_to_orthogonal_transforms_and_isotropic_scaling(debiased):
  rng = np.random.default_rng(3)
  x, y = correlated_features(rng)
  value = linear_cka(x, y, debiased)
  rotation_x, _ = np.linalg.qr(rng.normal(size=(x.shape[1], x.shape[1])))
  rotation_y, _ = np.linalg.qr(rng.normal(size=(y.shape[1], y.shape[1])))
  assert linear_cka(x @ rotation_x, y, debiased) == pytest.approx(value, abs=1e-9)
  assert linear_cka(x, y @ rotation_y, debiased) == pytest.approx(value, abs=1e-9)
  assert linear_cka(7.5 * x, y, debiased) == pytest.approx(value, abs=1e-9)
  assert linear_cka(x, 0.01 * y, debiased) == pytest.approx(value, abs=1e-9)
  # not invariant to a general linear map: the test can fail
  stretch = np.diag(np.geomspace(0.1, 10.0, x.shape[1]))
  assert abs(linear_cka(x @ stretch, y, debiased) - value) > 1e-3


@pytest.mark.parametrize("debiased", [False, True])
def test_streaming_accumulation_equals_the_one_shot_value(debiased):
  rng = np.random.default_rng(4)
  batches, length = 5, 8
  x, y = correlated_features(rng, n=batches * length)
  x_btd = x.reshape(batches, length, -1).astype(np.float32)
  y_bte = y.reshape(batches, length, -1).astype(np.float32)
  real_bt = rng.random((batches, length)) < 0.7
  real_bt[2] = False  # a batch without a real token adds nothing
  accumulator = CKAAccumulator()
  for batch in range(batches):
    accumulator.add(jnp.asarray(x_btd[batch:batch + 1]), y_bte[batch:batch + 1],
                    mask=real_bt[batch:batch + 1])
  assert accumulator.count == real_bt.sum()
  one_shot = linear_cka(x_btd[real_bt], y_bte[real_bt], debiased)
  assert accumulator.result(debiased) == pytest.approx(one_shot, abs=1e-9)


def test_a_table_of_streams_gives_every_pair_as_linear_cka_would():
  rng = np.random.default_rng(5)
  x, y = correlated_features(rng, n=24)
  z = np.tanh(y[:, :4]) + 0.1 * rng.normal(size=(24, 4))
  features = {"base/0": x, "tuned/0": y, "base/last": z}
  pairs = [("base/0", "tuned/0"), ("base/0", "base/last"), ("tuned/0", "base/last"),
           ("base/last", "base/last")]
  table = CKATable(pairs)
  real = rng.random(24) < 0.8
  for rows in np.array_split(np.arange(24), 4):
    table.add({name: f[rows] for name, f in features.items()}, mask=real[rows])
  for debiased in (False, True):
    for name_x, name_y in pairs:
      expected = linear_cka(features[name_x][real], features[name_y][real], debiased)
      assert table.result(name_x, name_y, debiased) == pytest.approx(expected, abs=1e-9)
  assert table.result("base/last", "base/last") == pytest.approx(1.0, abs=1e-12)
  with pytest.raises(ValueError, match="not one of the table's pairs"):
    table.result("tuned/0", "base/0")
  with pytest.raises(ValueError, match=r"features of \['base/last'\] are missing"):
    table.add({"base/0": x, "tuned/0": y})


def test_cka_input_errors():
  with pytest.raises(ValueError, match="same n tokens"):
    linear_cka(np.ones((5, 2)), np.ones((4, 2)))
  with pytest.raises(ValueError, match="at least 4 tokens"):
    linear_cka(np.eye(3), np.eye(3), debiased=True)


# Weight change ------------------------------------------------------------------------

LAYERS = 3


def tiny_parameters(rng) -> dict[str, np.ndarray]:
  """Our parameter names and layouts at toy sizes: embed 4, heads 2 x 2, mlp 8."""
  shapes = {
      "embed": (11, 4), "lm_head": (11, 4), "final_norm.scale": (4,),
      "layers.attn_norm.scale": (LAYERS, 4), "layers.mlp_norm.scale": (LAYERS, 4),
      "layers.attn.query.kernel": (LAYERS, 2, 2, 4), "layers.attn.query.bias": (LAYERS, 2, 2),
      "layers.attn.key.kernel": (LAYERS, 2, 2, 4), "layers.attn.value.kernel": (LAYERS, 2, 2, 4),
      "layers.attn.out.kernel": (LAYERS, 4, 2, 2),
      "layers.mlp.gate.kernel": (LAYERS, 8, 4), "layers.mlp.up.kernel": (LAYERS, 8, 4),
      "layers.mlp.down.kernel": (LAYERS, 4, 8),
  }
  return {name: rng.normal(size=shape).astype(np.float32) for name, shape in shapes.items()}


def as_state(flat: dict[str, np.ndarray]) -> nnx.State:
  nested: dict = {}
  for name, value in flat.items():
    *path, leaf = name.split(".")
    node = nested
    for part in path:
      node = node.setdefault(part, {})
    node[leaf] = nnx.Param(jnp.asarray(value))
  return nnx.State(nested)


def test_identical_parameters_change_by_zero():
  base = tiny_parameters(np.random.default_rng(5))
  change = weight_change(as_state(base), as_state({k: v.copy() for k, v in base.items()}))
  assert len(change.tensors) == 3 + 10 * LAYERS
  assert {kind for kind, _ in change.kinds} == {"q", "k", "v", "o", "gate", "up", "down", "norm",
                                                "embedding", "head"}
  assert set(change.blocks) == {(block, layer) for block in ("attention", "mlp")
                                for layer in range(LAYERS)}
  for table in (change.tensors, change.kinds, change.blocks):
    assert all(c.relative == 0.0 and c.cosine == 1.0 for c in table.values())
  assert {row["metric"] for row in change.rows()} == {"relative_change", "cosine"}


def test_only_the_changed_tensor_at_the_changed_layer_moves():
  rng = np.random.default_rng(6)
  base = tiny_parameters(rng)
  tuned = {name: value.copy() for name, value in base.items()}
  delta = 0.1 * rng.normal(size=(4, 8)).astype(np.float32)
  tuned["layers.mlp.down.kernel"][1] += delta
  change = weight_change(base, tuned)

  moved = {key for key, c in change.tensors.items() if c.relative != 0.0}
  assert moved == {("layers.mlp.down.kernel", 1)}
  b, t = base["layers.mlp.down.kernel"][1].astype(np.float64), tuned["layers.mlp.down.kernel"][1]
  t = t.astype(np.float64)
  moved_change = change.tensors[("layers.mlp.down.kernel", 1)]
  assert moved_change.relative == pytest.approx(np.linalg.norm(t - b) / np.linalg.norm(b), 1e-12)
  assert moved_change.cosine == pytest.approx(
      np.sum(t * b) / (np.linalg.norm(t) * np.linalg.norm(b)), abs=1e-12)
  assert moved_change.cosine < 1.0
  assert {key for key, c in change.kinds.items() if c.relative != 0.0} == {("down", 1)}
  assert {key for key, c in change.blocks.items() if c.relative != 0.0} == {("mlp", 1)}
  assert change.kinds[("down", 1)].relative == pytest.approx(moved_change.relative, 1e-12)


def test_block_change_is_over_the_concatenation_of_its_tensors():
  rng = np.random.default_rng(7)
  base = tiny_parameters(rng)
  tuned = {name: value + 0.05 * rng.normal(size=value.shape).astype(np.float32)
           for name, value in base.items()}
  change = weight_change(base, tuned)
  attention = [n for n in base if n.startswith("layers.attn.")]
  for layer in range(LAYERS):
    b = np.concatenate([base[n][layer].ravel() for n in attention]).astype(np.float64)
    t = np.concatenate([tuned[n][layer].ravel() for n in attention]).astype(np.float64)
    block = change.blocks[("attention", layer)]
    assert block.relative == pytest.approx(np.linalg.norm(t - b) / np.linalg.norm(b), 1e-9)
    assert block.cosine == pytest.approx(t @ b / (np.linalg.norm(t) * np.linalg.norm(b)), 1e-9)
  norms = change.kinds[("norm", None)]  # final_norm alone outside the blocks
  b, t = base["final_norm.scale"].astype(np.float64), tuned["final_norm.scale"]
  assert norms.relative == pytest.approx(np.linalg.norm(t - b) / np.linalg.norm(b), 1e-6)


def test_mismatched_models_name_the_first_mismatching_tensor():
  rng = np.random.default_rng(8)
  base = tiny_parameters(rng)
  wider = dict(base, **{"layers.mlp.up.kernel": np.zeros((LAYERS, 16, 4), np.float32),
                        "lm_head": np.zeros((12, 4), np.float32)})
  with pytest.raises(UserError, match=r"tensor layers\.mlp\.up\.kernel has shape \(3, 8, 4\) "
                                      r"in the base model and \(3, 16, 4\) in the tuned one"):
    weight_change(base, wider)
  missing = {name: value for name, value in base.items() if name != "layers.attn.key.kernel"}
  with pytest.raises(UserError, match=r"tensor layers\.attn\.key\.kernel is in the base model "
                                      "but not in the tuned one"):
    weight_change(base, missing)


# Attention divergence -----------------------------------------------------------------

def causal_attention(rng, batch=2, heads=3, length=5, temperature=1.0):
  """Random causal attention rows [batch, heads, query, key], float32."""
  logits = rng.normal(size=(batch, heads, length, length)) / temperature
  logits = np.where(np.tril(np.ones((length, length), bool)), logits, -np.inf)
  weights = np.exp(logits - logits.max(axis=-1, keepdims=True))
  return (weights / weights.sum(axis=-1, keepdims=True)).astype(np.float32)


def js_reference(p, q):
  """JS from its definition, float64: 1/2 KL(p || m) + 1/2 KL(q || m), m = (p + q)/2."""
  p, q = np.asarray(p, np.float64), np.asarray(q, np.float64)
  m = (p + q) / 2
  kl = lambda a: np.sum(np.where(a > 0, a * np.log(np.where(a > 0, a, 1) / np.where(a > 0, m, 1)),
                                 0), axis=-1)
  return 0.5 * kl(p) + 0.5 * kl(q)  # [batch, heads, query]


def test_js_of_identical_attention_is_zero():
  p = causal_attention(np.random.default_rng(9))
  stats = attention_divergence(p, p.copy(), np.ones((2, 5), bool))
  means = stats.means()
  assert np.all(means["js"] == 0.0)
  np.testing.assert_array_equal(means["entropy_p"], means["entropy_q"])
  assert int(stats.count) == 10


def test_js_matches_its_definition_is_symmetric_and_bounded_by_ln_2():
  rng = np.random.default_rng(10)
  p, q = causal_attention(rng, temperature=0.3), causal_attention(rng, temperature=0.3)
  mask = np.array([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]], bool)  # right padding in row 2
  stats = attention_divergence(p, q, mask)
  reference = js_reference(p, q)  # [batch, heads, query]
  real = mask[:, None, :]
  expected = (reference * real).sum(axis=(0, 2)) / real.sum()
  np.testing.assert_allclose(stats.means()["js"], expected, atol=1e-6)
  assert np.all(stats.means()["js"] > 0.01)
  np.testing.assert_allclose(attention_divergence(q, p, mask).means()["js"],
                             stats.means()["js"], atol=1e-7)
  # disjoint rows reach ln 2
  length = 4
  first, last = np.zeros((1, 1, length, length)), np.zeros((1, 1, length, length))
  first[..., 0], last[..., -1] = 1.0, 1.0
  disjoint = attention_divergence(first, last, np.ones((1, length), bool)).means()["js"]
  np.testing.assert_allclose(disjoint, [math.log(2)], rtol=1e-6)
  assert np.all(stats.means()["js"] <= math.log(2))


def test_js_of_barely_different_rows_keeps_its_digits_in_float32():
  rng = np.random.default_rng(12)
  p = causal_attention(rng)
  q = p * np.exp(1e-3 * rng.normal(size=p.shape)).astype(np.float32)
  q /= q.sum(axis=-1, keepdims=True)  # JS about 1e-8 nats
  expected = js_reference(p, q).sum(axis=(0, 2)) / 10
  np.testing.assert_allclose(attention_divergence(p, q, np.ones((2, 5), bool)).means()["js"],
                             expected, rtol=1e-3)


def test_entropy_of_uniform_attention_is_ln_of_the_valid_keys():
  length = 6
  causal = np.tril(np.ones((length, length)))
  uniform = causal / causal.sum(axis=-1, keepdims=True)
  uniform = np.broadcast_to(uniform, (1, 2, length, length))  # [batch, heads, query, key]
  mask = np.ones((1, length), bool)
  mask[0, 0] = False  # leave out the first query
  means = attention_divergence(uniform, uniform, mask).means()
  expected = np.mean(np.log(np.arange(2, length + 1)))  # query t sees t + 1 keys
  np.testing.assert_allclose(means["entropy_p"], [expected, expected], rtol=1e-6)


def test_attention_stats_add_up_over_batches_under_jit():
  rng = np.random.default_rng(11)
  p, q = causal_attention(rng, batch=4), causal_attention(rng, batch=4)
  mask = rng.random((4, 5)) < 0.7
  whole = attention_divergence(p, q, mask).means()
  step = jax.jit(attention_divergence)
  parts = step(p[:2], q[:2], mask[:2]) + step(p[2:], q[2:], mask[2:])
  assert int(parts.count) == int(mask.sum())
  for name, value in parts.means().items():
    np.testing.assert_allclose(value, whole[name], rtol=1e-6)
  layers = jax.vmap(attention_divergence, in_axes=(0, 0, None))(np.stack([p, p]),
                                                                np.stack([q, p]), mask)
  np.testing.assert_allclose(layers.means()["js"], [whole["js"], np.zeros(3)], rtol=1e-6)
  # padding rows do not count, whatever they hold
  garbage = np.where(mask[:, None, :, None], q, p[:, :, ::-1])  # other rows at padding
  np.testing.assert_allclose(attention_divergence(p, garbage, mask).means()["js"], whole["js"],
                             rtol=1e-6)
