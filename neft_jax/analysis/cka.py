"""Linear CKA between two sets of token features, whole or batch by batch.

Linear CKA (Kornblith et al., 2019) between X [n, d1] and Y [n, d2], whose rows
are the same n tokens seen by two models (or two layers), is

    CKA = ||Yc^T Xc||_F^2 / (||Xc^T Xc||_F ||Yc^T Yc||_F)

with Xc, Yc the column-centered features. This feature-space form equals the
HSIC ratio HSIC(K, L) / sqrt(HSIC(K, K) HSIC(L, L)) of the token Gram matrices
K = X X^T, L = Y Y^T, but needs only [d, d] matrices, which add up over batches:
`CKATable` (many pairs of streams) and `CKAAccumulator` (one pair) keep the sums
and center them algebraically at the end (Xc^T Yc = X^T Y - n mu_x mu_y^T), so
no token set is ever held whole.

The debiased version replaces each HSIC with the unbiased estimator of Song et
al. (2012), as in Nguyen et al. (2020) and Kornblith et al.'s "debiased CKA":

    HSIC_u(K, L) = [tr(K~ L~) + 1'K~1 1'L~1 / ((n-1)(n-2)) - 2/(n-2) 1'K~L~1] / (n(n-3))

where K~ is K with its diagonal set to zero. For centered features it reduces to
T - n/(n-2) P + A B / ((n-1)(n-2)) (up to the common factor), with
T = ||Yc^T Xc||_F^2, a_i = |xc_i|^2, b_i = |yc_i|^2, P = sum_i a_i b_i,
A = sum_i a_i, B = sum_i b_i. P needs the rows' squared norms about the final
mean, which is unknown while streaming; expanding |x_i - mu|^2 turns P into
sums that do add up over batches (sum a b, sum a y, sum b x, ...), so the
debiased value streams exactly too. It needs n >= 4 tokens.

Precision: everything is summed in float64 on the host, about a shift (the
first batch's mean), so the algebraic centering does not cancel away digits
when the features' means are large next to their spread (as in the residual
stream of large models).
"""

from __future__ import annotations

import numpy as np


class _StreamSums:
  """Sums over the tokens of one feature stream, about a fixed shift (its first
  batch's mean): u' = u - shift and a = |u'|^2."""

  def __init__(self, shift: np.ndarray):
    d = shift.shape[0]
    self.shift = shift
    self.total = np.zeros(d)          # sum u'                [d]
    self.gram = np.zeros((d, d))      # sum u' u'^T           [d, d]
    self.sum_a = self.sum_aa = 0.0    # sum a, sum a^2
    self.sum_a_u = np.zeros(d)        # sum a u'              [d]

  def add(self, u_nd: np.ndarray, a_n: np.ndarray) -> None:
    self.total += u_nd.sum(axis=0)
    self.gram += u_nd.T @ u_nd
    self.sum_a += a_n.sum()
    self.sum_aa += a_n @ a_n
    self.sum_a_u += a_n @ u_nd


class _CrossSums:
  """Sums over the tokens of two streams x', y' with a = |x'|^2, b = |y'|^2."""

  def __init__(self, d1: int, d2: int):
    self.yx = np.zeros((d2, d1))      # sum y' x'^T           [d2, d1]
    self.sum_ab = 0.0                 # sum a b
    self.sum_a_y = np.zeros(d2)       # sum a y'              [d2]
    self.sum_b_x = np.zeros(d1)       # sum b x'              [d1]

  def add(self, x_nd, a_n, y_ne, b_n) -> None:
    self.yx += y_ne.T @ x_nd
    self.sum_ab += a_n @ b_n
    self.sum_a_y += a_n @ y_ne
    self.sum_b_x += b_n @ x_nd


