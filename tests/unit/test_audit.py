"""The keyed audit chain: edits, deletions, reorderings, cut-off tails and keyless forgeries are detected.

Tampering is done the way an attacker who can write the state directory would: through a
connection of their own (the gateway's connections refuse writes outside a unit of work).
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator
from contextlib import closing, contextmanager
from pathlib import Path

import pytest

from sandbox.errors import SandboxError
from sandbox.state.audit import AuditEvent, AuditLog
from sandbox.state.chain import GENESIS, entry_hash
from sandbox.state.db import StateDB
from sandbox.state.keys import MacKeyring


@contextmanager
def raw(db: StateDB) -> Iterator[sqlite3.Connection]:
    """The attacker's own connection to the state file (no authorizer, autocommit)."""
    with closing(sqlite3.connect(db.path, isolation_level=None)) as conn:
        conn.row_factory = sqlite3.Row
        yield conn


@pytest.fixture
def log(tmp_path: Path) -> AuditLog:
    db = StateDB(tmp_path / "state", MacKeyring(tmp_path / "keys"))
    audit = AuditLog(db)
    for i in range(5):
        audit.record(AuditEvent("alice", "query.charged", "g-1", {"i": i, "sql": f"SELECT {i}"}))
    return audit


def test_intact_chain_verifies(log: AuditLog) -> None:
    result = log.verify()
    assert result.ok and result.entries == 5 and not result.problems and result.macs_checked


def test_entries_name_their_key_and_carry_a_mac(log: AuditLog) -> None:
    kid = log.db.keyring.current().id
    assert all(e["key_id"] == kid and len(e["mac"]) == 64 for e in log.entries())


def test_edited_entry_detected(log: AuditLog) -> None:
    with raw(log.db) as conn:
        conn.execute("UPDATE audit SET detail = '{\"i\":99}' WHERE seq = 3")
    result = log.verify()
    assert not result.ok and result.first_bad == 3
    assert any("entry 3" in p and "edited" in p for p in result.problems)


def test_deleted_entry_detected(log: AuditLog) -> None:
    with raw(log.db) as conn:
        conn.execute("DELETE FROM audit WHERE seq = 2")
    result = log.verify()
    assert not result.ok and result.first_bad == 2
    assert any("missing" in p for p in result.problems)


def test_reordered_entries_detected(log: AuditLog) -> None:
    with raw(log.db) as conn:
        conn.execute("UPDATE audit SET seq = 100 WHERE seq = 2")
        conn.execute("UPDATE audit SET seq = 2 WHERE seq = 4")
        conn.execute("UPDATE audit SET seq = 4 WHERE seq = 100")
    assert not log.verify().ok


def _rehash_all(conn: sqlite3.Connection, edit: dict[int, str]) -> None:
    """Rewrite the whole chain with recomputed hashes (what someone without the MAC key can do)."""
    prev = GENESIS
    for row in conn.execute("SELECT * FROM audit ORDER BY seq").fetchall():
        actor = edit.get(row["seq"], row["actor"])
        digest = entry_hash(prev, row["seq"], row["ts"], actor, row["action"], row["grant_id"], row["detail"])
        conn.execute("UPDATE audit SET actor = ?, prev_hash = ?, hash = ? WHERE seq = ?",
                     (actor, prev, digest, row["seq"]))
        prev = digest
    last = conn.execute("SELECT seq FROM audit ORDER BY seq DESC LIMIT 1").fetchone()["seq"]
    conn.execute("UPDATE audit_head SET seq = ?, hash = ?", (last, prev))


def test_rehashed_forgery_without_the_key_is_detected(log: AuditLog) -> None:
    """Recomputing every hash and the head keeps the chain consistent, but the MACs no longer match."""
    with raw(log.db) as conn:
        _rehash_all(conn, {2: "mallory"})
    result = log.verify()
    assert not result.ok and result.first_bad == 2
    assert any("entry 2" in p and "MAC" in p for p in result.problems)
    assert any("head" in p and "MAC" in p for p in result.problems)


