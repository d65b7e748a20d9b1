"""Conversions between zero-concentrated DP (rho) and approximate DP (epsilon, delta), by OpenDP.

A grant with ``accounting: zcdp`` is charged in rho. Its budget ``(epsilon, delta)`` becomes
the largest rho whose OpenDP conversion (``make_zCDP_to_approxDP``, the privacy profile of a
rho-zCDP measurement) gives at most ``epsilon`` at ``delta``; spent rho is shown as its
epsilon at the grant's delta. Both directions go through OpenDP's own map, never a formula
written here.
"""

from __future__ import annotations

import math
from functools import lru_cache
from typing import cast

import opendp.prelude as dp
from opendp.mod import Measurement

from sandbox.dp.opendp_types import PrivacyMap

dp.enable_features("contrib")

NANO = 1_000_000_000




def _measurement_with_rho(rho: float) -> Measurement:
    """A discrete Gaussian measurement whose zCDP at sensitivity 1 is ``rho`` (scale = 1/sqrt(2 rho))."""
    return dp.m.make_gaussian(dp.atom_domain(T="i64"), dp.absolute_distance(T="i64"), scale=1 / math.sqrt(2 * rho))


@lru_cache(maxsize=4096)
def rho_to_epsilon(rho: float, delta: float) -> float:
    """The epsilon at ``delta`` of a rho-zCDP release, by OpenDP's conversion (0 for rho 0)."""
    if rho <= 0:
        return 0.0
    converted = cast(PrivacyMap, dp.c.make_zCDP_to_approxDP(_measurement_with_rho(rho)))
    return float(converted.map(1).epsilon(delta))


@lru_cache(maxsize=256)
def epsilon_to_rho(epsilon: float, delta: float) -> float:
    """The largest rho (to 1e-12 relative) whose conversion at ``delta`` is at most ``epsilon``."""
    if epsilon <= 0 or not 0 < delta < 1:
        raise ValueError("epsilon must be above 0 and delta in (0, 1)")
    lo, hi = 0.0, epsilon  # rho-zCDP gives epsilon >= rho, so rho <= epsilon
    for _ in range(200):
        mid = (lo + hi) / 2
        if rho_to_epsilon(mid, delta) <= epsilon:
            lo = mid
        else:
            hi = mid
        if hi - lo <= 1e-12 * hi:
            break
    return lo


def rho_nano_to_epsilon_nano(rho_nano: int, delta: float) -> int:
    """:func:`rho_to_epsilon` in the ledger's integer nano-units (monotone, so increments telescope)."""
    return math.ceil(round(rho_to_epsilon(rho_nano / NANO, delta) * NANO, 3))
