"""Absolute tolerances for comparing floating-point results, derived from the arithmetic.

Two evaluations of one sum of n terms x_i in different orders (torch against numpy, a blocked
BLAS kernel against a plain loop, 1 thread against 16, two half batches against one batch)
are each within (n - 1) * u * sum|x_i| of the exact sum, for any order (u = eps / 2, the unit
roundoff; Higham, *Accuracy and Stability of Numerical Algorithms*, 2nd ed., eq. 4.4). So they
differ by at most (n - 1) * eps * sum|x_i|. The bound is absolute: where the terms cancel and
the sum is near zero, no relative tolerance holds, so comparisons of such results need it as
``atol`` (next to an ``rtol`` for the large elements). The same holds for any expression of sums
and products: with n the most roundings one result passes through, its error is below n * u
times the expression evaluated on absolute values (``|a| @ |b|`` for ``a @ b``), so two such
evaluations differ by less than n * eps times it, and a float32 one differs from a float64
reference by less than n * u (the float64 side's share is 2**-29 of that).

Where no absolute term is used: results of one code path compared with themselves (in place
against not, a split run against a whole one on the same kernels) and elementwise results with
no cancellation (relative error a few u). The float64 tests at rtol 1e-12 against numpy keep
no absolute term either: their fixed-seed elements do not cancel much (measured, the worst
element of each uses under 0.3% of its tolerance), and another sum order moves an n-term
float64 sum by a few n * eps64 * sum|x|, ~1e-15 for their n <= 100 terms of size ~1.
"""

from __future__ import annotations

import numpy as np

EPS32 = float(np.finfo(np.float32).eps)  # 2**-23
EPS64 = float(np.finfo(np.float64).eps)  # 2**-52


def sum_order_atol(n_terms: int, abs_sum, dtype=np.float32) -> float:
    """(n - 1) * eps * sum|x_i|: the most two orders of summing ``n_terms`` terms whose absolute
    values add up to ``abs_sum`` (a number, or an array of them: its maximum is taken) can
    differ by, in ``dtype``."""
    return max(n_terms - 1, 1) * float(np.finfo(dtype).eps) * float(np.max(abs_sum))


def matmul_atol(a: np.ndarray, b: np.ndarray, bias=None, dtype=np.float32) -> float:
    """:func:`sum_order_atol` for every element of ``a @ b (+ bias)``: k = a.shape[-1] products
    (one more rounding each) and the bias, with sum|x_i| taken from ``|a| @ |b| + |bias|``."""
    k = a.shape[-1]
    abs_sum = np.abs(np.asarray(a, np.float64)) @ np.abs(np.asarray(b, np.float64))
    if bias is not None:
        abs_sum = abs_sum + np.abs(np.asarray(bias, np.float64))
    return sum_order_atol(k + 1 + (bias is not None), abs_sum, dtype)
