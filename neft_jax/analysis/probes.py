"""Where does task information live? A linear probe's held-out accuracy per layer.

`probe_accuracy(features, labels, seed)` splits the examples by `seed` into a
training part and a held-out part (`test_fraction`, at least one example of
each), standardizes the features with the training part's statistics and fits
a ridge-regression classifier in closed form (one-hot targets, the class of
the largest output wins); the accuracy is that on the held-out part. Ridge in
closed form keeps it deterministic and free of an optimizer; `ridge` is
relative to the mean feature variance (1 after standardizing).
"""

from __future__ import annotations

import numpy as np

from neft_jax.errors import UserError


def probe_accuracy(features, labels, seed: int = 0, *, test_fraction: float = 0.3,
                   ridge: float = 1e-2) -> float:
  """Held-out accuracy of a linear probe: features [n, d], labels int [n]."""
  x = np.asarray(features, np.float64)
  y = np.asarray(labels, np.int64)
  n = x.shape[0]
  if x.ndim != 2 or y.shape != (n,):
    raise ValueError(f"features must be [n, d] and labels [n], got {x.shape} and {y.shape}")
  if n < 4 or len(np.unique(y)) < 2:
    raise UserError(f"a task probe needs at least 4 examples of at least 2 labels; the probe set "
                    f"has {n} example(s) of {len(np.unique(y))} label(s)")
  order = np.random.default_rng([seed, 13]).permutation(n)
  held = min(max(1, round(test_fraction * n)), n - 2)
  test, train = order[:held], order[held:]
  mean, std = x[train].mean(axis=0), x[train].std(axis=0)
  scaled = (x - mean) / np.where(std > 0, std, 1.0)
  design = np.concatenate([scaled, np.ones((n, 1))], axis=1)  # [n, d + 1]: with a bias
  classes = int(y.max()) + 1
  targets = np.eye(classes)[y[train]]  # [train, classes]
  train_x = design[train]
  penalty = ridge * len(train) * np.eye(design.shape[1])
  penalty[-1, -1] = 0.0  # the bias is not shrunk
  weights = np.linalg.solve(train_x.T @ train_x + penalty, train_x.T @ targets)
  predicted = np.argmax(design[test] @ weights, axis=1)
  return float(np.mean(predicted == y[test]))


def layer_probe_accuracy(pooled_lnd, labels, seed: int = 0) -> np.ndarray:
  """[layers + 1] held-out probe accuracy of each layer's pooled states [layers + 1, n, d]."""
  return np.array([probe_accuracy(features, labels, seed) for features in np.asarray(pooled_lnd)])