def test_truncated_tail_detected_by_the_maced_head(log: AuditLog) -> None:
    with raw(log.db) as conn:
        conn.execute("DELETE FROM audit WHERE seq >= 4")
    result = log.verify()
    assert not result.ok and result.first_bad == 4
    assert any("missing" in p and "head records entry 5" in p for p in result.problems)


def test_truncation_with_a_rewritten_head_is_detected(log: AuditLog) -> None:
    with raw(log.db) as conn:
        conn.execute("DELETE FROM audit WHERE seq >= 4")
        h = conn.execute("SELECT hash FROM audit WHERE seq = 3").fetchone()["hash"]
        conn.execute("UPDATE audit_head SET seq = 3, hash = ?", (h,))
    result = log.verify()
    assert not result.ok and any("head's MAC" in p for p in result.problems)


def test_missing_head_detected(log: AuditLog) -> None:
    with raw(log.db) as conn:
        conn.execute("DELETE FROM audit_head")
    assert any("head is missing" in p for p in log.verify().problems)


def test_chain_survives_restart(tmp_path: Path, log: AuditLog) -> None:
    log.db.close()
    reopened = AuditLog(StateDB(tmp_path / "state", MacKeyring(tmp_path / "keys")))
    reopened.record(AuditEvent("bob", "query.charged", "g-1", {}))
    result = reopened.verify()
    assert result.ok and result.entries == 6


def test_a_different_key_cannot_verify(tmp_path: Path, log: AuditLog) -> None:
    """Whoever holds only the state directory (with a key of their own) does not pass verification."""
    other = AuditLog(StateDB(tmp_path / "state", MacKeyring(tmp_path / "other-keys")))
    other.record(AuditEvent("mallory", "grant.created", "g-evil", {}))  # MACed under mallory's key
    result = AuditLog(StateDB(tmp_path / "state", MacKeyring(tmp_path / "keys"))).verify()
    assert not result.ok and result.first_bad == 6
    assert any("entry 6" in p and "not in the keyring" in p for p in result.problems)


def test_key_rotation_keeps_old_entries_verifiable(tmp_path: Path, log: AuditLog) -> None:
    old_id, new_id = log.db.keyring.rotate()
    assert old_id != new_id
    log.record(AuditEvent("bob", "query.charged", "g-1", {"after": "rotation"}))
    result = log.verify()
    assert result.ok, result.problems
    ids = [e["key_id"] for e in log.entries()]
    assert ids[:5] == [old_id] * 5 and ids[5] == new_id
    # without the retired key the old entries no longer verify: the keyring is what keeps them
    (tmp_path / "keys" / f"audit-mac-{old_id}.key").unlink()
    fresh = AuditLog(StateDB(tmp_path / "state", MacKeyring(tmp_path / "keys")))
    assert fresh.verify().first_bad == 1


def test_key_inside_the_state_directory_is_refused(tmp_path: Path) -> None:
    with pytest.raises(SandboxError, match="inside the state directory"):
        MacKeyring.for_state(tmp_path / "state", tmp_path / "state" / "keys")
    with pytest.raises(SandboxError, match="inside the state directory"):
        MacKeyring.for_state(tmp_path / "state", None, tmp_path / "state" / "mac.key")


def test_default_key_is_created_outside_state_on_first_write(tmp_path: Path) -> None:
    db = StateDB(tmp_path / "state")
    db.record(AuditEvent("gateway", "test.event"))
    assert (tmp_path / "keys" / "audit-mac.key").exists()
    assert (tmp_path / "keys" / "audit-mac.key").stat().st_mode & 0o077 == 0
    assert not list((tmp_path / "state").glob("*.key"))


