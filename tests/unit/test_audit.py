"""The hash-chained audit log detects edited, deleted, reordered and cut-off entries."""

from __future__ import annotations

from pathlib import Path

import pytest

from sandbox.state.audit import AuditEvent, AuditLog
from sandbox.state.db import StateDB


@pytest.fixture
def log(tmp_path: Path) -> AuditLog:
    audit = AuditLog(StateDB(tmp_path))
    for i in range(5):
        audit.record(AuditEvent("alice", "query.charged", "g-1", {"i": i, "sql": f"SELECT {i}"}))
    return audit


def test_intact_chain_verifies(log: AuditLog) -> None:
    result = log.verify()
    assert result.ok and result.entries == 5 and not result.problems


def test_edited_entry_detected(log: AuditLog) -> None:
    log.db.conn.execute("UPDATE audit SET detail = '{\"i\":99}' WHERE seq = 3")
    result = log.verify()
    assert not result.ok
    assert any("entry 3" in p and "edited" in p for p in result.problems)


def test_deleted_entry_detected(log: AuditLog) -> None:
    log.db.conn.execute("DELETE FROM audit WHERE seq = 2")
    result = log.verify()
    assert not result.ok
    assert any("missing" in p for p in result.problems)


def test_reordered_entries_detected(log: AuditLog) -> None:
    conn = log.db.conn
    conn.execute("UPDATE audit SET seq = 100 WHERE seq = 2")
    conn.execute("UPDATE audit SET seq = 2 WHERE seq = 4")
    conn.execute("UPDATE audit SET seq = 4 WHERE seq = 100")
    assert not log.verify().ok


def test_rehashed_forgery_still_breaks_next_link(log: AuditLog) -> None:
    """Recomputing the edited entry's own hash does not help: the next entry points elsewhere."""
    from sandbox.state.audit import entry_hash

    conn = log.db.conn
    row = conn.execute("SELECT * FROM audit WHERE seq = 2").fetchone()
    forged = entry_hash(row["prev_hash"], 2, row["ts"], "mallory", row["action"], row["grant_id"], row["detail"])
    conn.execute("UPDATE audit SET actor = 'mallory', hash = ? WHERE seq = 2", (forged,))
    result = log.verify()
    assert any("entry 3" in p for p in result.problems)


def test_truncated_tail_detected_by_head_file(log: AuditLog) -> None:
    log.db.conn.execute("DELETE FROM audit WHERE seq >= 4")
    result = log.verify()
    assert not result.ok
    assert any("audit.head" in p for p in result.problems)


def test_chain_survives_restart(tmp_path: Path, log: AuditLog) -> None:
    log.db.close()
    reopened = AuditLog(StateDB(tmp_path))
    reopened.record(AuditEvent("bob", "query.charged", "g-1", {}))
    result = reopened.verify()
    assert result.ok and result.entries == 6
