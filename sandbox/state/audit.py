"""A tamper-evident audit log: hash-chained, every entry MACed under a key kept outside the state.

Entries are written only by :meth:`StateDB.work` (see :mod:`sandbox.state.chain`), together
with the state change they record. :meth:`AuditLog.verify` checks every link, every MAC (with
the keyring: retired keys keep old entries verifiable) and the MACed head row, and names the
first sequence number that disagrees.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sandbox.errors import SandboxError
from sandbox.state.chain import GENESIS, AuditEvent, canonical, check_mark, entry_hash, head_message, read_mark
from sandbox.state.db import StateDB
from sandbox.state.keys import MacKey

__all__ = ["AuditEvent", "AuditLog", "VerifyResult", "canonical", "entry_hash", "GENESIS"]


@dataclass(frozen=True)
class VerifyResult:
    ok: bool
    entries: int
    head: str
    problems: tuple[str, ...]
    first_bad: int | None = None  # the first sequence number that disagrees
    macs_checked: bool = True


@dataclass(frozen=True)
class Entry:
    seq: int
    ts: str
    actor: str
    action: str
    grant_id: str | None
    detail: dict[str, Any]
    prev_hash: str
    hash: str
    key_id: str | None
    mac: str | None

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def entry_of(row: sqlite3.Row) -> Entry:
    return Entry(row["seq"], row["ts"], row["actor"], row["action"], row["grant_id"], json.loads(row["detail"]),
                 row["prev_hash"], row["hash"], row["key_id"], row["mac"])


class AuditLog:
    def __init__(self, db: StateDB) -> None:
        self.db = db

    # -- writing (always inside a unit of work) ----------------------------------------------
    def append(self, conn: sqlite3.Connection, event: AuditEvent) -> int:
        """Append inside the caller's unit of work (``with db.work()``); returns the sequence number."""
        work = self.db.current_work()
        if work is None or work.conn is not conn:
            raise SandboxError("audit events are appended only inside StateDB.work()", code="no_unit_of_work")
        return work.record(event)

    def record(self, event: AuditEvent) -> int:
        """An event with no other state change (a refusal, an integrity failure), on its own."""
        return self.db.record(event)

    def write_head(self) -> None:
        """Nothing to do: the head advances inside the unit of work, in the same transaction as the
        entry. Kept so that code written when the head was a file written after commit still runs."""

    # -- reading -----------------------------------------------------------------------------
    def entries(self, since: str | None = None) -> Iterator[dict[str, Any]]:
        for e in self.iter_entries(since=since):
            yield e.to_dict()

    def iter_entries(self, *, since: str | None = None, actions: Iterable[str] | None = None,
                     grant_id: str | None = None, action_prefix: str | None = None) -> Iterator[Entry]:
        clause, params = _where(since=since, actions=actions, grant_id=grant_id, action_prefix=action_prefix)
        for row in self.db.conn.execute(f"SELECT * FROM audit{clause} ORDER BY seq", params):
            yield entry_of(row)

    def search(self, *, action: str | None = None, action_prefix: str | None = None, grant_id: str | None = None,
               actor: str | None = None, since: str | None = None, until: str | None = None, limit: int = 100,
               offset: int = 0) -> tuple[int, list[Entry]]:
        """Entries matching every filter given, newest first, one page of them, and how many match in all."""
        clause, params = _where(since=since, until=until, actions=[action] if action else None, grant_id=grant_id,
                                actor=actor, action_prefix=action_prefix)
        total = int(self.db.read(f"SELECT COUNT(*) AS n FROM audit{clause}", params)[0]["n"])
        rows = self.db.read(f"SELECT * FROM audit{clause} ORDER BY seq DESC LIMIT ? OFFSET ?",
                            [*params, limit, offset])
        return total, [entry_of(r) for r in rows]

    def entry(self, seq: int) -> Entry | None:
        rows = self.db.read("SELECT * FROM audit WHERE seq = ?", (seq,))
        return entry_of(rows[0]) if rows else None

    def head(self) -> tuple[int, str]:
        row = self.db.conn.execute("SELECT seq, hash FROM audit ORDER BY seq DESC LIMIT 1").fetchone()
        return (row["seq"], row["hash"]) if row else (0, GENESIS)

    def check_mark(self) -> None:
        """Refuse a log behind the high-water mark kept in the keys directory (cut off or rolled back)."""
        keys = self.db.keyring.all() if self.db.keyring.available() else None
        problems = check_mark(read_mark(self.db.keyring.mark_file), keys, self.hash_at, self.head()[0])
        if problems:
            raise SandboxError(f"refusing to start: {problems[0][1]}")

    def hash_at(self, seq: int) -> str | None:
        row = self.db.conn.execute("SELECT hash FROM audit WHERE seq = ?", (seq,)).fetchone()
        return row["hash"] if row else None

    # -- verifying ---------------------------------------------------------------------------
    def verify(self) -> VerifyResult:
        keys: dict[str, MacKey] | None = self.db.keyring.all() if self.db.keyring.available() else None
        rows = (dict(r) for r in self.db.conn.execute("SELECT * FROM audit ORDER BY seq"))
        problems, count, last_seq, prev = check_chain(rows, keys)
        problems.extend(self._check_head(keys, count, last_seq, prev))
        problems.extend(check_mark(read_mark(self.db.keyring.mark_file), keys, self.hash_at, last_seq))
        first = min((s for s, _ in problems), default=None)
        return VerifyResult(ok=not problems, entries=count, head=prev, problems=tuple(p for _, p in problems),
                            first_bad=first, macs_checked=keys is not None)

    def _check_head(self, keys: dict[str, MacKey] | None, count: int, last_seq: int,
                    last_hash: str) -> list[tuple[int, str]]:
        row = self.db.conn.execute("SELECT seq, hash, key_id, mac FROM audit_head WHERE id = 1").fetchone()
        if row is None:
            return [(1, "the audit head is missing: the end of the log cannot be checked")] if count else []
        seq, digest = row["seq"], row["hash"]
        problems: list[tuple[int, str]] = []
        if keys is not None:
            key = keys.get(row["key_id"])
            if key is None or not key.check(head_message(seq, digest), row["mac"]):
                problems.append((min(seq, last_seq + 1), "the audit head's MAC does not match (rewritten)"))
        if seq > last_seq:
            problems.append((last_seq + 1, f"entries after {last_seq} are missing: the head records entry {seq}"))
        elif seq < last_seq:
            problems.append((seq + 1, f"entries {seq + 1}..{last_seq} come after the recorded head"))
        elif digest != last_hash:
            problems.append((seq, f"entry {seq}: differs from the recorded head"))
        return problems