def test_a_state_from_before_the_keyed_chain_opens_and_is_flagged(tmp_path: Path) -> None:
    """An older state file (no MAC columns, no head row, tokens without scope) migrates on open;
    its un-MACed entries are reported, never silently accepted."""
    state = tmp_path / "state"
    state.mkdir()
    with closing(sqlite3.connect(state / "sandbox.db")) as conn:
        conn.execute("CREATE TABLE audit (seq INTEGER PRIMARY KEY, ts TEXT NOT NULL, actor TEXT NOT NULL,"
                     " action TEXT NOT NULL, grant_id TEXT, detail TEXT NOT NULL, prev_hash TEXT NOT NULL,"
                     " hash TEXT NOT NULL)")
        conn.execute("CREATE TABLE tokens (token_hash TEXT PRIMARY KEY, user TEXT NOT NULL,"
                     " created_at TEXT NOT NULL, revoked_at TEXT)")
        digest = entry_hash(GENESIS, 1, "2026-01-01T00:00:00", "admin-cli", "grant.created", "g", "{}")
        conn.execute("INSERT INTO audit VALUES (1, '2026-01-01T00:00:00', 'admin-cli', 'grant.created', 'g',"
                     " '{}', ?, ?)", (GENESIS, digest))
        conn.execute("INSERT INTO tokens VALUES ('h', 'alice', 'x', NULL)")
        conn.commit()
    db = StateDB(state, MacKeyring(tmp_path / "keys"))
    assert db.read("SELECT scope FROM tokens")[0]["scope"] == "api"
    log = AuditLog(db)
    log.record(AuditEvent("gateway", "test.after_upgrade"))
    result = log.verify()
    assert not result.ok and result.first_bad == 1
    assert any("entry 1: carries no MAC" in p for p in result.problems)
    assert not any("entry 2" in p for p in result.problems)


def test_search_filters_pages_and_takes_prefixes_literally(tmp_path: Path) -> None:
    log = AuditLog(StateDB(tmp_path / "state", MacKeyring(tmp_path / "keys")))
    for action in ("a_b.x", "aXb.y", "a_b.z", "a%b.w"):
        log.record(AuditEvent("alice" if action != "a_b.z" else "bob", action, "g-1", {}))
    total, page = log.search(action_prefix="a_b", limit=1)
    assert total == 2 and [e.action for e in page] == ["a_b.z"]  # newest first; '_' is not a wildcard
    assert [e.action for e in log.search(action_prefix="a_b", limit=1, offset=1)[1]] == ["a_b.x"]
    assert log.search(action_prefix="a%")[0] == 1
    assert log.search(actor="bob")[0] == 1 and log.search(action="aXb.y", grant_id="g-1")[0] == 1
    assert [e.action for e in log.iter_entries(action_prefix="a_b")] == ["a_b.x", "a_b.z"]


def test_the_mark_can_live_apart_from_read_only_keys(tmp_path: Path) -> None:
    """As in the Docker stack: the keys are a read-only secret mount, the mark a small volume of its own.
    The mark follows every commit there, and a rolled-back state is caught by it."""
    import shutil

    keys, mark = tmp_path / "keys", tmp_path / "mark" / "audit-mark.json"
    ring = MacKeyring.for_state(tmp_path / "state", keys, mark_file=mark)
    log = AuditLog(StateDB(tmp_path / "state", ring))
    log.record(AuditEvent("alice", "query.charged", "g-1", {"i": 1}))
    shutil.copytree(tmp_path / "state", tmp_path / "old")
    log.record(AuditEvent("alice", "query.charged", "g-1", {"i": 2}))
    assert not (keys / "audit-mark.json").exists()
    assert json.loads(mark.read_text())["seq"] == log.head()[0] == 2
    assert log.verify().ok
    old = AuditLog(StateDB(tmp_path / "old", MacKeyring.for_state(tmp_path / "old", keys, mark_file=mark)))
    result = old.verify()
    assert not result.ok and any("high-water mark" in p for p in result.problems), result.problems
    with pytest.raises(SandboxError, match="inside the state directory"):
        MacKeyring.for_state(tmp_path / "state", keys, mark_file=tmp_path / "state" / "audit-mark.json")
