"""The export tables' repository: every SQL statement of the airlock, returning dataclasses.

Rows live in SQLite (``export_requests``, ``export_files``, ``export_reviews``,
``export_events``, ``export_overrides``). Writes take the connection of the caller's unit of
work (``StateDB.work()``), which also appends their audit event; reads take any connection.
Files that a returned request replaced stay with ``removed_at`` set, and every review of every
round stays: the history is never rewritten.
"""

from __future__ import annotations

import datetime as dt
import json
import sqlite3
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sandbox.errors import NotFound
from sandbox.state.db import register_schema

register_schema(
    """
    CREATE TABLE IF NOT EXISTS export_requests (
        id TEXT PRIMARY KEY,
        grant_id TEXT NOT NULL,
        requester TEXT NOT NULL,
        title TEXT NOT NULL,
        justification TEXT NOT NULL,
        status TEXT NOT NULL,
        round INTEGER NOT NULL DEFAULT 1,
        count_columns TEXT NOT NULL DEFAULT '[]',
        created_at TEXT NOT NULL,
        updated_at TEXT NOT NULL
    );
    CREATE INDEX IF NOT EXISTS export_requests_by_status ON export_requests(status, created_at);
    CREATE INDEX IF NOT EXISTS export_requests_by_requester ON export_requests(requester, created_at);
    CREATE TABLE IF NOT EXISTS export_files (
        id INTEGER PRIMARY KEY,
        request_id TEXT NOT NULL REFERENCES export_requests(id),
        name TEXT NOT NULL,
        sha256 TEXT NOT NULL,
        size INTEGER NOT NULL,
        kind TEXT NOT NULL,
        checks TEXT NOT NULL,
        added_round INTEGER NOT NULL,
        added_at TEXT NOT NULL,
        removed_at TEXT
    );
    CREATE UNIQUE INDEX IF NOT EXISTS export_files_current
        ON export_files(request_id, name) WHERE removed_at IS NULL;
    CREATE TABLE IF NOT EXISTS export_reviews (
        id INTEGER PRIMARY KEY,
        request_id TEXT NOT NULL REFERENCES export_requests(id),
        round INTEGER NOT NULL,
        reviewer TEXT NOT NULL,
        decision TEXT NOT NULL,
        comment TEXT NOT NULL,
        ts TEXT NOT NULL,
        UNIQUE (request_id, round, reviewer)
    );
    CREATE TABLE IF NOT EXISTS export_events (
        id INTEGER PRIMARY KEY,
        request_id TEXT NOT NULL REFERENCES export_requests(id),
        ts TEXT NOT NULL,
        actor TEXT NOT NULL,
        action TEXT NOT NULL,
        from_status TEXT,
        to_status TEXT NOT NULL,
        comment TEXT NOT NULL DEFAULT '',
        audit_seq INTEGER
    );
    CREATE TABLE IF NOT EXISTS export_overrides (
        id INTEGER PRIMARY KEY,
        request_id TEXT NOT NULL REFERENCES export_requests(id),
        grant_id TEXT NOT NULL,
        round INTEGER NOT NULL,
        admin TEXT NOT NULL,
        reason TEXT NOT NULL,
        files TEXT NOT NULL,
        ts TEXT NOT NULL
    );
    CREATE INDEX IF NOT EXISTS export_overrides_by_request ON export_overrides(request_id, round)
    """
)


def now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="microseconds")


@dataclass(frozen=True)
class ExportRequest:
    id: str
    grant_id: str
    requester: str
    title: str
    justification: str
    status: str
    round: int
    count_columns: list[str]
    created_at: str
    updated_at: str


@dataclass(frozen=True)
class ExportFile:
    id: int
    request_id: str
    name: str
    sha256: str
    size: int
    kind: str
    checks: list[dict[str, Any]]
    added_round: int
    added_at: str
    removed_at: str | None


@dataclass(frozen=True)
class Review:
    id: int
    request_id: str
    round: int
    reviewer: str
    decision: str
    comment: str
    ts: str


@dataclass(frozen=True)
class ExportEvent:
    id: int
    request_id: str
    ts: str
    actor: str
    action: str
    from_status: str | None
    to_status: str
    comment: str
    audit_seq: int | None


@dataclass(frozen=True)
class Override:
    id: int
    request_id: str
    grant_id: str
    round: int
    admin: str
    reason: str
    files: dict[str, str]
    ts: str


