"""One audited unit of work: no write outside it, none without an audit event, a consistent head under load."""

from __future__ import annotations

import multiprocessing
import sqlite3
import threading
from pathlib import Path

import pytest

from sandbox.errors import SandboxError
from sandbox.state.audit import AuditEvent, AuditLog
from sandbox.state.db import StateDB, UnauditedWrite
from sandbox.state.keys import MacKeyring


def _db(tmp_path: Path) -> StateDB:
    return StateDB(tmp_path / "state", MacKeyring(tmp_path / "keys"))


@pytest.mark.parametrize("sql", [
    "INSERT INTO tokens (token_hash, user, created_at) VALUES ('x', 'mallory', 'now')",
    "UPDATE grants SET status = 'active'",
    "DELETE FROM charges",
    "UPDATE budgets SET epsilon_total_nano = 100000000000",
    "CREATE TABLE evil (x)",
    "DROP TABLE audit",
    "ATTACH DATABASE ':memory:' AS other",
    "PRAGMA writable_schema = ON",
])
def test_a_write_outside_the_unit_of_work_fails(tmp_path: Path, sql: str) -> None:
    db = _db(tmp_path)
    with pytest.raises(sqlite3.DatabaseError, match="not authorized"):
        db.conn.execute(sql)


def test_a_statement_prepared_inside_cannot_be_replayed_outside(tmp_path: Path) -> None:
    db = _db(tmp_path)
    sql = "INSERT INTO sessions (user, grant_id, started_at) VALUES (?, 'g', 'now')"
    with db.work() as work:
        work.execute(sql, ("alice",))
        work.record(AuditEvent("alice", "server.started", "g"))
    with pytest.raises(sqlite3.DatabaseError, match="not authorized"):
        db.conn.execute(sql, ("mallory",))


def test_a_change_without_an_audit_event_is_refused_and_rolled_back(tmp_path: Path) -> None:
    db = _db(tmp_path)
    with pytest.raises(UnauditedWrite), db.work() as work:
        work.execute("INSERT INTO sessions (user, grant_id, started_at) VALUES ('a', 'g', 'now')")
    assert db.read("SELECT COUNT(*) AS n FROM sessions")[0]["n"] == 0
    assert not db.in_work()
    with db.work():  # nothing written, nothing recorded: simply ends
        pass
    assert AuditLog(db).verify().entries == 0


def test_the_audit_tables_are_written_only_by_record(tmp_path: Path) -> None:
    db = _db(tmp_path)
    db.record(AuditEvent("alice", "x"))
    for sql in ("UPDATE audit SET actor = 'mallory'", "DELETE FROM audit",
                "UPDATE audit_head SET seq = 0", "INSERT INTO audit_head (id, seq, hash, key_id, mac)"
                " VALUES (2, 0, '', '', '')"):
        with pytest.raises(sqlite3.DatabaseError, match="not authorized"), db.work() as work:
            work.execute(sql)
    assert AuditLog(db).verify().ok


def test_a_failed_unit_of_work_leaves_no_trace(tmp_path: Path) -> None:
    db = _db(tmp_path)
    db.record(AuditEvent("alice", "first"))
    with pytest.raises(RuntimeError), db.work() as work:
        work.execute("INSERT INTO sessions (user, grant_id, started_at) VALUES ('a', 'g', 'now')")
        work.record(AuditEvent("alice", "server.started", "g"))
        raise RuntimeError("boom")
    log = AuditLog(db)
    assert log.verify().ok and log.verify().entries == 1
    assert db.read("SELECT seq FROM audit_head")[0]["seq"] == 1


def test_nested_units_join_the_outer_one(tmp_path: Path) -> None:
    db = _db(tmp_path)
    with db.work() as outer:
        outer.record(AuditEvent("a", "one"))
        db.record(AuditEvent("a", "two"))  # joins: one transaction
        with pytest.raises(sqlite3.DatabaseError):
            sqlite3.connect(db.path, timeout=0).execute("BEGIN IMMEDIATE")  # the writer lock is held
    assert [e["action"] for e in AuditLog(db).entries()] == ["one", "two"]


def _writer_process(state: str, keys: str, n: int, name: str) -> None:
    _writer(StateDB(state, MacKeyring(Path(keys))), n, name)


def _writer(db: StateDB, n: int, name: str) -> None:
    for i in range(n):
        with db.work() as work:
            work.execute("INSERT INTO sessions (user, grant_id, started_at) VALUES (?, 'g', ?)", (name, str(i)))
            work.record(AuditEvent(name, "server.started", "g", {"i": i}))


def test_parallel_writers_keep_the_head_consistent(tmp_path: Path) -> None:
    """Threads and processes appending at once: no gap, no fork, head = last entry, every MAC valid."""
    db = _db(tmp_path)
    db.record(AuditEvent("setup", "start"))  # creates the key before the writers race for it
    threads = [threading.Thread(target=_writer, args=(db, 15, f"t{i}")) for i in range(4)]  # one shared StateDB
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_writer_process, args=(str(db.dir), str(tmp_path / "keys"), 15, f"p{i}"))
             for i in range(2)]
    for w in [*threads, *procs]:
        w.start()
    for t in threads:
        t.join(timeout=120)
    for p in procs:
        p.join(timeout=120)
        assert p.exitcode == 0
    result = AuditLog(db).verify()
    assert result.ok, result.problems
    assert result.entries == 1 + 6 * 15
    assert db.read("SELECT COUNT(*) AS n FROM sessions")[0]["n"] == 6 * 15
    head = db.read("SELECT seq, hash FROM audit_head")[0]
    assert (head["seq"], head["hash"]) == (result.entries, result.head)


def test_the_older_write_spelling_is_the_same_unit_of_work(tmp_path: Path) -> None:
    db = _db(tmp_path)
    log = AuditLog(db)
    with db.write() as conn:
        conn.execute("INSERT INTO sessions (user, grant_id, started_at) VALUES ('a', 'g', 'now')")
        log.append(conn, AuditEvent("a", "server.started", "g"))
    log.write_head()
    assert log.verify().ok and log.verify().entries == 1
    with pytest.raises(UnauditedWrite), db.write() as conn:
        conn.execute("INSERT INTO sessions (user, grant_id, started_at) VALUES ('b', 'g', 'now')")
    with pytest.raises(SandboxError, match="only inside"):
        log.append(db.conn, AuditEvent("a", "outside"))


def test_only_a_declared_derived_table_may_change_without_an_event(tmp_path: Path) -> None:
    """The monitor's read cursor caches how far the log was read; anything else still needs its event."""
    from sandbox.state.db import DERIVED_TABLES

    pytest.importorskip("sandbox.state.alerts_store")
    assert set(DERIVED_TABLES) == {"monitor_cursor"}
    db = _db(tmp_path)
    with db.work() as work:
        work.execute("INSERT INTO monitor_cursor (id, last_seq) VALUES (1, 7)")
    assert db.read("SELECT last_seq FROM monitor_cursor")[0]["last_seq"] == 7
    with pytest.raises(UnauditedWrite), db.work() as work:
        work.execute("UPDATE monitor_cursor SET last_seq = 8")
        work.execute("INSERT INTO sessions (user, grant_id, started_at) VALUES ('a', 'g', 'now')")
    assert db.read("SELECT last_seq FROM monitor_cursor")[0]["last_seq"] == 7
