"""Noise from OpenDP's integer samplers, and the accuracy statements that go with it.

Only the ``contrib`` feature is enabled: never ``honest-but-curious`` or
``idealized-numerics``. Values are i64 (OpenDP's default ``int`` is i32).
"""

from __future__ import annotations

import math
from functools import lru_cache
from statistics import NormalDist
from typing import cast

import opendp.prelude as dp

from sandbox.dp.opendp_types import PrivacyMap
from sandbox.errors import BadRequest

dp.enable_features("contrib")

I64_GUARD = 2**62  # exact aggregates are saturated here so that noise addition cannot overflow i64


@lru_cache(maxsize=256)
def _vector_laplace(scale: float) -> PrivacyMap:
    return cast(PrivacyMap, dp.m.make_laplace(
        dp.vector_domain(dp.atom_domain(T="i64")), dp.l1_distance(T="i64"), scale=scale
    ))


@lru_cache(maxsize=1024)
def laplace_scale(sensitivity: int, epsilon: float) -> float:
    """The discrete Laplace scale that gives ``epsilon`` for an L1 ``sensitivity``."""
    scale = sensitivity / epsilon
    meas = _vector_laplace(scale)
    spent = meas.map(sensitivity)
    if spent > epsilon * (1 + 1e-9):
        raise BadRequest(f"noise calibration failed: {spent} > {epsilon}", code="calibration_failed")
    return scale


def add_discrete_laplace(values: list[int], sensitivity: int, epsilon: float) -> tuple[list[int], float]:
    """Release ``values`` (exact i64 aggregates) with discrete Laplace noise; returns (noisy, scale)."""
    if sensitivity < 1:
        raise BadRequest("a measurement needs a sensitivity of at least 1", code="calibration_failed")
    # saturate rather than refuse: refusing after the charge would depend on the data
    values = [max(-I64_GUARD, min(I64_GUARD, int(v))) for v in values]
    scale = laplace_scale(sensitivity, epsilon)
    if not values:
        return [], scale
    return list(_vector_laplace(scale)(list(values))), scale


def halfwidth(scale: float, alpha: float) -> float:
    """Half-width t with P(|noise| > t) <= alpha for discrete Laplace noise of this scale.

    At tiny scales (a very large epsilon) OpenDP answers -inf: the noise is 0 with probability
    above 1 - alpha, so 0 is the half-width (and -inf is not JSON)."""
    value = float(dp.discrete_laplacian_scale_to_accuracy(scale=scale, alpha=alpha))
    if math.isnan(value) or value == math.inf:
        raise BadRequest(f"no accuracy statement for a noise scale of {scale:g}", code="bad_halfwidth")
    return max(value, 0.0)


@lru_cache(maxsize=256)
def _vector_gaussian(scale: float) -> PrivacyMap:
    """OpenDP's Gaussian on i64 vectors: discrete Gaussian noise, zero-concentrated DP (rho)."""
    return cast(PrivacyMap, dp.m.make_gaussian(
        dp.vector_domain(dp.atom_domain(T="i64")), dp.l2_distance(T="i64"), scale=scale
    ))


@lru_cache(maxsize=1024)
def gaussian_scale(sensitivity: int, rho: float) -> float:
    """The discrete Gaussian scale that gives ``rho``-zCDP for an L2 ``sensitivity``."""
    scale = sensitivity / math.sqrt(2 * rho)
    spent = _vector_gaussian(scale).map(sensitivity)
    if spent > rho * (1 + 1e-9):
        raise BadRequest(f"noise calibration failed: {spent} > {rho}", code="calibration_failed")
    return scale


def add_discrete_gaussian(values: list[int], sensitivity: int, rho: float) -> tuple[list[int], float]:
    """Release ``values`` (exact i64 aggregates) with discrete Gaussian noise; returns (noisy, scale)."""
    if sensitivity < 1:
        raise BadRequest("a measurement needs a sensitivity of at least 1", code="calibration_failed")
    values = [max(-I64_GUARD, min(I64_GUARD, int(v))) for v in values]
    scale = gaussian_scale(sensitivity, rho)
    if not values:
        return [], scale
    return list(_vector_gaussian(scale)(list(values))), scale


# OpenDP's discrete_gaussian_scale_to_accuracy sums the distribution: its time is linear in the
# scale (1e4: a few ms; 1e6: 18 s). Above this scale the closed-form tail bound answers instead.
EXACT_GAUSSIAN_ACCURACY_MAX_SCALE = 1e4


@lru_cache(maxsize=4096)
def gaussian_halfwidth(scale: float, alpha: float) -> float:
    """Half-width t with P(|noise| > t) <= alpha for discrete Gaussian noise of this scale.

    OpenDP's exact figure up to :data:`EXACT_GAUSSIAN_ACCURACY_MAX_SCALE`, the tail bound
    :func:`gaussian_tail_halfwidth` above it (wider: about 2.72 scales instead of 1.96)."""
    if scale > EXACT_GAUSSIAN_ACCURACY_MAX_SCALE:
        return gaussian_tail_halfwidth(scale, alpha)
    return float(dp.discrete_gaussian_scale_to_accuracy(scale=scale, alpha=alpha))


def gaussian_tail_halfwidth(scale: float, alpha: float) -> float:
    """A half-width that holds for discrete Gaussian noise of any scale, in constant time.

    The discrete Gaussian N_Z(0, s^2) is sub-Gaussian with variance proxy s^2 (Canonne, Kamath
    and Steinke 2020, "The Discrete Gaussian for Differential Privacy", Corollary 9), so
    P(|X| > t) <= 2 exp(-t^2 / (2 s^2)); t = s sqrt(2 ln(2 / alpha)) makes that alpha. Any t with
    a tail at most alpha is at least the smallest such t, which is what OpenDP computes: this
    bound is never narrower than OpenDP's (rounded up to an integer, the noise's support)."""
    return float(math.ceil(scale * math.sqrt(2 * math.log(2 / alpha))))


def gaussian_scale_for_halfwidth(target: float, alpha: float) -> float:
    """A scale whose :func:`gaussian_halfwidth` is about ``target`` (the planner steps up from it)."""
    if target <= 2_000:
        return float(dp.accuracy_to_discrete_gaussian_scale(accuracy=float(target), alpha=alpha, T="f64"))
    near_normal = target / NormalDist().inv_cdf(1 - alpha / 2)  # OpenDP's figure, to a fraction of a unit
    if near_normal <= EXACT_GAUSSIAN_ACCURACY_MAX_SCALE:
        return near_normal
    # beyond the exact range the tail bound holds; between the two, the largest exact scale does
    return max((target - 1) / math.sqrt(2 * math.log(2 / alpha)), EXACT_GAUSSIAN_ACCURACY_MAX_SCALE)
