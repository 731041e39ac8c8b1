"""The statistics of a study's summary: mean ± std over seeds and a paired bootstrap.

    mean_std(values)                         -> (mean, std, n)
    paired_bootstrap(a, b, n_resamples=2000, seed=0, confidence=0.95)
                                             -> (difference, low, high)
    verdict(low, high)                       -> "positive" | "negative" | "inconclusive" | "n/a"

The bootstrap compares two conditions of a study. `a` and `b` are already
paired: row k of both is the same seed (the caller keeps only the seeds both
conditions finished). They are either [seeds] (one number per cell, a loss) or
[seeds, examples] (one number per test example and cell, e.g. 1.0 / 0.0 for a
correct / wrong answer; every cell has the same test set, so column j is the
same example on both sides).

Each resample draws the seeds with replacement and, for [seeds, examples], the
test examples with replacement too; the same draw indexes both sides, so the
pairing by seed and by example is kept and only the paired differences a - b
are resampled. The draws come from `numpy.random.default_rng(seed)` in a fixed
order: first the seed indices, shape [n_resamples, seeds], then (for
[seeds, examples]) the example indices, shape [n_resamples, examples]. The
interval is the percentile interval: the (1 - confidence) / 2 and
(1 + confidence) / 2 quantiles (numpy's default, linear interpolation) of the
resampled differences of means. With one seed the seeds cannot be resampled:
the interval is over the examples only, and for [seeds] there is none (nan).
"""

from __future__ import annotations

import math

import numpy as np


def mean_std(values) -> tuple[float, float, int]:
  """Mean, sample std (ddof=1; nan for a single value) and count of `values`."""
  values = np.asarray(values, dtype=np.float64).reshape(-1)
  n = values.size
  if n == 0:
    return math.nan, math.nan, 0
  mean = float(values.mean())
  std = float(values.std(ddof=1)) if n > 1 else math.nan
  return mean, std, n


def _counts(index_rn: np.ndarray, size: int) -> np.ndarray:
  """[resamples, size]: how often each index is drawn in each resample (row) of index_rn."""
  num_resamples = index_rn.shape[0]
  flat = (np.arange(num_resamples)[:, None] * size + index_rn).reshape(-1)
  return np.bincount(flat, minlength=num_resamples * size).reshape(num_resamples, size).astype(
      np.float64)


def paired_bootstrap(a, b, n_resamples: int = 2000, seed: int = 0,
                     confidence: float = 0.95) -> tuple[float, float, float]:
  """mean(a) - mean(b) and its paired bootstrap percentile interval (see the module's doc).

  For [seeds, examples] the mean is over both axes. low and high are nan when
  there is nothing to resample (one seed, no examples axis)."""
  a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
  if a.shape != b.shape or a.ndim not in (1, 2) or a.shape[0] == 0:
    raise ValueError(f"paired_bootstrap needs two arrays of the same shape [seeds] or "
                     f"[seeds, examples] with at least one seed; got {a.shape} and {b.shape}")
  if not 0.0 < confidence < 1.0:
    raise ValueError(f"confidence must be between 0 and 1; got {confidence}")
  difference_se = a - b  # [seeds] or [seeds, examples]
  difference = float(difference_se.mean())
  num_seeds = difference_se.shape[0]
  if difference_se.ndim == 1 and num_seeds == 1:
    return difference, math.nan, math.nan
  rng = np.random.default_rng(seed)
  seed_index_rs = rng.integers(0, num_seeds, size=(n_resamples, num_seeds))
  # How often each seed is drawn in each resample: [resamples, seeds].
  seed_count_rs = _counts(seed_index_rs, num_seeds)
  if difference_se.ndim == 1:
    resampled_r = seed_count_rs @ difference_se / num_seeds  # [resamples]
  else:
    num_examples = difference_se.shape[1]
    example_index_re = rng.integers(0, num_examples, size=(n_resamples, num_examples))
    # Sum over the drawn seeds (as counts), then over the drawn examples (gathered).
    per_example_re = seed_count_rs @ difference_se  # [resamples, examples]
    drawn_re = np.take_along_axis(per_example_re, example_index_re, axis=1)
    resampled_r = drawn_re.sum(axis=1) / (num_seeds * num_examples)  # [resamples]
  tail = (1.0 - confidence) / 2.0
  low, high = np.quantile(resampled_r, [tail, 1.0 - tail])
  return difference, float(low), float(high)


def verdict(low: float, high: float) -> str:
  """positive: the whole interval is above 0 (a - b > 0); negative: below 0;
  inconclusive: it spans (or touches) 0; n/a: no interval. Which direction is
  better depends on the metric (lower is better for a loss) and is not implied."""
  if not (math.isfinite(low) and math.isfinite(high)):
    return "n/a"
  if low > 0:
    return "positive"
  if high < 0:
    return "negative"
  return "inconclusive"
