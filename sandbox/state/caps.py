"""Caps across grants, per dataset: each operator's grants together, and all grants together.

The caps are in epsilon and compose basically across grants. A pure grant adds each query's
epsilon. A zCDP grant adds, for each query, how much the epsilon (at the grant's delta) of
everything it has spent *on that dataset* grows, so its increments add up exactly to that
epsilon (integer nano-units telescope), and across grants the deltas of zCDP grants add up,
with the delta each pure grant's partition selection spends, per query.
What is spent is tracked from the first query whether or not a cap is declared, so a cap
declared later counts everything already spent. Never refunded, never reset.

Every function here takes the caller's open write transaction: the ledger charges the grant,
the operator cap and the dataset cap in one ``BEGIN IMMEDIATE`` transaction.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Mapping
from dataclasses import dataclass

from sandbox.dp.accounting import rho_nano_to_epsilon_nano
from sandbox.errors import Conflict
from sandbox.policy.models import Dataset, operator_key
from sandbox.state.audit import AuditEvent, AuditLog
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
    );
    CREATE TABLE IF NOT EXISTS dataset_delta_spent (
        dataset TEXT NOT NULL,
        grant_id TEXT NOT NULL,
        delta REAL NOT NULL,  -- a zcdp grant's delta, counted once against the dataset's delta cap
        PRIMARY KEY (dataset, grant_id)
    );
    CREATE TABLE IF NOT EXISTS dataset_selection_delta (
        query_id TEXT PRIMARY KEY,  -- a pure grant's query (or <query_id>+<dataset> for a joined one)
        dataset TEXT NOT NULL,
        grant_id TEXT NOT NULL,
        delta REAL NOT NULL  -- the delta DP partition selection spent, counted per query
    );
    CREATE TABLE IF NOT EXISTS cap_unattributed (
        query_id TEXT PRIMARY KEY  -- an old charge whose dataset the audit log does not name (backfill)
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
    delta_total: float | None = None  # the dataset row: its delta cap (zCDP grants), and what is spent
    delta_spent: float = 0.0

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
        if self.delta_total is not None:
            out.update(delta_total=self.delta_total, delta_spent=self.delta_spent)
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


# the delta spent on a dataset: each zCDP grant's delta once, and each partition selection's delta
DELTA_SPENT_SQL = (
    "SELECT (SELECT COALESCE(SUM(delta), 0) FROM dataset_delta_spent WHERE dataset = ?1)"
    " + (SELECT COALESCE(SUM(delta), 0) FROM dataset_selection_delta WHERE dataset = ?1) AS d"
)


def _delta_spent(conn: sqlite3.Connection, dataset_id: str) -> float:
    return float(conn.execute(DELTA_SPENT_SQL, (dataset_id,)).fetchone()["d"])


def _delta_refused(dataset: Dataset, spent: float, total: float, needs: str) -> Conflict:
    return Conflict(
        f"budget exhausted: the dataset cap on {dataset.id} (all grants together: delta {total:g}) has "
        f"delta {max(total - spent, 0):g} left; {needs}",
        code="budget_exhausted",
        detail={"cap": "dataset", "dataset": dataset.id, "delta_total": total,
                "delta_remaining": max(total - spent, 0.0)},
    )


def charge_selection_delta(conn: sqlite3.Connection, dataset: Dataset, grant_id: str, scope_id: str,
                           delta: float) -> None:
    """A pure grant's partition selection: its delta counts against the dataset's delta cap, per query
    (refused over the cap); recorded whether or not a cap is declared."""
    if delta <= 0:
        return
    if dataset.budget is not None:
        spent, total = _delta_spent(conn, dataset.id), dataset.budget.delta
        if spent + delta > total * (1 + 1e-9):
            raise _delta_refused(dataset, spent, total, f"this query's partition selection needs delta {delta:g}")
    conn.execute("INSERT INTO dataset_selection_delta (query_id, dataset, grant_id, delta) VALUES (?, ?, ?, ?)",
                 (scope_id, dataset.id, grant_id, delta))


def check_delta_cap(conn: sqlite3.Connection, dataset: Dataset, grant_id: str, zcdp_delta: float | None) -> None:
    """A zCDP grant's first charge on a dataset adds its delta to the dataset's; refused over the cap."""
    if zcdp_delta is None or dataset.budget is None:
        return
    if conn.execute("SELECT 1 FROM dataset_delta_spent WHERE dataset = ? AND grant_id = ?",
                    (dataset.id, grant_id)).fetchone():
        return
    spent, total = _delta_spent(conn, dataset.id), dataset.budget.delta
    if spent + zcdp_delta > total * (1 + 1e-9):
        needs = f"grant {grant_id}'s first query here needs its delta {zcdp_delta:g}"
        raise _delta_refused(dataset, spent, total, needs)


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
    cap_units: int, zcdp_delta: float | None = None,
) -> None:
    """Record a charge against the grant-per-dataset tally, the operator row and the dataset row."""
    if zcdp_delta is not None:
        conn.execute("INSERT OR IGNORE INTO dataset_delta_spent (dataset, grant_id, delta) VALUES (?, ?, ?)",
                     (dataset_id, grant_id, zcdp_delta))
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
    delta_spent = float(db.read(DELTA_SPENT_SQL, (dataset.id,))[0]["d"])
    out.append(CapState("dataset", dataset.id, None, total, rows.get(ALL_GRANTS, 0) / NANO,
                        dataset.budget.delta if dataset.budget else None, delta_spent))
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
    # every charge is counted against the caps, with the units the grant was charged
    for r in db.read(
        "SELECT c.query_id, c.grant_id, c.epsilon_nano, z.rho_nano, s.units_nano FROM charges c"
        " LEFT JOIN charge_scopes s ON s.query_id = c.query_id LEFT JOIN zcdp_charges z ON z.query_id = c.query_id"
        " WHERE c.query_id NOT IN (SELECT query_id FROM cap_unattributed)"
        " AND (s.query_id IS NULL OR s.units_nano != COALESCE(z.rho_nano, c.epsilon_nano))"
    ):
        if r["units_nano"] is None:
            problems.append(f"grant {r['grant_id']}: charge {r['query_id']} is not counted against any cap")
        else:
            problems.append(f"grant {r['grant_id']}: charge {r['query_id']} counts {r['units_nano'] / NANO} "
                            "against the caps but was charged otherwise")
    for r in db.read(
        "SELECT g.grant_id, g.dataset, g.units_nano, COALESCE((SELECT SUM(s.units_nano) FROM charge_scopes s"
        " WHERE s.grant_id = g.grant_id AND s.dataset = g.dataset), 0) AS charged FROM grant_dataset_spent g"
    ):
        if r["units_nano"] != r["charged"]:
            problems.append(f"grant {r['grant_id']} on {r['dataset']}: spent {r['units_nano'] / NANO} "
                            f"but its charges add up to {r['charged'] / NANO}")
    return problems


def _unscoped_charges(conn: sqlite3.Connection) -> list[sqlite3.Row]:
    return conn.execute(
        "SELECT c.query_id, c.grant_id, c.epsilon_nano, z.rho_nano FROM charges c"
        " LEFT JOIN charge_scopes s ON s.query_id = c.query_id"
        " LEFT JOIN zcdp_charges z ON z.query_id = c.query_id WHERE s.query_id IS NULL"
        " AND c.query_id NOT IN (SELECT query_id FROM cap_unattributed) ORDER BY c.ts, c.rowid"
    ).fetchall()


def _unkeyed_operators(conn: sqlite3.Connection) -> list[str]:
    return [r["operator"] for r in conn.execute("SELECT DISTINCT operator FROM charge_scopes")
            if operator_key(r["operator"]) != r["operator"]]


def _missing_deltas(conn: sqlite3.Connection) -> list[sqlite3.Row]:
    """zCDP grants that spent on a dataset before its delta tally existed."""
    return conn.execute(
        "SELECT DISTINCT s.dataset, s.grant_id, z.delta FROM charge_scopes s JOIN zcdp_budgets z"
        " ON z.grant_id = s.grant_id WHERE NOT EXISTS (SELECT 1 FROM dataset_delta_spent d"
        " WHERE d.dataset = s.dataset AND d.grant_id = s.grant_id)"
    ).fetchall()


def _missing_selection_deltas(conn: sqlite3.Connection) -> list[sqlite3.Row]:
    """Pure charges whose partition selection delta predates the dataset's per-query delta tally."""
    return conn.execute(
        "SELECT s.query_id, s.dataset, s.grant_id, c.delta FROM charge_scopes s JOIN charges c"
        " ON c.query_id = s.query_id OR s.query_id LIKE c.query_id || '+%'"
        " WHERE c.delta > 0 AND c.query_id NOT IN (SELECT query_id FROM zcdp_charges)"
        " AND s.query_id NOT IN (SELECT query_id FROM dataset_selection_delta)"
    ).fetchall()


