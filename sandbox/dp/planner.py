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
above its L1 norm. The same holds for COUNT(DISTINCT unit) (distinct units of the rows that
pass, per group: sensitivity 1 without GROUP BY, else min(k, groups), see ``unit_groups``) and the
spreads' centred sums. A quantile's noisy max is pure DP: under zcdp its rho share buys it at epsilon
sqrt(2 * share) (an epsilon-DP mechanism is epsilon**2 / 2-zCDP; OpenDP's make_pureDP_to_zCDP
checks it). DP partition selection spends delta and is refused under zcdp
(``selection_needs_pure``): there the grant's delta pays for the rho conversion.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, field
from typing import Any

import opendp.prelude as _dp

from sandbox.dp import quantiles, selection, spread
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
from sandbox.policy.models import Column, Dataset
from sandbox.sql.plan import MAX_QUANTILE_CELLS, ORDER_KINDS, SPREAD_KINDS, Aggregate, QueryPlan, quantile_grid

ALPHA = 0.05


def _named(column: str | None) -> str:
    """The column a per-column measurement or aggregate reads (COUNT(*) reads none)."""
    if column is None:
        raise ValueError("this measurement reads no column")
    return column


def _q(q: float | None) -> float:
    """The quantile of a quantile measurement or aggregate."""
    if q is None:
        raise ValueError("a quantile measurement needs its q")
    return q


def _bounds(column: Column) -> tuple[float, float]:
    """The declared bounds of a column that sums, averages and spreads read (the catalog requires them)."""
    if column.bounds is None:
        raise ValueError("this column has no declared bounds")
    return column.bounds


@dataclass(frozen=True)
class Primitive:
    kind: str  # "count" | "sum" | "units" | "centred_sum" | "centred_sumsq" (dp.spread) | "quantile" (dp.quantiles)
    column: str | None  # None: COUNT(*)
    q: float | None = None  # "quantile" only

    @property
    def label(self) -> str:
        if self.kind == "quantile":
            return f"quantile({self.column}, {self.q:g})"
        return f"{self.kind}({self.column or '*'})"


@dataclass(frozen=True)
class DPPlan:
    """``epsilon`` is the cost charged: epsilon (pure accounting) or rho (``accounting == "zcdp"``)."""

    query: QueryPlan
    dataset: Dataset
    epsilon: float
    primitives: tuple[Primitive, ...]
    accounting: str = "pure"
    delta: float = 0.0  # spent by DP partition selection (keys without declared values; pure only)

    @property
    def epsilon_each(self) -> float:
        """The share of each primitive (epsilon, or rho under zcdp)."""
        return self.epsilon / len(self.primitives)

    @property
    def mechanism(self) -> str:
        return "discrete_gaussian" if self.accounting == "zcdp" else "discrete_laplace"

    @property
    def quantile_epsilon(self) -> float:
        """The pure epsilon of a quantile's noisy max: its share, or under zcdp the epsilon whose
        pure-DP selection is (epsilon**2 / 2)-zCDP, i.e. sqrt(2 * rho share) (OpenDP checks it)."""
        if self.accounting == "zcdp":
            return math.sqrt(2 * self.epsilon_each)
        return self.epsilon_each

    def scale(self, prim: Primitive) -> float:
        """The noise scale of a primitive, without touching any data."""
        if prim.kind == "quantile":
            return quantiles.selection_scale(self.sensitivity(prim), self.quantile_epsilon, self.zcdp_share)
        if prim == SELECT:
            return selection.calibrate(self.epsilon_each, self.delta, self.unit_groups)[0]
        if self.accounting == "zcdp":
            return gaussian_scale(self.sensitivity(prim), self.epsilon_each)
        return laplace_scale(self.sensitivity(prim), self.epsilon_each)

    @property
    def zcdp_share(self) -> float | None:
        return self.epsilon_each if self.accounting == "zcdp" else None

    def halfwidth(self, scale: float, alpha: float) -> float:
        return gaussian_halfwidth(scale, alpha) if self.accounting == "zcdp" else halfwidth(scale, alpha)

    def add_noise(self, values: list[int], prim: Primitive) -> tuple[list[int], float]:
        add = add_discrete_gaussian if self.accounting == "zcdp" else add_discrete_laplace
        return add(values, self.sensitivity(prim), self.epsilon_each)

    def sensitivity(self, prim: Primitive) -> int:
        k = self.dataset.max_rows_per_unit
        if prim.kind == "count":
            return k
        if prim.kind in ("units", "select"):
            return self.unit_groups
        if prim.kind == "quantile":
            return quantiles.score_sensitivity(_q(prim.q), k)
        if prim.kind in SPREAD_PRIMITIVES:
            return k * spread_sensitivity(prim, self.dataset.columns[_named(prim.column)])
        low, high = self.dataset.columns[_named(prim.column)].fixed_bounds
        return k * max(abs(low), abs(high), 1)

    @property
    def unit_groups(self) -> int:
        """How many groups one unit can be counted in (the L1 sensitivity of the per-group unit
        counts): 1 without GROUP BY, else min(max_rows_per_unit, groups); keys without declared
        values can be as many as its rows."""
        k = self.dataset.max_rows_per_unit
        if not self.query.group_keys:
            return 1
        return k if self.query.open_keys else min(k, self.query.n_groups)

    def keys(self) -> list[tuple[Any, ...]]:
        return list(itertools.product(*(k.values for k in self.query.group_keys)))


