"""An attacker's second review of the record (write access to --state, no access to the keys).

Real gateway (Flask test client), real SQLite, the real CLI. Each test is one attack that used to
succeed; the attacker writes the state database through a connection of their own.
"""

from __future__ import annotations

import hashlib
import sqlite3
from collections.abc import Iterator
from contextlib import closing, contextmanager

from test_unknown_categories import visits_client  # noqa: F401 - the fixture

from sandbox.services import Services

CASE = {"grant": "g-2026-001", "dataset": "nhanes_2017", "subject": "forged", "message": "filed by the attacker"}


@contextmanager
def attacker(services: Services) -> Iterator[sqlite3.Connection]:
    with closing(sqlite3.connect(services.db.path, isolation_level=None)) as conn:
        conn.row_factory = sqlite3.Row
        yield conn


# -- 1. a token row planted in the table does not authenticate -------------------------------------
def test_a_planted_token_row_is_refused_at_the_request(services: Services, client) -> None:  # noqa: ANN001
    token = "sbx_attacker_chosen_token"
    digest = hashlib.sha256(token.encode()).hexdigest()
    with attacker(services) as conn:
        conn.execute("INSERT INTO tokens (token_hash, user, created_at, scope) VALUES (?, 'alice', 'x', 'api')",
                     (digest,))
    r = client.post("/v1/cases/data-quality", headers={"Authorization": f"Bearer {token}"}, json=CASE)
    assert r.status_code == 401, r.json
    assert client.get("/v1/catalog", headers={"Authorization": f"Bearer {token}"}).status_code == 401


def test_a_copied_mac_does_not_move_a_token_to_another_user(services: Services, client) -> None:  # noqa: ANN001
    token = services.tokens.create("mallory")
    with attacker(services) as conn:
        conn.execute("UPDATE tokens SET user = 'alice' WHERE user = 'mallory'")
    assert client.get("/v1/catalog", headers={"Authorization": f"Bearer {token}"}).status_code == 401


def test_an_unrevoked_row_is_refused(services: Services, client) -> None:  # noqa: ANN001
    token = services.tokens.create("alice")
    services.tokens.revoke_user("alice", actor="admin")
    with attacker(services) as conn:
        conn.execute("UPDATE tokens SET revoked_at = NULL")
    assert client.get("/v1/catalog", headers={"Authorization": f"Bearer {token}"}).status_code == 401


def test_a_revoked_row_restored_from_an_older_copy_is_refused(services: Services, client) -> None:  # noqa: ANN001
    """The old row's MAC was valid once (it said 'live'): the log's revocation entry still refuses it."""
    token = services.tokens.create("alice")
    headers = {"Authorization": f"Bearer {token}"}
    assert client.get("/v1/catalog", headers=headers).status_code == 200
    with attacker(services) as conn:
        before = dict(conn.execute("SELECT * FROM tokens WHERE user = 'alice'").fetchone())
    services.tokens.revoke_user("alice", actor="admin")
    assert client.get("/v1/catalog", headers=headers).status_code == 401
    with attacker(services) as conn:
        conn.execute("UPDATE tokens SET revoked_at = NULL, key_id = ?, mac = ? WHERE token_hash = ?",
                     (before["key_id"], before["mac"], before["token_hash"]))
    assert client.get("/v1/catalog", headers=headers).status_code == 401
    # a fresh process reads the revocation from the log too (nothing held in memory decides it)
    assert type(services.tokens)(services.db).user_for(token) is None


def test_genuine_tokens_still_work(services: Services, client, alice) -> None:  # noqa: ANN001
    assert client.get("/v1/catalog", headers=alice).status_code == 200


# -- 5. a revoked admin credential does not come back when its row is deleted ---------------------
def test_a_revoked_admin_credential_is_not_registered_again(services: Services, monkeypatch) -> None:  # noqa: ANN001
    from sandbox.cli.serve import ensure_admin
    from sandbox.state.tokens import token_hash

    leaked = "sbxadm_" + "ab" * 32
    monkeypatch.setenv("SANDBOX_ADMIN_TOKEN", leaked)
    ensure_admin(services)
    assert services.tokens.admin_for(leaked) == "admin"
    services.tokens.revoke_user("admin", actor="admin", scope="admin")
    with attacker(services) as conn:
        conn.execute("DELETE FROM tokens WHERE token_hash = ?", (token_hash(leaked),))
    ensure_admin(services)  # the next start
    assert services.tokens.admin_for(leaked) is None


def test_tokens_from_before_the_row_mac_are_kept_only_when_their_event_verifies(services: Services) -> None:
    from sandbox.services import Services as Fresh
    from sandbox.state.tokens import token_hash

    genuine = services.tokens.create("alice")
    planted = "sbx_planted_before_the_upgrade"
    with attacker(services) as conn:
        conn.execute("UPDATE tokens SET key_id = NULL, mac = NULL")  # as a file from before the row MAC
        conn.execute("INSERT INTO tokens (token_hash, user, created_at, scope) VALUES (?, 'bob', 'x', 'api')",
                     (token_hash(planted),))
    reopened = Fresh(services.settings)
    assert reopened.tokens.user_for(genuine) == "alice"
    assert reopened.tokens.user_for(planted) is None


