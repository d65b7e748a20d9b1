"""From a :class:`QueryPlan` to noisy released rows.

The neighbouring relation is adding or removing one privacy unit. After the contribution
bound each unit has at most ``k = max_rows_per_unit`` rows, each in one group, so across
all groups a count moves by at most k (L1) and a fixed-point sum by at most
k * max(|low|, |high|) * factor. Each distinct primitive (COUNT(*), COUNT(col), SUM(col))
is measured once with an equal share of epsilon; AVG reuses COUNT(col) and SUM(col), so it
is never charged twice. Basic composition: the shares add up to the epsilon charged.

Under ``zcdp`` accounting each primitive gets an equal share of rho instead and discrete
Gaussian noise; rho composes by addition too. The L2 sensitivity used is the L1 one above:
a unit's change to the vector of per-group values is a vector whose entries add up (in
absolute value) to at most k (or k times the largest bound), and a vector's L2 norm is never
above its L1 norm.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass

import opendp.prelude as _dp

from sandbox.dp.noise import (
    add_discrete_gaussian,
    add_discrete_laplace,
    gaussian_halfwidth,
    gaussian_scale,
    gaussian_scale_for_halfwidth,
    halfwidth,
    laplace_scale,
)
from sandbox.errors import BadRequest
from sandbox.policy.models import Dataset
from sandbox.sql.plan import QueryPlan

ALPHA = 0.05


@dataclass(frozen=True)
class Primitive:
    kind: str  # "count" | "sum"
    column: str | None  # None: COUNT(*)

    @property
    def label(self) -> str:
        return f"{self.kind}({self.column or '*'})"


@dataclass(frozen=True)
class DPPlan:
    """``epsilon`` is the cost charged: epsilon (pure accounting) or rho (``accounting == "zcdp"``)."""

    query: QueryPlan
    dataset: Dataset
    epsilon: float
    primitives: tuple[Primitive, ...]
    accounting: str = "pure"

    @property
    def epsilon_each(self) -> float:
        """The share of each primitive (epsilon, or rho under zcdp)."""
        return self.epsilon / len(self.primitives)

    @property
    def mechanism(self) -> str:
        return "discrete_gaussian" if self.accounting == "zcdp" else "discrete_laplace"

    def scale(self, prim: Primitive) -> float:
        """The noise scale of a primitive, without touching any data."""
        if self.accounting == "zcdp":
            return gaussian_scale(self.sensitivity(prim), self.epsilon_each)
        return laplace_scale(self.sensitivity(prim), self.epsilon_each)

    def halfwidth(self, scale: float, alpha: float) -> float:
        return gaussian_halfwidth(scale, alpha) if self.accounting == "zcdp" else halfwidth(scale, alpha)

    def add_noise(self, values: list[int], prim: Primitive) -> tuple[list[int], float]:
        add = add_discrete_gaussian if self.accounting == "zcdp" else add_discrete_laplace
        return add(values, self.sensitivity(prim), self.epsilon_each)

    def sensitivity(self, prim: Primitive) -> int:
        k = self.dataset.max_rows_per_unit
        if prim.kind == "count":
            return k
        low, high = self.dataset.columns[prim.column].fixed_bounds
        return k * max(abs(low), abs(high), 1)

    def keys(self) -> list[tuple]:
        return list(itertools.product(*(k.values for k in self.query.group_keys)))


def plan_dp(query: QueryPlan, dataset: Dataset, epsilon: float, accounting: str = "pure") -> DPPlan:
    prims: list[Primitive] = []
    for agg in query.aggregates:
        needed = [Primitive("count", agg.column)]
        if agg.kind == "sum":
            needed = [Primitive("sum", agg.column)]
        elif agg.kind == "avg":
            needed = [Primitive("sum", agg.column), Primitive("count", agg.column)]
        for p in needed:
            if p not in prims:
                prims.append(p)
    return DPPlan(query, dataset, epsilon, tuple(prims), accounting)


@dataclass(frozen=True)
class Release:
    columns: list[str]
    rows: list[list]
    ci_halfwidth: dict[str, float | None]
    scales: dict[str, float]


def release(plan: DPPlan, exact: dict[tuple, dict[Primitive, int]]) -> Release:
    """Add noise to the exact aggregates of every public key (empty groups included)."""
    keys = plan.keys()
    noisy: dict[Primitive, list[int]] = {}
    scales: dict[Primitive, float] = {}
    for prim in plan.primitives:
        values = [int(exact.get(key, {}).get(prim, 0)) for key in keys]
        noisy[prim], scales[prim] = plan.add_noise(values, prim)
    return _assemble(plan, keys, noisy, scales)


def _factor(plan: DPPlan, column: str | None) -> int:
    return 1 if column is None else plan.dataset.columns[column].factor


def _assemble(plan: DPPlan, keys, noisy, scales) -> Release:  # noqa: ANN001
    query = plan.query
    key_index = {k.name: i for i, k in enumerate(query.group_keys)}
    aggs = {a.name: a for a in query.aggregates}
    rows: list[list] = []
    ci: dict[str, float | None] = {}
    for name in query.columns:
        if name in aggs:
            ci[name] = _aggregate_halfwidth(plan, aggs[name], noisy, scales, len(keys))
    for i, key in enumerate(keys):
        row = []
        for name in query.columns:
            if name in key_index:
                value = key[key_index[name]]
                row.append(round(value, 10) if isinstance(value, float) else value)
                continue
            agg = aggs[name]
            if agg.kind == "count":
                row.append(noisy[_count_of(agg)][i])
                continue
            total = noisy[_sum_of(agg)][i] / _factor(plan, agg.column)
            if agg.kind == "sum":
                row.append(total)
            else:
                row.append(_bounded_avg(plan, agg.column, total, noisy[_count_of(agg)][i]))
        rows.append(row)
    return Release(
        list(query.columns), rows, ci, {p.label: s for p, s in scales.items()}
    )


def _count_of(agg) -> Primitive:  # noqa: ANN001
    return Primitive("count", agg.column)


def _sum_of(agg) -> Primitive:  # noqa: ANN001
    return Primitive("sum", agg.column)


def _bounded_avg(plan: DPPlan, column: str, total: float, count: int) -> float:
    low, high = plan.dataset.columns[column].bounds
    if count <= 0:
        return (low + high) / 2  # no signal: the midpoint of the public bounds
    return min(max(total / count, low), high)


def _aggregate_halfwidth(plan: DPPlan, agg, noisy, scales, n_keys: int) -> float | None:  # noqa: ANN001
    if agg.kind == "count":
        return plan.halfwidth(scales[_count_of(agg)], ALPHA)
    factor = _factor(plan, agg.column)
    if agg.kind == "sum":
        return plan.halfwidth(scales[_sum_of(agg)], ALPHA) / factor
    # AVG: a conservative interval from each part at alpha/2, worst row reported
    ts = plan.halfwidth(scales[_sum_of(agg)], ALPHA / 2) / factor
    tc = plan.halfwidth(scales[_count_of(agg)], ALPHA / 2)
    low, high = plan.dataset.columns[agg.column].bounds
    worst = 0.0
    for i in range(n_keys):
        s = noisy[_sum_of(agg)][i] / factor
        c = noisy[_count_of(agg)][i]
        if c - tc <= 0:
            return float(high - low)
        a = s / c
        hi = max((s + ts) / (c - tc), (s + ts) / (c + tc))
        lo = min((s - ts) / (c + tc), (s - ts) / (c - tc))
        worst = max(worst, hi - a, a - lo)
    return min(worst, float(high - low)) if math.isfinite(worst) else None


def planned_halfwidths(plan: DPPlan) -> dict[str, float | None]:
    """The 95% half-width of every released aggregate column, from the plan alone (no data).

    COUNT and SUM are exactly what the release reports for the same query and cost. AVG's
    interval depends on the noisy count, so it is only known after release: None here.
    """
    out: dict[str, float | None] = {}
    for agg in plan.query.aggregates:
        if agg.kind == "count":
            out[agg.name] = plan.halfwidth(plan.scale(_count_of(agg)), ALPHA)
        elif agg.kind == "sum":
            out[agg.name] = plan.halfwidth(plan.scale(_sum_of(agg)), ALPHA) / _factor(plan, agg.column)
        else:
            out[agg.name] = None
    return {name: out[name] for name in plan.query.columns if name in out}


def cost_for_halfwidth(
    query: QueryPlan, dataset: Dataset, target: float, accounting: str = "pure", max_cost: float = math.inf
) -> float | None:
    """The smallest cost (epsilon, or rho under zcdp; in 1e-9 steps) at which every COUNT and
    SUM column's 95% half-width is at most ``target``; None if the query has no such column.

    Refused (400 bad_halfwidth): a target below one unit of a column (1 for a count, 10**-scale
    for a float sum: the noise is a whole number of units, so a smaller target asks for no noise),
    or one that needs more than ``max_cost``."""
    probe = plan_dp(query, dataset, 1.0, accounting)
    sized = [a for a in query.aggregates if a.kind in ("count", "sum")]
    if not sized:
        return None
    n = len(probe.primitives)
    need = 0.0
    for agg in sized:
        prim = _count_of(agg) if agg.kind == "count" else _sum_of(agg)
        factor = _factor(probe, agg.column if agg.kind == "sum" else None)
        t = target * factor
        if t < 1:
            raise BadRequest(f"`ci_halfwidth` {target:g} is below one unit of {agg.name} ({1 / factor:g}): "
                             f"ask for at least {1 / factor:g}", code="bad_halfwidth")
        sens = probe.sensitivity(prim)
        if accounting == "zcdp":
            scale = float(_accuracy_to_gaussian_scale(t))
            need = max(need, n * sens**2 / (2 * scale**2))
        else:
            scale = float(_accuracy_to_laplace_scale(t))
            need = max(need, n * sens / scale)
    cost = math.ceil(need * 1e9) / 1e9
    for _ in range(60):  # the discrete accuracy is a step function: step up until it holds
        if cost > max_cost:
            break
        widths = planned_halfwidths(plan_dp(query, dataset, cost, accounting))
        if all(widths[a.name] is not None and widths[a.name] <= target * (1 + 1e-12) for a in sized):
            return cost
        cost = math.ceil(cost * 1.0005 * 1e9) / 1e9
    unit = "rho" if accounting == "zcdp" else "epsilon"
    raise BadRequest(f"`ci_halfwidth` {target:g} is out of reach: it needs more than {unit} {max_cost:g}"
                     if cost > max_cost else f"no {unit} found for `ci_halfwidth` {target:g}", code="bad_halfwidth")


def _accuracy_to_laplace_scale(accuracy: float) -> float:
    return float(_dp.accuracy_to_discrete_laplacian_scale(accuracy=float(accuracy), alpha=ALPHA, T="f64"))


def _accuracy_to_gaussian_scale(accuracy: float) -> float:
    return gaussian_scale_for_halfwidth(float(accuracy), ALPHA)  # OpenDP's inverse is slow at large scales
