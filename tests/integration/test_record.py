"""The record no one can quietly rewrite: the tamper scenarios an attacker with the state directory tries.

Real gateway (Flask test client or a real HTTP server on loopback), real SQLite, real DuckDB, the
real CLI. The attacker writes the state directory through a connection of their own, but cannot
read the keys directory.
"""

from __future__ import annotations

import json
import shutil
import sqlite3
from collections.abc import Iterator
from contextlib import closing, contextmanager
from pathlib import Path

import pytest
from click.testing import CliRunner

from sandbox.cli import cli
from sandbox.policy.models import Grant
from sandbox.services import Services
from sandbox.state.chain import GENESIS, entry_hash
from sandbox.state.checkpoints import verify_against

SQL = "SELECT sex, COUNT(*) AS n FROM nhanes_2017 GROUP BY sex"


@contextmanager
def attacker(services: Services) -> Iterator[sqlite3.Connection]:
    with closing(sqlite3.connect(services.db.path, isolation_level=None)) as conn:
        conn.row_factory = sqlite3.Row
        yield conn


def verify(state: Path, *args: str, keys: Path | None = None) -> tuple[int, str]:
    root = ["--keys", str(keys)] if keys else []
    result = CliRunner().invoke(cli, [*root, "audit", "verify", "--state", str(state), *args],
                                env={"SANDBOX_ADMIN_TOKEN": ""}, catch_exceptions=False)
    return result.exit_code, result.output


def second_grant(services: Services, gid: str, epsilon: float = 10.0) -> None:
    body = services.policies.grant("g-2026-001").model_dump(mode="json")
    body.update(id=gid, budget={"epsilon": epsilon, "delta": 1e-6})
    services.policies.apply_grant(Grant.model_validate(body), "admin")


def query(client, headers, grant: str, epsilon: float, sql: str = SQL) -> dict:  # noqa: ANN001
    r = client.post("/v1/query", headers=headers, json={"sql": sql, "epsilon": epsilon, "grant": grant})
    assert r.status_code == 200, r.json
    return r.json


def rewrite_chain(conn: sqlite3.Connection, drop: str) -> None:
    """Delete a grant's entries, renumber and rehash the rest, rewrite the head: a consistent chain."""
    rows = [r for r in conn.execute("SELECT * FROM audit ORDER BY seq").fetchall() if r["grant_id"] != drop]
    conn.execute("DELETE FROM audit")
    prev = GENESIS
    for seq, r in enumerate(rows, start=1):
        digest = entry_hash(prev, seq, r["ts"], r["actor"], r["action"], r["grant_id"], r["detail"])
        conn.execute("INSERT INTO audit VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                     (seq, r["ts"], r["actor"], r["action"], r["grant_id"], r["detail"], prev, digest,
                      r["key_id"], r["mac"]))
        prev = digest
    conn.execute("UPDATE audit_head SET seq = ?, hash = ?", (len(rows), prev))


# -- 1. the full rewrite with recomputed hashes ------------------------------------------------------
def test_full_rewrite_with_recomputed_hashes_is_detected(services: Services, client, alice) -> None:  # noqa: ANN001
    second_grant(services, "g-hidden")
    for eps in (0.5, 0.25):
        query(client, alice, "g-2026-001", eps)
        query(client, alice, "g-hidden", eps, sql=SQL + " ORDER BY n" if eps == 0.25 else SQL)
    assert services.ledger.state("g-hidden").epsilon_spent == pytest.approx(0.75)
    state = services.settings.state_dir
    assert verify(state)[0] == 0
    with attacker(services) as conn:
        conn.execute("DELETE FROM charges WHERE grant_id = 'g-hidden'")
        conn.execute("DELETE FROM answers WHERE grant_id = 'g-hidden'")
        conn.execute("UPDATE budgets SET epsilon_spent_nano = 0 WHERE grant_id = 'g-hidden'")
        rewrite_chain(conn, drop="g-hidden")
    assert services.ledger.state("g-hidden").epsilon_spent == 0  # the state now says nothing was spent
    chain = services.audit.verify()
    assert not any("does not follow" in p or "edited" in p for p in chain.problems)  # the hash chain is consistent
    code, out = verify(state)
    assert code == 1
    assert "MAC does not match" in out and "head's MAC does not match" in out
    assert "first disagreeing entry" in out