def needed(agg: Aggregate) -> list[Primitive]:
    """The measurements an aggregate reads (shared between aggregates that read the same)."""
    if agg.kind == "count":
        return [Primitive("count", agg.column)]
    if agg.kind == "count_units":
        return [Primitive("units", None)]
    if agg.kind == "sum":
        return [Primitive("sum", agg.column)]
    if agg.kind == "avg":
        return [Primitive("sum", agg.column), Primitive("count", agg.column)]
    if agg.kind in SPREAD_KINDS:
        return spread_primitives(agg.column)
    if agg.kind in ORDER_KINDS:
        return [Primitive("quantile", agg.column, agg.q)]
    raise BadRequest(f"{agg.kind} has no mechanism here", "unsupported_function")  # refused before any charge


def plan_dp(
    query: QueryPlan, dataset: Dataset, epsilon: float, accounting: str = "pure", delta: float = 0.0
) -> DPPlan:
    prims: list[Primitive] = []
    if query.open_keys:
        if accounting == "zcdp":
            raise BadRequest(
                "grouping by a text column (or an int column without bounds) releases only keys chosen by DP "
                "partition selection, which spends delta; under zcdp accounting the grant's delta already pays "
                "for the rho conversion. Group by declared categories or bins, or use a pure grant",
                "selection_needs_pure",
            )
        if delta <= 0:
            raise BadRequest(
                "grouping by a text column releases only keys chosen by DP partition selection, which "
                "spends delta; this grant has no delta budget. Group by declared categories instead",
                "no_delta_budget",
            )
        prims.append(SELECT)
    for agg in query.aggregates:
        cells = query.n_groups * quantile_grid(dataset.columns[_named(agg.column)]).m if agg.kind in ORDER_KINDS else 0
        if cells > MAX_QUANTILE_CELLS:  # the analyser refuses these first; belt and braces
            raise BadRequest(f"{agg.name}: too many groups for a quantile; use fewer keys", "too_many_groups")
        for p in needed(agg):
            if p not in prims:
                prims.append(p)
    return DPPlan(query, dataset, epsilon, tuple(prims), accounting, delta if query.open_keys else 0.0)


@dataclass(frozen=True)
class Release:
    columns: list[str]
    rows: list[list[Any]]
    ci_halfwidth: dict[str, float | None]
    scales: dict[str, float]
    measurements: dict[str, list[str]] = field(default_factory=dict)  # output column -> what it reads
    quantiles: dict[str, dict[str, Any]] = field(default_factory=dict)  # output column -> rank accuracy
    selection: dict[str, Any] = field(default_factory=dict)  # partition selection: threshold, delta, keys released


