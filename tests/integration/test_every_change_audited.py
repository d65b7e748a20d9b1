"""Every mutating API and CLI path leaves its audit event, and the state still agrees with the log.

Each step is driven through the real Flask app or the real CLI on the same state. Around each
step the state tables are fingerprinted: a step that changed any table must have appended at
least one audit event, and the events it appended must include the ones the step is about.
"""

from __future__ import annotations

import hashlib
import io
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from sandbox.cli import cli
from sandbox.services import Services
from sandbox.state.db import DERIVED_TABLES
from sandbox.state.replay import reconcile

REPO = Path(__file__).resolve().parents[2]
GRANT = "g-2026-001"
SQL = "SELECT sex, COUNT(*) AS n FROM nhanes_2017 GROUP BY sex"


def fingerprint(services: Services) -> dict[str, str]:
    tables = [r["name"] for r in services.db.read(
        "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'"
        " AND name NOT IN ('audit', 'audit_head')") if r["name"] not in DERIVED_TABLES]
    out = {}
    for table in tables:
        rows = services.db.read(f"SELECT * FROM {table}")  # noqa: S608 - names from sqlite_master
        out[table] = hashlib.sha256(repr(sorted(tuple(r) for r in rows)).encode()).hexdigest()
    return out


@pytest.fixture
def cli_run(services: Services) -> Callable[..., str]:
    runner = CliRunner()
    state = str(services.settings.state_dir)
    admin_token = services.tokens.create("admin", actor="install", scope="admin")

    def invoke(*args: str) -> str:
        env = {"SANDBOX_STATE": state, "SANDBOX_ADMIN_TOKEN": admin_token,
               "SANDBOX_DATA_ROOT": str(services.settings.data_root)}
        result = runner.invoke(cli, list(args), env=env, catch_exceptions=False)
        assert result.exit_code == 0, result.output
        return result.output

    return invoke