def test_entries_written_with_a_key_of_ones_own_are_rejected(services: Services, tmp_path: Path) -> None:
    """The attacker runs the real gateway code on the state directory, but with a MAC key of their own."""
    state = services.settings.state_dir
    forged = Services(services.settings.__class__(state_dir=state, data_root=services.settings.data_root,
                                                  keys_dir=tmp_path / "mallory-keys"))
    forged.tokens.create("mallory", actor="admin")
    code, out = verify(state)
    assert code == 1 and "not in the keyring" in out


# -- 2. state-table edits ----------------------------------------------------------------------------
def test_unrevoking_a_grant_in_the_table_is_detected(services: Services) -> None:
    services.policies.set_status("g-2026-001", "revoked", "admin", "breach")
    with attacker(services) as conn:
        body = json.loads(conn.execute("SELECT body FROM grants WHERE id = 'g-2026-001'").fetchone()["body"])
        body["status"] = "active"
        conn.execute("UPDATE grants SET status = 'active', status_reason = NULL, body = ? WHERE id = 'g-2026-001'",
                     (json.dumps(body),))
    assert services.policies.grant("g-2026-001").status == "active"
    code, out = verify(services.settings.state_dir)
    assert code == 1
    assert 'grants[g-2026-001].status: the table has "active", the log says "revoked"' in out
    assert 'grants[g-2026-001].status_reason: the table has null, the log says "breach"' in out
    assert "grants[g-2026-001].body.status" in out


def test_raising_a_budget_from_5_to_100_in_the_table_is_detected(services: Services) -> None:
    second_grant(services, "g-five", epsilon=5.0)
    with attacker(services) as conn:
        conn.execute("UPDATE budgets SET epsilon_total_nano = 100000000000 WHERE grant_id = 'g-five'")
    code, out = verify(services.settings.state_dir)
    assert code == 1 and "budgets[g-five].epsilon_total: the table has 100.0, the log says 5.0" in out


@pytest.mark.parametrize("edit, expected", [
    ("INSERT INTO tokens (token_hash, user, created_at) VALUES ('ab' || hex(randomblob(31)), 'mallory', 'x')",
     "row: the table has (present), the log says (no event)"),
    ("UPDATE tokens SET revoked_at = NULL", "revoked: the table has false, the log says true"),
    ("UPDATE charges SET epsilon_nano = 1", "epsilon_nano: the table has 1"),
    ("DELETE FROM charges", ".row: the table has (no row), the log says (present)"),
    ("UPDATE budgets SET epsilon_spent_nano = 0", "epsilon_spent: the table has 0.0, the log says 0.5"),
    ("UPDATE roles SET body = '{\"reviewers\": [\"mallory\"], \"admins\": []}'", "roles[1].body.reviewers"),
    ("UPDATE answers SET response = json_set(response, '$.answer_sha256', 'f00')", "answer_sha256"),
])
def test_every_state_table_is_compared_with_the_log(services: Services, client, alice, edit: str,  # noqa: ANN001
                                                    expected: str) -> None:
    query(client, alice, "g-2026-001", 0.5)
    services.tokens.revoke_user("alice", actor="admin")
    assert verify(services.settings.state_dir)[0] == 0
    with attacker(services) as conn:
        conn.execute(edit)
    code, out = verify(services.settings.state_dir)
    assert code == 1 and expected in out, out