Noisy = dict[Primitive, list[Any]]  # primitive -> one noisy value per key
Scales = dict[Primitive, float]  # primitive -> its noise scale

SELECT = Primitive("select", None)  # the unit count per key that partition selection thresholds


SPREAD_PRIMITIVES = ("centred_sum", "centred_sumsq")


def spread_primitives(column: str | None) -> list[Primitive]:
    return [Primitive("count", column), Primitive("centred_sum", column), Primitive("centred_sumsq", column)]


def spread_sensitivity(prim: Primitive, column: Column) -> int:
    c = spread.centring(column)
    return c.half if prim.kind == "centred_sum" else c.square_sensitivity


def _spread_parts(plan: DPPlan, agg: Aggregate, noisy: Noisy, i: int) -> spread.Parts:
    n, s, q = (noisy[p][i] for p in spread_primitives(agg.column))
    return spread.Parts.from_fixed(n, s, q, plan.dataset.columns[_named(agg.column)])


def _spread_halfwidth(plan: DPPlan, agg: Aggregate, noisy: Noisy, scales: Scales, n_keys: int) -> float:
    column = plan.dataset.columns[_named(agg.column)]
    count, csum, csq = spread_primitives(agg.column)
    t_n = plan.halfwidth(scales[count], ALPHA / 3)
    t_s = plan.halfwidth(scales[csum], ALPHA / 3) / column.factor
    t_q = plan.halfwidth(scales[csq], ALPHA / 3) * (1 << spread.centring(column).shift) / column.factor**2
    return max(
        (spread.halfwidth(agg.kind, _spread_parts(plan, agg, noisy, i), t_n, t_s, t_q, column) for i in range(n_keys)),
        default=0.0,
    )


def _measurements(plan: DPPlan) -> dict[str, list[str]]:
    return {agg.name: [p.label for p in needed(agg)] for agg in plan.query.aggregates}


def release(plan: DPPlan, exact: dict[tuple[Any, ...], dict[Primitive, Any]]) -> Release:
    """Add noise to the exact aggregates of every public key (empty groups included)."""
    keys = plan.keys()
    noisy: dict[Primitive, list[Any]] = {}
    scales: dict[Primitive, float] = {}
    accuracy: dict[Primitive, dict[str, Any]] = {}
    chosen = None
    if plan.query.open_keys:  # only keys whose noisy unit count clears OpenDP's threshold
        chosen = selection.select_keys(
            {key: int(values.get(SELECT, 0)) for key, values in exact.items()}, plan.epsilon_each, plan.delta,
            plan.unit_groups,
        )
        keys = chosen.keys
    for prim in plan.primitives:
        if prim == SELECT:
            continue
        if prim.kind == "quantile":
            out = quantiles.release_quantile(
                plan.dataset.columns[_named(prim.column)], _q(prim.q), plan.dataset.max_rows_per_unit,
                plan.quantile_epsilon,
                [exact.get(key, {}).get(prim) for key in keys], zcdp_rho=plan.zcdp_share,
            )
            noisy[prim], scales[prim] = out.values, out.scale
            accuracy[prim] = {"rank_error": round(out.rank_error, 3), "resolution": out.resolution, "q": prim.q,
                              "meaning": QUANTILE_MEANING}
            continue
        values = [int(exact.get(key, {}).get(prim, 0)) for key in keys]
        noisy[prim], scales[prim] = plan.add_noise(values, prim)
    release_ = _assemble(plan, keys, noisy, scales)
    if chosen is not None:
        release_.selection.update({
            "mechanism": "laplace_threshold", "scale": chosen.scale, "threshold": chosen.threshold,
            "epsilon": plan.epsilon_each, "delta": chosen.delta, "keys_released": len(chosen.keys),
            "counts": "distinct units per key (a unit counts in each key it holds rows of)",
            "unit_keys": plan.unit_groups,
        })
    for agg in plan.query.aggregates:
        if agg.kind in ORDER_KINDS:
            release_.quantiles[agg.name] = accuracy[needed(agg)[0]]
    return release_


