"""SQLite access: one file, WAL, a thread-local connection per thread, explicit write transactions.

Writers take ``BEGIN IMMEDIATE`` so that check-and-charge, hash-chain appends and review
transitions are serialized across threads *and* processes.
"""

from __future__ import annotations

import contextlib
import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from sandbox.errors import SandboxError

DB_NAME = "sandbox.db"
_SCHEMAS: list[str] = []


def register_schema(sql: str) -> str:
    """Modules declare their tables at import; :class:`StateDB` creates them all."""
    _SCHEMAS.append(sql)
    return sql


class StateDB:
    def __init__(self, state_dir: Path | str) -> None:
        self.dir = Path(state_dir)
        try:
            self.dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise SandboxError(f"{self.dir}: cannot create state directory: {exc.strerror}") from None
        self.path = self.dir / DB_NAME
        self._local = threading.local()
        self._ensure_schema()

    def _open(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self.path, timeout=60, isolation_level=None, check_same_thread=False)
        conn.row_factory = sqlite3.Row
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=FULL")
        conn.execute("PRAGMA foreign_keys=ON")
        conn.execute("PRAGMA busy_timeout=60000")
        return conn

    @property
    def conn(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = self._open()
            self._local.conn = conn
        return conn

    def _ensure_schema(self) -> None:
        # import the modules that register tables, so every StateDB has every table
        from sandbox.state import audit, grants_store, ledger, sessions, tokens  # noqa: F401

        with contextlib.suppress(ImportError):
            import sandbox.exports.store  # noqa: F401
        with contextlib.suppress(ImportError):  # oversight: cases and alerts
            from sandbox.state import alerts_store, cases_store, offerings_store  # noqa: F401
        with self.write() as conn:
            for script in _SCHEMAS:
                for statement in _split(script):
                    conn.execute(statement)

    @contextmanager
    def write(self) -> Iterator[sqlite3.Connection]:
        """An IMMEDIATE transaction: committed on success, rolled back on any exception."""
        conn = self.conn
        conn.execute("BEGIN IMMEDIATE")
        try:
            yield conn
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        else:
            conn.execute("COMMIT")

    def read(self, sql: str, params: tuple = ()) -> list[sqlite3.Row]:
        return self.conn.execute(sql, params).fetchall()

    def close(self) -> None:
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
            self._local.conn = None


def _split(script: str) -> list[str]:
    return [s.strip() for s in script.split(";") if s.strip()]
