"""Signed checkpoints of the audit log, published so that copies kept elsewhere anchor it.

A checkpoint is (sequence number, head hash, time), signed with the gateway's Ed25519 key
(kept outside ``--state``). The gateway signs one at a fixed interval and after every grant
change and publishes them all at ``/public/checkpoints.json`` with the public key. Anyone who
saved that document can later run ``sandbox audit verify --checkpoints FILE_OR_URL``: a log
cut short, a state directory rolled back to an older copy, or a rewritten log disagrees with
some checkpoint, and the first sequence number that disagrees is reported. Verification needs
only the public key.
"""

from __future__ import annotations

import base64
import datetime as dt
import json
import threading
from dataclasses import dataclass
from typing import Any, Protocol

from sandbox.state.audit import AuditLog
from sandbox.state.chain import AuditEvent, canonical
from sandbox.state.db import StateDB, register_schema
from sandbox.state.keys import SigningKey, public_key_id, verify_signature

register_schema(
    """
    CREATE TABLE IF NOT EXISTS checkpoints (
        seq INTEGER PRIMARY KEY,
        head TEXT NOT NULL,
        ts TEXT NOT NULL,
        key_id TEXT NOT NULL,
        signature TEXT NOT NULL
    )
    """
)

KIND = "trusted-sandbox.audit-checkpoint.v1"
CHECKPOINT_ACTION = "audit.checkpoint"
GATEWAY = "gateway"
PAGE = 100  # checkpoints per page of /public/checkpoints(.json)


@dataclass(frozen=True)
class Checkpoint:
    seq: int
    head: str
    ts: str
    key_id: str
    signature: str

    def to_dict(self) -> dict[str, Any]:
        return {"seq": self.seq, "head": self.head, "ts": self.ts, "key_id": self.key_id,
                "signature": self.signature}


def message(seq: int, head: str, ts: str) -> bytes:
    """The exact bytes signed: canonical JSON of the kind, sequence number, head hash and time."""
    return canonical({"kind": KIND, "seq": seq, "head": head, "ts": ts}).encode("ascii")


class Checkpoints:
    def __init__(self, db: StateDB, audit: AuditLog, key: SigningKey | None) -> None:
        self.db = db
        self.audit = audit
        self.key = key
        self._cache: tuple[tuple[Any, ...], dict[str, Any]] | None = None

    def sign(self, reason: str = "interval") -> Checkpoint | None:
        """Sign the current head unless the newest entry is already a checkpoint (or there is no key)."""
        if self.key is None or not self.key.available():
            return None
        # the unit of work's IMMEDIATE transaction serializes signers (threads and processes)
        with self.db.work() as work:
            row = work.conn.execute("SELECT seq, hash, action FROM audit ORDER BY seq DESC LIMIT 1").fetchone()
            if row is None or row["action"] == CHECKPOINT_ACTION:
                return None
            ts = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
            cp = Checkpoint(row["seq"], row["hash"], ts, self.key.key_id(),
                            self.key.sign(message(row["seq"], row["hash"], ts)))
            work.execute("INSERT INTO checkpoints (seq, head, ts, key_id, signature) VALUES (?, ?, ?, ?, ?)",
                         (cp.seq, cp.head, cp.ts, cp.key_id, cp.signature))
            work.record(AuditEvent(GATEWAY, CHECKPOINT_ACTION, None, {**cp.to_dict(), "reason": reason}))
        return cp

    def all(self, limit: int = 100_000) -> list[Checkpoint]:
        rows = self.db.read("SELECT * FROM checkpoints ORDER BY seq DESC LIMIT ?", (limit,))
        return [Checkpoint(r["seq"], r["head"], r["ts"], r["key_id"], r["signature"]) for r in reversed(rows)]

    def page(self, before: int | None = None, limit: int = PAGE) -> dict[str, Any]:
        """One page of the public document: the newest ``limit`` checkpoints (below ``before``), oldest
        first, with ``next_before`` for the page before it. The first page is cached until the next
        checkpoint (an anonymous request never serializes the whole table)."""
        newest = self.db.read("SELECT MAX(seq) AS m, COUNT(*) AS n FROM checkpoints")[0]
        marker = (newest["m"], newest["n"], limit)
        if before is None and self._cache is not None and self._cache[0] == marker:
            return self._cache[1]
        sql, params = "SELECT * FROM checkpoints", [limit + 1]
        if before is not None:
            sql, params = sql + " WHERE seq < ?", [before, limit + 1]
        rows = self.db.read(sql + " ORDER BY seq DESC LIMIT ?", params)
        more = len(rows) > limit
        cps = [Checkpoint(r["seq"], r["head"], r["ts"], r["key_id"], r["signature"]) for r in reversed(rows[:limit])]
        doc = self._document(cps)
        doc["next_before"] = cps[0].seq if more and cps else None
        if before is None:
            self._cache = (marker, doc)
        return doc

    def document(self) -> dict[str, Any]:
        """The newest page of what ``/public/checkpoints.json`` serves (and what auditors save)."""
        return self.page()

    def _document(self, checkpoints: list[Checkpoint]) -> dict[str, Any]:
        keys: dict[str, str] = {}
        if self.key is not None and self.key.path.exists():
            keys.update(self.key.retired_public())
            keys[self.key.key_id()] = self.key.public_b64()
        return {
            "kind": KIND,
            "algorithm": "Ed25519",
            "signed_message": 'canonical JSON {"head", "kind", "seq", "ts"}, sorted keys, no spaces, ASCII',
            "public_keys": keys,
            "checkpoints": [c.to_dict() for c in checkpoints],
        }


