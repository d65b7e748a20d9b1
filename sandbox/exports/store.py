"""Export records as the airlock's views use them, and the blob store.

Rows live in SQLite and are read and written by :mod:`sandbox.state.exports_repo` (all the
SQL, returning dataclasses); this module hands them to the exports package as plain dicts
(``dataclasses.asdict``: what the views and the JSON API show). The canonical bytes (never the
uploaded ones) live beside the database under ``<state>/exports/<request>/<sha256>``, written
atomically and never overwritten.
"""

from __future__ import annotations

import contextlib
import hashlib
import re
import secrets
import sqlite3
from dataclasses import asdict
from pathlib import Path
from typing import Any

from sandbox.errors import NotFound, SandboxError
from sandbox.state import exports_repo
from sandbox.state.db import StateDB
from sandbox.state.files import atomic_write

REQUEST_ID = re.compile(r"^exp-[0-9a-f]{16}$")
SHA256 = re.compile(r"^[0-9a-f]{64}$")


def now() -> str:
    return exports_repo.now()


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


def request_row(conn: sqlite3.Connection, request_id: str) -> dict[str, Any]:
    """Raises NotFound (unknown_export)."""
    return asdict(exports_repo.request(conn, request_id))


def current_files(conn: sqlite3.Connection, request_id: str) -> list[dict[str, Any]]:
    return [asdict(f) for f in exports_repo.current_files(conn, request_id)]


def all_files(conn: sqlite3.Connection, request_id: str) -> list[dict[str, Any]]:
    return [asdict(f) for f in exports_repo.all_files(conn, request_id)]


def insert_file(conn: sqlite3.Connection, request_id: str, name: str, digest: str, size: int,
                kind: str, checks: list[dict[str, Any]], round_: int) -> None:
    exports_repo.insert_file(conn, request_id, name, digest, size, kind, checks, round_)


def remove_file(conn: sqlite3.Connection, request_id: str, name: str) -> bool:
    return exports_repo.remove_file(conn, request_id, name)


def reviews(conn: sqlite3.Connection, request_id: str, round_: int | None = None) -> list[dict[str, Any]]:
    return [asdict(r) for r in exports_repo.reviews(conn, request_id, round_)]


def events(conn: sqlite3.Connection, request_id: str) -> list[dict[str, Any]]:
    return [asdict(e) for e in exports_repo.events(conn, request_id)]


def list_requests(conn: sqlite3.Connection, *, requester: str | None = None,
                  statuses: tuple[str, ...] | None = None, grant_id: str | None = None,
                  limit: int = 200) -> list[dict[str, Any]]:
    return [asdict(r) for r in exports_repo.list_requests(conn, requester=requester, statuses=statuses,
                                                          grant_id=grant_id, limit=limit)]


def overrides(conn: sqlite3.Connection, request_id: str, round_: int | None = None) -> list[dict[str, Any]]:
    return [asdict(o) for o in exports_repo.overrides(conn, request_id, round_)]


def insert_override(conn: sqlite3.Connection, request_id: str, grant_id: str, round_: int, admin: str,
                    reason: str, files: dict[str, str]) -> None:
    exports_repo.insert_override(conn, request_id, grant_id, round_, admin, reason, files)


def override_counts(conn: sqlite3.Connection) -> dict[str, int]:
    """How many check-failure overrides each grant has had (for the public register)."""
    return exports_repo.override_counts(conn)
