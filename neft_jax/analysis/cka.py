"""Linear CKA between two sets of token features, whole or batch by batch.

Linear CKA (Kornblith et al., 2019) between X [n, d1] and Y [n, d2], whose rows
are the same n tokens seen by two models (or two layers), is

    CKA = ||Yc^T Xc||_F^2 / (||Xc^T Xc||_F ||Yc^T Yc||_F)

with Xc, Yc the column-centered features. This feature-space form equals the
HSIC ratio HSIC(K, L) / sqrt(HSIC(K, K) HSIC(L, L)) of the token Gram matrices
K = X X^T, L = Y Y^T, but needs only [d, d] matrices, which add up over batches:
`CKAAccumulator` keeps the sums and centers them algebraically at the end
(Xc^T Yc = X^T Y - n mu_x mu_y^T), so no token set is ever held whole.

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


class CKAAccumulator:
  """Sums for linear CKA between two feature sets, added batch by batch.

  `add(x, y, mask)` takes the features of the same tokens from both sides:
  x [..., d1] and y [..., d2] with the same leading shape (e.g. [batch, length]),
  and optionally a boolean `mask` of that leading shape choosing the tokens
  (the real ones, or a sample of them). `result(debiased)` is the CKA of every
  token added so far, equal to `linear_cka` of them all at once.

  Memory: three [d, d] float64 matrices and a few vectors, whatever the number
  of tokens.
  """

  def __init__(self):
    self.count = 0
    self._shift_x = self._shift_y = None
    # Sums over tokens of x' = x - shift_x, y' = y - shift_y and of their
    # squared norms a = |x'|^2, b = |y'|^2.
    self._sum_x = self._sum_y = None          # [d1], [d2]
    self._xx = self._yy = self._yx = None     # [d1, d1], [d2, d2], [d2, d1]
    self._sum_a = self._sum_b = 0.0
    self._sum_aa = self._sum_bb = self._sum_ab = 0.0
    self._sum_ax = self._sum_bx = None        # [d1]
    self._sum_ay = self._sum_by = None        # [d2]

  def add(self, x, y, mask=None) -> None:
    """Adds the tokens of one batch: x [..., d1], y [..., d2], mask [...] or None."""
    x_nd = np.asarray(x, np.float64)
    y_ne = np.asarray(y, np.float64)
    if x_nd.shape[:-1] != y_ne.shape[:-1]:
      raise ValueError(f"x {x_nd.shape} and y {y_ne.shape} must hold the same tokens: their "
                       "shapes may differ only in the last (feature) axis")
    x_nd = x_nd.reshape(-1, x_nd.shape[-1])  # [tokens, d1]
    y_ne = y_ne.reshape(-1, y_ne.shape[-1])  # [tokens, d2]
    if mask is not None:
      keep = np.asarray(mask, bool).reshape(-1)
      if keep.shape[0] != x_nd.shape[0]:
        raise ValueError(f"mask {np.shape(mask)} must have the tokens' shape {np.shape(x)[:-1]}")
      x_nd, y_ne = x_nd[keep], y_ne[keep]
    if x_nd.shape[0] == 0:
      return
    if self._shift_x is None:
      self._start(x_nd.mean(axis=0), y_ne.mean(axis=0))
    elif (x_nd.shape[1], y_ne.shape[1]) != (self._shift_x.shape[0], self._shift_y.shape[0]):
      raise ValueError(f"features of width ({x_nd.shape[1]}, {y_ne.shape[1]}) added to sums of "
                       f"width ({self._shift_x.shape[0]}, {self._shift_y.shape[0]})")
    x_nd = x_nd - self._shift_x
    y_ne = y_ne - self._shift_y
    a_n = np.einsum("nd,nd->n", x_nd, x_nd)
    b_n = np.einsum("ne,ne->n", y_ne, y_ne)
    self.count += x_nd.shape[0]
    self._sum_x += x_nd.sum(axis=0)
    self._sum_y += y_ne.sum(axis=0)
    self._xx += x_nd.T @ x_nd
    self._yy += y_ne.T @ y_ne
    self._yx += y_ne.T @ x_nd
    self._sum_a += a_n.sum()
    self._sum_b += b_n.sum()
    self._sum_aa += a_n @ a_n
    self._sum_bb += b_n @ b_n
    self._sum_ab += a_n @ b_n
    self._sum_ax += a_n @ x_nd
    self._sum_bx += b_n @ x_nd
    self._sum_ay += a_n @ y_ne
    self._sum_by += b_n @ y_ne

  def _start(self, shift_x: np.ndarray, shift_y: np.ndarray) -> None:
    d1, d2 = shift_x.shape[0], shift_y.shape[0]
    self._shift_x, self._shift_y = shift_x, shift_y
    self._sum_x, self._sum_y = np.zeros(d1), np.zeros(d2)
    self._xx, self._yy, self._yx = np.zeros((d1, d1)), np.zeros((d2, d2)), np.zeros((d2, d1))
    self._sum_ax, self._sum_bx = np.zeros(d1), np.zeros(d1)
    self._sum_ay, self._sum_by = np.zeros(d2), np.zeros(d2)

  def result(self, debiased: bool = False) -> float:
    """Linear CKA of the tokens added so far (nan if one side has no spread).

    With `debiased`, the unbiased-HSIC version (needs at least 4 tokens). It can
    leave [0, 1] on few tokens, as the estimator it is built from can.
    """
    n = self.count
    if n == 0:
      raise ValueError("CKA of no tokens: add at least one token first")
    if debiased and n < 4:
      raise ValueError(f"debiased CKA needs at least 4 tokens, got {n}")
    mu_x, mu_y = self._sum_x / n, self._sum_y / n   # the means of x', y'
    xx = self._xx - n * np.outer(mu_x, mu_x)         # Xc^T Xc
    yy = self._yy - n * np.outer(mu_y, mu_y)         # Yc^T Yc
    yx = self._yx - n * np.outer(mu_y, mu_x)         # Yc^T Xc
    cross, self_x, self_y = _frobenius_squared(yx), _frobenius_squared(xx), _frobenius_squared(yy)
    if debiased:
      a_total, b_total = np.trace(xx), np.trace(yy)  # sums of the centered rows' squared norms
      p_xy = _centered_norm_products(n, self._sum_ab, self._sum_a, self._sum_b, mu_x, mu_y,
                                     self._sum_ay, self._sum_bx, self._yx.T)
      p_xx = _centered_norm_products(n, self._sum_aa, self._sum_a, self._sum_a, mu_x, mu_x,
                                     self._sum_ax, self._sum_ax, self._xx)
      p_yy = _centered_norm_products(n, self._sum_bb, self._sum_b, self._sum_b, mu_y, mu_y,
                                     self._sum_by, self._sum_by, self._yy)
      cross = _unbiased_hsic(cross, p_xy, a_total, b_total, n)
      self_x = _unbiased_hsic(self_x, p_xx, a_total, a_total, n)
      self_y = _unbiased_hsic(self_y, p_yy, b_total, b_total, n)
    return float(cross / np.sqrt(self_x * self_y))


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