class Checkpointer(threading.Thread):
    """Signs a checkpoint every ``interval_s`` seconds while the gateway serves."""

    def __init__(self, checkpoints: Checkpoints, interval_s: float) -> None:
        super().__init__(name="audit-checkpointer", daemon=True)
        self.checkpoints = checkpoints
        self.interval_s = interval_s
        self.stopped = threading.Event()

    def run(self) -> None:
        while not self.stopped.wait(self.interval_s):
            try:
                self.checkpoints.sign("interval")
            except Exception:  # noqa: BLE001 - keep signing on the next tick; the log shows the gap
                continue


# -- verifying a log against checkpoints kept elsewhere -----------------------------------------------
class LogView(Protocol):
    """What checkpoint verification reads: the state's :class:`AuditLog` or an ``ExportedLog``."""

    def head(self) -> tuple[int, str]: ...

    def hash_at(self, seq: int) -> str | None: ...


@dataclass(frozen=True)
class CheckpointReport:
    checked: int
    problems: tuple[str, ...]
    first_bad: int | None
    last_agreeing: int | None


def verify_against(audit: LogView, document: dict[str, Any], pinned_keys: dict[str, str] | None = None
                   ) -> CheckpointReport:
    """Every checkpoint must be validly signed and name an entry of this log with the same hash."""
    problems: list[tuple[int, str]] = []
    keys = dict(pinned_keys) if pinned_keys else dict(document.get("public_keys") or {})
    for kid, pub in list(keys.items()):
        try:
            if public_key_id(base64.b64decode(pub, validate=True)) != kid:
                problems.append((0, f"public key {kid}: its id does not match the key"))
                keys.pop(kid)
        except ValueError:
            problems.append((0, f"public key {kid}: not base64"))
            keys.pop(kid)
    last_seq, _ = audit.head()
    checked = 0
    last_agreeing: int | None = None
    items = document.get("checkpoints")
    if not isinstance(items, list):
        return CheckpointReport(0, ("the checkpoint document has no `checkpoints` list",), 0, None)
    for item in sorted((i for i in items if isinstance(i, dict)), key=lambda i: int(i.get("seq", 0))):
        try:
            seq, head, ts = int(item["seq"]), str(item["head"]), str(item["ts"])
            kid, sig = str(item["key_id"]), str(item["signature"])
        except (KeyError, TypeError, ValueError):
            problems.append((0, f"checkpoint {item!r:.80}: malformed"))
            continue
        pub = keys.get(kid)
        if pub is None or not verify_signature(pub, message(seq, head, ts), sig):
            problems.append((0, f"checkpoint {seq} ({ts}): signature invalid or key {kid} unknown; ignored"))
            continue
        checked += 1
        if seq > last_seq:
            problems.append((last_seq + 1, f"entry {last_seq + 1}: missing: the log ends at {last_seq} but a "
                                           f"checkpoint signed {ts} covers entry {seq} (cut short or rolled back)"))
            continue
        local = audit.hash_at(seq)
        if local != head:
            after = f" (last agreeing checkpoint: entry {last_agreeing})" if last_agreeing else ""
            problems.append((seq, f"entry {seq}: differs from the checkpoint signed {ts}: the log was "
                                  f"rewritten at or before entry {seq}{after}"))
            continue
        if not any(s > 0 for s, _ in problems):
            last_agreeing = seq
    bad = [s for s, _ in problems if s > 0]
    if checked == 0:
        problems.append((0, "no validly signed checkpoint to verify against"))
    return CheckpointReport(checked, tuple(p for _, p in problems), min(bad) if bad else None, last_agreeing)


def load_document(source: str, timeout: float = 10.0) -> dict[str, Any]:
    """A saved checkpoint document, or a gateway's (``http(s)://host[:port]`` or the JSON URL)."""
    from pathlib import Path

    from sandbox.errors import BadRequest

    if source.startswith(("http://", "https://")):
        import requests

        url = source if source.endswith(".json") else source.rstrip("/") + "/public/checkpoints.json"
        try:
            resp = requests.get(url, timeout=timeout)
            resp.raise_for_status()
            data = resp.json()
        except (requests.RequestException, ValueError) as exc:
            raise BadRequest(f"cannot read checkpoints from {url}: {exc}", code="checkpoints_unreadable") from None
    else:
        try:
            data = json.loads(Path(source).read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise BadRequest(f"cannot read checkpoints from {source}: {exc}", code="checkpoints_unreadable") from None
    if not isinstance(data, dict):
        raise BadRequest(f"{source}: not a checkpoint document", code="checkpoints_unreadable")
    return data
