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
from pathlib import Path
from typing import Any

from sandbox.state.files import atomic_write
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


# -- the high-water mark, kept in the keys directory ----------------------------------------------


def mark_message(seq: int, digest: str) -> str:
    return f"mark:{seq}:{digest}"


def read_mark(path: Path) -> dict[str, Any] | None:
    """The high-water mark in ``path`` (``seq``, ``hash``, ``key_id``, ``mac``), or None when there is none."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        return {"seq": 0, "hash": "", "key_id": "", "mac": ""}  # unreadable: fails its MAC check
    return data if isinstance(data, dict) else {"seq": 0, "hash": "", "key_id": "", "mac": ""}


def advance_mark(path: Path, key: MacKey, seq: int, digest: str) -> None:
    """Move the mark in ``path`` forward to (seq, digest) (never back): atomic write, MACed. Raises OSError."""
    current = read_mark(path)
    if current is not None and isinstance(current.get("seq"), int) and current["seq"] >= seq:
        return
    body = {"seq": seq, "hash": digest, "key_id": key.id, "mac": key.mac(mark_message(seq, digest))}
    atomic_write(path, (json.dumps(body) + "\n").encode("ascii"))


def check_mark(mark: dict[str, Any] | None, keys: dict[str, MacKey] | None, hash_at: Any,
               last_seq: int) -> list[tuple[int, str]]:
    """The log against the high-water mark: it must hold the marked entry (it may be longer)."""
    if mark is None:
        return []
    seq, digest = mark.get("seq"), mark.get("hash")
    if not isinstance(seq, int) or not isinstance(digest, str):
        return [(1, "the audit high-water mark in the keys directory is unreadable")]
    if keys is not None:
        key = keys.get(str(mark.get("key_id")))
        if key is None or not key.check(mark_message(seq, digest), mark.get("mac")):
            return [(1, "the audit high-water mark's MAC does not match")]
    if last_seq < seq:
        return [(last_seq + 1, f"the log ends at entry {last_seq}, but the high-water mark in the keys directory"
                               f" records entry {seq}: entries were cut off or the state was rolled back")]
    if hash_at(seq) != digest:
        return [(seq, f"entry {seq} differs from the high-water mark in the keys directory (rewritten)")]
    return []
