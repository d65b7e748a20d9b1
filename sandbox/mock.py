"""Mock data to develop on: rows generated from the catalog's public metadata alone.

``db.mock("nhanes_2017", rows=1000)`` draws a DataFrame from each granted column's declared
type, bounds and categories (and synthetic privacy-unit ids, each unit holding at most
``max_rows_per_unit`` rows). Nothing here reads, or could read, the real data: the only input
is the catalog JSON the gateway already shows the operator, so it costs no privacy budget.

``sandbox.connect(mock=True)`` returns a :class:`MockClient`: the same ``query`` call, checked
by the same analyser (``sandbox.sql.analyze``) with the same error codes, but answered by an
evaluation of the same plan over mock rows in the notebook itself (``sandbox.sql.local``; no SQL
engine in the notebook). Mock answers are exact aggregates of
fake rows (no noise, nothing spent) and say so in ``df.attrs["mock"]``. Switching a notebook to
real answers is one argument: ``sandbox.connect()``.
"""

from __future__ import annotations

import math
import uuid
from collections.abc import Collection
from typing import TYPE_CHECKING, Any

from sandbox.client import Client, GatewayError, catalog_frame

if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd

    from sandbox.policy.models import Dataset
    from sandbox.sql.plan import QueryPlan

# the gateway's own limits (sandbox.query_service); a unit test keeps them equal
MIN_EPSILON = 0.001
MAX_EPSILON = 100.0
MIN_RHO = MIN_EPSILON**2 / 2  # query_service.MIN_RHO / MAX_RHO: a zcdp grant is charged in rho
MAX_RHO = MAX_EPSILON**2 / 2
MAX_SQL_CHARS = 8_000  # sandbox.services.Settings.max_sql_chars
NULL_FRACTION = 0.02
MOCK_NOTE = "mock data generated from the catalog's public metadata (types, bounds, categories): not real data"

__all__ = ["MockClient", "datasets_from_catalog", "mock_frame"]


def datasets_from_catalog(
    entries: list[dict[str, Any]], grant: str | None = None
) -> tuple[dict[str, Dataset], dict[str, set[str]]]:
    """The catalog JSON as policy models, and the columns granted per dataset.

    With ``grant``, only that grant's entries; otherwise every entry (columns of a dataset
    granted by several grants are merged). The privacy unit is declared as an id column, so
    that naming it is refused exactly as by the gateway.
    """
    from pydantic import ValidationError

    from sandbox.policy.models import Column, Dataset

    datasets: dict[str, Dataset] = {}
    granted: dict[str, set[str]] = {}
    for entry in entries:
        if grant is not None and entry.get("grant") not in (grant, None):
            continue
        ds_id = str(entry.get("dataset") or entry.get("id"))
        columns = {c["name"]: {k: v for k, v in c.items() if k != "name"} for c in entry.get("columns") or []}
        unit = str(entry.get("privacy_unit") or "row")
        if ds_id in datasets:
            columns = {**{k: v.model_dump(exclude_none=True) for k, v in datasets[ds_id].columns.items()}, **columns}
        if unit != "row":
            columns[unit] = {"type": "id"}
        try:
            datasets[ds_id] = Dataset(
                id=ds_id,
                title=str(entry.get("title") or ds_id),
                source=f"{ds_id}.parquet",
                classification=entry.get("classification") or "L2",
                privacy_unit=unit,
                max_rows_per_unit=int(entry.get("max_rows_per_unit") or 1),
                columns={name: Column.model_validate(spec) for name, spec in columns.items()},
                public=bool(entry.get("public", False)),
                key=entry.get("key"),
            )
        except ValidationError as exc:
            raise GatewayError("mock_unavailable", f"cannot mock {ds_id}: {exc.errors()[0]['msg']}") from None
        granted.setdefault(ds_id, set()).update(c["name"] for c in entry.get("columns") or [])
    return datasets, granted


def mock_frame(dataset: Dataset, rows: int = 1000, seed: int | None = 0, null_fraction: float = NULL_FRACTION,
               columns: Collection[str] | None = None) -> pd.DataFrame:
    """``rows`` synthetic rows of ``dataset`` drawn from its declared metadata only.

    Categories are drawn uniformly from their declared values, ints uniformly within their
    bounds, floats uniformly within theirs (rounded to the column's scale); a small fraction
    of each column is NULL. The privacy unit gets synthetic ids (``mock-000001`` ...), each
    used by at most ``max_rows_per_unit`` rows. ``columns`` limits the frame to those names.
    """
    import numpy as np
    import pandas as pd

    if not isinstance(rows, int) or isinstance(rows, bool) or not 0 <= rows <= 1_000_000:
        raise GatewayError("bad_rows", "rows must be a whole number from 0 to 1,000,000")
    rng = np.random.default_rng(seed)
    data: dict[str, Any] = {}
    for name, col in dataset.columns.items():
        if columns is not None and name not in columns and col.type != "id":
            continue
        if col.type == "id":
            k = dataset.max_rows_per_unit
            units = rng.permutation(rows) // k if k > 1 else np.arange(rows)
            data[name] = [f"mock-{u + 1:06d}" for u in units]
            continue
        if col.type == "category":
            values: Any = pd.array(rng.choice(list(col.values or ()), size=rows), dtype="string")
        elif col.type == "int":
            low, high = (int(col.bounds[0]), int(col.bounds[1])) if col.bounds else (0, 99)  # no bounds: codes
            values = pd.array(rng.integers(low, high + 1, size=rows), dtype="Int64")
        elif col.type == "float":
            low, high = col.bounds
            values = pd.array(np.round(rng.uniform(low, high, size=rows), col.scale), dtype="Float64")
        else:  # a type this client does not know: opaque text values
            values = pd.array([f"{name}_{i}" for i in rng.integers(1, 21, size=rows)], dtype="string")
        if null_fraction > 0 and rows:
            values[rng.random(rows) < null_fraction] = pd.NA
        data[name] = values
    df = pd.DataFrame(data)
    df.attrs.update({"mock": True, "dataset": dataset.id, "rows": rows, "seed": seed,
                     "epsilon_spent": 0.0, "note": MOCK_NOTE})
    return df


