"""Attacks on how each process follows the audit log (sandbox.state.follow) and on key rotation.

Each test is an attack by someone who can write the state directory but not read the keys: a
revoked token row restored with its old (once valid) MAC, hidden behind a re-pointed index, a
log shortened and re-grown under a running gateway, an edited revocation entry; a signing key
rotated by the CLI while the gateway serves; a mark file configured onto a key file.
"""
from __future__ import annotations

import hashlib
import sqlite3
from contextlib import closing
from pathlib import Path

import pytest

from sandbox.services import Services, Settings
from sandbox.state.chain import AuditEvent
from sandbox.state.replay import reconcile
from sandbox.state.tokens import TokenStore


def mk(tmp_path: Path, **kw: object) -> Services:
    (tmp_path / "data").mkdir(exist_ok=True)
    return Services(Settings(state_dir=tmp_path / "state", data_root=tmp_path / "data", **kw))


def raw(s: Services) -> sqlite3.Connection:
    c = sqlite3.connect(s.db.path, isolation_level=None)
    c.row_factory = sqlite3.Row
    return c


def revoke_then_restore(s: Services) -> str:
    token = s.tokens.create("alice", actor="admin")
    with closing(raw(s)) as c:
        before = dict(c.execute("SELECT * FROM tokens WHERE user='alice'").fetchone())
    s.tokens.revoke_user("alice", actor="admin")
    s.db.record(AuditEvent("admin", "test.later"))  # the revocation is not the marked head
    with closing(raw(s)) as c:
        c.execute("UPDATE tokens SET revoked_at=NULL, key_id=?, mac=? WHERE token_hash=?",
                  (before["key_id"], before["mac"], before["token_hash"]))
    return token


def swap_action_index(s: Services) -> None:
    """The index named audit_by_action really indexes `actor`; the table itself is untouched."""
    with closing(raw(s)) as c:
        c.execute("DROP INDEX audit_by_action")
        c.execute("CREATE INDEX audit_by_action ON audit(actor)")
        c.execute("PRAGMA writable_schema=ON")
        c.execute("UPDATE sqlite_master SET sql='CREATE INDEX audit_by_action ON audit(action)'"
                  " WHERE name='audit_by_action'")
        c.execute("PRAGMA writable_schema=OFF")


def test_a_re_pointed_index_does_not_hide_a_revocation(tmp_path: Path) -> None:
    """The follower reads by sequence number only: an index that lies about `action` changes nothing."""
    s = mk(tmp_path)
    token = revoke_then_restore(s)
    swap_action_index(s)
    fresh = mk(tmp_path)  # a restarted gateway
    assert fresh.audit.verify().ok  # the chain itself is untouched
    assert reconcile(fresh.db, fresh.audit)  # the replay reports the restored row
    assert fresh.tokens.user_for(token) is None


def test_a_log_shortened_under_a_running_gateway_fails_closed(tmp_path: Path) -> None:
    """Deleting the newest entry, letting the gateway look, and putting it back never makes it forget."""
    s = mk(tmp_path)
    token = revoke_then_restore(s)
    assert s.tokens.user_for(token) is None  # cached in this process
    with closing(raw(s)) as c:
        last = dict(c.execute("SELECT * FROM audit ORDER BY seq DESC LIMIT 1").fetchone())
        c.execute("DELETE FROM audit WHERE seq=?", (last["seq"],))
    swap_action_index(s)
    s.tokens.user_for(token)  # MAX(seq) went back: the cache is dropped, rescanned via the swapped index
    with closing(raw(s)) as c:
        c.execute("DROP INDEX audit_by_action")
        c.execute(f"INSERT INTO audit ({','.join(last)}) VALUES ({','.join('?' * len(last))})", list(last.values()))
    swap_action_index_create_only(s)
    assert s.audit.verify().ok
    assert s.tokens.user_for(token) is None
    other = s.tokens.create("bob", actor="admin")
    assert s.tokens.user_for(other) is None and s.tokens.follower.broken  # fails closed: nobody until verify