def _request(row: sqlite3.Row) -> ExportRequest:
    return ExportRequest(row["id"], row["grant_id"], row["requester"], row["title"], row["justification"],
                         row["status"], int(row["round"]), json.loads(row["count_columns"]), row["created_at"],
                         row["updated_at"])


def _file(row: sqlite3.Row) -> ExportFile:
    return ExportFile(row["id"], row["request_id"], row["name"], row["sha256"], int(row["size"]), row["kind"],
                      json.loads(row["checks"]), int(row["added_round"]), row["added_at"], row["removed_at"])


# -- requests ---------------------------------------------------------------------------------------
def request(conn: sqlite3.Connection, request_id: str) -> ExportRequest:
    """Raises NotFound (unknown_export)."""
    row = conn.execute("SELECT * FROM export_requests WHERE id = ?", (request_id,)).fetchone()
    if row is None:
        raise NotFound(f"no export request {request_id}", code="unknown_export")
    return _request(row)


def grant_of(conn: sqlite3.Connection, request_id: str) -> str | None:
    row = conn.execute("SELECT grant_id FROM export_requests WHERE id = ?", (request_id,)).fetchone()
    return None if row is None else str(row["grant_id"])


def list_requests(conn: sqlite3.Connection, *, requester: str | None = None,
                  statuses: Sequence[str] | None = None, grant_id: str | None = None,
                  limit: int = 200) -> list[ExportRequest]:
    """Newest first."""
    sql, params = "SELECT * FROM export_requests WHERE 1 = 1", list[str | int]()
    if requester is not None:
        sql += " AND requester = ?"
        params.append(requester)
    if grant_id is not None:
        sql += " AND grant_id = ?"
        params.append(grant_id)
    if statuses:
        sql += f" AND status IN ({', '.join('?' for _ in statuses)})"
        params.extend(statuses)
    sql += " ORDER BY created_at DESC LIMIT ?"
    params.append(limit)
    return [_request(r) for r in conn.execute(sql, params).fetchall()]


def insert_request(conn: sqlite3.Connection, request_id: str, grant_id: str, requester: str, title: str,
                   justification: str, count_columns: list[str]) -> None:
    """A new request, ``submitted`` in round 1 (the caller's unit of work records the transition)."""
    ts = now()
    conn.execute(
        "INSERT INTO export_requests (id, grant_id, requester, title, justification, status, round,"
        " count_columns, created_at, updated_at) VALUES (?, ?, ?, ?, ?, 'submitted', 1, ?, ?, ?)",
        (request_id, grant_id, requester, title, justification, json.dumps(count_columns), ts, ts))


def set_status(conn: sqlite3.Connection, request_id: str, status: str, round_bump: int, ts: str) -> None:
    conn.execute("UPDATE export_requests SET status = ?, round = round + ?, updated_at = ? WHERE id = ?",
                 (status, round_bump, ts, request_id))


# -- files ------------------------------------------------------------------------------------------
def current_files(conn: sqlite3.Connection, request_id: str) -> list[ExportFile]:
    rows = conn.execute(
        "SELECT * FROM export_files WHERE request_id = ? AND removed_at IS NULL ORDER BY id", (request_id,)
    ).fetchall()
    return [_file(r) for r in rows]


def all_files(conn: sqlite3.Connection, request_id: str) -> list[ExportFile]:
    rows = conn.execute("SELECT * FROM export_files WHERE request_id = ? ORDER BY id", (request_id,))
    return [_file(r) for r in rows.fetchall()]


def insert_file(conn: sqlite3.Connection, request_id: str, name: str, digest: str, size: int,
                kind: str, checks: list[dict[str, Any]], round_: int) -> None:
    """Add a file; a current file of the same name is replaced (kept, with ``removed_at`` set)."""
    conn.execute(
        "UPDATE export_files SET removed_at = ? WHERE request_id = ? AND name = ? AND removed_at IS NULL",
        (now(), request_id, name),
    )
    conn.execute(
        "INSERT INTO export_files (request_id, name, sha256, size, kind, checks, added_round, added_at)"
        " VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
        (request_id, name, digest, size, kind, json.dumps(checks), round_, now()),
    )


