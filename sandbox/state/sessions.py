"""Notebook server sessions reported by the hub (start and stop), for usage metering."""

from __future__ import annotations

import datetime as dt

from sandbox.state.chain import AuditEvent
from sandbox.state.db import StateDB, register_schema

register_schema(
    """
    CREATE TABLE IF NOT EXISTS sessions (
        id INTEGER PRIMARY KEY,
        user TEXT NOT NULL,
        grant_id TEXT NOT NULL,
        started_at TEXT NOT NULL,
        stopped_at TEXT
    )
    """
)


def _now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds")


class SessionLog:
    def __init__(self, db: StateDB) -> None:
        self.db = db

    def started(self, user: str, grant_id: str, at: str | None = None) -> None:
        when = at or _now()
        with self.db.work() as work:
            work.execute("UPDATE sessions SET stopped_at = ? WHERE user = ? AND stopped_at IS NULL", (when, user))
            work.execute("INSERT INTO sessions (user, grant_id, started_at) VALUES (?, ?, ?)", (user, grant_id, when))
            work.record(AuditEvent(user, "server.started", grant_id, {"at": when}))  # `at`: for replay

    def stopped(self, user: str, at: str | None = None) -> None:
        when = at or _now()
        with self.db.work() as work:
            row = work.execute(
                "SELECT grant_id FROM sessions WHERE user = ? AND stopped_at IS NULL", (user,)
            ).fetchone()
            work.execute("UPDATE sessions SET stopped_at = ? WHERE user = ? AND stopped_at IS NULL", (when, user))
            work.record(AuditEvent(user, "server.stopped", row["grant_id"] if row else None, {"at": when}))

    def hours(self, grant_id: str, start: dt.datetime, end: dt.datetime) -> float:
        """Notebook hours under a grant inside [start, end); a running session counts until now."""
        now = dt.datetime.now(dt.UTC)
        total = 0.0
        for r in self.db.read("SELECT started_at, stopped_at FROM sessions WHERE grant_id = ?", (grant_id,)):
            a = dt.datetime.fromisoformat(r["started_at"])
            b = dt.datetime.fromisoformat(r["stopped_at"]) if r["stopped_at"] else now
            lo, hi = max(a, start), min(b, end)
            if hi > lo:
                total += (hi - lo).total_seconds() / 3600
        return total
