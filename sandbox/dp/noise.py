"""Noise from OpenDP's integer samplers, and the accuracy statements that go with it.

Only the ``contrib`` feature is enabled: never ``honest-but-curious`` or
``idealized-numerics``. Values are i64 (OpenDP's default ``int`` is i32).
"""

from __future__ import annotations

import math
from functools import lru_cache

import opendp.prelude as dp

from sandbox.errors import BadRequest

dp.enable_features("contrib")

I64_GUARD = 2**62  # exact aggregates are saturated here so that noise addition cannot overflow i64


@lru_cache(maxsize=256)
def _vector_laplace(scale: float):  # noqa: ANN202
    return dp.m.make_laplace(
        dp.vector_domain(dp.atom_domain(T="i64")), dp.l1_distance(T="i64"), scale=scale
    )


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
    """Half-width t with P(|noise| > t) <= alpha for discrete Laplace noise of this scale."""
    return float(dp.discrete_laplacian_scale_to_accuracy(scale=scale, alpha=alpha))


@lru_cache(maxsize=256)
def _vector_gaussian(scale: float):  # noqa: ANN202
    """OpenDP's Gaussian on i64 vectors: discrete Gaussian noise, zero-concentrated DP (rho)."""
    return dp.m.make_gaussian(
        dp.vector_domain(dp.atom_domain(T="i64")), dp.l2_distance(T="i64"), scale=scale
    )


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


def gaussian_halfwidth(scale: float, alpha: float) -> float:
    """Half-width t with P(|noise| > t) <= alpha for discrete Gaussian noise of this scale."""
    return float(dp.discrete_gaussian_scale_to_accuracy(scale=scale, alpha=alpha))