def test_export_state_files_and_votes_edits_are_detected(services: Services, client, alice) -> None:  # noqa: ANN001
    import io

    r = client.post("/v1/exports", headers=alice, content_type="multipart/form-data",
                    data={"grant": "g-2026-001", "title": "t", "justification": "j",
                          "files": [(io.BytesIO(b"sex,n\nfemale,4180\nmale,4016\n"), "table.csv")]})
    assert r.status_code == 201, r.json
    rid = r.json["id"]
    assert verify(services.settings.state_dir)[0] == 0
    with attacker(services) as conn:
        conn.execute("UPDATE export_requests SET status = 'approved'")
        conn.execute("UPDATE export_files SET sha256 = ?", ("ab" * 32,))  # swap the bytes that leave
        conn.execute("INSERT INTO export_reviews (request_id, round, reviewer, decision, comment, ts)"
                     " VALUES (?, 1, 'carol', 'approve', '', 'now')", (rid,))  # a vote nobody cast
    code, out = verify(services.settings.state_dir)
    assert code == 1
    assert f'export_requests[{rid}].status: the table has "approved"' in out
    assert f'export_files[{rid}/table.csv].sha256: the table has "{"ab" * 32}"' in out
    assert f"export_reviews[{rid}/1/carol].row: the table has (present), the log says (no event)" in out


# -- 3. checkpoints: published, signed, verified elsewhere ---------------------------------------------
def test_checkpoints_are_published_without_login(services: Services, client) -> None:  # noqa: ANN001
    services.checkpoints.sign("test")
    doc = client.get("/public/checkpoints.json").json
    assert doc["algorithm"] == "Ed25519" and len(doc["public_keys"]) == 1
    assert doc["checkpoints"] and doc["checkpoints"][-1]["seq"] == services.audit.head()[0] - 1
    html = client.get("/public/checkpoints").get_data(as_text=True)
    assert list(doc["public_keys"].values())[0] in html and doc["checkpoints"][-1]["signature"] in html
    assert "signed audit checkpoints" in client.get("/public/grants").get_data(as_text=True)


def test_every_grant_change_signs_a_checkpoint(services: Services) -> None:
    before = len(services.checkpoints.all())
    services.policies.set_status("g-2026-001", "suspended", "admin", "check")
    cps = services.checkpoints.all()
    assert len(cps) == before + 1
    last = services.audit.entry(cps[-1].seq)
    assert last is not None and last.action == "grant.suspended"


def test_checkpoints_verify_with_only_the_public_key(services: Services, client, tmp_path: Path) -> None:  # noqa: ANN001
    services.checkpoints.sign("test")
    saved = tmp_path / "checkpoints.json"
    saved.write_text(client.get("/public/checkpoints.json").get_data(as_text=True))
    keys = services.settings.state_dir.parent / "keys"
    shutil.move(keys, tmp_path / "elsewhere")  # neither the private signing key nor the MAC key is here now
    assert not keys.exists()
    # the auditor pins the public key they obtained from the gateway earlier (not from this document)
    pins = [f"--public-key={kid}={pub}" for kid, pub in json.loads(saved.read_text())["public_keys"].items()]
    code, out = verify(services.settings.state_dir, "--checkpoints", str(saved), "--without-key", *pins)
    assert code == 0, out
    assert "checkpoints: 1" in out or "verified" in out
    assert not keys.exists()  # verification created no key
    # a checkpoint document someone edited no longer verifies
    doc = json.loads(saved.read_text())
    doc["checkpoints"][-1]["head"] = "0" * 64
    report = verify_against(services.audit, doc)
    assert report.checked == 0 and any("signature invalid" in p for p in report.problems)


def test_verify_against_a_gateway_url(services: Services, live_server: str) -> None:
    services.checkpoints.sign("test")
    code, out = verify(services.settings.state_dir, "--checkpoints", live_server)
    assert code == 0 and "the log agrees with every one" in out


