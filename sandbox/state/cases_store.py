"""Tables of tracked cases: requests to open data, feedback, complaints, data-quality reports.

Rows only; the rules (who may file what, which transitions exist) are in ``sandbox.cases``.
"""

from __future__ import annotations

import datetime as dt
import secrets
import sqlite3
from dataclasses import dataclass

from sandbox.state.db import register_schema

register_schema(
    """
    CREATE TABLE IF NOT EXISTS cases (
        id TEXT PRIMARY KEY,
        kind TEXT NOT NULL,
        dataset_id TEXT,
        grant_id TEXT,
        subject TEXT NOT NULL,
        body TEXT NOT NULL,
        contact TEXT,
        filed_by TEXT NOT NULL,
        client TEXT,
        status TEXT NOT NULL,
        owner TEXT,
        response TEXT,
        created_at TEXT NOT NULL,
        updated_at TEXT NOT NULL,
        closed_at TEXT
    );
    CREATE INDEX IF NOT EXISTS cases_by_created ON cases(created_at);
    CREATE TABLE IF NOT EXISTS case_events (
        id INTEGER PRIMARY KEY,
        case_id TEXT NOT NULL REFERENCES cases(id),
        ts TEXT NOT NULL,
        actor TEXT NOT NULL,
        action TEXT NOT NULL,
        from_status TEXT,
        to_status TEXT NOT NULL,
        note TEXT NOT NULL DEFAULT '',
        audit_seq INTEGER NOT NULL
    )
    """
)


def now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds")


def new_case_id() -> str:
    """Unguessable: a case page is public to whoever holds its id, and only to them."""
    return "c-" + secrets.token_hex(8)


def insert(conn: sqlite3.Connection, row: dict) -> None:
    cols = ", ".join(row)
    marks = ", ".join("?" for _ in row)
    conn.execute(f"INSERT INTO cases ({cols}) VALUES ({marks})", tuple(row.values()))


def get(conn: sqlite3.Connection, case_id: str) -> sqlite3.Row | None:
    return conn.execute("SELECT * FROM cases WHERE id = ?", (case_id,)).fetchone()


def update(conn: sqlite3.Connection, case_id: str, **fields: object) -> None:
    sets = ", ".join(f"{k} = ?" for k in fields)
    conn.execute(f"UPDATE cases SET {sets} WHERE id = ?", (*fields.values(), case_id))


def add_event(conn: sqlite3.Connection, case_id: str, actor: str, action: str, from_status: str | None,
              to_status: str, note: str, audit_seq: int) -> None:
    conn.execute(
        "INSERT INTO case_events (case_id, ts, actor, action, from_status, to_status, note, audit_seq)"
        " VALUES (?, ?, ?, ?, ?, ?, ?, ?)", (case_id, now(), actor, action, from_status, to_status, note, audit_seq))


def events(conn: sqlite3.Connection, case_id: str) -> list[dict]:
    return [dict(r) for r in conn.execute("SELECT * FROM case_events WHERE case_id = ? ORDER BY id", (case_id,))]


def listing(conn: sqlite3.Connection, *, kinds: tuple[str, ...] | None = None, statuses: tuple[str, ...] | None = None,
            limit: int = 500) -> list[dict]:
    sql, params = "SELECT * FROM cases WHERE 1 = 1", list[object]()
    if kinds:
        sql += f" AND kind IN ({', '.join('?' for _ in kinds)})"
        params.extend(kinds)
    if statuses:
        sql += f" AND status IN ({', '.join('?' for _ in statuses)})"
        params.extend(statuses)
    sql += " ORDER BY created_at DESC, id LIMIT ?"
    params.append(limit)
    return [dict(r) for r in conn.execute(sql, params)]


def filed_since(conn: sqlite3.Connection, since: str, client: str | None = None) -> int:
    if client is None:
        row = conn.execute("SELECT COUNT(*) AS n FROM cases WHERE created_at >= ? AND filed_by = 'public'",
                           (since,)).fetchone()
    else:
        row = conn.execute("SELECT COUNT(*) AS n FROM cases WHERE created_at >= ? AND client = ?",
                           (since, client)).fetchone()
    return int(row["n"])


def filed_since_network(conn: sqlite3.Connection, since: str, network: str) -> int:
    """Public filings since ``since`` whose client key starts with the network's key."""
    row = conn.execute("SELECT COUNT(*) AS n FROM cases WHERE created_at >= ? AND filed_by = 'public'"
                       " AND substr(client, 1, 16) = ?", (since, network)).fetchone()
    return int(row["n"])


@dataclass(frozen=True)
class CaseLifetime:
    kind: str
    status: str
    created_at: str
    closed_at: str | None


def lifetimes(conn: sqlite3.Connection) -> list[CaseLifetime]:
    """Every case's kind, status and when it was filed and closed (the register's statistics)."""
    return [CaseLifetime(r["kind"], r["status"], r["created_at"], r["closed_at"])
            for r in conn.execute("SELECT kind, status, created_at, closed_at FROM cases").fetchall()]