class CKATable:
  """Linear CKA between pairs of named feature streams over the same tokens,
  added batch by batch.

  `pairs` names the CKAs wanted, e.g. [("base/3", "tuned/3"), ("base/3", "base/12")].
  `add(features, mask)` takes one batch: `features` maps every name to its
  features of the same tokens, [..., d] with a common leading shape (e.g.
  [batch, length]); `mask`, a boolean array of that leading shape or None,
  chooses the tokens (the real ones, or a sample of them). `result(name_x,
  name_y, debiased)` is the CKA over every token added so far, equal to
  `linear_cka` of them all at once.

  Each stream's own sums are kept once, however many pairs it is in. Memory, in
  float64: a [d, d] matrix per stream and a [d2, d1] matrix per pair, whatever
  the number of tokens (32 MiB each at d = 2048).
  """

  def __init__(self, pairs):
    self.pairs = tuple(dict.fromkeys((str(x), str(y)) for x, y in pairs))
    self.names = tuple(dict.fromkeys(name for pair in self.pairs for name in pair))
    self.count = 0
    self._streams: dict[str, _StreamSums] = {}
    self._cross: dict[tuple[str, str], _CrossSums] = {}

  def add(self, features, mask=None) -> None:
    """Adds the tokens of one batch: features {name: [..., d]}, mask [...] or None."""
    missing = [name for name in self.names if name not in features]
    if missing:
      raise ValueError(f"features of {missing} are missing: every batch must give all of "
                       f"{list(self.names)}")
    leading = np.shape(features[self.names[0]])[:-1]
    keep = None if mask is None else np.asarray(mask, bool).reshape(-1)
    if mask is not None and np.shape(mask) != leading:
      raise ValueError(f"mask {np.shape(mask)} must have the tokens' shape {leading}")
    rows: dict[str, np.ndarray] = {}
    for name in self.names:
      u = np.asarray(features[name], np.float64)
      if u.shape[:-1] != leading:
        raise ValueError(f"features {name} {u.shape} and {self.names[0]} "
                         f"{np.shape(features[self.names[0]])} must hold the same tokens: their "
                         "shapes may differ only in the last (feature) axis")
      u_nd = u.reshape(-1, u.shape[-1])  # [tokens, d]
      rows[name] = u_nd if keep is None else u_nd[keep]
    tokens = rows[self.names[0]].shape[0]
    if tokens == 0:
      return
    if not self._streams:
      self._start(rows)
    for name, stream in self._streams.items():
      if rows[name].shape[1] != stream.shift.shape[0]:
        raise ValueError(f"features {name} of width {rows[name].shape[1]} added to sums of "
                         f"width {stream.shift.shape[0]}")
    shifted = {name: rows[name] - stream.shift for name, stream in self._streams.items()}
    squared = {name: np.einsum("nd,nd->n", u_nd, u_nd) for name, u_nd in shifted.items()}
    self.count += tokens
    for name, stream in self._streams.items():
      stream.add(shifted[name], squared[name])
    for (x, y), cross in self._cross.items():
      cross.add(shifted[x], squared[x], shifted[y], squared[y])

  def _start(self, rows: dict[str, np.ndarray]) -> None:
    self._streams = {name: _StreamSums(rows[name].mean(axis=0)) for name in self.names}
    self._cross = {(x, y): _CrossSums(rows[x].shape[1], rows[y].shape[1]) for x, y in self.pairs}

  def result(self, name_x: str, name_y: str, debiased: bool = False) -> float:
    """Linear CKA between streams name_x and name_y over the tokens added so far
    (nan if one side has no spread).

    With `debiased`, the unbiased-HSIC version (needs at least 4 tokens). It can
    leave [0, 1] on few tokens, as the estimator it is built from can.
    """
    if (name_x, name_y) not in self.pairs:
      raise ValueError(f"({name_x!r}, {name_y!r}) is not one of the table's pairs {self.pairs}")
    n = self.count
    if n == 0:
      raise ValueError("CKA of no tokens: add at least one token first")
    if debiased and n < 4:
      raise ValueError(f"debiased CKA needs at least 4 tokens, got {n}")
    sx, sy, cross = self._streams[name_x], self._streams[name_y], self._cross[(name_x, name_y)]
    mu_x, mu_y = sx.total / n, sy.total / n      # the means of x', y'
    xx = sx.gram - n * np.outer(mu_x, mu_x)       # Xc^T Xc
    yy = sy.gram - n * np.outer(mu_y, mu_y)       # Yc^T Yc
    yx = cross.yx - n * np.outer(mu_y, mu_x)      # Yc^T Xc
    hsic_xy, hsic_xx, hsic_yy = (_frobenius_squared(yx), _frobenius_squared(xx),
                                 _frobenius_squared(yy))
    if debiased:
      a_total, b_total = np.trace(xx), np.trace(yy)  # sums of the centered rows' squared norms
      p_xy = _centered_norm_products(n, cross.sum_ab, sx.sum_a, sy.sum_a, mu_x, mu_y,
                                     cross.sum_a_y, cross.sum_b_x, cross.yx.T)
      p_xx = _centered_norm_products(n, sx.sum_aa, sx.sum_a, sx.sum_a, mu_x, mu_x,
                                     sx.sum_a_u, sx.sum_a_u, sx.gram)
      p_yy = _centered_norm_products(n, sy.sum_aa, sy.sum_a, sy.sum_a, mu_y, mu_y,
                                     sy.sum_a_u, sy.sum_a_u, sy.gram)
      hsic_xy = _unbiased_hsic(hsic_xy, p_xy, a_total, b_total, n)
      hsic_xx = _unbiased_hsic(hsic_xx, p_xx, a_total, a_total, n)
      hsic_yy = _unbiased_hsic(hsic_yy, p_yy, b_total, b_total, n)
    return float(hsic_xy / np.sqrt(hsic_xx * hsic_yy))