def test_rollback_of_the_whole_state_directory_is_detected(services: Services, client, alice,  # noqa: ANN001
                                                           tmp_path: Path) -> None:
    state = services.settings.state_dir
    query(client, alice, "g-2026-001", 0.5)
    services.checkpoints.sign("test")
    old = tmp_path / "backup" / "state"
    shutil.copytree(state, old)  # an older copy, taken while nothing writes
    old_head = services.audit.head()[0]
    query(client, alice, "g-2026-001", 1.0, sql=SQL + " ORDER BY n")
    services.policies.set_status("g-2026-001", "suspended", "admin", "audit")  # signs a checkpoint
    saved = tmp_path / "checkpoints.json"
    saved.write_text(client.get("/public/checkpoints.json").get_data(as_text=True))
    keys = state.parent / "keys"
    # the rolled-back copy is a valid log on its own, but behind the high-water mark in the keys directory
    code, out = verify(old, keys=keys)
    assert code == 1 and "high-water mark" in out
    code, out = verify(old, "--checkpoints", str(saved), keys=keys)
    assert code == 1
    assert f"entry {old_head + 1}: missing: the log ends at {old_head}" in out
    assert f"first disagreeing entry: {old_head + 1}" in out
    # and after the rolled-back gateway wrote on, the same entry numbers hold different entries
    rolled = Services(services.settings.__class__(state_dir=old, data_root=services.settings.data_root,
                                                  keys_dir=keys))
    for i in range(8):
        rolled.tokens.create(f"u{i}", actor="admin")
    code, out = verify(old, "--checkpoints", str(saved), keys=keys)
    assert code == 1 and "rewritten at or before entry" in out


def test_signing_key_rotation_keeps_old_checkpoints_verifiable(services: Services, client) -> None:  # noqa: ANN001
    from sandbox.state.chain import AuditEvent

    key = services.checkpoints.key
    assert key is not None
    services.checkpoints.sign("test")
    old_id, old_public = key.key_id(), key.public_b64()
    assert key.rotate()[0] == old_id and key.key_id() != old_id
    services.db.record(AuditEvent("admin", "test.after_rotation"))
    services.checkpoints.sign("test")
    doc = client.get("/public/checkpoints.json").json
    assert doc["public_keys"][old_id] == old_public and key.key_id() in doc["public_keys"]
    assert {c["key_id"] for c in doc["checkpoints"]} == {old_id, key.key_id()}
    report = verify_against(services.audit, doc)
    assert not report.problems and report.checked == len(doc["checkpoints"]) == 2
    # pinned to the old key alone, the new key's checkpoint is not taken on trust
    pinned = verify_against(services.audit, doc, {old_id: old_public})
    assert pinned.checked == 1 and pinned.problems


def test_truncation_is_detected_by_checkpoints(services: Services, client, tmp_path: Path) -> None:  # noqa: ANN001
    services.checkpoints.sign("test")
    services.tokens.create("bob", actor="admin")
    services.checkpoints.sign("test")
    saved = tmp_path / "checkpoints.json"
    saved.write_text(client.get("/public/checkpoints.json").get_data(as_text=True))
    head = services.audit.head()[0]
    with attacker(services) as conn:
        conn.execute("DELETE FROM audit WHERE seq > ?", (head - 4,))
    code, out = verify(services.settings.state_dir, "--checkpoints", str(saved), "--without-key")
    assert code == 1 and f"entry {head - 3}: missing" in out


def test_the_gateway_signs_checkpoints_at_its_interval(services: Services) -> None:
    import time

    from sandbox.state.checkpoints import Checkpointer

    ticker = Checkpointer(services.checkpoints, interval_s=0.05)
    ticker.start()
    try:
        for i in range(3):
            services.tokens.create(f"user{i}", actor="admin")
            head = services.audit.head()[0]
            deadline = time.monotonic() + 10
            while not any(c.seq == head for c in services.checkpoints.all()):
                assert time.monotonic() < deadline, "no checkpoint signed within 10 s"
                time.sleep(0.02)
        signed = len(services.checkpoints.all())
        time.sleep(0.3)  # nothing new: no new checkpoint (the newest entry is a checkpoint already)
        assert len(services.checkpoints.all()) == signed
    finally:
        ticker.stopped.set()
        ticker.join(timeout=5)
    assert services.audit.verify().ok


