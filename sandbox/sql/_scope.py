"""Names in the operator's SQL: the one dataset in FROM, and every column reference.

Unquoted identifiers are case-insensitive, but only ASCII letters are folded: a homoglyph
(Cyrillic 'а', the Kelvin sign, fullwidth letters) or a zero-width character stays in the
name and simply fails to match a declared id. Quoted identifiers are taken exactly.
"""

from __future__ import annotations

import string
from collections.abc import Collection, Mapping
from dataclasses import dataclass

from sqlglot import exp

from sandbox.errors import BadRequest, Forbidden
from sandbox.policy.models import Dataset
from sandbox.sql._hints import describe, function_name, show

_ASCII_LOWER = str.maketrans(string.ascii_uppercase, string.ascii_lowercase)


def fold(identifier: exp.Identifier) -> str:
    """The name an identifier stands for: ASCII-lower-cased unless it was quoted."""
    name = str(identifier.this)
    return name if identifier.quoted else name.translate(_ASCII_LOWER)


@dataclass(frozen=True)
class Scope:
    """The dataset a query reads, what the grant allows of it, and its accepted qualifier."""

    dataset: Dataset
    granted: frozenset[str]
    qualifier: str  # the table alias if one was given, else the dataset id

    def granted_list(self) -> str:
        names = [c for c in self.dataset.columns if c in self.granted]
        names = [c for c in names if self.dataset.columns[c].type != "id"]
        return ", ".join(names) or "(none)"


def resolve_from(select: exp.Select, datasets: Mapping[str, Dataset], granted: Mapping[str, Collection[str]]) -> Scope:
    """Check that FROM names exactly one granted dataset, and return the query's scope."""
    from_ = select.args.get("from_")
    if from_ is None:
        raise BadRequest(
            "the query has no FROM; name one dataset from the catalog, e.g. FROM nhanes_2017",
            "unknown_dataset",
        )
    table = from_.this
    if not isinstance(table, exp.Table):
        raise BadRequest(
            f"FROM {describe(table)} is not available; FROM takes exactly one dataset id from "
            "the catalog, e.g. FROM nhanes_2017",
            "unsupported_clause",
        )
    if not isinstance(table.this, exp.Identifier):
        name = function_name(table.this) if isinstance(table.this, exp.Func) else "this source"
        raise BadRequest(
            f"table function {name} is not available: queries cannot read files or system "
            "tables. FROM takes one dataset id from the catalog, e.g. FROM nhanes_2017",
            "unsupported_function",
        )
    _check_table_args(table)
    name = fold(table.this)
    dataset = datasets.get(name)
    if dataset is None:
        raise BadRequest(_unknown_dataset_message(name, table.this.quoted, datasets, granted), "unknown_dataset")
    if name not in granted:
        raise Forbidden(
            f"dataset {name} is not in your grant; your grant covers: {', '.join(sorted(granted)) or '(none)'}",
            "dataset_not_granted",
        )
    alias = table.args.get("alias")
    qualifier = fold(alias.this) if alias is not None else name
    return Scope(dataset=dataset, granted=frozenset(granted[name]), qualifier=qualifier)


def _check_table_args(table: exp.Table) -> None:
    if table.args.get("db") is not None or table.args.get("catalog") is not None:
        raise BadRequest(
            f"{show(table.sql(dialect='duckdb', comments=False))} is not a dataset: schema- or "
            "catalog-qualified names (main.x, information_schema.tables, pg_catalog.x) are not "
            "available. FROM takes a bare dataset id, e.g. FROM nhanes_2017",
            "unknown_dataset",
        )
    for key, value in table.args.items():
        if key in ("this", "alias") or value in (None, False, [], ""):
            continue
        raise BadRequest(
            f"{key.strip('_').upper()} on the table is not available; FROM takes one dataset id "
            "with an optional alias, e.g. FROM nhanes_2017 AS n",
            "unsupported_clause",
        )
    alias = table.args.get("alias")
    if alias is not None and (
        not isinstance(alias.this, exp.Identifier)
        or any(v not in (None, False, [], "") for k, v in alias.args.items() if k != "this")
    ):
        raise BadRequest(
            "column aliases on the table are not available; write FROM nhanes_2017 AS n",
            "unsupported_clause",
        )