QUANTILE_MEANING = (
    "a rank error, not a value interval: with 95% probability the released value's rank among the "
    "group's rows is within rank_error rows of q * n, to the candidate grid's resolution (value units)"
)


def _factor(plan: DPPlan, column: str | None) -> int:
    return 1 if column is None else plan.dataset.columns[column].factor


def _assemble(plan: DPPlan, keys: list[tuple[Any, ...]], noisy: Noisy, scales: Scales) -> Release:
    query = plan.query
    key_index = {k.name: i for i, k in enumerate(query.group_keys)}
    aggs = {a.name: a for a in query.aggregates}
    rows: list[list[Any]] = []
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
            if agg.kind == "count_units":
                row.append(noisy[Primitive("units", None)][i])
                continue
            if agg.kind in ORDER_KINDS:
                row.append(noisy[needed(agg)[0]][i])
                continue
            if agg.kind in SPREAD_KINDS:
                column = plan.dataset.columns[_named(agg.column)]
                row.append(spread.estimate(agg.kind, _spread_parts(plan, agg, noisy, i), column))
                continue
            total = noisy[_sum_of(agg)][i] / _factor(plan, agg.column)
            if agg.kind == "sum":
                row.append(total)
            else:
                row.append(_bounded_avg(plan, _named(agg.column), total, noisy[_count_of(agg)][i]))
        rows.append(row)
    return Release(
        list(query.columns), rows, ci, {p.label: s for p, s in scales.items()}, _measurements(plan)
    )


def _count_of(agg: Aggregate) -> Primitive:
    return Primitive("count", agg.column)


def _sum_of(agg: Aggregate) -> Primitive:
    return Primitive("sum", agg.column)


def _bounded_avg(plan: DPPlan, column: str, total: float, count: int) -> float:
    low, high = _bounds(plan.dataset.columns[column])
    if count <= 0:
        return (low + high) / 2  # no signal: the midpoint of the public bounds
    return min(max(total / count, low), high)