def backfill(db: StateDB, audit: AuditLog) -> dict | None:
    """One-time upgrade at state open: charges made before the cap tallies existed (or whose tallies
    were lost) are counted against them, from ``charges``, the ``query.charged`` audit entries'
    ``detail.dataset`` and the grant's operator; tallies keyed on raw operator names are re-keyed
    on :func:`operator_key`. Idempotent: once every charge has its scope there is nothing to do.
    Recorded as ``caps.backfilled``. Returns the entry's detail, or None when nothing was done."""
    if (not _unscoped_charges(db.conn) and not _unkeyed_operators(db.conn) and not _missing_deltas(db.conn)
            and not _missing_selection_deltas(db.conn)):
        return None
    with db.write() as conn:
        missing = _unscoped_charges(conn)
        unkeyed = _unkeyed_operators(conn)
        if not missing and not unkeyed and not _missing_deltas(conn) and not _missing_selection_deltas(conn):
            return None
        wanted = {r["query_id"] for r in missing}
        datasets: dict[str, str] = {}
        for row in conn.execute("SELECT detail FROM audit WHERE action = 'query.charged' ORDER BY seq"):
            detail = json.loads(row["detail"])
            qid, ds_id = detail.get("query_id"), detail.get("dataset")
            if qid in wanted and isinstance(ds_id, str):
                datasets[qid] = ds_id
        operators = {r["id"]: json.loads(r["body"]).get("operator", "")
                     for r in conn.execute("SELECT id, body FROM grants")}
        deltas = {r["grant_id"]: r["delta"] for r in conn.execute("SELECT grant_id, delta FROM zcdp_budgets")}
        unattributed: list[str] = []
        for r in missing:
            ds_id, operator = datasets.get(r["query_id"]), operators.get(r["grant_id"], "")
            if ds_id is None or not operator_key(operator):
                unattributed.append(r["query_id"])
                conn.execute("INSERT OR IGNORE INTO cap_unattributed (query_id) VALUES (?)", (r["query_id"],))
                continue
            zcdp = r["rho_nano"] is not None
            units = r["rho_nano"] if zcdp else r["epsilon_nano"]
            cap_units = increment(conn, r["grant_id"], ds_id, units, deltas.get(r["grant_id"]) if zcdp else None)
            charge_caps(conn, query_id=r["query_id"], grant_id=r["grant_id"], dataset_id=ds_id, operator=operator,
                        units=units, cap_units=cap_units, zcdp_delta=deltas.get(r["grant_id"]) if zcdp else None)
        for raw in unkeyed:
            conn.execute("UPDATE charge_scopes SET operator = ? WHERE operator = ?", (operator_key(raw), raw))
        deltas_added = _missing_deltas(conn)
        for r in deltas_added:
            conn.execute("INSERT OR IGNORE INTO dataset_delta_spent (dataset, grant_id, delta) VALUES (?, ?, ?)",
                         (r["dataset"], r["grant_id"], r["delta"]))
        selections = _missing_selection_deltas(conn)
        for r in selections:
            conn.execute("INSERT OR IGNORE INTO dataset_selection_delta (query_id, dataset, grant_id, delta)"
                         " VALUES (?, ?, ?, ?)", (r["query_id"], r["dataset"], r["grant_id"], r["delta"]))
        # the tallies are sums of the per-charge scopes: rebuilt from them, so nothing is counted twice
        conn.execute("DELETE FROM cap_spent")
        conn.execute("INSERT INTO cap_spent (dataset, operator, epsilon_spent_nano) SELECT dataset, operator,"
                     " SUM(cap_epsilon_nano) FROM charge_scopes GROUP BY dataset, operator")
        conn.execute("INSERT INTO cap_spent (dataset, operator, epsilon_spent_nano) SELECT dataset, '',"
                     " SUM(cap_epsilon_nano) FROM charge_scopes GROUP BY dataset")
        detail = {"charges": len(missing) - len(unattributed), "unattributed": unattributed[:100],
                  "unattributed_count": len(unattributed), "operators_rekeyed": len(unkeyed),
                  "zcdp_deltas": len(deltas_added), "selection_deltas": len(selections)}
        audit.append(conn, AuditEvent("system", "caps.backfilled", None, detail))
    audit.write_head()
    return detail
