"""Tables of the early-warning monitor: raised alerts and how far the audit stream has been read."""

from __future__ import annotations

import datetime as dt
import json
import sqlite3

from sandbox.state.db import register_schema

register_schema(
    """
    CREATE TABLE IF NOT EXISTS alerts (
        id INTEGER PRIMARY KEY,
        ts TEXT NOT NULL,
        rule TEXT NOT NULL,
        subject TEXT NOT NULL,
        grant_id TEXT,
        actor TEXT,
        message TEXT NOT NULL,
        detail TEXT NOT NULL,
        suspended INTEGER NOT NULL DEFAULT 0,
        audit_seq INTEGER NOT NULL,
        acknowledged_at TEXT,
        acknowledged_by TEXT
    );
    CREATE INDEX IF NOT EXISTS alerts_by_rule ON alerts(rule, subject, ts);
    CREATE TABLE IF NOT EXISTS monitor_cursor (
        id INTEGER PRIMARY KEY CHECK (id = 1),
        last_seq INTEGER NOT NULL
    )
    """
)


def now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="microseconds")


def cursor(conn: sqlite3.Connection) -> int:
    row = conn.execute("SELECT last_seq FROM monitor_cursor WHERE id = 1").fetchone()
    return int(row["last_seq"]) if row else 0


def set_cursor(conn: sqlite3.Connection, seq: int) -> None:
    conn.execute("INSERT INTO monitor_cursor (id, last_seq) VALUES (1, ?)"
                 " ON CONFLICT(id) DO UPDATE SET last_seq = excluded.last_seq", (seq,))


def raised_since(conn: sqlite3.Connection, rule: str, subject: str, since: str) -> bool:
    row = conn.execute("SELECT 1 FROM alerts WHERE rule = ? AND subject = ? AND ts >= ? LIMIT 1",
                       (rule, subject, since)).fetchone()
    return row is not None


def insert(conn: sqlite3.Connection, *, rule: str, subject: str, grant_id: str | None, actor: str | None,
           message: str, detail: dict, audit_seq: int) -> int:
    cur = conn.execute(
        "INSERT INTO alerts (ts, rule, subject, grant_id, actor, message, detail, audit_seq)"
        " VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
        (now(), rule, subject, grant_id, actor, message, json.dumps(detail, sort_keys=True), audit_seq))
    return int(cur.lastrowid or 0)


def mark_suspended(conn: sqlite3.Connection, alert_id: int) -> None:
    conn.execute("UPDATE alerts SET suspended = 1 WHERE id = ?", (alert_id,))


def get(conn: sqlite3.Connection, alert_id: int) -> dict | None:
    row = conn.execute("SELECT * FROM alerts WHERE id = ?", (alert_id,)).fetchone()
    return _item(row) if row else None


def listing(conn: sqlite3.Connection, *, unacknowledged: bool = False, limit: int = 500) -> list[dict]:
    sql = "SELECT * FROM alerts" + (" WHERE acknowledged_at IS NULL" if unacknowledged else "")
    return [_item(r) for r in conn.execute(sql + " ORDER BY id DESC LIMIT ?", (limit,))]


def acknowledge(conn: sqlite3.Connection, alert_id: int, user: str) -> None:
    conn.execute("UPDATE alerts SET acknowledged_at = ?, acknowledged_by = ? WHERE id = ?", (now(), user, alert_id))


def _item(row: sqlite3.Row) -> dict:
    item = dict(row)
    item["detail"] = json.loads(item["detail"])
    item["suspended"] = bool(item["suspended"])
    return item
