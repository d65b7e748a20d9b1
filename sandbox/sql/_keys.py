"""GROUP BY keys: the accepted shapes and their public domains.

A key is a column (a category: its declared values; an int: every whole number within its
bounds) or a bin ``FLOOR(col / w) * w`` of an int or float column. Every domain comes from
the catalog, never from the data, so the set of output rows reveals nothing.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation

from sqlglot import exp

from sandbox.errors import BadRequest
from sandbox.policy.models import Column

MAX_INT_KEYS = 1000
MAX_GROUPS = 10_000
_BIN_EXAMPLE = "e.g. FLOOR(age / 10) * 10"


@dataclass(frozen=True)
class KeySpec:
    """One GROUP BY key: a column, or a bin of a column of width ``width``."""

    column: str
    width: Decimal | None = None
    # both literals were whole numbers (10, not 10.0): an int column's bins stay ints
    whole_width: bool = field(default=False, compare=False)

    @property
    def default_name(self) -> str:
        return self.column if self.width is None else f"{self.column}_bin"

    @property
    def label(self) -> str:
        if self.width is None:
            return self.column
        return f"FLOOR({self.column} / {self.width}) * {self.width}"

    @property
    def bin_width(self) -> int | float | None:
        if self.width is None:
            return None
        return int(self.width) if self.whole_width else float(self.width)


def unwrap(node: exp.Expression) -> exp.Expression:
    """The expression inside any number of parentheses."""
    while isinstance(node, exp.Paren):
        node = node.this
    return node


def whole_number(node: exp.Expression) -> int | None:
    """The value of an unsigned whole-number literal (ASCII digits only), else None."""
    if not isinstance(node, exp.Literal) or node.is_string:
        return None
    text = str(node.this)
    return int(text) if text.isascii() and text.isdigit() else None


def key_spec(node: exp.Expression) -> KeySpec | None:
    """The key a (column-resolved) expression stands for, or None if it is no key shape."""
    node = unwrap(node)
    if isinstance(node, exp.Column):
        return KeySpec(node.name)
    if type(node) is not exp.Mul:
        return None
    floor = unwrap(node.this)
    if type(floor) is not exp.Floor:
        return None
    div = unwrap(floor.this)
    if type(div) is not exp.Div or not isinstance(unwrap(div.this), exp.Column):
        return None
    inner, outer = _width(unwrap(div.expression)), _width(unwrap(node.expression))
    if inner is None or outer is None or inner[0] != outer[0]:
        raise BadRequest(
            "a bin is FLOOR(col / w) * w with the same positive number w in both places, "
            f"{_BIN_EXAMPLE} or FLOOR(weight_kg / 2.5) * 2.5",
            "unbounded_group_keys",
        )
    return KeySpec(unwrap(div.this).name, inner[0], whole_width=inner[1] and outer[1])


def _width(node: exp.Expression) -> tuple[Decimal, bool] | None:
    if not isinstance(node, exp.Literal) or node.is_string:
        return None
    text = str(node.this)
    try:
        width = Decimal(text)
    except InvalidOperation:
        return None
    if not width.is_finite() or width <= 0 or not 0 < float(width) < float("inf"):
        return None
    return width, whole_number(node) is not None


def domain_size(spec: KeySpec, column: Column) -> int:
    """How many keys the spec has; refuses keys whose domain is not public and bounded."""
    if spec.width is None:
        return _plain_size(spec.column, column)
    if not column.numeric:
        raise BadRequest(
            f"a bin needs an int or float column; {spec.column} is a category: GROUP BY {spec.column} itself",
            "not_numeric",
        )
    if column.bounds is None:
        raise BadRequest(
            f"{spec.column} has no declared bounds, so its bins are no public domain: GROUP BY "
            f"{spec.column} itself (keys chosen by DP partition selection)",
            "unbounded_group_keys",
        )
    low, high = _bin_range(spec.width, column)
    return high - low + 1


def _plain_size(name: str, column: Column) -> int:
    if column.type == "category":
        return len(column.values or ())
    if column.open_keys:
        return 1  # no declared values: the keys released are chosen by DP partition selection
    if column.type == "float":
        raise BadRequest(
            f"{name} is a float column: its values are not a bounded set of keys. "
            f"Bin it, e.g. GROUP BY FLOOR({name} / 10) * 10",
            "unbounded_group_keys",
        )
    assert column.bounds is not None
    low, high = int(column.bounds[0]), int(column.bounds[1])
    size = high - low + 1
    if size > MAX_INT_KEYS:
        width = 10 ** max(1, len(str(size)) - 2)
        raise BadRequest(
            f"{name} has {size} possible values (bounds [{low}, {high}]); at most "
            f"{MAX_INT_KEYS} are accepted as keys. Bin it, e.g. "
            f"GROUP BY FLOOR({name} / {width}) * {width}",
            "unbounded_group_keys",
        )
    return size


def _bin_range(width: Decimal, column: Column) -> tuple[int, int]:
    """First and last bin index k covering the column's bounds.

    Computed in binary floating point exactly as the engine evaluates FLOOR(col / w) * w in
    DuckDB (DOUBLE arithmetic), so that every key the engine produces is in the domain.
    """
    assert column.bounds is not None
    w = float(width)
    low, high = column.bounds[0] / w, column.bounds[1] / w
    if not (math.isfinite(low) and math.isfinite(high)):
        raise BadRequest(
            f"the bin width {width} is far too small for {column.bounds}; use a wider bin",
            "too_many_groups",
        )
    return math.floor(low), math.floor(high)


def domain_values(spec: KeySpec, column: Column) -> tuple:
    """Every key, ascending (a category keeps its declared order). Call after domain_size.

    Bins of an int column by a whole width are ints; other bins are the floats k * w, e.g.
    0.30000000000000004 for k = 3 and w = 0.1, which is the value the engine computes.
    """
    if spec.width is None:
        if column.type == "category":
            return tuple(column.values or ())
        assert column.bounds is not None
        return tuple(range(int(column.bounds[0]), int(column.bounds[1]) + 1))
    first, last = _bin_range(spec.width, column)
    if column.type == "int" and spec.whole_width:
        step = int(spec.width)
        return tuple(range(first * step, last * step + 1, step))
    w = float(spec.width)
    return tuple(k * w for k in range(first, last + 1))  # k * w as the engine's DOUBLE product