def _check_mac(keys: dict[str, MacKey], seq: int, key_id: str | None, digest: str,
               mac: str | None) -> list[tuple[int, str]]:
    if not key_id or not mac:
        return [(seq, f"entry {seq}: carries no MAC (not written by the gateway's unit of work)")]
    key = keys.get(key_id)
    if key is None:
        return [(seq, f"entry {seq}: MAC key {key_id} is not in the keyring")]
    if not key.check(digest, mac):
        return [(seq, f"entry {seq}: MAC does not match (forged or rewritten without the key)")]
    return []


def check_chain(rows: Iterable[Mapping[str, Any]], keys: dict[str, MacKey] | None
                ) -> tuple[list[tuple[int, str]], int, int, str]:
    """Every link, hash and (with ``keys``) MAC of entries in order, from entry 1.

    Returns (problems as (first sequence number concerned, text), entries, last sequence number, last hash).
    ``detail`` may be the stored JSON text or, as ``audit export`` writes it, the parsed object.
    """
    problems: list[tuple[int, str]] = []
    prev = GENESIS
    expected_seq = 1
    count = 0
    for row in rows:
        count += 1
        problems.extend(entry_problems(row, expected_seq, prev, keys))
        prev = row["hash"]
        expected_seq = int(row["seq"]) + 1
    return problems, count, expected_seq - 1, prev


