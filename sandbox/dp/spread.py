"""Spread: VAR_POP, VAR_SAMP, STDDEV_POP, STDDEV_SAMP from three noisy sums.

Each value is centred on the midpoint c of its column's declared bounds, in fixed point:
d = v - c with |d| <= h, the half-range. Three measurements, each an exact integer sum with
discrete Laplace noise: n = COUNT(col), S = SUM(d) (sensitivity k * h) and Q = SUM(d^2)
(sensitivity k * h^2, in units of 2^shift when h^2 would not fit 40 bits). Centring makes the
sensitivities depend on the width of the bounds, not on their distance from 0, and variance is
unchanged by it. Then, as post-processing,

    var_pop = Q / n - (S / n)^2        var_samp = var_pop * n / (n - 1)        stddev = sqrt(var)

clamped to [0, h^2] (no bounded variable spreads more). With fewer than 2 noisy rows the
estimate is NULL. The three measurements share the query's epsilon with the others (equal
shares; ``count(col)`` is shared with AVG/COUNT of the same column), and the mechanism block
lists them per output column.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from sqlglot import exp

from sandbox.policy.models import Column

SQUARE_BITS = 40  # a centred square is carried in at most this many bits (2^shift units beyond)


@dataclass(frozen=True)
class Centring:
    """How a column's values are centred and squared in fixed point."""

    centre: int  # c, in the column's fixed-point units
    half: int  # h = max |v - c| over the fixed-point bounds
    shift: int  # squares are carried in units of 2**shift (fixed-point units squared)

    @property
    def square_sensitivity(self) -> int:
        """The largest carried square, the per-row sensitivity of SUM(d^2)."""
        return max(1, -(-(self.half * self.half) // (1 << self.shift)))


def centring(column: Column) -> Centring:
    low, high = column.fixed_bounds
    centre = (low + high) // 2
    half = max(centre - low, high - centre, 1)
    shift = max(0, (half * half).bit_length() - SQUARE_BITS)
    return Centring(centre, half, shift)


def centred_tree(value: exp.Expression, column: Column) -> exp.Expression:
    """The engine expression of a fixed-point value centred on its column's midpoint, as BIGINT:
    ``(CAST(value AS BIGINT) - c)``."""
    centre = exp.Literal.number(centring(column).centre)
    return exp.paren(exp.Sub(this=exp.cast(value.copy(), "BIGINT"), expression=centre), copy=False)


def square_tree(value: exp.Expression, column: Column) -> exp.Expression:
    """The engine expression of the carried centred square of a fixed-point value (exact when shift
    is 0): ``d * d``, else ``CAST(ROUND(CAST(d AS DOUBLE) * d / 2.0^shift) AS BIGINT)``."""
    c = centring(column)
    d = centred_tree(value, column)
    if c.shift == 0:
        return exp.Mul(this=d, expression=d.copy())
    scaled = exp.Mul(this=exp.cast(d, "DOUBLE"), expression=d.copy())
    carried = exp.Div(this=scaled, expression=exp.Literal.number(repr(float(1 << c.shift))))
    return exp.cast(exp.Round(this=carried), "BIGINT")


@dataclass(frozen=True)
class Parts:
    """Noisy n, S and Q of one group, converted to the column's real units."""

    n: float
    s: float  # sum of (v - c)
    q: float  # sum of (v - c)^2

    @staticmethod
    def from_fixed(n: int, s: int, q: int, column: Column) -> Parts:
        c = centring(column)
        f = column.factor
        return Parts(float(n), s / f, q * (1 << c.shift) / (f * f))


def max_variance(column: Column) -> float:
    c = centring(column)
    return (c.half / column.factor) ** 2


def estimate(kind: str, parts: Parts, column: Column) -> float | None:
    """The spread statistic from the noisy parts (None with fewer than 2 noisy rows)."""
    var = _variance(kind, parts.n, parts.s, parts.q, column)
    if var is None:
        return None
    return math.sqrt(var) if kind.startswith("stddev") else var


def _variance(kind: str, n: float, s: float, q: float, column: Column) -> float | None:
    if n < 2:
        return None
    mean = s / n
    var = q / n - mean * mean
    if kind.endswith("samp"):
        var = var * n / (n - 1)
    return min(max(var, 0.0), max_variance(column))


def halfwidth(kind: str, parts: Parts, t_n: float, t_s: float, t_q: float, column: Column) -> float:
    """A conservative half-width from intervals of the three parts (each at alpha / 3).

    The statistic is bounded over the box n +- t_n, S +- t_s, Q +- t_q: Q / n is monotone in
    each of Q and n, (S / n)^2 is largest at the box's largest |S| and smallest n, and smallest
    at its smallest |S| (0 if the box holds 0) and largest n. Within 1 noisy row of n = 1 the
    interval is the whole public range.
    """
    full = max_variance(column)
    if kind.startswith("stddev"):
        full = math.sqrt(full)
    point = estimate(kind, parts, column)
    lo_n, hi_n = parts.n - t_n, parts.n + t_n
    if point is None or lo_n < 2:
        return full
    s_abs_hi = abs(parts.s) + t_s
    s_abs_lo = max(0.0, abs(parts.s) - t_s)
    q_hi, q_lo = parts.q + t_q, max(0.0, parts.q - t_q)
    upper = q_hi / lo_n - (s_abs_lo / hi_n) ** 2
    lower = q_lo / hi_n - (s_abs_hi / lo_n) ** 2
    if kind.endswith("samp"):
        upper *= lo_n / (lo_n - 1)
        lower *= hi_n / (hi_n - 1)
    cap = max_variance(column)
    upper, lower = min(max(upper, 0.0), cap), min(max(lower, 0.0), cap)
    if kind.startswith("stddev"):
        upper, lower = math.sqrt(upper), math.sqrt(lower)
    width = max(upper - point, point - lower, 0.0)
    return min(width, full)
