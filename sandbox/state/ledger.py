"""The privacy-budget ledger: charged atomically before any data is touched, never refunded.

Epsilon (and rho) are kept in integer nano-units so that the sums an operator sees add up
exactly. One transaction checks and charges the grant, its operator's cap on the dataset and
the dataset's cap for all grants together (:mod:`sandbox.state.caps`); a refusal names the
cap (``detail.cap``: grant | operator | dataset) and changes nothing.

A ``zcdp`` grant is charged in rho against the rho total that OpenDP's conversion gives for
its (epsilon, delta); ``budgets.epsilon_spent_nano`` then holds the epsilon of the rho spent
(at the grant's delta), so every charge's ``epsilon`` is the growth of that figure and the
sums still reconcile exactly. An identical query (same cache key: grant, data version,
catalog entry, normalized SQL, cost) replays the cached noisy answer and costs nothing.
"""

from __future__ import annotations

import datetime as dt
import json
import sqlite3
import time
from collections.abc import Mapping
from dataclasses import dataclass

from sandbox.dp.accounting import epsilon_to_rho, rho_nano_to_epsilon_nano, rho_to_epsilon
from sandbox.errors import BadRequest, Conflict, NotFound
from sandbox.policy.models import Dataset, operator_key
from sandbox.state import caps
from sandbox.state.audit import AuditEvent, AuditLog
from sandbox.state.db import StateDB, register_schema

register_schema(
    """
    CREATE TABLE IF NOT EXISTS budgets (
        grant_id TEXT PRIMARY KEY,
        epsilon_total_nano INTEGER NOT NULL,
        epsilon_spent_nano INTEGER NOT NULL DEFAULT 0,
        delta_total REAL NOT NULL DEFAULT 0,
        delta_spent REAL NOT NULL DEFAULT 0
    );
    CREATE TABLE IF NOT EXISTS charges (
        query_id TEXT PRIMARY KEY,
        grant_id TEXT NOT NULL REFERENCES budgets(grant_id),
        user TEXT NOT NULL,
        epsilon_nano INTEGER NOT NULL,
        delta REAL NOT NULL DEFAULT 0,
        ts TEXT NOT NULL
    );
    CREATE TABLE IF NOT EXISTS answers (
        cache_key TEXT PRIMARY KEY,
        grant_id TEXT NOT NULL,
        query_id TEXT NOT NULL,
        status TEXT NOT NULL,
        response TEXT,
        created_at TEXT NOT NULL
    );
    CREATE INDEX IF NOT EXISTS charges_by_grant ON charges(grant_id, ts);
    CREATE TABLE IF NOT EXISTS zcdp_budgets (
        grant_id TEXT PRIMARY KEY REFERENCES budgets(grant_id),
        rho_total_nano INTEGER NOT NULL,
        rho_spent_nano INTEGER NOT NULL DEFAULT 0,
        delta REAL NOT NULL
    );
    CREATE TABLE IF NOT EXISTS zcdp_charges (
        query_id TEXT PRIMARY KEY REFERENCES charges(query_id),
        rho_nano INTEGER NOT NULL
    )
    """
)

NANO = 1_000_000_000


def to_nano(epsilon: float) -> int:
    return round(epsilon * NANO)


def from_nano(units: int) -> float:
    return units / NANO


@dataclass(frozen=True)
class BudgetState:
    grant_id: str
    epsilon_total: float
    epsilon_spent: float
    accounting: str = "pure"
    rho_total: float | None = None  # zcdp grants only
    rho_spent: float | None = None
    delta: float | None = None

    @property
    def epsilon_remaining(self) -> float:
        return from_nano(max(0, to_nano(self.epsilon_total) - to_nano(self.epsilon_spent)))

    @property
    def rho_remaining(self) -> float | None:
        if self.rho_total is None or self.rho_spent is None:
            return None
        return from_nano(to_nano(self.rho_total) - to_nano(self.rho_spent))

    def to_dict(self) -> dict:
        out: dict = {
            "epsilon_total": self.epsilon_total,
            "epsilon_spent": self.epsilon_spent,
            "epsilon_remaining": self.epsilon_remaining,
        }
        if self.accounting == "zcdp":
            out.update(accounting="zcdp", delta=self.delta, rho_total=self.rho_total, rho_spent=self.rho_spent,
                       rho_remaining=self.rho_remaining)
        return out


