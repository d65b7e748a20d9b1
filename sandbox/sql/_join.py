"""Joins to public lookup tables: ``FROM private [AS p] [LEFT] JOIN lookup [AS l] ON p.col = l.key``.

A dataset marked ``public: true`` (region names, populations, classification codes) declares a
``key`` column; the gateway checks that its values are unique before charging, so each private
row matches at most one lookup row and the join can never multiply a unit's contribution: the
contribution bound of the private dataset still holds after the join. The lookup's columns
become columns of the private dataset named ``<lookup>__<column>`` (keys, filters and
aggregates use them like any other column, with their declared domains and bounds), and the
rest of the analysis runs unchanged on that merged catalog entry.

Everything else is refused with ``join_not_allowed`` and a message that says what works: two
private datasets (even with the same unit), several joins, USING, CROSS / FULL / RIGHT joins,
conditions other than one equality of a private column with the lookup's key.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass

from sqlglot import exp

from sandbox.errors import BadRequest, Forbidden
from sandbox.policy.models import IDENT, Dataset
from sandbox.sql._hints import show
from sandbox.sql._scope import fold

JOIN_HINT = (
    "the joins available are to a public lookup table on its key, FROM <dataset> AS d [LEFT] JOIN "
    "<lookup> AS l ON d.<column> = l.<key>, and of two datasets with the same privacy unit on that "
    "unit, FROM <dataset> AS d [LEFT] JOIN <other> AS o ON d.<unit> = o.<unit>"
)


@dataclass(frozen=True)
class LookupJoin:
    lookup: str  # the public dataset's id
    column: str  # the private dataset's join column
    key: str  # the lookup's unique key column
    left: bool  # LEFT JOIN keeps private rows without a match; JOIN drops them
    unit: bool = False  # two private datasets joined on their common privacy unit


def prefixed(lookup: str, column: str) -> str:
    return f"{lookup}__{column}"


def joined_dataset(dataset: Dataset, lookup: Dataset) -> Dataset:
    """The private dataset with the other dataset's columns added as ``<other>__<column>``; joined
    on the unit, each unit keeps at most the larger of the two contribution bounds after the join."""
    columns = dict(dataset.columns)
    for name, column in lookup.columns.items():
        if column.type != "id":
            joined = prefixed(lookup.id, name)
            if joined in columns:  # only a catalog entry stored before the name rule can hold one
                raise BadRequest(
                    f"{dataset.id} has a column named {joined}, the name the join gives {lookup.id}.{name}; "
                    "the admin must rename it (names holding __ are reserved for joins)",
                    "join_not_allowed",
                )
            columns[joined] = column
    update: dict = {"columns": columns}
    if not lookup.public:
        update["max_rows_per_unit"] = max(dataset.max_rows_per_unit, lookup.max_rows_per_unit)
    return dataset.model_copy(update=update)


def rewrite_join(
    select: exp.Select, datasets: Mapping[str, Dataset], granted: Mapping[str, Collection[str]]
) -> tuple[LookupJoin | None, Mapping[str, Dataset], Mapping[str, Collection[str]]]:
    """Check the one accepted join shape and fold the lookup into the private dataset."""
    joins = select.args.get("joins") or []
    if not joins:
        return None, datasets, granted
    if len(joins) > 1:
        raise BadRequest(f"a query takes at most one join; {JOIN_HINT}", "join_not_allowed")
    join = joins[0]
    from_ = select.args.get("from_")
    left_table = from_.this if from_ is not None else None
    right_table = join.this
    if not (_plain_table(left_table) and _plain_table(right_table)):
        raise BadRequest(f"joins take dataset ids, not subqueries or functions; {JOIN_HINT}", "join_not_allowed")
    private, lookup = _dataset(left_table, datasets, granted), _dataset(right_table, datasets, granted)
    unit = not private.public and not lookup.public
    if private.public or (unit and not _same_unit(private, lookup)):
        what = "two private datasets with different privacy units" if unit else "this order"
        raise BadRequest(f"a join of {what} is not available; {JOIN_HINT}", "join_not_allowed")
    left = _join_kind(join)
    p_alias, l_alias = _qualifier(left_table), _qualifier(right_table)
    column = _on(join, p_alias, l_alias, private, lookup)
    if unit and column != private.privacy_unit:
        raise BadRequest(f"two private datasets join only on their privacy unit; {JOIN_HINT}", "join_not_allowed")
    if not unit and (column not in granted[private.id] or private.columns[column].type == "id"):
        raise Forbidden(f"column {column} of {private.id} is not in your grant", "column_not_granted")
    for name in lookup.columns:
        if not IDENT.match(prefixed(lookup.id, name)):
            raise BadRequest(f"{lookup.id}.{name} has too long a name to join", "join_not_allowed")
    _rename_columns(select, p_alias, l_alias, private, lookup)
    select.set("joins", None)
    merged = joined_dataset(private, lookup)
    merged_granted = set(granted[private.id]) | {prefixed(lookup.id, c) for c in granted[lookup.id]}
    return (
        LookupJoin(lookup.id, column, lookup.key or column, left, unit),
        {**datasets, private.id: merged},
        {**granted, private.id: merged_granted},
    )


def canonical_join(join: LookupJoin, dataset_id: str) -> exp.Join:
    """The join as it appears in normalized SQL."""
    on = exp.EQ(this=exp.column(join.column, table=dataset_id), expression=exp.column(join.key, table=join.lookup))
    return exp.Join(this=exp.table_(join.lookup), on=on, side="LEFT" if join.left else None)


def _same_unit(a: Dataset, b: Dataset) -> bool:
    return a.privacy_unit == b.privacy_unit != "row" and a.id != b.id


def _plain_table(node: object) -> bool:
    if not isinstance(node, exp.Table) or not isinstance(node.this, exp.Identifier):
        return False
    alias = node.args.get("alias")
    if alias is not None and (not isinstance(alias.this, exp.Identifier) or alias.args.get("columns")):
        return False
    return all(v in (None, False, [], "") for k, v in node.args.items() if k not in ("this", "alias"))


def _dataset(table: exp.Table, datasets: Mapping[str, Dataset], granted: Mapping[str, Collection[str]]) -> Dataset:
    name = fold(table.this)
    if name not in datasets:
        raise BadRequest(f"no dataset named {show(name)}; {JOIN_HINT}", "unknown_dataset")
    if name not in granted:
        raise Forbidden(f"dataset {name} is not in your grant", "dataset_not_granted")
    return datasets[name]


def _qualifier(table: exp.Table) -> str:
    alias = table.args.get("alias")
    return fold(alias.this) if alias is not None else fold(table.this)


def _join_kind(join: exp.Join) -> bool:
    side = str(join.args.get("side") or "").upper()
    kind = str(join.args.get("kind") or "").upper()
    allowed = ("this", "on", "side", "kind")
    extra = [k for k, v in join.args.items() if k not in allowed and v not in (None, False, [], "")]

    if extra or side not in ("", "LEFT") or kind not in ("", "INNER", "OUTER") or join.args.get("on") is None:
        raise BadRequest(f"this kind of join is not available; {JOIN_HINT}", "join_not_allowed")
    return side == "LEFT"


def _on(join: exp.Join, p_alias: str, l_alias: str, private: Dataset, lookup: Dataset) -> str:
    on = join.args["on"]
    while isinstance(on, exp.Paren):
        on = on.this
    if type(on) is not exp.EQ or not all(isinstance(side, exp.Column) for side in (on.this, on.expression)):
        raise BadRequest(f"ON takes one equality of two columns; {JOIN_HINT}", "join_not_allowed")
    sides = {}
    for side in (on.this, on.expression):
        table = side.args.get("table")
        qualifier = fold(table) if table is not None else None
        sides[qualifier] = fold(side.this)
    if set(sides) != {p_alias, l_alias} or p_alias == l_alias:
        raise BadRequest(f"qualify both sides of ON with their table; {JOIN_HINT}", "join_not_allowed")
    if sides[l_alias] != (lookup.key if lookup.public else lookup.privacy_unit):
        raise BadRequest(
            f"{lookup.id} joins on its key {lookup.key} only (unique values, so no row is duplicated); "
            f"{JOIN_HINT}",
            "join_not_allowed",
        )
    column = sides[p_alias]
    if column not in private.columns:
        raise BadRequest(f"no column named {show(column)} in {private.id}", "unknown_column")
    return column


def _rename_columns(select: exp.Select, p_alias: str, l_alias: str, private: Dataset, lookup: Dataset) -> None:
    """Lookup columns become ``<lookup>__<column>`` of the private dataset (the ON clause is dropped)."""
    for column in list(select.find_all(exp.Column)):
        if column.find_ancestor(exp.Join) is not None or not isinstance(column.this, exp.Identifier):
            continue
        table = column.args.get("table")
        name = fold(column.this)
        qualifier = fold(table) if table is not None else None
        if qualifier == l_alias:
            column.replace(exp.column(prefixed(lookup.id, name), table=p_alias))
        elif qualifier is None and name not in private.columns and name in lookup.columns:
            column.replace(exp.column(prefixed(lookup.id, name)))
        elif qualifier is None and name in private.columns and name in lookup.columns and name != private.privacy_unit:
            raise BadRequest(
                f"{name} is a column of both {private.id} and {lookup.id}; qualify it, e.g. {l_alias}.{name}",
                "unknown_column",
            )


def check_lookup(engine, join: LookupJoin, dataset: Dataset, catalog: Mapping[str, Dataset]) -> Dataset:  # noqa: ANN001
    """The merged dataset of a join, once the lookup is loaded and its key unique (public data)."""
    from sandbox.errors import SandboxError

    lookup = catalog[join.lookup]
    if not engine.has_table(lookup.id):
        raise SandboxError(f"dataset {lookup.id} has no data loaded yet", code="dataset_unavailable")
    if not join.unit and not engine.lookup_key_unique(lookup.id, join.key):
        raise BadRequest(
            f"the lookup {lookup.id} holds some {join.key} values more than once, so a join would count "
            "rows twice; the admin must make the key unique",
            "lookup_key_not_unique",
        )
    return joined_dataset(dataset, lookup)