def remove_file(conn: sqlite3.Connection, request_id: str, name: str) -> bool:
    cur = conn.execute(
        "UPDATE export_files SET removed_at = ? WHERE request_id = ? AND name = ? AND removed_at IS NULL",
        (now(), request_id, name),
    )
    return cur.rowcount > 0


# -- reviews, events, overrides ---------------------------------------------------------------------
def reviews(conn: sqlite3.Connection, request_id: str, round_: int | None = None) -> list[Review]:
    sql = "SELECT * FROM export_reviews WHERE request_id = ?"
    params: tuple[Any, ...] = (request_id,)
    if round_ is not None:
        sql += " AND round = ?"
        params = (request_id, round_)
    return [Review(r["id"], r["request_id"], int(r["round"]), r["reviewer"], r["decision"], r["comment"], r["ts"])
            for r in conn.execute(sql + " ORDER BY id", params).fetchall()]


def insert_review(conn: sqlite3.Connection, request_id: str, round_: int, reviewer: str, decision: str,
                  comment: str) -> None:
    conn.execute(
        "INSERT INTO export_reviews (request_id, round, reviewer, decision, comment, ts)"
        " VALUES (?, ?, ?, ?, ?, ?)", (request_id, round_, reviewer, decision, comment, now()))


def events(conn: sqlite3.Connection, request_id: str) -> list[ExportEvent]:
    rows = conn.execute("SELECT * FROM export_events WHERE request_id = ? ORDER BY id", (request_id,))
    return [ExportEvent(r["id"], r["request_id"], r["ts"], r["actor"], r["action"], r["from_status"],
                        r["to_status"], r["comment"], r["audit_seq"]) for r in rows.fetchall()]


def insert_event(conn: sqlite3.Connection, request_id: str, ts: str, actor: str, action: str,
                 from_status: str | None, to_status: str, comment: str, audit_seq: int) -> None:
    conn.execute(
        "INSERT INTO export_events (request_id, ts, actor, action, from_status, to_status, comment, audit_seq)"
        " VALUES (?, ?, ?, ?, ?, ?, ?, ?)", (request_id, ts, actor, action, from_status, to_status, comment,
                                             audit_seq))


def approving_seq(conn: sqlite3.Connection, request_id: str) -> int | None:
    """The audit sequence number of the request's latest approval (None if never approved)."""
    row = conn.execute(
        "SELECT audit_seq FROM export_events WHERE request_id = ? AND action = 'approve'"
        " ORDER BY id DESC LIMIT 1", (request_id,)).fetchone()
    return None if row is None else row["audit_seq"]


def overrides(conn: sqlite3.Connection, request_id: str, round_: int | None = None) -> list[Override]:
    sql = "SELECT * FROM export_overrides WHERE request_id = ?"
    params: tuple[Any, ...] = (request_id,)
    if round_ is not None:
        sql += " AND round = ?"
        params = (request_id, round_)
    return [Override(r["id"], r["request_id"], r["grant_id"], int(r["round"]), r["admin"], r["reason"],
                     json.loads(r["files"]), r["ts"])
            for r in conn.execute(sql + " ORDER BY id", params).fetchall()]


def insert_override(conn: sqlite3.Connection, request_id: str, grant_id: str, round_: int, admin: str,
                    reason: str, files: dict[str, str]) -> None:
    conn.execute(
        "INSERT INTO export_overrides (request_id, grant_id, round, admin, reason, files, ts)"
        " VALUES (?, ?, ?, ?, ?, ?, ?)", (request_id, grant_id, round_, admin, reason, json.dumps(files), now()))


def override_counts(conn: sqlite3.Connection) -> dict[str, int]:
    """How many check-failure overrides each grant has had (for the public register)."""
    rows = conn.execute("SELECT grant_id, COUNT(*) AS n FROM export_overrides GROUP BY grant_id").fetchall()
    return {r["grant_id"]: int(r["n"]) for r in rows}


def withdrawn_by_others(conn: sqlite3.Connection) -> set[str]:
    """Requests withdrawn by someone other than their requester (the authority, e.g. on revocation)."""
    rows = conn.execute(
        "SELECT e.request_id FROM export_events e JOIN export_requests r ON r.id = e.request_id"
        " WHERE e.action = 'withdraw' AND e.actor != r.requester").fetchall()
    return {str(r["request_id"]) for r in rows}