def swap_action_index_create_only(s: Services) -> None:
    with closing(raw(s)) as c:
        c.execute("CREATE INDEX audit_by_action ON audit(actor)")
        c.execute("PRAGMA writable_schema=ON")
        c.execute("UPDATE sqlite_master SET sql='CREATE INDEX audit_by_action ON audit(action)'"
                  " WHERE name='audit_by_action'")


def test_an_edited_revocation_entry_stops_the_gateway_at_start(tmp_path: Path) -> None:
    from gateway.app import create_app
    from sandbox.errors import SandboxError

    s = mk(tmp_path)
    token = revoke_then_restore(s)
    with closing(raw(s)) as c:
        c.execute("UPDATE audit SET detail='{}' WHERE action='token.revoked'")
    fresh = mk(tmp_path)
    fresh.audit.check_mark()  # the marked head is intact: the mark alone would not notice
    with pytest.raises(SandboxError, match="cannot be trusted"):
        create_app(services=fresh)
    assert fresh.tokens.user_for(token) is None


def test_the_follower_never_moves_past_uncommitted_entries(tmp_path: Path) -> None:
    s = mk(tmp_path)
    token = s.tokens.create("alice", actor="admin")
    with pytest.raises(RuntimeError), s.db.work() as w:
        w.record(AuditEvent("x", "test.doomed"))
        s.tokens.user_for(token)
        raise RuntimeError
    other = TokenStore(s.db)  # another process revokes; its entry reuses the rolled-back seq
    other.revoke_user("alice", actor="admin")
    assert "token.revoked" in {r["action"] for r in s.db.read("SELECT action FROM audit")}
    assert s.tokens.revoked_in_log(hashlib.sha256(token.encode()).hexdigest())


def test_a_serving_gateway_signs_with_the_key_rotated_by_another_process(tmp_path: Path) -> None:
    from sandbox.state.checkpoints import verify_against

    serving = mk(tmp_path)
    serving.db.record(AuditEvent("a", "test.one"))
    serving.checkpoints.sign("t")
    old = serving.checkpoints.key.key_id()
    cli = mk(tmp_path)  # `sandbox audit rotate-signing-key` in another process
    cli.checkpoints.sign("before")
    _, new = cli.checkpoints.key.rotate()
    cli.db.record(AuditEvent("admin", "audit.signing_key_rotated", None, {"to": new}))
    cli.checkpoints.sign("rotated")
    serving.db.record(AuditEvent("a", "test.two"))
    cp = serving.checkpoints.sign("interval")
    doc = serving.checkpoints.document()
    rep = verify_against(serving.audit, doc)
    assert cp is not None and cp.key_id == new and old in doc["public_keys"]
    assert not rep.problems, rep.problems


def test_verify_pins_the_retired_local_keys_too(tmp_path: Path) -> None:
    import json

    from click.testing import CliRunner

    from sandbox.cli import cli

    s = mk(tmp_path)
    s.db.record(AuditEvent("a", "test.one"))
    s.checkpoints.sign("t")
    s.checkpoints.key.rotate()
    s.db.record(AuditEvent("a", "test.two"))
    s.checkpoints.sign("t")
    saved = tmp_path / "cp.json"
    saved.write_text(json.dumps(s.checkpoints.document()))
    r = CliRunner().invoke(cli, ["audit", "verify", "--state", str(tmp_path / "state"), "--checkpoints", str(saved)],
                           env={"SANDBOX_ADMIN_TOKEN": ""})
    assert r.exit_code == 0, r.output


@pytest.mark.parametrize("name", ["audit-mac.key", "checkpoint-signing.pem", "admin.token", "audit-mac-ab12.key",
                                  "checkpoint-signing-ab12.pub"])
def test_the_mark_cannot_be_configured_onto_a_key_file(tmp_path: Path, name: str) -> None:
    from sandbox.errors import SandboxError

    keys = tmp_path / "keys"
    with pytest.raises(SandboxError, match="must not be a key file"):
        mk(tmp_path, keys_dir=keys, audit_mark_file=keys / name)
