"""Follow the audit log as it grows, checking every new entry, and remember what it revoked.

Why: a token row restored from an older copy of the state directory carries a MAC that was
valid once ("live"). Only the log, which only grows, still says the token was revoked. So each
process follows the log: it reads the entries it has not seen yet **by sequence number only**
(``NOT INDEXED``: no index an attacker could re-point through ``writable_schema`` decides what
is read), checks each one's link, hash and MAC (the same rules as ``audit verify``), and
collects the token hashes every ``token.revoked`` entry names. What it has seen is never
forgotten. A log that got shorter, an entry that does not follow its predecessor, or a MAC that
does not verify marks the follower **broken**: token lookups then fail closed (nobody
authenticates) and the gateway refuses to start, until an administrator looks at
``sandbox audit verify``.

Entries without a MAC are accepted only at the start of the log (a state from before the keyed
chain); once a MACed entry has been seen, every later entry must carry a valid one.
"""

from __future__ import annotations

import json
import logging
import sqlite3
import threading
from dataclasses import dataclass, field

from sandbox.state.audit import entry_problems
from sandbox.state.chain import GENESIS
from sandbox.state.db import StateDB
from sandbox.state.keys import MacKey

log = logging.getLogger("sandbox.state.follow")

REVOKED = "token.revoked"


@dataclass
class _Position:
    seq: int = 0
    hash: str = GENESIS
    keyed: bool = False  # a MACed entry has been seen: from here on every entry needs its MAC
    revoked: set[str] = field(default_factory=set)
    broken: str | None = None


class LogFollower:
    """One per process and state database; thread-safe."""

    def __init__(self, db: StateDB) -> None:
        self.db = db
        self._pos = _Position()
        self._lock = threading.Lock()
        self._keys: dict[str, MacKey] = {}

    @property
    def broken(self) -> str | None:
        return self._pos.broken

    def revoked(self, digest: str) -> bool:
        """Whether the log revoked this token hash. True too when the log cannot be trusted (fail closed)."""
        self.catch_up()
        return self._pos.broken is not None or digest in self._pos.revoked

    def catch_up(self) -> str | None:
        """Read and check the entries written since the last call; the reason if the log is broken."""
        if self.db.in_work():  # its uncommitted entries may still roll back: never move past them
            return self._pos.broken
        with self._lock:
            pos = self._pos
            if pos.broken is not None:
                return pos.broken
            rows = self.db.read("SELECT * FROM audit NOT INDEXED WHERE seq > ? ORDER BY seq", (pos.seq,))
            newest = self.db.read("SELECT COALESCE(MAX(seq), 0) AS m FROM audit NOT INDEXED")[0]["m"]
            if newest < pos.seq:
                return self._break(f"the log ends at entry {newest}, but this process has read up to {pos.seq}")
            for row in rows:
                problem = self._check(pos, row)
                if problem:
                    return self._break(problem)
                pos.seq, pos.hash = row["seq"], row["hash"]
                if row["action"] == REVOKED:
                    try:
                        named = json.loads(row["detail"]).get("token_sha256") or []
                    except (ValueError, AttributeError):
                        named = []
                    pos.revoked.update(str(h) for h in named)
            return None

    def _check(self, pos: _Position, row: sqlite3.Row) -> str | None:
        """The rules of ``audit verify`` (:func:`sandbox.state.audit.entry_problems`), first problem only."""
        entry = dict(row)
        if entry["key_id"] and entry["key_id"] not in self._keys and self.db.keyring.available():
            self._keys = self.db.keyring.all()  # a key rotated in since: reload the keyring once
        problems = entry_problems(entry, pos.seq + 1, pos.hash, self._keys, unkeyed_ok=not pos.keyed)
        if problems:
            return problems[0][1]
        pos.keyed = pos.keyed or bool(entry["mac"])
        return None

    def _break(self, reason: str) -> str:
        self._pos.broken = reason
        log.error("the audit log cannot be trusted (%s): token lookups refused until `sandbox audit verify`"
                  " has been looked at", reason)
        return reason