@dataclass(frozen=True)
class Charge:
    """The outcome of :meth:`Ledger.charge`: either a fresh charge or a cached answer."""

    query_id: str
    epsilon_nano: int
    cached_response: dict | None = None
    rho_nano: int = 0  # zcdp grants: what the query cost in rho


@dataclass(frozen=True)
class ChargeRecord:
    """One row of the ledger's charges (what usage metering reads)."""

    query_id: str
    grant_id: str
    user: str
    epsilon_nano: int
    ts: str

    @property
    def epsilon(self) -> float:
        return from_nano(self.epsilon_nano)


def _now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="microseconds")


PENDING_STALE_AFTER = dt.timedelta(minutes=10)


def _stale(created_at: str) -> bool:
    return dt.datetime.now(dt.UTC) - dt.datetime.fromisoformat(created_at) > PENDING_STALE_AFTER


class Ledger:
    def __init__(self, db: StateDB, audit: AuditLog, wait_for_twin_s: float = 30.0, *, backfill: bool = True) -> None:
        self.db = db
        self.audit = audit
        self.wait_for_twin_s = wait_for_twin_s
        if backfill:  # not when verifying: a repair at open would hide tally rows deleted since
            caps.backfill(db, audit)  # one-time upgrade: charges from before the cap tallies count against them

    @staticmethod
    def ensure_budget(
        conn: sqlite3.Connection, grant_id: str, epsilon: float, delta: float, accounting: str = "pure"
    ) -> None:
        """Create the grant's budget, or lower it; a budget is never raised or refreshed.

        A zcdp grant's (epsilon, delta) also becomes a rho total through OpenDP's conversion.
        The accounting is fixed at first apply.
        """
        total = to_nano(epsilon)
        row = conn.execute(
            "SELECT epsilon_total_nano, epsilon_spent_nano FROM budgets WHERE grant_id = ?",
            (grant_id,),
        ).fetchone()
        zrow = conn.execute("SELECT * FROM zcdp_budgets WHERE grant_id = ?", (grant_id,)).fetchone()
        # a hair under the total, so that the epsilon of the whole rho never rounds above it
        rho_total = to_nano(epsilon_to_rho(epsilon - 2e-9, delta)) if accounting == "zcdp" else 0
        if row is None:
            conn.execute(
                "INSERT INTO budgets (grant_id, epsilon_total_nano, delta_total) VALUES (?, ?, ?)",
                (grant_id, total, delta),
            )
            if accounting == "zcdp":
                conn.execute(
                    "INSERT INTO zcdp_budgets (grant_id, rho_total_nano, delta) VALUES (?, ?, ?)",
                    (grant_id, rho_total, delta),
                )
            return
        if (zrow is not None) != (accounting == "zcdp"):
            raise Conflict(
                f"grant {grant_id}: the accounting is fixed once applied; issue a new grant instead",
                code="budget_fixed",
            )
        if total > row["epsilon_total_nano"] or (zrow is not None and delta > zrow["delta"]):
            raise Conflict(
                f"grant {grant_id}: the budget is fixed once applied and never raised "
                f"(in force: {from_nano(row['epsilon_total_nano'])}); issue a new grant instead",
                code="budget_fixed",
            )
        lowered = total < row["epsilon_total_nano"] or (zrow is not None and delta < zrow["delta"])
        if lowered and (
            total < row["epsilon_spent_nano"] or (zrow is not None and rho_total < zrow["rho_spent_nano"])
        ):
            raise Conflict(
                f"grant {grant_id}: cannot lower the budget below what is spent "
                f"({from_nano(row['epsilon_spent_nano'])})",
                code="budget_fixed",
            )
        conn.execute(
            "UPDATE budgets SET epsilon_total_nano = ? WHERE grant_id = ?", (total, grant_id)
        )
        if zrow is not None and (total, delta) != (row["epsilon_total_nano"], zrow["delta"]):
            conn.execute(
                "UPDATE zcdp_budgets SET rho_total_nano = ?, delta = ? WHERE grant_id = ?",
                (rho_total, delta, grant_id),
            )

    def state(self, grant_id: str) -> BudgetState:
        rows = self.db.read(
            "SELECT b.epsilon_total_nano, b.epsilon_spent_nano, z.rho_total_nano, z.rho_spent_nano, z.delta"
            " FROM budgets b LEFT JOIN zcdp_budgets z ON z.grant_id = b.grant_id WHERE b.grant_id = ?",
            (grant_id,),
        )
        if not rows:
            raise NotFound(f"no budget for grant {grant_id}", code="unknown_grant")
        r = rows[0]
        eps = (from_nano(r["epsilon_total_nano"]), from_nano(r["epsilon_spent_nano"]))
        if r["rho_total_nano"] is None:
            return BudgetState(grant_id, *eps)
        return BudgetState(grant_id, *eps, accounting="zcdp", rho_total=from_nano(r["rho_total_nano"]),
                           rho_spent=from_nano(r["rho_spent_nano"]), delta=r["delta"])

    def cap_states(self, dataset: Dataset, operator: str | None = None) -> list[caps.CapState]:
        return caps.cap_states(self.db, dataset, operator)

    def dataset_budgets(self, catalog: Mapping[str, Dataset]) -> list[dict]:
        """Each dataset's total for all grants together and what is left (for the public directory)."""
        return caps.dataset_budgets(self.db, catalog)

    def charge(
        self,
        *,
        grant_id: str,
        user: str,
        query_id: str,
        epsilon: float | None = None,
        max_epsilon_per_query: float,
        cache_key: str,
        audit_detail: dict,
        rho: float | None = None,
        dataset: Dataset,
        operator: str,
        delta: float = 0.0,
        also: tuple[Dataset, ...] = (),
    ) -> Charge:
        """Check and charge in one IMMEDIATE transaction, with its audit entry; or replay.

        ``epsilon`` for a pure grant, ``rho`` for a zcdp grant (whose per-query cap holds in
        the policy's unit: the rho's epsilon at the grant's delta is at most ``max_epsilon_per_query``). The
        operator and dataset caps of ``dataset`` are charged in the same transaction (the
        scope is mandatory: every charge counts against the caps). Raises
        Conflict(budget_exhausted, detail.cap) and changes nothing when
        the query would overspend any of them. ``delta`` (pure grants: DP partition selection)
        is charged against the grant's delta budget in the same transaction. ``also``: further
        private datasets the query reads (a join on the privacy unit), whose operator and dataset
        caps are charged the same cost in the same transaction.
        """
        if (epsilon is None) == (rho is None):
            raise BadRequest("send either epsilon (pure grants) or rho (zcdp grants)", code="bad_epsilon")
        name, cost = ("epsilon", float(epsilon or 0)) if rho is None else ("rho", float(rho))
        units = to_nano(cost)
        if units <= 0:
            raise BadRequest(f"{name} must be positive", code="bad_epsilon")
        if rho is None:
            over, shown = units > to_nano(max_epsilon_per_query), ""
        else:
            as_epsilon = self._rho_epsilon(grant_id, cost)
            over, shown = as_epsilon > max_epsilon_per_query * (1 + 1e-12), f" (epsilon {as_epsilon:g} at its delta)"
        if over:
            raise BadRequest(
                f"{name} {cost}{shown} is over this grant's per-query cap of epsilon {max_epsilon_per_query:g}",
                code="epsilon_over_cap",
            )
        deadline = time.monotonic() + self.wait_for_twin_s
        scope = ((dataset, *also), operator)
        while True:
            outcome = self._try_charge(grant_id, user, query_id, units, rho is not None, cache_key, audit_detail,
                                       scope, delta)
            if outcome is not None:
                return outcome
            if time.monotonic() > deadline:
                raise Conflict("an identical query is still running; try again", code="query_in_flight")
            time.sleep(0.02)

    def _rho_epsilon(self, grant_id: str, rho: float) -> float:
        """A zCDP query's epsilon at its grant's delta: the per-query cap is in the policy's unit, epsilon."""
        rows = self.db.read("SELECT delta FROM zcdp_budgets WHERE grant_id = ?", (grant_id,))
        if not rows:
            raise BadRequest("send epsilon (this grant uses pure accounting)", code="wrong_accounting")
        return rho_to_epsilon(rho, rows[0]["delta"])

    def _try_charge(
        self, grant_id: str, user: str, query_id: str, units: int, zcdp: bool, cache_key: str, detail: dict,
        scope: tuple[tuple[Dataset, ...], str] | None, spend_delta: float = 0.0,
    ) -> Charge | None:
        with self.db.work() as work:
            conn = work.conn
            cached = conn.execute(
                "SELECT query_id, status, response, created_at FROM answers WHERE cache_key = ?", (cache_key,)
            ).fetchone()
            if cached is not None and cached["status"] != "done" and _stale(cached["created_at"]):
                # a twin that was charged but never answered (the process died): answer afresh
                conn.execute("DELETE FROM answers WHERE cache_key = ?", (cache_key,))
                cached = None
            if cached is not None:
                if cached["status"] != "done":
                    return None  # its twin is being answered right now: wait for it
                response = json.loads(cached["response"])
                work.record(
                    AuditEvent(
                        user, "query.replayed", grant_id,
                        {**detail, "query_id": query_id, "replay_of": cached["query_id"],
                         "epsilon": 0.0, "answer_sha256": response.get("answer_sha256")},
                    ),
                )
                return Charge(cached["query_id"], 0, cached_response=response)
            eps_units, extra = self._charge_grant(conn, grant_id, units, zcdp)
            if spend_delta > 0:  # pure grants only: under zcdp the grant's delta pays for the rho conversion
                if zcdp:
                    raise BadRequest("a zcdp grant spends no delta directly", code="selection_needs_pure")
                self._check_delta(conn, grant_id, spend_delta)
                extra["delta"] = spend_delta
            if scope is not None:
                datasets, operator = scope
                delta = extra.get("delta") if zcdp else None
                logged_scopes = []
                for i, dataset in enumerate(datasets):
                    cap_units = caps.increment(conn, grant_id, dataset.id, units, delta)
                    caps.check_caps(conn, dataset, operator, cap_units)
                    caps.check_delta_cap(conn, dataset, grant_id, delta)
                    # one scope row per dataset: a joined dataset's row is keyed <query_id>+<dataset>
                    scope_id = query_id if i == 0 else f"{query_id}+{dataset.id}"
                    if not zcdp:  # partition selection's delta: the dataset's delta cap too, per query
                        caps.charge_selection_delta(conn, dataset, grant_id, scope_id, spend_delta)
                    caps.charge_caps(conn, query_id=scope_id, grant_id=grant_id, dataset_id=dataset.id,
                                     operator=operator, units=units, cap_units=cap_units, zcdp_delta=delta)
                    logged_scopes.append({"scope": scope_id, "dataset": dataset.id, "cap_epsilon_nano": cap_units,
                                          "operator_key": operator_key(operator)})
                    if i == 0:
                        extra["cap_epsilon"] = from_nano(cap_units)
                    else:
                        extra.setdefault("joined_caps", {})[dataset.id] = from_nano(cap_units)
                extra["cap_scopes"] = logged_scopes  # what replay needs to rebuild the caps' tallies
            conn.execute(
                "UPDATE budgets SET epsilon_spent_nano = epsilon_spent_nano + ?, delta_spent = delta_spent + ?"
                " WHERE grant_id = ?",
                (eps_units, spend_delta, grant_id),
            )
            conn.execute(
                "INSERT INTO charges (query_id, grant_id, user, epsilon_nano, delta, ts) VALUES (?, ?, ?, ?, ?, ?)",
                (query_id, grant_id, user, eps_units, spend_delta, _now()),
            )
            if zcdp:
                conn.execute("UPDATE zcdp_budgets SET rho_spent_nano = rho_spent_nano + ? WHERE grant_id = ?",
                             (units, grant_id))
                conn.execute("INSERT INTO zcdp_charges (query_id, rho_nano) VALUES (?, ?)", (query_id, units))
            conn.execute(
                "INSERT INTO answers (cache_key, grant_id, query_id, status, created_at)"
                " VALUES (?, ?, ?, 'pending', ?)",
                (cache_key, grant_id, query_id, _now()),
            )
            work.record(
                AuditEvent(user, "query.charged", grant_id,
                           {**detail, "query_id": query_id, "epsilon": from_nano(eps_units), "epsilon_nano": eps_units,
                            **extra}),
            )
            return Charge(query_id, eps_units, rho_nano=units if zcdp else 0)

    @staticmethod
    def _charge_grant(conn: sqlite3.Connection, grant_id: str, units: int, zcdp: bool) -> tuple[int, dict]:
        """Check the grant's own budget; returns the epsilon it grows by and audit detail."""
        row = conn.execute(
            "SELECT b.epsilon_total_nano, b.epsilon_spent_nano, z.rho_total_nano, z.rho_spent_nano, z.delta"
            " FROM budgets b LEFT JOIN zcdp_budgets z ON z.grant_id = b.grant_id WHERE b.grant_id = ?",
            (grant_id,),
        ).fetchone()
        if row is None:
            raise NotFound(f"no budget for grant {grant_id}", code="unknown_grant")
        if zcdp != (row["rho_total_nano"] is not None):
            want = "rho (this grant uses zcdp accounting)" if not zcdp else "epsilon (this grant uses pure accounting)"
            raise BadRequest(f"send {want}", code="wrong_accounting")
        if not zcdp:
            total, spent, name = row["epsilon_total_nano"], row["epsilon_spent_nano"], "epsilon"
        else:
            total, spent, name = row["rho_total_nano"], row["rho_spent_nano"], "rho"
        remaining = total - spent
        if units > remaining:
            raise Conflict(
                f"budget exhausted: this query needs {name} {from_nano(units)}, "
                f"grant {grant_id} has {from_nano(max(remaining, 0))} left",
                code="budget_exhausted",
                detail={"cap": "grant", name + "_remaining": from_nano(max(remaining, 0))},
            )
        if not zcdp:
            return units, {}
        delta = row["delta"]
        grown = rho_nano_to_epsilon_nano(spent + units, delta) - rho_nano_to_epsilon_nano(spent, delta)
        return grown, {"rho": from_nano(units), "rho_nano": units, "delta": delta}

    @staticmethod
    def _check_delta(conn: sqlite3.Connection, grant_id: str, delta: float) -> None:
        row = conn.execute("SELECT delta_total, delta_spent FROM budgets WHERE grant_id = ?", (grant_id,)).fetchone()
        if row["delta_spent"] + delta > row["delta_total"] * (1 + 1e-9):
            raise Conflict(
                f"delta budget exhausted: this query needs delta {delta:g}, grant {grant_id} has "
                f"{max(0.0, row['delta_total'] - row['delta_spent']):g} left",
                code="budget_exhausted",
                detail={"cap": "grant", "delta_remaining": max(0.0, row["delta_total"] - row["delta_spent"])},
            )

    def delta_state(self, grant_id: str) -> tuple[float, float]:
        """(delta total, delta spent) of a grant."""
        rows = self.db.read("SELECT delta_total, delta_spent FROM budgets WHERE grant_id = ?", (grant_id,))
        if not rows:
            raise NotFound(f"no budget for grant {grant_id}", code="unknown_grant")
        return float(rows[0]["delta_total"]), float(rows[0]["delta_spent"])

    def store_answer(self, cache_key: str, query_id: str, user: str, grant_id: str, response: dict) -> None:
        with self.db.work() as work:
            work.execute(
                "UPDATE answers SET status = 'done', response = ? WHERE cache_key = ?",
                (json.dumps(response), cache_key),
            )
            work.record(
                AuditEvent(user, "query.answered", grant_id,
                           {"query_id": query_id, "answer_sha256": response.get("answer_sha256")}),
            )

    def forget_pending(self, cache_key: str, query_id: str, user: str, grant_id: str, reason: str) -> None:
        """The charged query failed after charging: the budget stays spent (never refunded)."""
        with self.db.work() as work:
            work.execute("DELETE FROM answers WHERE cache_key = ? AND status = 'pending'", (cache_key,))
            work.record(AuditEvent(user, "query.failed", grant_id, {"query_id": query_id, "reason": reason}))

    def charges(self, grant_id: str | None = None) -> list[ChargeRecord]:
        sql = "SELECT query_id, grant_id, user, epsilon_nano, ts FROM charges"
        params: tuple = ()
        if grant_id:
            sql += " WHERE grant_id = ?"
            params = (grant_id,)
        return [
            ChargeRecord(r["query_id"], r["grant_id"], r["user"], r["epsilon_nano"], r["ts"])
            for r in self.db.read(sql + " ORDER BY ts", params)
        ]

    def released_answers(self, grant_id: str, user: str | None = None) -> list[dict]:
        """Noisy answers already released under a grant (for export provenance and differencing)."""
        sql = (
            "SELECT c.query_id, c.user, c.epsilon_nano, c.ts, a.response FROM charges c"
            " JOIN answers a ON a.query_id = c.query_id AND a.status = 'done' WHERE c.grant_id = ?"
        )
        params: tuple = (grant_id,)
        if user is not None:
            sql += " AND c.user = ?"
            params = (grant_id, user)
        return [
            {
                "query_id": r["query_id"],
                "user": r["user"],
                "epsilon": from_nano(r["epsilon_nano"]),
                "ts": r["ts"],
                "response": json.loads(r["response"]),
            }
            for r in self.db.read(sql + " ORDER BY c.ts", params)
        ]

    def reconcile(self) -> list[str]:
        """Spent budgets (and caps, and rho) against the charges tables and the audit log's charge entries."""
        problems = caps.reconcile_caps(self.db)
        for row in self.db.read(
            "SELECT z.grant_id, z.rho_spent_nano AS spent, COALESCE(SUM(c.rho_nano), 0) AS charged"
            " FROM zcdp_budgets z LEFT JOIN charges q ON q.grant_id = z.grant_id"
            " LEFT JOIN zcdp_charges c ON c.query_id = q.query_id GROUP BY z.grant_id"
        ):
            if row["spent"] != row["charged"]:
                problems.append(f"grant {row['grant_id']}: rho spent {from_nano(row['spent'])} "
                                f"but charges add up to {from_nano(row['charged'])}")
        charged: dict[str, int] = {}
        for entry in self.audit.entries():
            if entry["action"] == "query.charged":
                gid = entry["grant_id"]
                charged[gid] = charged.get(gid, 0) + to_nano(float(entry["detail"].get("epsilon", 0)))
        for row in self.db.read(
            "SELECT b.grant_id, b.epsilon_spent_nano AS spent, COALESCE(SUM(c.epsilon_nano), 0) AS charges"
            " FROM budgets b LEFT JOIN charges c ON c.grant_id = b.grant_id GROUP BY b.grant_id"
        ):
            gid, spent = row["grant_id"], row["spent"]
            if spent != row["charges"]:
                total = from_nano(row["charges"])
                problems.append(f"grant {gid}: spent {from_nano(spent)} but charges add up to {total}")
            if spent != charged.get(gid, 0):
                problems.append(
                    f"grant {gid}: spent {from_nano(spent)} but the audit log charged {from_nano(charged.get(gid, 0))}"
                )
        return problems