def _unknown_dataset_message(
    name: str, quoted: bool, datasets: Mapping[str, Dataset], granted: Mapping[str, object]
) -> str:
    hint = ""
    if any(ch in name for ch in "./\\*:"):
        hint = " Files and paths cannot be read."
    elif quoted and name.lower() in datasets:
        hint = f" Quoted names are exact: write {name.lower()}."
    covered = ", ".join(sorted(d for d in granted if d in datasets)) or "(none)"
    return f"no dataset named {show(name)}.{hint} Datasets your grant covers: {covered}"


def resolve_columns(select: exp.Select, scope: Scope, aliases: Collection[str]) -> None:
    """Replace every column reference in SELECT, WHERE and GROUP BY by its canonical name.

    A GROUP BY name that is not a dataset column but is a SELECT alias is left for the
    caller (it refers to that SELECT item). Afterwards every resolved ``exp.Column`` is
    unqualified, unquoted and names a granted, non-id column.
    """
    columns: list[exp.Column] = []
    for clause in ("expressions", "where", "group"):
        roots = select.args.get(clause)
        for root in roots if isinstance(roots, list) else [roots] if roots is not None else []:
            columns.extend(root.find_all(exp.Column))
    for column in columns:
        if _is_alias_reference(column, scope, aliases):
            column.replace(exp.column(fold(column.this)))
            continue
        unit = resolve_unit(column, scope)
        column.replace(exp.column(unit if unit is not None else resolve_column(column, scope)))


def resolve_unit(column: exp.Column, scope: Scope) -> str | None:
    """The privacy unit's name if ``column`` names it as the one argument of COUNT(DISTINCT ...)
    (the only place the id may be named), else None."""
    parent = column.parent
    if not (isinstance(parent, exp.Distinct) and isinstance(parent.parent, exp.Count)):
        return None
    if not isinstance(column.this, exp.Identifier) or scope.dataset.privacy_unit == "row":
        return None
    table = column.args.get("table")
    if column.args.get("db") is not None or (table is not None and fold(table) != scope.qualifier):
        return None
    name = fold(column.this)
    return name if name == scope.dataset.privacy_unit else None


def _is_alias_reference(column: exp.Column, scope: Scope, aliases: Collection[str]) -> bool:
    parent = column.parent
    while isinstance(parent, exp.Paren):
        parent = parent.parent
    if not isinstance(parent, exp.Group) or column.args.get("table") is not None:
        return False
    if not isinstance(column.this, exp.Identifier):
        return False
    name = fold(column.this)
    return name not in scope.dataset.columns and name in aliases


def resolve_column(column: exp.Column, scope: Scope) -> str:
    """The declared name a column reference stands for; refuses anything not usable."""
    if not isinstance(column.this, exp.Identifier):
        raise BadRequest(f"{describe(column)} is not a column; name one column", "unsupported_expression")
    if column.args.get("db") is not None or column.args.get("catalog") is not None:
        raise BadRequest(
            f"{show(column.sql(dialect='duckdb', comments=False))} is not a column of this "
            f"query; write the column name, optionally as {scope.qualifier}.<column>",
            "unknown_column",
        )
    table = column.args.get("table")
    if table is not None and fold(table) != scope.qualifier:
        raise BadRequest(
            f"no table {show(fold(table))} in this query; qualify columns with {scope.qualifier} or not at all",
            "unknown_column",
        )
    name = fold(column.this)
    declared = scope.dataset.columns.get(name)
    if declared is None:
        raise BadRequest(_unknown_column_message(name, column.this.quoted, scope), "unknown_column")
    if declared.type == "id":
        raise BadRequest(
            f"{name} identifies the privacy unit and can never be selected, grouped, counted, "
            "summed or filtered on; COUNT(*) counts rows",
            "id_column",
        )
    if name not in scope.granted:
        raise Forbidden(
            f"column {name} of {scope.dataset.id} is not in your grant; granted columns: {scope.granted_list()}",
            "column_not_granted",
        )
    return name


def _unknown_column_message(name: str, quoted: bool, scope: Scope) -> str:
    hint = ""
    if quoted and name.lower() in scope.dataset.columns:
        hint = f" Quoted names are exact: write {name.lower()}."
    else:
        value = _matching_value(name, scope)
        if value is not None:
            hint = f" To compare with a value, quote it as a string: '{value}'."
    return f"no column named {show(name)} in {scope.dataset.id}.{hint} Granted columns: {scope.granted_list()}"


def _matching_value(name: str, scope: Scope) -> str | None:
    """A declared category value the unknown name looks like (a forgotten pair of quotes)."""
    for column_name, column in scope.dataset.columns.items():
        if column_name not in scope.granted:
            continue
        for value in column.values or ():
            if value.lower() == name.lower():
                return value
    return None