def test_every_mutating_path_writes_its_audit_event(services: Services, client, cli_run, tmp_path: Path) -> None:  # noqa: ANN001, C901
    services.settings.internal_token = "internal-secret"
    users = {u: {"Authorization": f"Bearer {services.tokens.create(u, actor='admin')}"}
             for u in ("alice", "carol", "dave", "admin")}
    internal = {"Authorization": "Bearer internal-secret"}
    state: dict[str, Any] = {}

    def released_table(reverse: bool = False) -> bytes:
        """The released noisy answer as a CSV (what the airlock's provenance checks accept)."""
        rows = sorted(state["answer"], reverse=reverse)
        return ("sex,n\n" + "".join(f"{sex},{n}\n" for sex, n in rows)).encode()

    def run_query() -> None:
        r = client.post("/v1/query", headers=users["alice"], json=query)
        assert r.status_code == 200, r.json
        state["answer"] = r.json["rows"]

    def change_files() -> None:
        r = client.post(f"/v1/exports/{state['rid']}/files", headers=users["alice"],
                        content_type="multipart/form-data",
                        data={"files": [(io.BytesIO(released_table(reverse=True)), "table.csv")]})
        assert r.status_code == 200, r.json

    def submit_blocked() -> None:
        r = client.post("/v1/exports", headers=users["alice"], content_type="multipart/form-data",
                        data={"grant": GRANT, "title": "t", "justification": "j",
                              "files": [(io.BytesIO(b"sex,n\nfemale,3\n"), "small.csv")]})
        assert r.status_code == 201, r.json
        state["rid"] = r.json["id"]

    def refused_upload() -> None:
        r = client.post("/v1/exports", headers=users["alice"], content_type="multipart/form-data",
                        data={"grant": GRANT, "title": "t", "justification": "j",
                              "files": [(io.BytesIO(b"MZ\x90\x00binary"), "tool.exe")]})
        assert r.status_code == 400, r.json

    def submit() -> None:
        r = client.post("/v1/exports", headers=users["alice"], content_type="multipart/form-data",
                        data={"grant": GRANT, "title": "t", "justification": "j",
                              "files": [(io.BytesIO(released_table()), "table.csv")]})
        assert r.status_code == 201, r.json
        state["rid"] = r.json["id"]

    def vote(user: str, decision: str) -> Callable[[], None]:
        def go() -> None:
            r = client.post(f"/v1/exports/{state['rid']}/reviews", headers=users[user],
                            json={"decision": decision, "comment": "because"})
            assert r.status_code == 200, r.json
        return go

    def post(path: str, headers: dict[str, str], **kw: object) -> Callable[[], None]:
        def go() -> None:
            r = client.post(path.format(**state), headers=headers, **kw)
            assert r.status_code in (200, 201), r.get_json()
        return go

    def get(path: str, headers: dict[str, str]) -> Callable[[], None]:
        def go() -> None:
            r = client.get(path.format(**state), headers=headers)
            assert r.status_code == 200, r.get_json()
        return go

    def refused_query() -> None:
        r = client.post("/v1/query", headers=users["alice"], json={"sql": "SELECT * FROM nhanes_2017",
                                                                   "epsilon": 0.1, "grant": GRANT})
        assert r.status_code == 400

    changed_dataset = tmp_path / "adult.yaml"
    changed_dataset.write_text((REPO / "policies" / "datasets" / "adult_income.yaml").read_text()
                               .replace("title: ", "title: Revised ", 1))
    changed_grant = tmp_path / "grant.yaml"
    changed_grant.write_text((REPO / "policies" / "grants" / f"{GRANT}.yaml").read_text()
                             .replace("purpose: ", "purpose: Revised ", 1))
    query = {"sql": SQL, "epsilon": 0.5, "grant": GRANT}
    steps: list[tuple[str, Callable[[], None], set[str]]] = [
        ("query", run_query, {"query.charged", "query.answered"}),
        ("replay", post("/v1/query", users["alice"], json=query), {"query.replayed"}),
        ("refusal", refused_query, {"query.refused"}),
        ("export submit", submit, {"export.submitted"}),
        ("vote", vote("carol", "approve"), {"export.reviewed"}),
        ("return", vote("dave", "return"), {"export.returned"}),
        ("change files", change_files, {"export.files_changed"}),
        ("resubmit", post("/v1/exports/{rid}/resubmit", users["alice"], json={"comment": "fixed"}),
         {"export.resubmitted"}),
        ("vote 2", vote("carol", "approve"), {"export.reviewed"}),
        ("approve", vote("dave", "approve"), {"export.approved"}),
        ("download", get("/v1/exports/{rid}/files/table.csv", users["alice"]),
         {"export.released", "export.downloaded"}),
        ("submit blocked", submit_blocked, {"export.submitted"}),
        ("override", post("/v1/exports/{rid}/override", users["admin"], json={"reason": "a published total"}),
         {"export.override"}),
        ("refused upload", refused_upload, {"export.upload_refused"}),
        ("withdraw", post("/v1/exports/{rid}/withdraw", users["alice"], json={"reason": "no"}), {"export.withdrawn"}),
        ("server start", post("/v1/internal/server-events", internal,
                              json={"user": "alice", "grant": GRANT, "event": "started"}), {"server.started"}),
        ("server stop", post("/v1/internal/server-events", internal, json={"user": "alice", "event": "stopped"}),
         {"server.stopped"}),
        ("checkpoint", lambda: services.checkpoints.sign("test"), {"audit.checkpoint"}),
        ("cli datasets register", lambda: cli_run("datasets", "register", str(changed_dataset)), {"dataset.changed"}),
        ("cli grants apply", lambda: cli_run("grants", "apply", str(changed_grant)), {"grant.changed"}),
        ("cli suspend", lambda: cli_run("grants", "suspend", GRANT, "--reason", "r"), {"grant.suspended"}),
        ("cli resume", lambda: cli_run("grants", "resume", GRANT), {"grant.resumed"}),
        ("cli tokens create", lambda: cli_run("tokens", "create", "bob"), {"token.created"}),
        ("cli tokens revoke", lambda: cli_run("tokens", "revoke", "bob"), {"token.revoked"}),
        ("cli admin init", lambda: cli_run("admin", "init", "--user", "erin", "--output", str(tmp_path / "t")),
         {"token.created"}),
        ("cli rotate key", lambda: cli_run("audit", "rotate-key"), {"audit.key_rotated"}),
        ("cli checkpoint", lambda: cli_run("audit", "checkpoint"), {"audit.checkpoint"}),
        ("cli rotate signing key", lambda: cli_run("audit", "rotate-signing-key"),
         {"audit.signing_key_rotated", "audit.checkpoint"}),
        ("submit 3", submit, {"export.submitted"}),
        ("cli revoke", lambda: cli_run("grants", "revoke", GRANT, "--reason", "done"),
         {"grant.revoked", "export.withdrawn"}),
    ]
    changed_steps = 0
    for name, step, expected in steps:
        before, seq_before = fingerprint(services), services.audit.head()[0]
        step()
        after = services.audit.head()[0]
        new = {e.action for e in services.audit.iter_entries() if e.seq > seq_before}
        changed = after_tables(before, fingerprint(services))
        assert expected <= new, (name, new)
        assert not changed or after > seq_before, (name, changed)
        changed_steps += bool(changed)
    # the fingerprint sees the changes; only a replay, the two refusals and the key rotation need change no
    # table (a refusal may raise an alert, which is a change with its own event)
    assert changed_steps >= len(steps) - 4
    result = services.audit.verify()
    assert result.ok, result.problems
    assert reconcile(services.db, services.audit) == []


def after_tables(before: dict[str, str], after: dict[str, str]) -> set[str]:
    return {t for t in set(before) | set(after) if before.get(t) != after.get(t)}