def _parse_epsilon(epsilon: object) -> float:
    """The gateway's checks of ``epsilon`` (query_service._parse_epsilon), same codes."""
    if epsilon is None:
        raise GatewayError("bad_epsilon", "`epsilon` is required: the privacy loss you choose to spend, e.g. 0.1", 400)
    if isinstance(epsilon, bool) or not isinstance(epsilon, int | float):
        raise GatewayError("bad_epsilon", "`epsilon` must be a number", 400)
    value = float(epsilon)
    if not math.isfinite(value) or value <= 0:
        raise GatewayError("bad_epsilon", "`epsilon` must be a finite number above 0", 400)
    if value < MIN_EPSILON:
        raise GatewayError("bad_epsilon", f"`epsilon` below {MIN_EPSILON} is refused", 400)
    if value > MAX_EPSILON:
        raise GatewayError("epsilon_over_cap", f"`epsilon` above {MAX_EPSILON} is over any grant's cap", 400)
    return value


def _parse_rho(rho: object) -> float:
    """The gateway's checks of ``rho`` (query_service._parse_rho), same codes."""
    if isinstance(rho, bool) or not isinstance(rho, int | float):
        raise GatewayError("bad_epsilon", "`rho` must be a number", 400)
    value = float(rho)
    if not math.isfinite(value) or value <= 0:
        raise GatewayError("bad_epsilon", "`rho` must be a finite number above 0", 400)
    if value < MIN_RHO:
        raise GatewayError("bad_epsilon", f"`rho` below {MIN_RHO:g} is refused", 400)
    if value > MAX_RHO:
        raise GatewayError("epsilon_over_cap", f"`rho` above {MAX_RHO:g} is over any grant's cap", 400)
    return value