def test_a_self_signed_document_fails_against_the_pinned_key(services: Services, client, tmp_path: Path) -> None:  # noqa: ANN001
    """Someone who rewrote the log and signed fresh checkpoints with a key of their own is caught by pinning."""
    from sandbox.state.checkpoints import Checkpoint, message
    from sandbox.state.keys import SigningKey

    services.checkpoints.sign("test")
    genuine = client.get("/public/checkpoints.json").json
    mallory = SigningKey(tmp_path / "mallory.pem")
    head_seq, head = services.audit.head()
    ts = "2030-01-01T00:00:00+00:00"
    forged = {**genuine, "public_keys": {mallory.key_id(): mallory.public_b64()},
              "checkpoints": [Checkpoint(head_seq, head, ts, mallory.key_id(),
                                         mallory.sign(message(head_seq, head, ts))).to_dict()]}
    assert verify_against(services.audit, forged).checked == 1  # self-consistent on its own...
    pinned = genuine["public_keys"]
    report = verify_against(services.audit, forged, pinned)  # ...but not under the gateway's published key
    assert report.checked == 0 and any("signature invalid or key" in p for p in report.problems)
    kid, pub = next(iter(pinned.items()))
    saved = tmp_path / "forged.json"
    saved.write_text(json.dumps(forged))
    code, out = verify(services.settings.state_dir, "--checkpoints", str(saved), "--public-key", f"{kid}={pub}")
    assert code == 1 and "no validly signed checkpoint" in out


def test_an_auditor_verifies_an_export_with_only_public_material(services: Services, client, alice,  # noqa: ANN001
                                                                 tmp_path: Path) -> None:
    """No state directory, no MAC key: the exported log against the saved checkpoints and public key."""
    query(client, alice, "g-2026-001", 0.5)
    services.policies.set_status("g-2026-001", "suspended", "admin", "audit")  # signs a checkpoint
    saved = tmp_path / "checkpoints.json"
    saved.write_text(client.get("/public/checkpoints.json").get_data(as_text=True))
    runner = CliRunner()
    state = str(services.settings.state_dir)
    export = tmp_path / "audit.jsonl"
    assert runner.invoke(cli, ["audit", "export", "--state", state, "-o", str(export)]).exit_code == 0

    def check(path: Path) -> tuple[int, str]:
        pins = [f"--public-key={kid}={pub}" for kid, pub in json.loads(saved.read_text())["public_keys"].items()]
        r = runner.invoke(cli, ["audit", "verify-export", str(path), "--checkpoints", str(saved), *pins])
        return r.exit_code, r.output

    code, out = check(export)
    assert code == 0 and "audit export intact" in out, out
    lines = export.read_text().splitlines()
    charged = next(i for i, line in enumerate(lines) if '"query.charged"' in line)
    # leaving out the charge and rehashing everything after it: the chain is consistent again,
    # but no longer what the gateway signed
    entries = [json.loads(line) for i, line in enumerate(lines) if i != charged]
    prev = GENESIS
    for seq, e in enumerate(entries, start=1):
        detail = json.dumps(e["detail"], sort_keys=True, separators=(",", ":"), ensure_ascii=True)
        e.update(seq=seq, prev_hash=prev,
                 hash=entry_hash(prev, seq, e["ts"], e["actor"], e["action"], e["grant_id"], detail))
        prev = e["hash"]
    forged = tmp_path / "forged.jsonl"
    forged.write_text("".join(json.dumps(e) + "\n" for e in entries))
    code, out = check(forged)
    assert code == 1 and "rewritten at or before entry" in out and "first disagreeing entry" in out
    assert "content does not match" not in out  # the forgery is a consistent chain: only the checkpoints tell
    truncated = tmp_path / "truncated.jsonl"
    truncated.write_text("\n".join(lines[: charged]) + "\n")
    code, out = check(truncated)
    assert code == 1 and f"entry {charged + 1}: missing" in out


