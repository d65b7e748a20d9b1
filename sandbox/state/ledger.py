"""The privacy-budget ledger: charged atomically before any data is touched, never refunded.

Epsilon is kept in integer nano-units so that the sums an operator sees add up exactly.
An identical query (same grant, same normalized SQL, same epsilon) replays the cached
noisy answer and costs nothing.
"""

from __future__ import annotations

import datetime as dt
import json
import sqlite3
import time
from dataclasses import dataclass

from sandbox.errors import BadRequest, Conflict, NotFound
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
    CREATE INDEX IF NOT EXISTS charges_by_grant ON charges(grant_id, ts)
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

    @property
    def epsilon_remaining(self) -> float:
        return from_nano(to_nano(self.epsilon_total) - to_nano(self.epsilon_spent))

    def to_dict(self) -> dict:
        return {
            "epsilon_total": self.epsilon_total,
            "epsilon_spent": self.epsilon_spent,
            "epsilon_remaining": self.epsilon_remaining,
        }


@dataclass(frozen=True)
class Charge:
    """The outcome of :meth:`Ledger.charge`: either a fresh charge or a cached answer."""

    query_id: str
    epsilon_nano: int
    cached_response: dict | None = None


def _now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="microseconds")


PENDING_STALE_AFTER = dt.timedelta(minutes=10)


def _stale(created_at: str) -> bool:
    return dt.datetime.now(dt.UTC) - dt.datetime.fromisoformat(created_at) > PENDING_STALE_AFTER


