"""A tamper-evident audit log: every entry holds the hash of the one before it.

``append`` must run inside a :meth:`StateDB.write` transaction, so that appends are
serialized and an audit entry commits together with the state change it records.
After each commit the head (sequence number and hash) is also written to ``audit.head``
beside the database, so that cutting entries off the end is detected as well.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import sqlite3
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from sandbox.state.db import StateDB, register_schema

register_schema(
    """
    CREATE TABLE IF NOT EXISTS audit (
        seq INTEGER PRIMARY KEY,
        ts TEXT NOT NULL,
        actor TEXT NOT NULL,
        action TEXT NOT NULL,
        grant_id TEXT,
        detail TEXT NOT NULL,
        prev_hash TEXT NOT NULL,
        hash TEXT NOT NULL
    );
    CREATE INDEX IF NOT EXISTS audit_by_action ON audit(action);
    CREATE INDEX IF NOT EXISTS audit_by_ts ON audit(ts)
    """
)

GENESIS = "0" * 64
_HEAD_LOCK = threading.Lock()
HEAD_FILE = "audit.head"


@dataclass(frozen=True)
class AuditEvent:
    actor: str
    action: str  # e.g. query.accepted, query.refused, export.submitted, grant.revoked
    grant_id: str | None = None
    detail: dict | None = None


def canonical(obj: object) -> str:
    # ASCII escapes: any text (even a lone surrogate from a hostile client) can be stored and hashed
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True, default=str)


def entry_hash(prev_hash: str, seq: int, ts: str, actor: str, action: str, grant_id, detail: str) -> str:  # noqa: ANN001
    body = canonical([seq, ts, actor, action, grant_id, detail])
    return hashlib.sha256((prev_hash + body).encode("utf-8")).hexdigest()


@dataclass(frozen=True)
class VerifyResult:
    ok: bool
    entries: int
    head: str
    problems: tuple[str, ...]


class AuditLog:
    def __init__(self, db: StateDB) -> None:
        self.db = db
        self.head_path: Path = db.dir / HEAD_FILE
        self._last_written = 0

    def append(self, conn: sqlite3.Connection, event: AuditEvent) -> int:
        """Append inside the caller's write transaction; returns the entry's sequence number."""
        row = conn.execute("SELECT seq, hash FROM audit ORDER BY seq DESC LIMIT 1").fetchone()
        seq, prev = (row["seq"] + 1, row["hash"]) if row else (1, GENESIS)
        ts = dt.datetime.now(dt.UTC).isoformat(timespec="microseconds")
        detail = canonical(event.detail or {})
        digest = entry_hash(prev, seq, ts, event.actor, event.action, event.grant_id, detail)
        conn.execute(
            "INSERT INTO audit (seq, ts, actor, action, grant_id, detail, prev_hash, hash)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (seq, ts, event.actor, event.action, event.grant_id, detail, prev, digest),
        )
        return seq

    def record(self, event: AuditEvent) -> int:
        """Append in a transaction of its own (for events with no other state change)."""
        with self.db.write() as conn:
            seq = self.append(conn, event)
        self.write_head()
        return seq

    def write_head(self) -> None:
        """Record the newest committed entry in ``audit.head``; it only ever moves forward."""
        with _HEAD_LOCK:
            row = self.db.conn.execute("SELECT seq, hash FROM audit ORDER BY seq DESC LIMIT 1").fetchone()
            if row is None or row["seq"] <= max(self._last_written, self._recorded_seq()):
                return
            self._last_written = row["seq"]
            tmp = self.head_path.with_name(f"{HEAD_FILE}.{os.getpid()}.{threading.get_ident()}.tmp")
            tmp.write_text(f"{row['seq']} {row['hash']}\n", encoding="utf-8")
            tmp.replace(self.head_path)

    def _recorded_seq(self) -> int:
        try:
            return int(self.head_path.read_text(encoding="utf-8").split()[0])
        except (OSError, ValueError, IndexError):
            return 0

    def entries(self, since: str | None = None) -> Iterator[dict]:
        sql = "SELECT * FROM audit"
        params: tuple = ()
        if since:
            sql += " WHERE ts >= ?"
            params = (since,)
        for row in self.db.conn.execute(sql + " ORDER BY seq", params):
            item = dict(row)
            item["detail"] = json.loads(item["detail"])
            yield item

    def verify(self) -> VerifyResult:
        problems: list[str] = []
        prev = GENESIS
        expected_seq = 1
        count = 0
        for row in self.db.conn.execute("SELECT * FROM audit ORDER BY seq"):
            count += 1
            seq = row["seq"]
            if seq != expected_seq:
                problems.append(f"entry {expected_seq}: missing (next entry is {seq})")
            if row["prev_hash"] != prev:
                problems.append(f"entry {seq}: does not follow the entry before it (deleted or reordered)")
            digest = entry_hash(
                row["prev_hash"], seq, row["ts"], row["actor"], row["action"], row["grant_id"], row["detail"]
            )
            if digest != row["hash"]:
                problems.append(f"entry {seq}: content does not match its hash (edited)")
            prev = row["hash"]
            expected_seq = seq + 1
        problems.extend(self._check_head(count, prev))
        return VerifyResult(ok=not problems, entries=count, head=prev, problems=tuple(problems))

    def _check_head(self, count: int, head: str) -> list[str]:
        if not self.head_path.exists():
            return [f"{HEAD_FILE} is missing: the end of the log cannot be checked"] if count else []
        try:
            seq_text, digest = self.head_path.read_text(encoding="utf-8").split()
            seq = int(seq_text)
        except ValueError:
            return [f"{HEAD_FILE}: unreadable"]
        row = self.db.conn.execute("SELECT hash FROM audit WHERE seq = ?", (seq,)).fetchone()
        if row is None:
            return [f"entries after {count} are missing: {HEAD_FILE} records entry {seq}"]
        if row["hash"] != digest:
            return [f"entry {seq}: differs from the head recorded in {HEAD_FILE}"]
        return []
