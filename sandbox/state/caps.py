"""Caps across grants, per dataset: each operator's grants together, and all grants together.

The caps are in epsilon and compose basically across grants. A pure grant adds each query's
epsilon. A zCDP grant adds, for each query, how much the epsilon (at the grant's delta) of
everything it has spent *on that dataset* grows, so its increments add up exactly to that
epsilon (integer nano-units telescope), and across grants the deltas of zCDP grants add up.
What is spent is tracked from the first query whether or not a cap is declared, so a cap
declared later counts everything already spent. Never refunded, never reset.

Every function here takes the caller's open write transaction: the ledger charges the grant,
the operator cap and the dataset cap in one ``BEGIN IMMEDIATE`` transaction.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Mapping
from dataclasses import dataclass

from sandbox.dp.accounting import rho_nano_to_epsilon_nano
from sandbox.errors import Conflict
from sandbox.policy.models import Dataset, operator_key
from sandbox.state.db import StateDB, register_schema

register_schema(
    """
    CREATE TABLE IF NOT EXISTS cap_spent (
        dataset TEXT NOT NULL,
        operator TEXT NOT NULL,  -- the operator's canonical key (operator_key), or '' for the dataset-wide row
        epsilon_spent_nano INTEGER NOT NULL DEFAULT 0,
        PRIMARY KEY (dataset, operator)
    );
    CREATE TABLE IF NOT EXISTS grant_dataset_spent (
        grant_id TEXT NOT NULL,
        dataset TEXT NOT NULL,
        units_nano INTEGER NOT NULL DEFAULT 0,  -- epsilon (pure) or rho (zcdp) spent by the grant on it
        PRIMARY KEY (grant_id, dataset)
    );
    CREATE TABLE IF NOT EXISTS charge_scopes (
        query_id TEXT PRIMARY KEY,
        grant_id TEXT NOT NULL,
        dataset TEXT NOT NULL,
        operator TEXT NOT NULL,
        units_nano INTEGER NOT NULL,
        cap_epsilon_nano INTEGER NOT NULL
    )
    """
)

ALL_GRANTS = ""
NANO = 1_000_000_000


def _nano(value: float) -> int:
    return round(value * NANO)


@dataclass(frozen=True)
class CapState:
    cap: str  # "operator" | "dataset"
    dataset: str
    operator: str | None
    epsilon_total: float | None  # None: no cap declared
    epsilon_spent: float

    @property
    def epsilon_remaining(self) -> float | None:
        if self.epsilon_total is None:
            return None
        return max(0, _nano(self.epsilon_total) - _nano(self.epsilon_spent)) / NANO

    def to_dict(self) -> dict:
        out = {"cap": self.cap, "dataset": self.dataset, "epsilon_total": self.epsilon_total,
               "epsilon_spent": self.epsilon_spent, "epsilon_remaining": self.epsilon_remaining}
        if self.operator is not None:
            out["operator"] = self.operator
        return out


def increment(conn: sqlite3.Connection, grant_id: str, dataset_id: str, units: int, zcdp_delta: float | None) -> int:
    """What a charge of ``units`` (epsilon, or rho when ``zcdp_delta`` is set) adds to the caps, in nano epsilon."""
    if zcdp_delta is None:
        return units
    row = conn.execute(
        "SELECT units_nano FROM grant_dataset_spent WHERE grant_id = ? AND dataset = ?", (grant_id, dataset_id)
    ).fetchone()
    before = row["units_nano"] if row else 0
    return rho_nano_to_epsilon_nano(before + units, zcdp_delta) - rho_nano_to_epsilon_nano(before, zcdp_delta)


def _spent(conn: sqlite3.Connection, dataset_id: str, operator: str) -> int:
    row = conn.execute(
        "SELECT epsilon_spent_nano FROM cap_spent WHERE dataset = ? AND operator = ?", (dataset_id, operator)
    ).fetchone()
    return row["epsilon_spent_nano"] if row else 0


def check_caps(conn: sqlite3.Connection, dataset: Dataset, operator: str, cap_units: int) -> None:
    """Raise Conflict(budget_exhausted, detail.cap = operator | dataset) if a cap would be exceeded."""
    checks = [("operator", operator_key(operator), dataset.operator_cap(operator)),
              ("dataset", ALL_GRANTS, dataset.budget.epsilon if dataset.budget else None)]
    for cap, key, total in checks:
        if total is None:
            continue
        left = _nano(total) - _spent(conn, dataset.id, key)
        if cap_units > left:
            whose = f"operator {operator}'s grants together" if cap == "operator" else "all grants together"
            raise Conflict(
                f"budget exhausted: the {cap} cap on {dataset.id} ({whose}: epsilon {total:g}) has "
                f"{max(left, 0) / NANO:g} left; this query needs {cap_units / NANO:g}",
                code="budget_exhausted",
                detail={"cap": cap, "dataset": dataset.id, "epsilon_total": total,
                        "epsilon_remaining": max(left, 0) / NANO},
            )


def charge_caps(
    conn: sqlite3.Connection, *, query_id: str, grant_id: str, dataset_id: str, operator: str, units: int,
    cap_units: int,
) -> None:
    """Record a charge against the grant-per-dataset tally, the operator row and the dataset row."""
    conn.execute(
        "INSERT INTO grant_dataset_spent (grant_id, dataset, units_nano) VALUES (?, ?, ?)"
        " ON CONFLICT(grant_id, dataset) DO UPDATE SET units_nano = units_nano + excluded.units_nano",
        (grant_id, dataset_id, units),
    )
    operator = operator_key(operator)  # one institution, one tally, however its name is spelled
    for key in (operator, ALL_GRANTS):
        conn.execute(
            "INSERT INTO cap_spent (dataset, operator, epsilon_spent_nano) VALUES (?, ?, ?)"
            " ON CONFLICT(dataset, operator) DO UPDATE SET"
            " epsilon_spent_nano = epsilon_spent_nano + excluded.epsilon_spent_nano",
            (dataset_id, key, cap_units),
        )
    conn.execute(
        "INSERT INTO charge_scopes (query_id, grant_id, dataset, operator, units_nano, cap_epsilon_nano)"
        " VALUES (?, ?, ?, ?, ?, ?)",
        (query_id, grant_id, dataset_id, operator, units, cap_units),
    )


def cap_states(db: StateDB, dataset: Dataset, operator: str | None = None) -> list[CapState]:
    """The dataset cap, and the operator cap of ``operator`` (or of every operator seen) on ``dataset``."""
    rows = {r["operator"]: r["epsilon_spent_nano"]
            for r in db.read("SELECT operator, epsilon_spent_nano FROM cap_spent WHERE dataset = ?", (dataset.id,))}
    # shown as given (one spelling per institution); listed without a name: by canonical key
    operators = [operator] if operator is not None else sorted(k for k in rows if k != ALL_GRANTS)
    out = [CapState("operator", dataset.id, op, dataset.operator_cap(op), rows.get(operator_key(op), 0) / NANO)
           for op in operators]
    total = dataset.budget.epsilon if dataset.budget else None
    out.append(CapState("dataset", dataset.id, None, total, rows.get(ALL_GRANTS, 0) / NANO))
    return out


def dataset_budgets(db: StateDB, catalog: Mapping[str, Dataset]) -> list[dict]:
    """Each dataset's total privacy loss for all grants together and what is left (for the public directory)."""
    return [cap_states(db, ds, operator=None)[-1].to_dict() for _, ds in sorted(catalog.items())]


def reconcile_caps(db: StateDB) -> list[str]:
    """The cap tallies against the per-charge records."""
    problems = []
    for r in db.read(
        "SELECT c.dataset, c.operator, c.epsilon_spent_nano AS spent, COALESCE(("
        " SELECT SUM(s.cap_epsilon_nano) FROM charge_scopes s WHERE s.dataset = c.dataset"
        " AND (c.operator = '' OR s.operator = c.operator)), 0) AS charged FROM cap_spent c"
    ):
        if r["spent"] != r["charged"]:
            who = f"operator {r['operator']}" if r["operator"] else "all grants"
            problems.append(f"dataset {r['dataset']} ({who}): spent {r['spent'] / NANO} "
                            f"but its charges add up to {r['charged'] / NANO}")
    return problems