class CKAAccumulator:
  """Linear CKA between two feature sets, added batch by batch: a CKATable of
  one pair. `add(x, y, mask)`: x [..., d1] and y [..., d2] of the same tokens,
  mask [...] or None; `result(debiased)`."""

  def __init__(self):
    self._table = CKATable([("x", "y")])

  @property
  def count(self) -> int:
    return self._table.count

  def add(self, x, y, mask=None) -> None:
    self._table.add({"x": x, "y": y}, mask)

  def result(self, debiased: bool = False) -> float:
    return self._table.result("x", "y", debiased)


def _centered_norm_products(n, sum_ab, sum_a, sum_b, mu_u, mu_v, sum_a_v, sum_b_u,
                            outer_uv) -> float:
  """sum_i |u_i - mu_u|^2 |v_i - mu_v|^2 over n rows u_i, v_i (shifted x' or y')
  with means mu_u, mu_v, from sums that add up over batches: with a_i = |u_i|^2,
  b_i = |v_i|^2, sum_ab = sum a b, sum_a_v = sum a_i v_i, sum_b_u = sum b_i u_i,
  outer_uv = sum u_i v_i^T."""
  mm_u, mm_v = mu_u @ mu_u, mu_v @ mu_v
  # (a_i - 2 u_i.mu_u + |mu_u|^2)(b_i - 2 v_i.mu_v + |mu_v|^2) summed, with sum u_i = n mu_u
  return (sum_ab - 2 * mu_v @ sum_a_v - 2 * mu_u @ sum_b_u + 4 * mu_u @ outer_uv @ mu_v
          + mm_v * sum_a + mm_u * sum_b - 3 * n * mm_u * mm_v)


def _frobenius_squared(m: np.ndarray) -> float:
  return float(np.einsum("ij,ij->", m, m))


def _unbiased_hsic(trace_kl: float, diagonal_products: float, trace_k: float, trace_l: float,
                   n: int) -> float:
  """n(n-3) HSIC_u(K, L) for centered features: tr(KL) = trace_kl,
  sum_i K_ii L_ii = diagonal_products, tr K = trace_k, tr L = trace_l.
  (The common factor 1/(n(n-3)) cancels in CKA.)"""
  return trace_kl - n / (n - 2) * diagonal_products + trace_k * trace_l / ((n - 1) * (n - 2))


def linear_cka(x, y, debiased: bool = False) -> float:
  """Linear CKA between token features x [n, d1] and y [n, d2] (rows: the same
  tokens). 1 for identical features; invariant to orthogonal transforms and
  isotropic scaling of either side. `debiased`: the unbiased-HSIC version
  (Nguyen et al. 2020), which needs n >= 4."""
  x, y = np.asarray(x), np.asarray(y)
  if x.ndim != 2 or y.ndim != 2 or x.shape[0] != y.shape[0]:
    raise ValueError(f"linear_cka takes x [n, d1] and y [n, d2] over the same n tokens, "
                     f"got {x.shape} and {y.shape}")
  accumulator = CKAAccumulator()
  accumulator.add(x, y)
  return accumulator.result(debiased)
