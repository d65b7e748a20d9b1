"""Export tables and the blob store.

Rows live in SQLite (``export_requests``, ``export_files``, ``export_reviews``,
``export_events``, ``export_overrides``); the canonical bytes (never the uploaded ones) live
beside the database under
``<state>/exports/<request>/<sha256>``, written atomically and never overwritten. Files that a
returned request replaced stay in ``export_files`` with ``removed_at`` set, and every review of
every round stays in ``export_reviews``: the history is never rewritten.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import json
import re
import secrets
import sqlite3
from pathlib import Path
from typing import Any, cast

from sandbox.errors import NotFound, SandboxError
from sandbox.state.db import StateDB, register_schema
from sandbox.state.files import atomic_write

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

REQUEST_ID = re.compile(r"^exp-[0-9a-f]{16}$")
SHA256 = re.compile(r"^[0-9a-f]{64}$")


def now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="microseconds")


def new_request_id() -> str:
    return "exp-" + secrets.token_hex(8)


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class BlobStore:
    """Content-addressed bytes per request; writes are atomic (temp file, fsync, rename)."""

    def __init__(self, db: StateDB) -> None:
        self.root = db.dir / "exports"

    def path(self, request_id: str, digest: str) -> Path:
        if not REQUEST_ID.match(request_id) or not SHA256.match(digest):
            raise NotFound("no such export file", code="unknown_file")
        return self.root / request_id / digest

    def put(self, request_id: str, data: bytes) -> str:
        digest = sha256(data)
        target = self.path(request_id, digest)
        if target.exists():
            return digest
        try:
            atomic_write(target, data, 0o600, exclusive=True)
        except OSError as exc:
            raise SandboxError(f"cannot store the export file: {exc.strerror}", code="storage_error") from None
        return digest

    def put_new(self, request_id: str, data: bytes, written: list[tuple[str, str]]) -> str:
        """:meth:`put`, appending (request, digest) to ``written`` when this call created the file."""
        digest = sha256(data)
        existed = self.path(request_id, digest).exists()
        self.put(request_id, data)
        if not existed:
            written.append((request_id, digest))
        return digest

    def delete(self, written: list[tuple[str, str]]) -> None:
        """Remove files :meth:`put_new` created (their transaction failed), and emptied request folders."""
        for request_id, digest in written:
            target = self.path(request_id, digest)
            target.unlink(missing_ok=True)
            with contextlib.suppress(OSError):  # not empty: other files of the request
                target.parent.rmdir()

    def get(self, request_id: str, digest: str) -> bytes | None:
        try:
            return self.path(request_id, digest).read_bytes()
        except OSError:
            return None


def request_row(conn: sqlite3.Connection, request_id: str) -> sqlite3.Row:
    row = conn.execute("SELECT * FROM export_requests WHERE id = ?", (request_id,)).fetchone()
    if row is None:
        raise NotFound(f"no export request {request_id}", code="unknown_export")
    return cast(sqlite3.Row, row)


def current_files(conn: sqlite3.Connection, request_id: str) -> list[dict[str, Any]]:
    rows = conn.execute(
        "SELECT * FROM export_files WHERE request_id = ? AND removed_at IS NULL ORDER BY id", (request_id,)
    ).fetchall()
    return [_file(r) for r in rows]


def all_files(conn: sqlite3.Connection, request_id: str) -> list[dict[str, Any]]:
    rows = conn.execute("SELECT * FROM export_files WHERE request_id = ? ORDER BY id", (request_id,))
    return [_file(r) for r in rows.fetchall()]


def _file(row: sqlite3.Row) -> dict[str, Any]:
    item = dict(row)
    item["checks"] = json.loads(item["checks"])
    return item


def insert_file(conn: sqlite3.Connection, request_id: str, name: str, digest: str, size: int,
                kind: str, checks: list[dict[str, Any]], round_: int) -> None:
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


def reviews(conn: sqlite3.Connection, request_id: str, round_: int | None = None) -> list[dict[str, Any]]:
    sql = "SELECT * FROM export_reviews WHERE request_id = ?"
    params: tuple[Any, ...] = (request_id,)
    if round_ is not None:
        sql += " AND round = ?"
        params = (request_id, round_)
    return [dict(r) for r in conn.execute(sql + " ORDER BY id", params).fetchall()]


def events(conn: sqlite3.Connection, request_id: str) -> list[dict[str, Any]]:
    rows = conn.execute("SELECT * FROM export_events WHERE request_id = ? ORDER BY id", (request_id,))
    return [dict(r) for r in rows.fetchall()]


def list_requests(conn: sqlite3.Connection, *, requester: str | None = None,
                  statuses: tuple[str, ...] | None = None, grant_id: str | None = None,
                  limit: int = 200) -> list[dict[str, Any]]:
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
    return [dict(r) for r in conn.execute(sql, params).fetchall()]


def overrides(conn: sqlite3.Connection, request_id: str, round_: int | None = None) -> list[dict[str, Any]]:
    sql = "SELECT * FROM export_overrides WHERE request_id = ?"
    params: tuple[Any, ...] = (request_id,)
    if round_ is not None:
        sql += " AND round = ?"
        params = (request_id, round_)
    out = []
    for r in conn.execute(sql + " ORDER BY id", params).fetchall():
        item = dict(r)
        item["files"] = json.loads(item["files"])
        out.append(item)
    return out


def insert_override(conn: sqlite3.Connection, request_id: str, grant_id: str, round_: int, admin: str,
                    reason: str, files: dict[str, str]) -> None:
    conn.execute(
        "INSERT INTO export_overrides (request_id, grant_id, round, admin, reason, files, ts)"
        " VALUES (?, ?, ?, ?, ?, ?, ?)", (request_id, grant_id, round_, admin, reason, json.dumps(files), now()))


def override_counts(conn: sqlite3.Connection) -> dict[str, int]:
    """How many check-failure overrides each grant has had (for the public register)."""
    rows = conn.execute("SELECT grant_id, COUNT(*) AS n FROM export_overrides GROUP BY grant_id").fetchall()
    return {r["grant_id"]: int(r["n"]) for r in rows}
