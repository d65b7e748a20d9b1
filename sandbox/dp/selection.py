"""Unknown categories: DP partition selection with OpenDP's thresholded Laplace mechanism.

A GROUP BY on a ``{type: text}`` column has no public list of keys, so releasing the keys found
in the data would reveal that someone holds them. Instead each key's count of units (the
distinct units among its rows that pass WHERE, so a unit of at most k = max_rows_per_unit rows
moves at most k keys by one: L0 = L1 = k, Linf = 1) goes through OpenDP's
``make_laplace_threshold``: Laplace noise at scale k / epsilon share, and only keys whose noisy
count reaches the threshold are released.
The threshold is the smallest whole number for which OpenDP's privacy map gives at most
(epsilon share, delta) — the delta is paid from the grant's delta budget (a fixed fraction of
it per query, ``SELECTIONS_PER_GRANT``), and the response states both.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, cast

import opendp.prelude as dp

from sandbox.dp.opendp_types import PrivacyMap
from sandbox.errors import BadRequest

dp.enable_features("contrib")

SELECTIONS_PER_GRANT = 100  # each selection query spends this fraction of the grant's delta


def _d_in(unit_keys: int) -> tuple[int, int, int]:
    """One unit moves at most ``unit_keys`` keys' counts (L0, and L1), each by one (Linf)."""
    return (unit_keys, unit_keys, 1)


def selection_delta(grant_delta: float) -> float:
    return grant_delta / SELECTIONS_PER_GRANT


def _measurement(scale: float, threshold: int) -> PrivacyMap:
    return cast(PrivacyMap, dp.m.make_laplace_threshold(
        dp.map_domain(dp.atom_domain(T=str), dp.atom_domain(T="i64")),
        dp.l01inf_distance(dp.absolute_distance(T="i64")),
        scale=scale, threshold=threshold,
    ))


@lru_cache(maxsize=256)
def calibrate(epsilon: float, delta: float, unit_keys: int = 1) -> tuple[float, int]:
    """(scale, threshold): scale unit_keys / epsilon, the smallest threshold with delta(map) <= delta,
    for unit counts in which one unit holds rows of at most ``unit_keys`` keys."""
    if delta <= 0:
        raise BadRequest("partition selection needs a delta budget", "no_delta_budget")
    d_in = _d_in(unit_keys)
    scale = unit_keys / epsilon
    low, high = 1, 1
    while _measurement(scale, high).map(d_in)[1] > delta:
        low, high = high, high * 2
        if high > 2**40:
            raise BadRequest("partition selection cannot be calibrated for this delta", "calibration_failed")
    while low < high:  # the smallest passing threshold in (low, high]
        mid = (low + high) // 2
        if _measurement(scale, mid).map(d_in)[1] > delta:
            low = mid + 1
        else:
            high = mid
    eps, spent = _measurement(scale, high).map(d_in)
    if eps > epsilon * (1 + 1e-9) or spent > delta:
        raise BadRequest("partition selection calibration failed", "calibration_failed")
    return scale, high


@dataclass(frozen=True)
class Selection:
    keys: list[tuple[Any, ...]]
    scale: float
    threshold: int
    delta: float


def key_order(key: tuple[Any, ...]) -> list[Any]:
    """Released keys in a stable order: numbers by value, then strings."""
    return [(0, v, "") if isinstance(v, int | float) and not isinstance(v, bool) else (1, 0, str(v)) for v in key]


def select_keys(unit_counts: dict[tuple[Any, ...], int], epsilon: float, delta: float,
                unit_keys: int = 1) -> Selection:
    """The keys whose noisy unit count reaches the threshold (OpenDP decides, not this code)."""
    scale, threshold = calibrate(epsilon, delta, unit_keys)
    encoded = {json.dumps(list(key), default=str): int(n) for key, n in unit_counts.items() if n > 0}
    lookup = {json.dumps(list(key), default=str): key for key in unit_counts}
    released = _measurement(scale, threshold)(encoded) if encoded else {}
    keys = sorted((lookup[k] for k in released), key=key_order)
    return Selection(keys, scale, threshold, delta)
