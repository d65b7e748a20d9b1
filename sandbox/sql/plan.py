"""The typed result of analysing an operator's SQL: everything the DP planner and the engine need.

The engine never sees the operator's text; it builds its own SQL from this plan.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from sqlglot import exp

from sandbox.policy.models import Column

if TYPE_CHECKING:  # pragma: no cover
    from sandbox.sql._join import LookupJoin

AggregateKind = Literal[
    "count", "sum", "avg",
    "var_pop", "var_samp", "stddev_pop", "stddev_samp",  # spread: from count, sum and sum of squares
    "count_units",  # COUNT(DISTINCT <privacy unit>): column is None
    "quantile", "min", "max",  # order statistics: q in [0, 1] (min: 0, max: 1)
]
SPREAD_KINDS = ("var_pop", "var_samp", "stddev_pop", "stddev_samp")
ORDER_KINDS = ("quantile", "min", "max")


@dataclass(frozen=True)
class Aggregate:
    kind: AggregateKind
    column: str | None  # None for COUNT(*) and COUNT(DISTINCT <privacy unit>)
    name: str  # output column name: the alias, or count / count_<col> / sum_<col> / avg_<col> ...
    q: float | None = None  # the quantile of "quantile", "min" (0.0) and "max" (1.0)


@dataclass(frozen=True)
class GroupKey:
    column: str
    name: str  # output column name: the alias, or the column name
    bin_width: float | int | None  # FLOOR(col / w) * w  ->  w;  None: the column's own values
    values: tuple  # the whole public key domain, in a stable order (never read from data)
    open: bool = False  # a text column: no declared values; keys are chosen by DP partition selection


@dataclass(frozen=True)
class OrderItem:
    name: str  # an output column name
    descending: bool = False


@dataclass(frozen=True)
class QueryPlan:
    dataset: str
    columns: tuple[str, ...]  # output column names in SELECT order
    aggregates: tuple[Aggregate, ...]
    group_keys: tuple[GroupKey, ...]
    where: exp.Expression | None  # validated predicate; unqualified exp.Column nodes only
    order_by: tuple[OrderItem, ...] = ()
    limit: int | None = None
    normalized_sql: str = ""  # canonical text: cache key and audit record
    having: exp.Expression | None = None  # over output column names; applied to the noisy rows only
    join: LookupJoin | None = None  # a public lookup table folded in as <lookup>__<column> columns

    @property
    def n_groups(self) -> int:
        """Groups of the declared keys (keys without declared values count as 1)."""
        n = 1
        for key in self.group_keys:
            n *= 1 if key.open else len(key.values)
        return n

    @property
    def open_keys(self) -> bool:
        return any(key.open for key in self.group_keys)


MAX_QUANTILE_CANDIDATES = 1000
MAX_QUANTILE_CELLS = 100_000  # groups x candidates of one quantile


@dataclass(frozen=True)
class QuantileGrid:
    """The public candidates of a column's quantiles: low + i * step (fixed point), i < m."""

    low: int
    step: int
    m: int

    def value(self, index: int, column: Column) -> float | int:
        fixed = self.low + index * self.step
        return fixed if column.type == "int" else fixed / column.factor


def quantile_grid(column: Column) -> QuantileGrid:
    """Every fixed-point value of the bounds if there are at most 1,000, else a grid with a
    whole-number step that spans them in at most 1,000 candidates. Depends on the bounds only."""
    low, high = column.fixed_bounds
    step = max(1, -(-(high - low) // (MAX_QUANTILE_CANDIDATES - 1)))
    return QuantileGrid(low, step, (high - low) // step + 1)