def _aggregate_halfwidth(plan: DPPlan, agg: Aggregate, noisy: Noisy, scales: Scales, n_keys: int) -> float | None:
    if agg.kind == "count":
        return plan.halfwidth(scales[_count_of(agg)], ALPHA)
    if agg.kind == "count_units":
        return plan.halfwidth(scales[Primitive("units", None)], ALPHA)
    if agg.kind in ORDER_KINDS:
        return None  # a rank statement instead: Release.quantiles
    if agg.kind in SPREAD_KINDS:
        return _spread_halfwidth(plan, agg, noisy, scales, n_keys)
    factor = _factor(plan, agg.column)
    if agg.kind == "sum":
        return plan.halfwidth(scales[_sum_of(agg)], ALPHA) / factor
    # AVG: a conservative interval from each part at alpha/2, worst row reported
    ts = plan.halfwidth(scales[_sum_of(agg)], ALPHA / 2) / factor
    tc = plan.halfwidth(scales[_count_of(agg)], ALPHA / 2)
    low, high = _bounds(plan.dataset.columns[_named(agg.column)])
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

    COUNT, COUNT(DISTINCT unit) and SUM are exactly what the release reports for the same query
    and cost. AVG's and the spreads' intervals depend on the noisy count, so they are only known
    after release, and a quantile's accuracy is a rank statement: None here, with the reason in
    :func:`planned_notes` (and the quantile's rank error in :func:`planned_quantiles`).
    """
    out: dict[str, float | None] = {}
    for agg in plan.query.aggregates:
        if agg.kind == "count":
            out[agg.name] = plan.halfwidth(plan.scale(_count_of(agg)), ALPHA)
        elif agg.kind == "count_units":
            out[agg.name] = plan.halfwidth(plan.scale(Primitive("units", None)), ALPHA)
        elif agg.kind == "sum":
            out[agg.name] = plan.halfwidth(plan.scale(_sum_of(agg)), ALPHA) / _factor(plan, agg.column)
        else:
            out[agg.name] = None
    return {name: out[name] for name in plan.query.columns if name in out}


NULL_REASONS = {
    "avg": "depends on the noisy count: known only after release (the response's ci_halfwidth)",
    "spread": "depends on the noisy count and sums: known only after release (the response's ci_halfwidth)",
    "quantile": "a rank error, not a value interval: see accuracy.quantiles",
}


def planned_notes(plan: DPPlan) -> dict[str, str]:
    """Why a column's planned half-width is null."""
    out = {}
    for agg in plan.query.aggregates:
        if agg.kind == "avg":
            out[agg.name] = NULL_REASONS["avg"]
        elif agg.kind in SPREAD_KINDS:
            out[agg.name] = NULL_REASONS["spread"]
        elif agg.kind in ORDER_KINDS:
            out[agg.name] = NULL_REASONS["quantile"]
    return out


def planned_quantiles(plan: DPPlan) -> dict[str, dict[str, Any]]:
    """Each quantile column's rank accuracy, exactly as the release states it (no data needed)."""
    out = {}
    for agg in plan.query.aggregates:
        if agg.kind not in ORDER_KINDS:
            continue
        column = plan.dataset.columns[_named(agg.column)]
        grid = quantile_grid(column)
        sens = quantiles.score_sensitivity(_q(agg.q), plan.dataset.max_rows_per_unit)
        error = quantiles.rank_error(_q(agg.q), sens, plan.quantile_epsilon, grid.m, plan.zcdp_share)
        out[agg.name] = {"rank_error": round(error, 3), "resolution": grid.step / column.factor, "q": agg.q,
                         "meaning": QUANTILE_MEANING}
    return out


SIZED_KINDS = ("count", "count_units", "sum")


def cost_for_halfwidth(  # noqa: PLR0913
    query: QueryPlan, dataset: Dataset, target: float, accounting: str = "pure", max_cost: float = math.inf,
    delta: float = 0.0,
) -> float | None:
    """The smallest cost (epsilon, or rho under zcdp; in 1e-9 steps) at which every COUNT,
    COUNT(DISTINCT unit) and SUM column's 95% half-width is at most ``target``; None if the
    query has no such column.

    Refused (400 bad_halfwidth): a target below one unit of a column (1 for a count, 10**-scale
    for a float sum: the noise is a whole number of units, so a smaller target asks for no noise),
    or one that needs more than ``max_cost``."""
    probe = plan_dp(query, dataset, 1.0, accounting, delta)
    sized = [a for a in query.aggregates if a.kind in SIZED_KINDS]
    if not sized:
        return None
    n = len(probe.primitives)
    need = 0.0
    for agg in sized:
        prim = {"count": _count_of(agg), "count_units": Primitive("units", None), "sum": _sum_of(agg)}[agg.kind]
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
        widths = planned_halfwidths(plan_dp(query, dataset, cost, accounting, delta))
        if all((w := widths[a.name]) is not None and w <= target * (1 + 1e-12) for a in sized):
            return cost
        cost = math.ceil(cost * 1.0005 * 1e9) / 1e9
    unit = "rho" if accounting == "zcdp" else "epsilon"
    raise BadRequest(f"`ci_halfwidth` {target:g} is out of reach: it needs more than {unit} {max_cost:g}"
                     if cost > max_cost else f"no {unit} found for `ci_halfwidth` {target:g}", code="bad_halfwidth")


def _accuracy_to_laplace_scale(accuracy: float) -> float:
    return float(_dp.accuracy_to_discrete_laplacian_scale(accuracy=float(accuracy), alpha=ALPHA, T="f64"))


def _accuracy_to_gaussian_scale(accuracy: float) -> float:
    return gaussian_scale_for_halfwidth(float(accuracy), ALPHA)  # OpenDP's inverse is slow at large scales