@pytest.mark.parametrize("edit, expected", [
    ("UPDATE cap_spent SET epsilon_spent_nano = 0", "cap_spent[nhanes_2017/"),
    ("DELETE FROM charge_scopes", "charge_scopes["),
    ("UPDATE grant_dataset_spent SET units_nano = 1", "grant_dataset_spent[g-zcdp/nhanes_2017].spent"),
    ("UPDATE zcdp_budgets SET rho_spent_nano = 0",
     "zcdp_budgets[g-zcdp].rho_spent: the table has 0.0, the log says 0.01"),
    ("DELETE FROM zcdp_charges", "zcdp_charges["),
])
def test_caps_and_zcdp_spend_agree_with_the_log(services: Services, client, alice, edit: str,  # noqa: ANN001
                                                expected: str) -> None:
    """Lowering what the caps across grants or a zCDP grant have spent would buy more queries: it is reported."""
    body = services.policies.grant("g-2026-001").model_dump(mode="json")
    body.update(id="g-zcdp", accounting="zcdp")
    services.policies.apply_grant(Grant.model_validate(body), "admin")
    r = client.post("/v1/query", json={"sql": SQL, "rho": 0.01, "grant": "g-zcdp"}, headers=alice)
    assert r.status_code == 200, r.json
    query(client, alice, "g-2026-001", 0.5)
    assert verify(services.settings.state_dir)[0] == 0
    with attacker(services) as conn:
        conn.execute(edit)
    code, out = verify(services.settings.state_dir)
    assert code == 1 and expected in out, out


def test_a_forged_check_override_is_detected(services: Services, client, alice) -> None:  # noqa: ANN001
    """An override row nobody signed for would let reviewers approve a file that failed its checks."""
    import io

    r = client.post("/v1/exports", headers=alice, content_type="multipart/form-data",
                    data={"grant": "g-2026-001", "title": "t", "justification": "j",
                          "files": [(io.BytesIO(b"sex,n\nfemale,3\n"), "small.csv")]})
    assert r.status_code == 201, r.json
    rid = r.json["id"]
    assert verify(services.settings.state_dir)[0] == 0
    digest = services.db.read("SELECT sha256 FROM export_files WHERE request_id = ?", (rid,))[0]["sha256"]
    with attacker(services) as conn:
        conn.execute("INSERT INTO export_overrides (request_id, grant_id, round, admin, reason, files, ts)"
                     " VALUES (?, 'g-2026-001', 1, 'admin', 'fine', ?, 'now')",
                     (rid, json.dumps({"small.csv": digest})))
    code, out = verify(services.settings.state_dir)
    assert code == 1 and f"export_overrides[{rid}/1/admin].row: the table has (present), the log says (no event)" in out


def test_oversight_states_agree_with_the_log(services: Services, client, alice) -> None:  # noqa: ANN001
    """Approving a declaration, closing a case or hiding an alert directly in the tables is reported."""
    from sandbox import cases
    from sandbox.monitoring import raise_alert

    r = client.post("/v1/offerings", headers=alice, json={"grant": "g-2026-001", "kind": "product",
                                                          "name": "Clinic map", "description": "a map"})
    assert r.status_code == 201, r.json
    case_id = cases.file_public(services, "feedback", {"subject": "s", "message": "m"}, "10.9.9.9")
    alert_id = raise_alert(services, "manual", "test", None, None, "a test alert", {})
    assert verify(services.settings.state_dir)[0] == 0
    with attacker(services) as conn:
        conn.execute("UPDATE offerings SET status = 'approved'")
        conn.execute("UPDATE cases SET status = 'closed'")
        conn.execute("UPDATE alerts SET acknowledged_at = 'now', acknowledged_by = 'mallory'")
    code, out = verify(services.settings.state_dir)
    assert code == 1
    assert 'status: the table has "approved", the log says "submitted"' in out
    assert f'cases[{case_id}].status: the table has "closed", the log says "open"' in out
    assert f"alerts[{alert_id}].acknowledged: the table has true, the log says false" in out