class Ledger:
    def __init__(self, db: StateDB, audit: AuditLog, wait_for_twin_s: float = 30.0) -> None:
        self.db = db
        self.audit = audit
        self.wait_for_twin_s = wait_for_twin_s

    @staticmethod
    def ensure_budget(conn: sqlite3.Connection, grant_id: str, epsilon: float, delta: float) -> None:
        """Create the grant's budget, or lower it; a budget is never raised or refreshed."""
        total = to_nano(epsilon)
        row = conn.execute(
            "SELECT epsilon_total_nano, epsilon_spent_nano FROM budgets WHERE grant_id = ?",
            (grant_id,),
        ).fetchone()
        if row is None:
            conn.execute(
                "INSERT INTO budgets (grant_id, epsilon_total_nano, delta_total) VALUES (?, ?, ?)",
                (grant_id, total, delta),
            )
            return
        if total > row["epsilon_total_nano"]:
            raise Conflict(
                f"grant {grant_id}: the budget is fixed once applied and never raised "
                f"(in force: {from_nano(row['epsilon_total_nano'])}); issue a new grant instead",
                code="budget_fixed",
            )
        if total < row["epsilon_spent_nano"]:
            raise Conflict(
                f"grant {grant_id}: cannot lower the budget below what is spent "
                f"({from_nano(row['epsilon_spent_nano'])})",
                code="budget_fixed",
            )
        conn.execute(
            "UPDATE budgets SET epsilon_total_nano = ? WHERE grant_id = ?", (total, grant_id)
        )

    def state(self, grant_id: str) -> BudgetState:
        rows = self.db.read(
            "SELECT epsilon_total_nano, epsilon_spent_nano FROM budgets WHERE grant_id = ?",
            (grant_id,),
        )
        if not rows:
            raise NotFound(f"no budget for grant {grant_id}", code="unknown_grant")
        return BudgetState(
            grant_id, from_nano(rows[0]["epsilon_total_nano"]), from_nano(rows[0]["epsilon_spent_nano"])
        )

    def charge(
        self,
        *,
        grant_id: str,
        user: str,
        query_id: str,
        epsilon: float,
        max_epsilon_per_query: float,
        cache_key: str,
        audit_detail: dict,
        delta: float = 0.0,
    ) -> Charge:
        """Check and charge in one IMMEDIATE transaction, with its audit entry; or replay.

        Raises Conflict(budget_exhausted) and changes nothing when the query would overspend.
        """
        units = to_nano(epsilon)
        if units <= 0:
            raise BadRequest("epsilon must be positive", code="bad_epsilon")
        if units > to_nano(max_epsilon_per_query):
            raise BadRequest(
                f"epsilon {epsilon} is over this grant's per-query cap of {max_epsilon_per_query}",
                code="epsilon_over_cap",
            )
        deadline = time.monotonic() + self.wait_for_twin_s
        while True:
            outcome = self._try_charge(grant_id, user, query_id, units, cache_key, audit_detail, delta)
            if outcome is not None:
                if outcome.cached_response is not None:
                    self.audit.write_head()
                # a fresh charge moves the head when its answer is stored, one write later
                return outcome
            if time.monotonic() > deadline:
                raise Conflict("an identical query is still running; try again", code="query_in_flight")
            time.sleep(0.02)

    def _try_charge(
        self, grant_id: str, user: str, query_id: str, units: int, cache_key: str, detail: dict, delta: float = 0.0
    ) -> Charge | None:
        with self.db.write() as conn:
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
                self.audit.append(
                    conn,
                    AuditEvent(
                        user, "query.replayed", grant_id,
                        {**detail, "query_id": query_id, "replay_of": cached["query_id"],
                         "epsilon": 0.0, "answer_sha256": response.get("answer_sha256")},
                    ),
                )
                return Charge(cached["query_id"], 0, cached_response=response)
            row = conn.execute(
                "SELECT epsilon_total_nano, epsilon_spent_nano FROM budgets WHERE grant_id = ?",
                (grant_id,),
            ).fetchone()
            if row is None:
                raise NotFound(f"no budget for grant {grant_id}", code="unknown_grant")
            remaining = row["epsilon_total_nano"] - row["epsilon_spent_nano"]
            if units > remaining:
                raise Conflict(
                    f"budget exhausted: this query needs epsilon {from_nano(units)}, "
                    f"grant {grant_id} has {from_nano(remaining)} left",
                    code="budget_exhausted",
                )
            if delta > 0:
                self._check_delta(conn, grant_id, delta)
            conn.execute(
                "UPDATE budgets SET epsilon_spent_nano = epsilon_spent_nano + ?, delta_spent = delta_spent + ?"
                " WHERE grant_id = ?",
                (units, delta, grant_id),
            )
            conn.execute(
                "INSERT INTO charges (query_id, grant_id, user, epsilon_nano, delta, ts) VALUES (?, ?, ?, ?, ?, ?)",
                (query_id, grant_id, user, units, delta, _now()),
            )
            conn.execute(
                "INSERT INTO answers (cache_key, grant_id, query_id, status, created_at)"
                " VALUES (?, ?, ?, 'pending', ?)",
                (cache_key, grant_id, query_id, _now()),
            )
            self.audit.append(
                conn,
                AuditEvent(user, "query.charged", grant_id,
                           {**detail, "query_id": query_id, "epsilon": from_nano(units),
                            **({"delta": delta} if delta > 0 else {})}),
            )
            return Charge(query_id, units)

    @staticmethod
    def _check_delta(conn: sqlite3.Connection, grant_id: str, delta: float) -> None:
        row = conn.execute("SELECT delta_total, delta_spent FROM budgets WHERE grant_id = ?", (grant_id,)).fetchone()
        if row["delta_spent"] + delta > row["delta_total"] * (1 + 1e-9):
            raise Conflict(
                f"delta budget exhausted: this query needs delta {delta:g}, grant {grant_id} has "
                f"{max(0.0, row['delta_total'] - row['delta_spent']):g} left",
                code="budget_exhausted",
            )

    def delta_state(self, grant_id: str) -> tuple[float, float]:
        """(delta total, delta spent) of a grant."""
        rows = self.db.read("SELECT delta_total, delta_spent FROM budgets WHERE grant_id = ?", (grant_id,))
        if not rows:
            raise NotFound(f"no budget for grant {grant_id}", code="unknown_grant")
        return float(rows[0]["delta_total"]), float(rows[0]["delta_spent"])

    def store_answer(self, cache_key: str, query_id: str, user: str, grant_id: str, response: dict) -> None:
        with self.db.write() as conn:
            conn.execute(
                "UPDATE answers SET status = 'done', response = ? WHERE cache_key = ?",
                (json.dumps(response), cache_key),
            )
            self.audit.append(
                conn,
                AuditEvent(user, "query.answered", grant_id,
                           {"query_id": query_id, "answer_sha256": response.get("answer_sha256")}),
            )
        self.audit.write_head()

    def forget_pending(self, cache_key: str, query_id: str, user: str, grant_id: str, reason: str) -> None:
        """The charged query failed after charging: the budget stays spent (never refunded)."""
        with self.db.write() as conn:
            conn.execute("DELETE FROM answers WHERE cache_key = ? AND status = 'pending'", (cache_key,))
            self.audit.append(
                conn, AuditEvent(user, "query.failed", grant_id, {"query_id": query_id, "reason": reason})
            )
        self.audit.write_head()

    def charges(self, grant_id: str | None = None) -> list[dict]:
        sql = "SELECT query_id, grant_id, user, epsilon_nano, ts FROM charges"
        params: tuple = ()
        if grant_id:
            sql += " WHERE grant_id = ?"
            params = (grant_id,)
        return [
            {**dict(r), "epsilon": from_nano(r["epsilon_nano"])}
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
        """Spent budgets against the charges table and the audit log's charge entries."""
        problems = []
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