def entry_problems(row: Mapping[str, Any], expected_seq: int, prev: str, keys: dict[str, MacKey] | None,
                   *, unkeyed_ok: bool = False) -> list[tuple[int, str]]:
    """One entry after (``expected_seq`` - 1, ``prev``): its number, link, hash and (with ``keys``) MAC.
    ``unkeyed_ok``: an entry without any MAC is accepted (the start of a log from before the keyed chain)."""
    problems: list[tuple[int, str]] = []
    seq = int(row["seq"])
    if seq != expected_seq:
        problems.append((expected_seq, f"entry {expected_seq}: missing (next entry is {seq})"))
    if row["prev_hash"] != prev:
        problems.append((seq, f"entry {seq}: does not follow the entry before it (deleted or reordered)"))
    detail = row["detail"] if isinstance(row["detail"], str) else canonical(row["detail"])
    digest = entry_hash(row["prev_hash"], seq, row["ts"], row["actor"], row["action"], row["grant_id"], detail)
    if digest != row["hash"]:
        problems.append((seq, f"entry {seq}: content does not match its hash (edited)"))
    key_id, mac = row.get("key_id"), row.get("mac")
    if keys is not None and not (unkeyed_ok and not key_id and not mac):
        problems.extend(_check_mac(keys, seq, key_id, row["hash"], mac))
    return problems


class ExportedLog:
    """An ``audit export`` (JSON lines) as an auditor holds it: no state directory, no MAC key."""

    def __init__(self, entries: list[dict[str, Any]]) -> None:
        self.entries = entries
        self._hashes = {int(e["seq"]): str(e["hash"]) for e in entries}

    @classmethod
    def load(cls, path: Path) -> ExportedLog:
        try:
            lines = path.read_text(encoding="utf-8").splitlines()
            return cls([json.loads(line) for line in lines if line.strip()])
        except (OSError, ValueError) as exc:
            raise SandboxError(f"{path}: not an audit export in JSON lines ({exc})", code="bad_export") from None

    def head(self) -> tuple[int, str]:
        if not self.entries:
            return 0, GENESIS
        last = self.entries[-1]
        return int(last["seq"]), str(last["hash"])

    def hash_at(self, seq: int) -> str | None:
        return self._hashes.get(seq)

    def verify(self) -> VerifyResult:
        problems, count, _, head = check_chain(self.entries, None)
        first = min((s for s, _ in problems), default=None)
        return VerifyResult(ok=not problems, entries=count, head=head, problems=tuple(p for _, p in problems),
                            first_bad=first, macs_checked=False)


def _where(*, since: str | None = None, until: str | None = None, actions: Iterable[str] | None = None,
           grant_id: str | None = None, actor: str | None = None, action_prefix: str | None = None
           ) -> tuple[str, list[Any]]:
    """A WHERE clause over the audit table from fixed column names and bound parameters only."""
    where: list[str] = []
    params: list[Any] = []
    if since:
        where.append("ts >= ?")
        params.append(since)
    if until:
        where.append("ts < ?")
        params.append(until)
    if actions is not None:
        wanted = tuple(actions)
        where.append(f"action IN ({', '.join('?' for _ in wanted)})" if wanted else "0")
        params.extend(wanted)
    if action_prefix:
        where.append("action LIKE ? ESCAPE '\\'")
        params.append(action_prefix.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%")
    if grant_id is not None:
        where.append("grant_id = ?")
        params.append(grant_id)
    if actor is not None:
        where.append("actor = ?")
        params.append(actor)
    return (" WHERE " + " AND ".join(where)) if where else "", params
