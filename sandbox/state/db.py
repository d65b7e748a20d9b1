"""SQLite access and the one audited unit of work through which every state change goes.

One file, WAL, a thread-local connection per thread. :meth:`StateDB.work` is the only way to
change state: it opens a ``BEGIN IMMEDIATE`` transaction (serialized across threads *and*
processes), lets the caller write and append audit events, advances the MACed audit head and
commits, all in one transaction. It refuses to commit a change that recorded no audit event.

This is enforced by construction: every connection carries a SQLite authorizer that denies
INSERT, UPDATE, DELETE and schema changes unless the current thread is inside a unit of work,
and denies writes to the audit tables to everything but the chain's own appends. Prepared
statements are not cached, so a statement authorized inside a unit of work cannot be replayed
outside it.
"""

from __future__ import annotations

import contextlib
import logging
import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sandbox.errors import SandboxError
from sandbox.state import chain
from sandbox.state.chain import AuditEvent
from sandbox.state.keys import MacKey, MacKeyring

DB_NAME = "sandbox.db"
log = logging.getLogger(__name__)
_SCHEMAS: list[str] = [chain.SCHEMA]
# Tables that only cache what the log already says (e.g. how far the monitor has read it): a unit
# of work that changes nothing else may commit without an event. Declared with their schema.
DERIVED_TABLES: set[str] = set()

WRITE_ACTIONS = frozenset({
    sqlite3.SQLITE_INSERT, sqlite3.SQLITE_UPDATE, sqlite3.SQLITE_DELETE,
    sqlite3.SQLITE_CREATE_INDEX, sqlite3.SQLITE_CREATE_TABLE, sqlite3.SQLITE_CREATE_TEMP_INDEX,
    sqlite3.SQLITE_CREATE_TEMP_TABLE, sqlite3.SQLITE_CREATE_TEMP_TRIGGER, sqlite3.SQLITE_CREATE_TEMP_VIEW,
    sqlite3.SQLITE_CREATE_TRIGGER, sqlite3.SQLITE_CREATE_VIEW, sqlite3.SQLITE_CREATE_VTABLE,
    sqlite3.SQLITE_DROP_INDEX, sqlite3.SQLITE_DROP_TABLE, sqlite3.SQLITE_DROP_TEMP_INDEX,
    sqlite3.SQLITE_DROP_TEMP_TABLE, sqlite3.SQLITE_DROP_TEMP_TRIGGER, sqlite3.SQLITE_DROP_TEMP_VIEW,
    sqlite3.SQLITE_DROP_TRIGGER, sqlite3.SQLITE_DROP_VIEW, sqlite3.SQLITE_DROP_VTABLE,
    sqlite3.SQLITE_ALTER_TABLE, sqlite3.SQLITE_REINDEX, sqlite3.SQLITE_ANALYZE,
    sqlite3.SQLITE_ATTACH, sqlite3.SQLITE_DETACH,
})
ROW_WRITES = frozenset({sqlite3.SQLITE_INSERT, sqlite3.SQLITE_UPDATE, sqlite3.SQLITE_DELETE})


class UnauditedWrite(SandboxError):
    """A unit of work changed state without recording an audit event: nothing was committed."""

    status = 500
    code = "unaudited_write"


class ForeignSchema(SandboxError):
    """The state database holds triggers or views the gateway did not create: nothing is written."""

    status = 503
    code = "foreign_schema"


def register_schema(sql: str, *, derived: tuple[str, ...] = ()) -> str:
    """Modules declare their tables at import; :class:`StateDB` creates them all.

    ``derived`` names tables among them that only cache what the audit log already records.
    """
    _SCHEMAS.append(sql)
    DERIVED_TABLES.update(derived)
    return sql


class Work:
    """One audited unit of work: the caller's writes, their audit events, the new head."""

    def __init__(self, conn: sqlite3.Connection, key: MacKey) -> None:
        self.conn = conn
        self.key = key
        self.events: list[int] = []
        self.head: tuple[int, str] | None = None
        self.in_chain = False
        self.written: set[str] = set()  # tables the authorizer let this unit of work write

    def execute(self, sql: str, params: tuple[Any, ...] | list[Any] = ()) -> sqlite3.Cursor:
        return self.conn.execute(sql, params)

    def record(self, event: AuditEvent) -> int:
        """Append ``event`` to the chain inside this transaction; returns its sequence number."""
        self.in_chain = True
        try:
            seq, digest = chain.append(self.conn, self.key, event)
        finally:
            self.in_chain = False
        self.head = (seq, digest)
        self.events.append(seq)
        return seq

    def _advance_head(self) -> None:
        if self.head is None:
            return
        self.in_chain = True
        try:
            chain.set_head(self.conn, self.key, *self.head)
        finally:
            self.in_chain = False