class MockClient:
    """The notebook client's query interface over mock data: nothing leaves, nothing is spent.

    Build it with ``sandbox.connect(mock=True)`` (which fetches the catalog metadata from the
    gateway) or :meth:`from_catalog` with catalog JSON in hand.
    """

    def __init__(self, entries: list[dict[str, Any]], grant: str | None = None, *, rows: int = 1000,
                 seed: int | None = 0, remote: Client | None = None) -> None:
        self.grant = grant
        self.rows = rows
        self.seed = seed
        self.remote = remote
        self._entries = entries
        self.datasets, self.granted = datasets_from_catalog(entries, grant)
        self._tables: dict[str, list[dict[str, Any]]] = {}

    @classmethod
    def from_catalog(cls, entries: list[dict[str, Any]], grant: str | None = None, **kwargs: Any) -> MockClient:
        return cls(entries, grant, **kwargs)

    def __repr__(self) -> str:
        return f"MockClient(grant={self.grant!r}, rows={self.rows}, datasets={sorted(self.datasets)})"

    # -- the same calls as Client ----------------------------------------------------------------
    def catalog(self, raw: bool = False) -> pd.DataFrame | list[dict[str, Any]]:
        return self._entries if raw else catalog_frame(self._entries)

    def budget(self, grant: str | None = None, raw: bool = False) -> Any:
        """The real budget (reading it costs nothing); mock queries never move it."""
        if self.remote is None:
            raise GatewayError("mock_mode", "no gateway to read the budget from; mock queries spend nothing")
        return self.remote.budget(grant, raw=raw)

    def mock(self, dataset: str, rows: int = 1000, seed: int | None = 0) -> pd.DataFrame:
        if dataset not in self.datasets:
            raise GatewayError("unknown_dataset", f"no granted dataset {dataset!r}; see db.catalog()", 400)
        return mock_frame(self.datasets[dataset], rows, seed, columns=self.granted[dataset])

    def export(self, *args: Any, **kwargs: Any) -> dict[str, Any]:
        raise GatewayError(
            "mock_mode",
            "mock answers are not real data and cannot be exported; run the notebook with "
            "sandbox.connect() (without mock=True) to get real answers, then export those",
        )

    def plan(self, sql: str, epsilon: float | None = None, grant: str | None = None, **kwargs: Any) -> dict[str, Any]:
        """The gateway's plan (free: it touches no data); there is no local plan."""
        if self.remote is None:
            raise GatewayError("mock_mode", "no gateway to plan with; mock queries spend nothing")
        return self.remote.plan(sql, epsilon, grant, **kwargs)

    def query(
        self, sql: str, epsilon: float | None = None, grant: str | None = None, *, rho: float | None = None
    ) -> pd.DataFrame:
        """Check ``sql`` exactly as the gateway does, then answer it over mock rows.

        ``rho`` instead of ``epsilon`` is a zcdp grant's query: checked as the gateway checks it
        (and, as there, a text or unbounded int key, which needs DP partition selection and hence
        a pure grant, is refused with ``selection_needs_pure``)."""
        from sandbox.errors import SandboxError
        from sandbox.sql.analyze import analyze
        from sandbox.sql.post import apply_post

        if not isinstance(sql, str) or not sql.strip():
            raise GatewayError("empty_query", "`sql` must be a non-empty string", 400)
        if len(sql) > MAX_SQL_CHARS:
            raise GatewayError("sql_too_long", f"`sql` is longer than {MAX_SQL_CHARS} characters", 400)
        if epsilon is not None and rho is not None:
            raise GatewayError("bad_epsilon", "send one of `epsilon`, `rho`, not several", 400)
        eps = _parse_rho(rho) if rho is not None else _parse_epsilon(epsilon)
        try:
            plan = analyze(sql, self.datasets, self.granted)
        except SandboxError as exc:
            raise GatewayError(exc.code, exc.message, exc.status) from None
        if rho is not None and plan.open_keys:
            raise GatewayError(
                "selection_needs_pure",
                "grouping by a text column (or an int column without bounds) needs DP partition selection, "
                "which a zcdp grant cannot pay for: group by declared categories or bins, or use a pure grant",
                400,
            )
        columns, rows = self._answer(plan)
        rows = apply_post(plan, columns, rows)
        return self._frame(plan, columns, rows, eps, "rho" if rho is not None else "epsilon")

    # -- the local evaluation ----------------------------------------------------------------------
    def _rows(self, ds_id: str) -> list[dict[str, Any]]:
        rows = self._tables.get(ds_id)
        if rows is None:
            frame = mock_frame(self.datasets[ds_id], self.rows, self.seed, columns=self.granted[ds_id])
            rows = frame.astype(object).where(frame.notna(), None).to_dict("records")
            self._tables[ds_id] = rows
        return rows

    def _answer(self, plan: QueryPlan) -> tuple[list[str], list[list]]:
        from sandbox.sql._join import joined_dataset, prefixed
        from sandbox.sql.local import answer_locally

        rows, dataset = self._rows(plan.dataset), self.datasets[plan.dataset]
        if plan.join is not None:  # as the engine: a lookup row per key; on the unit, every pair, then the bound
            lookup = self.datasets[plan.join.lookup]
            by_key: dict[str, list[dict[str, Any]]] = {}
            for row in self._rows(lookup.id):
                matches = by_key.setdefault(str(row.get(plan.join.key)), [])
                if plan.join.unit or not matches:
                    matches.append(row)
            dataset = joined_dataset(dataset, lookup)
            joined, kept = [], {}
            for row in rows:
                value = row.get(plan.join.column)
                matches = by_key.get(str(value), []) if value is not None else []
                for match in matches or ([{}] if plan.join.left else []):
                    if plan.join.unit:
                        kept[value] = kept.get(value, 0) + 1
                        if kept[value] > dataset.max_rows_per_unit:
                            break
                    extra = {prefixed(lookup.id, k): match.get(k) for k, c in lookup.columns.items() if c.type != "id"}
                    joined.append({**row, **extra})
            rows = joined
        return answer_locally(rows, plan, dataset)

    def _frame(
        self, plan: QueryPlan, columns: list[str], rows: list[list], cost: float, unit: str = "epsilon"
    ) -> pd.DataFrame:
        import pandas as pd

        df = pd.DataFrame(rows, columns=columns)
        df.attrs.update({
            "mock": True, "note": MOCK_NOTE, "query_id": "mock-" + uuid.uuid4().hex[:12],
            "grant": self.grant, "dataset": plan.dataset, "epsilon_spent": 0.0,
            f"{unit}_requested": cost, **({"rho_spent": 0.0} if unit == "rho" else {}),
            "cached": False, "normalized_sql": plan.normalized_sql,
            "rows_mocked": self.rows,
        })
        return df


def connect_mock(remote: Client | None, grant: str | None, rows: int = 1000, seed: int | None = 0,
                 catalog: list[dict[str, Any]] | None = None) -> MockClient:
    """A :class:`MockClient` over the catalog of ``remote`` (or the ``catalog`` JSON given)."""
    if catalog is None:
        if remote is None:
            raise GatewayError("not_configured", "mock mode needs the catalog: a gateway to read it from, or catalog=")
        catalog = remote.catalog(raw=True)
    return MockClient(catalog, grant, rows=rows, seed=seed, remote=remote)

