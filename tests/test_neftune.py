"""NEFTune noise: scale by each sequence's true length, none on padding."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from neft_jax.neftune import add_noise, sequence_lengths

ALPHA, WIDTH = 5.0, 512


def noise_of(embeddings, key=0, **kwargs):
  noisy = add_noise(embeddings, jax.random.key(key), alpha=ALPHA, **kwargs)
  return np.asarray(noisy, np.float64) - np.asarray(embeddings, np.float64)


def expected_std(length, distribution="uniform"):
  # U(-1, 1) has variance 1/3; N(0, 1) has variance 1.
  return ALPHA / np.sqrt((3.0 if distribution == "uniform" else 1.0) * length * WIDTH)


@pytest.mark.parametrize("distribution", ["uniform", "gaussian"])
def test_std_follows_each_examples_true_length(distribution):
  true_lengths = [8, 40, 200, 512]
  mask = np.zeros((4, 512), np.int32)
  for row, length in enumerate(true_lengths):
    mask[row, :length] = 1
  noise = noise_of(jnp.zeros((4, 512, WIDTH)), mask=jnp.asarray(mask), distribution=distribution)
  for row, length in enumerate(true_lengths):
    std = noise[row, :length].std()
    assert std == pytest.approx(expected_std(length, distribution), rel=0.03)
  # The padded length would give every row the scale of 512 tokens: ours do not.
  assert noise[0, :8].std() > 5 * noise[3].std()


def test_uniform_noise_is_bounded_by_its_scale():
  noise = noise_of(jnp.zeros((1, 100, WIDTH)))
  bound = ALPHA / np.sqrt(100 * WIDTH)
  assert np.abs(noise).max() <= bound * (1 + 1e-6)
  assert np.abs(noise).max() > 0.99 * bound


def test_padding_stays_untouched():
  embeddings = jax.random.normal(jax.random.key(1), (2, 64, WIDTH))
  mask = np.ones((2, 64), np.int32)
  mask[0, 20:] = 0
  mask[1, 50:] = 0
  noisy = np.asarray(add_noise(embeddings, jax.random.key(2), alpha=ALPHA, mask=jnp.asarray(mask)))
  original = np.asarray(embeddings)
  np.testing.assert_array_equal(noisy[mask == 0], original[mask == 0])
  assert (noisy[mask == 1] != original[mask == 1]).mean() > 0.99


def test_packed_segments_each_get_their_own_scale():
  lengths = [30, 120, 300]
  segment_ids = np.zeros((1, 512), np.int32)
  start = 0
  for segment, length in enumerate(lengths, start=1):
    segment_ids[0, start:start + length] = segment
    start += length
  embeddings = jnp.ones((1, 512, WIDTH))
  noise = noise_of(embeddings, segment_ids=jnp.asarray(segment_ids))
  start = 0
  for length in lengths:
    assert noise[0, start:start + length].std() == pytest.approx(expected_std(length), rel=0.03)
    start += length
  np.testing.assert_array_equal(noise[0, start:], 0.0)  # the padding after the segments
  lengths_bt = sequence_lengths((1, 512), segment_ids=jnp.asarray(segment_ids))
  assert np.asarray(lengths_bt)[0, [0, 29, 30, 149, 150, 449]].tolist() == [30, 30, 120, 120, 300, 300]


def test_same_key_same_noise_other_key_other_noise():
  embeddings = jnp.zeros((2, 16, WIDTH))
  np.testing.assert_array_equal(noise_of(embeddings, key=3), noise_of(embeddings, key=3))
  assert not np.allclose(noise_of(embeddings, key=3), noise_of(embeddings, key=4))


def test_alpha_zero_returns_the_input():
  embeddings = jnp.ones((2, 8, 16))
  assert add_noise(embeddings, jax.random.key(0), alpha=0.0) is embeddings
  jaxpr = jax.make_jaxpr(lambda e, k: add_noise(e, k, alpha=0.0))(embeddings, jax.random.key(0))
  assert not jaxpr.eqns  # no work at all: alpha = 0 costs nothing


def test_bfloat16_embeddings_keep_their_dtype():
  embeddings = jnp.zeros((1, 8, WIDTH), jnp.bfloat16)
  assert add_noise(embeddings, jax.random.key(0), alpha=ALPHA).dtype == jnp.bfloat16


def test_unknown_distribution_is_rejected():
  with pytest.raises(ValueError, match="laplace"):
    add_noise(jnp.zeros((1, 2, 4)), jax.random.key(0), alpha=1.0, distribution="laplace")