_WRITER_LOCKS: dict[str, threading.Lock] = {}
_WRITER_LOCKS_GUARD = threading.Lock()


def _writer_lock(path: Path) -> threading.Lock:
    """One lock per database file in this process (other processes still meet at SQLite's lock)."""
    key = str(path.resolve())
    with _WRITER_LOCKS_GUARD:
        return _WRITER_LOCKS.setdefault(key, threading.Lock())


class StateDB:
    def __init__(self, state_dir: Path | str, keyring: MacKeyring | None = None) -> None:
        self.dir = Path(state_dir)
        try:
            self.dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise SandboxError(f"{self.dir}: cannot create state directory: {exc.strerror}") from None
        self.keyring = keyring or MacKeyring.for_state(self.dir)
        self.path = self.dir / DB_NAME
        self._local = threading.local()
        self._mark_warned = False
        self._ensure_schema()

    # -- connections -----------------------------------------------------------------------
    def _open(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self.path, timeout=60, isolation_level=None, check_same_thread=False,
                               cached_statements=0)
        conn.row_factory = sqlite3.Row
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=FULL")
        conn.execute("PRAGMA foreign_keys=ON")
        conn.execute("PRAGMA busy_timeout=60000")
        conn.set_authorizer(self._authorize)
        return conn

    def _authorize(self, action: int, arg1: str | None, arg2: str | None, _db: str | None,
                   _source: str | None) -> int:
        if action == sqlite3.SQLITE_PRAGMA:
            # reading a pragma is fine; setting one is a change of the database itself
            return sqlite3.SQLITE_OK if arg2 is None or getattr(self._local, "bootstrap", False) \
                else sqlite3.SQLITE_DENY
        if action not in WRITE_ACTIONS:
            return sqlite3.SQLITE_OK
        if getattr(self._local, "bootstrap", False):
            return sqlite3.SQLITE_OK
        work: Work | None = getattr(self._local, "work", None)
        if work is None or action not in ROW_WRITES:
            return sqlite3.SQLITE_DENY
        if arg1 in chain.CHAIN_TABLES and not work.in_chain:
            return sqlite3.SQLITE_DENY  # the chain is written only by Work.record
        if arg1 and arg1 not in chain.CHAIN_TABLES:
            work.written.add(arg1)
        return sqlite3.SQLITE_OK

    @property
    def conn(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            self._local.bootstrap = True
            try:
                conn = self._open()
            finally:
                self._local.bootstrap = False
            self._local.conn = conn
        return conn

    def _ensure_schema(self) -> None:
        # import the modules that register tables, so every StateDB has every table
        from sandbox.state import checkpoints, grants_store, ledger, sessions, tokens  # noqa: F401

        with contextlib.suppress(ImportError):
            import sandbox.exports.store  # noqa: F401
        with contextlib.suppress(ImportError):  # oversight: cases and alerts
            from sandbox.state import alerts_store, cases_store, offerings_store  # noqa: F401
        conn = self.conn
        self._local.bootstrap = True
        try:
            conn.execute("BEGIN IMMEDIATE")
            try:
                for script in _SCHEMAS:
                    for statement in _split(script):
                        conn.execute(statement)
                chain.migrate(conn)
                for migration in _MIGRATIONS:
                    migration(conn)
                if self.keyring.available():
                    for keyed in _KEYED_MIGRATIONS:
                        keyed(conn, self.keyring)
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")
        finally:
            self._local.bootstrap = False

    # -- the schema -------------------------------------------------------------------------
    def foreign_schema(self) -> list[str]:
        """Triggers and views in the database that no module registered (this code defines none):
        planted by someone who wrote the file, they would run inside the gateway's units of work."""
        version = self.conn.execute("PRAGMA schema_version").fetchone()[0]
        cached: tuple[int, list[str]] | None = getattr(self._local, "schema_seen", None)
        if cached is not None and cached[0] == version:
            return cached[1]
        found = [f"{r[0]} {r[1]}" for r in self.conn.execute(
            "SELECT type, name FROM sqlite_master WHERE type IN ('trigger', 'view') ORDER BY type, name")]
        self._local.schema_seen = (version, found)
        return found

    def refuse_foreign_schema(self) -> None:
        found = self.foreign_schema()
        if found:
            raise ForeignSchema(f"{self.path}: unknown {', '.join(found)} in the state database (not created by"
                                " the gateway); refusing to write until it is removed")

    # -- the unit of work --------------------------------------------------------------------
    def current_work(self) -> Work | None:
        work: Work | None = getattr(self._local, "work", None)
        return work

    def in_work(self) -> bool:
        return self.current_work() is not None

    @contextmanager
    def work(self) -> Iterator[Work]:
        """One IMMEDIATE transaction: writes + audit events + head, committed together or not at all.

        Nested calls on the same thread join the outer unit of work. A unit of work that changed
        rows but recorded no audit event is rolled back (:class:`UnauditedWrite`); one that
        changed nothing, or only derived tables (:data:`DERIVED_TABLES`), commits without one.
        """
        outer: Work | None = getattr(self._local, "work", None)
        if outer is not None:
            yield outer
            return
        key = self.keyring.current()
        conn = self.conn
        # threads of one process queue on a lock of their own before SQLite's write lock: SQLite's busy
        # handler sleeps with growing back-off, which made the p99 of 16 parallel writers about 1 s
        with _writer_lock(self.path):
            conn.execute("BEGIN IMMEDIATE")
            try:
                self.refuse_foreign_schema()  # inside the transaction: nothing planted runs in this unit of work
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            work = Work(conn, key)
            self._local.work = work
            before = conn.total_changes
            try:
                yield work
                if not work.events and conn.total_changes != before and work.written - DERIVED_TABLES:
                    raise UnauditedWrite("a state change without an audit event was refused; nothing was written")
                work._advance_head()
            except BaseException:
                self._local.work = None
                conn.execute("ROLLBACK")
                raise
            else:
                self._local.work = None
                conn.execute("COMMIT")
                if work.head is not None:
                    self._advance_mark(key, *work.head)

    def _advance_mark(self, key: MacKey, seq: int, digest: str) -> None:
        """The high-water mark outside the state directory follows every commit (see chain.check_mark)."""
        try:
            chain.advance_mark(self.keyring.mark_file, key, seq, digest)
        except OSError as exc:
            if not self._mark_warned:
                self._mark_warned = True
                log.warning("cannot write the audit high-water mark %s: %s", self.keyring.mark_file, exc)

    @contextmanager
    def write(self) -> Iterator[sqlite3.Connection]:
        """The same unit of work, yielding its connection: for code written before :meth:`work`
        (``with db.write() as conn: ...; audit.append(conn, event)``). Every rule still holds."""
        with self.work() as work:
            yield work.conn

    def record(self, event: AuditEvent) -> int:
        """An audit event with no other state change, in a unit of work of its own."""
        with self.work() as work:
            return work.record(event)

    def read(self, sql: str, params: tuple[Any, ...] | list[Any] = ()) -> list[sqlite3.Row]:
        return self.conn.execute(sql, params).fetchall()

    def close(self) -> None:
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
            self._local.conn = None


_MIGRATIONS: list[Any] = []


def register_migration(fn: Any) -> Any:
    """A function run (idempotently) on every open, after the schemas: adds columns to old files."""
    _MIGRATIONS.append(fn)
    return fn


_KEYED_MIGRATIONS: list[Any] = []


def register_keyed_migration(fn: Any) -> Any:
    """Like :func:`register_migration`, with the MAC keyring (run only when the current key is present)."""
    _KEYED_MIGRATIONS.append(fn)
    return fn


def add_column(conn: sqlite3.Connection, table: str, column: str, decl: str) -> None:
    if column not in {r[1] for r in conn.execute(f"PRAGMA table_info({table})").fetchall()}:
        conn.execute(f"ALTER TABLE {table} ADD COLUMN {column} {decl}")


def _split(script: str) -> list[str]:
    return [s.strip() for s in script.split(";") if s.strip()]
