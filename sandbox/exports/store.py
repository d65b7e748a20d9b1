"""The airlock's blob store and identifiers.

Requests, files, reviews, events and overrides live in SQLite and are read and written by
:mod:`sandbox.state.exports_repo` (all the SQL, returning typed records that the exports package
uses as they are). The canonical bytes (never the uploaded ones) live beside the database under
``<state>/exports/<request>/<sha256>``, written atomically and never overwritten.
"""

from __future__ import annotations

import contextlib
import hashlib
import re
import secrets
from pathlib import Path

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