# -- 2. the tail cut off by restoring an old head, or every table emptied --------------------------
def _verify(services: Services, *args: str) -> tuple[int, str]:
    from click.testing import CliRunner

    from sandbox.cli import cli

    r = CliRunner().invoke(cli, ["audit", "verify", "--state", str(services.settings.state_dir), *args],
                           env={"SANDBOX_ADMIN_TOKEN": ""}, catch_exceptions=False)
    return r.exit_code, r.output


def test_restoring_an_old_head_row_is_detected_by_the_mark_outside_the_state(services: Services) -> None:
    import pytest

    from gateway.app import create_app
    from sandbox.errors import SandboxError

    with attacker(services) as conn:
        old = dict(conn.execute("SELECT * FROM audit_head").fetchone())
    services.tokens.create("bob")
    services.tokens.create("carol")
    assert _verify(services)[0] == 0
    with attacker(services) as conn:
        conn.execute("DELETE FROM audit WHERE seq > ?", (old["seq"],))
        conn.execute("UPDATE audit_head SET seq = ?, hash = ?, key_id = ?, mac = ?",
                     (old["seq"], old["hash"], old["key_id"], old["mac"]))
        conn.execute("DELETE FROM tokens WHERE user IN ('bob', 'carol')")
    code, out = _verify(services)
    assert code == 1 and "high-water mark" in out, out
    with pytest.raises(SandboxError, match="high-water mark"):
        create_app(services=services)


