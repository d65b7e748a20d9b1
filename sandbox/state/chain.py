"""The audit chain's storage format: entries hash-chained and MACed, and a MACed head row.

Each entry's ``hash`` is SHA-256 over the previous entry's hash and the entry's content; its
``mac`` is HMAC-SHA256 of that hash under the MAC key named by ``key_id`` (kept outside the
state directory). The ``audit_head`` row records the newest entry, MACed as well, and moves in
the same transaction as the entry. Only :meth:`StateDB.work` calls the writers here.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import sqlite3
from dataclasses import dataclass
from typing import Any

from sandbox.state.keys import MacKey

SCHEMA = """
CREATE TABLE IF NOT EXISTS audit (
    seq INTEGER PRIMARY KEY,
    ts TEXT NOT NULL,
    actor TEXT NOT NULL,
    action TEXT NOT NULL,
    grant_id TEXT,
    detail TEXT NOT NULL,
    prev_hash TEXT NOT NULL,
    hash TEXT NOT NULL,
    key_id TEXT,
    mac TEXT
);
CREATE INDEX IF NOT EXISTS audit_by_action ON audit(action);
CREATE INDEX IF NOT EXISTS audit_by_ts ON audit(ts);
CREATE TABLE IF NOT EXISTS audit_head (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    seq INTEGER NOT NULL,
    hash TEXT NOT NULL,
    key_id TEXT NOT NULL,
    mac TEXT NOT NULL
)
"""
CHAIN_TABLES = frozenset({"audit", "audit_head"})
GENESIS = "0" * 64


@dataclass(frozen=True)
class AuditEvent:
    actor: str
    action: str  # e.g. query.charged, query.refused, export.submitted, grant.revoked, token.created
    grant_id: str | None = None
    detail: dict[str, Any] | None = None


def canonical(obj: object) -> str:
    # ASCII escapes: any text (even a lone surrogate from a hostile client) can be stored and hashed
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True, default=str)


def entry_hash(prev_hash: str, seq: int, ts: str, actor: str, action: str, grant_id: str | None,
               detail: str) -> str:
    body = canonical([seq, ts, actor, action, grant_id, detail])
    return hashlib.sha256((prev_hash + body).encode("utf-8")).hexdigest()


def head_message(seq: int, digest: str) -> str:
    return f"head:{seq}:{digest}"


def migrate(conn: sqlite3.Connection) -> None:
    """Databases from before the keyed chain get the two columns (their entries stay un-MACed)."""
    columns = {r[1] for r in conn.execute("PRAGMA table_info(audit)").fetchall()}
    for name in ("key_id", "mac"):
        if name not in columns:
            conn.execute(f"ALTER TABLE audit ADD COLUMN {name} TEXT")


def last(conn: sqlite3.Connection) -> tuple[int, str]:
    row = conn.execute("SELECT seq, hash FROM audit ORDER BY seq DESC LIMIT 1").fetchone()
    return (row[0], row[1]) if row else (0, GENESIS)


def append(conn: sqlite3.Connection, key: MacKey, event: AuditEvent) -> tuple[int, str]:
    """Insert the next entry (inside the unit of work's transaction); returns (seq, hash)."""
    prev_seq, prev = last(conn)
    seq = prev_seq + 1
    ts = dt.datetime.now(dt.UTC).isoformat(timespec="microseconds")
    detail = canonical(event.detail or {})
    digest = entry_hash(prev, seq, ts, event.actor, event.action, event.grant_id, detail)
    conn.execute(
        "INSERT INTO audit (seq, ts, actor, action, grant_id, detail, prev_hash, hash, key_id, mac)"
        " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (seq, ts, event.actor, event.action, event.grant_id, detail, prev, digest, key.id, key.mac(digest)),
    )
    return seq, digest


def set_head(conn: sqlite3.Connection, key: MacKey, seq: int, digest: str) -> None:
    conn.execute(
        "INSERT INTO audit_head (id, seq, hash, key_id, mac) VALUES (1, ?, ?, ?, ?)"
        " ON CONFLICT(id) DO UPDATE SET seq = excluded.seq, hash = excluded.hash,"
        " key_id = excluded.key_id, mac = excluded.mac",
        (seq, digest, key.id, key.mac(head_message(seq, digest))),
    )