def test_an_emptied_log_is_not_intact(services: Services) -> None:
    with attacker(services) as conn:
        tables = [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
        for table in tables:
            conn.execute(f"DELETE FROM {table}")
    code, out = _verify(services)
    assert code == 1 and "high-water mark" in out, out


# -- 6. triggers and views planted in the state database ------------------------------------------
def test_a_planted_trigger_never_runs_and_is_reported(services: Services) -> None:
    import pytest

    from gateway.app import create_app
    from sandbox.errors import SandboxError

    with attacker(services) as conn:
        conn.execute("CREATE TRIGGER planted AFTER INSERT ON tokens BEGIN"
                     " UPDATE budgets SET epsilon_total_nano = epsilon_total_nano * 10; END")
        conn.execute("CREATE VIEW planted_view AS SELECT 1")
        before = conn.execute("SELECT SUM(epsilon_total_nano) FROM budgets").fetchone()[0]
    with pytest.raises(SandboxError, match="planted"):
        services.tokens.create("bob")
    with attacker(services) as conn:
        assert conn.execute("SELECT SUM(epsilon_total_nano) FROM budgets").fetchone()[0] == before
    with pytest.raises(SandboxError, match="planted"):
        create_app(services=services)
    code, out = _verify(services)
    assert code == 1 and "trigger planted" in out and "view planted_view" in out, out


# -- 3. a checkpoint document is checked against a pinned key, never its own -----------------------
def _self_signed_document(services: Services) -> dict:
    import base64

    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from sandbox.state.checkpoints import message
    from sandbox.state.keys import public_key_id

    key = Ed25519PrivateKey.generate()
    raw = key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    kid = public_key_id(raw)
    seq, head = services.audit.head()
    ts = "2026-12-01T00:00:00+00:00"
    return {"public_keys": {kid: base64.b64encode(raw).decode()},
            "checkpoints": [{"seq": seq, "head": head, "ts": ts, "key_id": kid,
                             "signature": base64.b64encode(key.sign(message(seq, head, ts))).decode()}]}


def test_a_self_signed_document_is_checked_against_the_local_key_by_default(services: Services,
                                                                             tmp_path) -> None:  # noqa: ANN001
    import json

    services.checkpoints.sign("test")
    fake = tmp_path / "fake.json"
    fake.write_text(json.dumps(_self_signed_document(services)))
    code, out = _verify(services, "--checkpoints", str(fake))
    assert code == 1 and "signature invalid or key" in out, out
    code, out = _verify(services, "--checkpoints", str(fake), "--trust-document-key")
    assert code == 0 and "proves nothing about rollback" in out, out


def test_verify_export_needs_a_pinned_key(services: Services, tmp_path) -> None:  # noqa: ANN001
    import json

    from click.testing import CliRunner

    from sandbox.cli import cli

    services.checkpoints.sign("test")
    export = tmp_path / "audit.jsonl"
    runner = CliRunner()
    assert runner.invoke(cli, ["audit", "export", "--state", str(services.settings.state_dir),
                               "-o", str(export)]).exit_code == 0
    fake = tmp_path / "fake.json"
    fake.write_text(json.dumps(_self_signed_document(services)))
    r = runner.invoke(cli, ["audit", "verify-export", str(export), "--checkpoints", str(fake)])
    assert r.exit_code != 0 and "--public-key" in r.output, r.output


# -- 4. the delta tallies of the dataset caps replay from the log ---------------------------------
def test_deleting_a_zcdp_grants_delta_tally_is_detected(services: Services, client, alice) -> None:  # noqa: ANN001
    from sandbox.policy.models import Grant

    body = services.policies.grant("g-2026-001").model_dump(mode="json")
    body.update(id="g-zcdp", accounting="zcdp")
    services.policies.apply_grant(Grant.model_validate(body), "admin")
    r = client.post("/v1/query", json={"sql": "SELECT sex, COUNT(*) AS n FROM nhanes_2017 GROUP BY sex",
                                       "rho": 0.01, "grant": "g-zcdp"}, headers=alice)
    assert r.status_code == 200, r.json
    assert _verify(services)[0] == 0
    with attacker(services) as conn:
        assert conn.execute("DELETE FROM dataset_delta_spent").rowcount == 1
    code, out = _verify(services)
    assert code == 1 and "dataset_delta_spent[nhanes_2017/g-zcdp]" in out, out


def test_deleting_a_selection_delta_is_detected(visits_client) -> None:  # noqa: ANN001, F811
    client, alice, services = visits_client
    from test_unknown_categories import GRANT

    reply = client.post("/v1/query", headers=alice, json={
        "sql": "SELECT city, COUNT(*) AS n FROM visits GROUP BY city", "epsilon": 0.5, "grant": GRANT})
    assert reply.status_code == 200, reply.json
    assert _verify(services)[0] == 0
    with attacker(services) as conn:
        conn.execute("UPDATE dataset_selection_delta SET delta = 0")
    code, out = _verify(services)
    assert code == 1 and "dataset_selection_delta[" in out, out
    with attacker(services) as conn:
        conn.execute("DELETE FROM dataset_selection_delta")
    code, out = _verify(services)
    assert code == 1 and "dataset_selection_delta[" in out, out


# -- 7. the public checkpoint pages are bounded ---------------------------------------------------
def test_public_checkpoints_are_paginated_and_follow_new_checkpoints(services: Services, client) -> None:  # noqa: ANN001
    before = client.get("/public/checkpoints.json").json["checkpoints"]
    services.tokens.create("bob")
    signed = services.checkpoints.sign("test")
    assert signed is not None
    after = client.get("/public/checkpoints.json").json["checkpoints"]  # the cached page follows the new one
    assert len(after) == len(before) + 1 and after[-1]["seq"] == signed.seq
    with attacker(services) as conn:
        conn.execute("BEGIN")
        for i in range(1, 251):
            conn.execute("INSERT INTO checkpoints VALUES (?, ?, '2026-12-01T00:00:00+00:00', 'k', 's')",
                         (1000 + i, "f" * 64))
        conn.execute("COMMIT")
    doc = client.get("/public/checkpoints.json").json
    seqs = [c["seq"] for c in doc["checkpoints"]]
    assert len(seqs) == 100 and seqs == sorted(seqs) and seqs[-1] == 1250 and doc["next_before"] == 1151
    older = client.get("/public/checkpoints.json?before=1151").json
    assert [c["seq"] for c in older["checkpoints"]] == list(range(1051, 1151))
    last = client.get("/public/checkpoints.json?before=1051").json
    assert len(last["checkpoints"]) == 50 + len(after) and last["next_before"] is None
    assert client.get("/public/checkpoints.json?before=x").status_code == 400
    assert client.get("/public/checkpoints").data.count(b"<tr><td class=\"nowrap\">") == 100


# -- 4b. billed notebook sessions replay from the log ---------------------------------------------
def test_editing_notebook_sessions_is_detected(services: Services) -> None:
    services.sessions.started("alice", "g-2026-001", at="2026-12-01T08:00:00+00:00")
    services.sessions.stopped("alice", at="2026-12-01T12:00:00+00:00")
    services.sessions.started("alice", "g-2026-001", at="2026-12-01T13:00:00+00:00")
    assert _verify(services)[0] == 0
    with attacker(services) as conn:
        conn.execute("UPDATE sessions SET stopped_at = started_at WHERE stopped_at IS NOT NULL")
    code, out = _verify(services)
    assert code == 1 and "sessions[1].stopped_at" in out, out
    with attacker(services) as conn:
        conn.execute("DELETE FROM sessions")
    code, out = _verify(services)
    assert code == 1 and "sessions[" in out, out


# -- 4c. the public notices of grants replay from the log -----------------------------------------
def test_forged_public_notices_are_detected(services: Services) -> None:
    from sandbox.offerings import publish_reason

    services.policies.set_status("g-2026-001", "suspended", "admin", "private reason")
    publish_reason(services, "g-2026-001", "admin", "Suspended while a complaint is examined")
    assert _verify(services)[0] == 0
    with attacker(services) as conn:
        conn.execute("UPDATE grant_notices SET text = 'forged public text'")
    code, out = _verify(services)
    assert code == 1 and "grant_notices[g-2026-001" in out and "forged public text" in out, out
    with attacker(services) as conn:
        conn.execute("DELETE FROM grant_notices")
    assert _verify(services)[0] == 1
