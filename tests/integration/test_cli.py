"""The `sandbox` CLI through click's runner and its real entry point, against real state files."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from sandbox.cli import cli

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def state(tmp_path: Path) -> Path:
    return tmp_path / "state"


@pytest.fixture
def run(state: Path, demo_data_root: Path):  # noqa: ANN201
    """The CLI as the admin: `sandbox admin init` at install wrote the credential to <keys>/admin.token."""
    runner = CliRunner()
    base = {"SANDBOX_STATE": str(state), "SANDBOX_DATA_ROOT": str(demo_data_root)}

    def invoke(*args: str, code: int = 0, env: dict[str, str] | None = None) -> str:
        result = runner.invoke(cli, [*args], env={**base, "SANDBOX_ADMIN_TOKEN": "", **(env or {})},
                               catch_exceptions=False)
        assert result.exit_code == code, result.output
        return result.output

    assert "admin credential for admin written to" in invoke("admin", "init")
    return invoke


@pytest.fixture
def registered(run) -> None:  # noqa: ANN001
    run("datasets", "register", *map(str, sorted((REPO / "policies" / "datasets").glob("*.yaml"))))


def test_help_on_every_command() -> None:
    runner = CliRunner()
    groups = {"": cli}
    for name, cmd in cli.commands.items():
        assert runner.invoke(cli, [name, "--help"]).exit_code == 0
        for sub in getattr(cmd, "commands", {}):
            result = runner.invoke(cli, [name, sub, "--help"])
            assert result.exit_code == 0 and "Usage" in result.output, (name, sub)
    assert groups


def test_grants_lifecycle(run, registered, tmp_path: Path) -> None:  # noqa: ANN001
    path = str(REPO / "policies" / "grants" / "g-2026-001.yaml")
    assert "g-2026-001: created" in run("grants", "apply", path)
    assert "g-2026-001: unchanged" in run("grants", "apply", path)
    changed = yaml.safe_load(Path(path).read_text())
    changed["purpose"] = "Regional clinic siting"
    changed_path = tmp_path / "g.yaml"
    changed_path.write_text(yaml.safe_dump(changed))
    out = run("grants", "apply", str(changed_path), "--dry-run")
    assert 'purpose: "Community health service planning" -> "Regional clinic siting"' in out
    assert "would be changed" in out
    listing = json.loads(run("grants", "list", "--format", "json"))
    assert listing[0]["status"] == "active" and listing[0]["epsilon_total"] == 10.0
    assert "suspended" in run("grants", "suspend", "g-2026-001", "--reason", "check")
    # a file saying `active` does not resume a suspended grant
    run("grants", "apply", str(changed_path))
    assert json.loads(run("grants", "list", "--format", "json"))[0]["status"] == "suspended"
    run("grants", "resume", "g-2026-001")
    run("grants", "revoke", "g-2026-001", "--reason", "breach of purpose")
    out = run("grants", "resume", "g-2026-001", code=1)
    assert "revocation is final" in out
    assert "revocation is final" in run("grants", "apply", path, code=1)  # the file cannot undo it
    assert json.loads(run("grants", "list", "--format", "json"))[0]["status"] == "revoked"
    out = run("grants", "revoke", "g-2026-001", code=2)  # --reason is required
    assert "reason" in out.lower()


def test_invalid_grant_file_exit_2_with_field(run, registered, tmp_path: Path) -> None:  # noqa: ANN001
    bad = yaml.safe_load((REPO / "policies" / "grants" / "g-2026-001.yaml").read_text())
    bad["budget"] = {"epsilon": "lots"}
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(bad))
    out = run("grants", "apply", str(path), code=2)
    assert "budget.epsilon" in out and str(path) in out


def test_l4_dataset_never_granted(run, tmp_path: Path) -> None:  # noqa: ANN001
    ds = yaml.safe_load((REPO / "policies" / "datasets" / "nhanes_2017.yaml").read_text())
    ds["classification"] = "L4"
    (tmp_path / "n.yaml").write_text(yaml.safe_dump(ds))
    run("datasets", "register", str(tmp_path / "n.yaml"))
    run("datasets", "register", str(REPO / "policies" / "datasets" / "adult_income.yaml"))
    out = run("grants", "apply", str(REPO / "policies" / "grants" / "g-2026-001.yaml"), code=2)
    assert "L4" in out


def test_budget_show_and_tokens(run, registered) -> None:  # noqa: ANN001
    run("grants", "apply", str(REPO / "policies" / "grants" / "g-2026-001.yaml"))
    assert "epsilon total 10, spent 0, remaining 10" in run("budget", "show", "g-2026-001")
    token = run("tokens", "create", "alice").strip()
    assert token.startswith("sbx_")
    assert "no budget for grant nope" in run("budget", "show", "nope", code=1)


def test_audit_verify_detects_tampering(run, registered, state: Path) -> None:  # noqa: ANN001
    run("grants", "apply", str(REPO / "policies" / "grants" / "g-2026-001.yaml"))
    assert "audit log intact" in run("audit", "verify")
    import sqlite3

    con = sqlite3.connect(state / "sandbox.db")
    con.execute("UPDATE audit SET actor = 'someone-else' WHERE seq = 1")
    con.commit()
    con.close()
    out = run("audit", "verify", code=1)
    assert "TAMPERED: entry 1" in out


def test_audit_export_formats(run, registered, tmp_path: Path) -> None:  # noqa: ANN001
    run("grants", "apply", str(REPO / "policies" / "grants" / "g-2026-001.yaml"))
    lines = run("audit", "export").strip().splitlines()
    assert all("hash" in json.loads(line) for line in lines)
    csv_out = run("audit", "export", "--format", "csv", "--since", "2000-01-01")
    assert csv_out.splitlines()[0].startswith("seq,ts,actor,action")
    assert "--since must be a date" in run("audit", "export", "--since", "yesterday", code=2)


def test_datasets_validate_against_parquet(run, demo_data_root: Path, tmp_path: Path) -> None:  # noqa: ANN001
    good = REPO / "policies" / "datasets" / "nhanes_2017.yaml"
    assert "ok" in run("datasets", "validate", str(good), "--data-root", str(demo_data_root))
    ds = yaml.safe_load(good.read_text())
    ds["columns"]["blood_type"] = {"type": "category", "values": ["a", "b"]}
    ds["columns"]["sex"] = {"type": "int", "bounds": [0, 1]}
    (tmp_path / "x.yaml").write_text(yaml.safe_dump(ds))
    out = run("datasets", "validate", str(tmp_path / "x.yaml"), "--data-root", str(demo_data_root), code=1)
    assert "columns.blood_type: not in" in out and "columns.sex: declared int" in out


def test_real_entry_point(tmp_path: Path) -> None:
    exe = shutil.which("sandbox") or str(Path(sys.executable).parent / "sandbox")
    state = str(tmp_path / "state")
    refused = subprocess.run([exe, "tokens", "create", "bob", "--state", state], capture_output=True, text=True)
    assert refused.returncode == 1 and "needs an admin credential" in refused.stderr
    subprocess.run([exe, "admin", "init", "--state", state], capture_output=True, text=True, check=True)
    out = subprocess.run([exe, "tokens", "create", "bob", "--state", state],
                         capture_output=True, text=True, check=True)
    assert out.stdout.startswith("sbx_")
    bad = subprocess.run([exe, "grants", "suspend", "nope", "--state", state], capture_output=True, text=True)
    assert bad.returncode == 1 and "no grant nope" in bad.stderr and "Traceback" not in bad.stderr


def test_usage_report_command(run, registered, state: Path) -> None:  # noqa: ANN001
    import datetime as dt

    run("grants", "apply", str(REPO / "policies" / "grants" / "g-2026-001.yaml"))
    period = dt.datetime.now(dt.UTC).strftime("%Y-%m")
    policies = str(REPO / "policies")
    report = json.loads(run("usage", "report", "--period", period, "--policies", policies, "--format", "json"))
    assert report[0]["grant"] == "g-2026-001" and report[0]["total"] == "0.00"  # public welfare: free
    assert run("usage", "report", "--period", period, "--policies", policies, "--format", "csv").startswith("period,")
    assert "period" in run("usage", "report", "--period", "2026-13", "--policies", policies, code=2)


def test_datasets_import_registers_and_builds(run, demo_data_root: Path, state: Path, tmp_path: Path) -> None:  # noqa: ANN001
    files = [str(p) for p in sorted((REPO / "policies" / "datasets").glob("*.yaml"))]
    out = run("datasets", "import", *files, "--data-root", str(demo_data_root))
    assert "nhanes_2017: created" in out and "engine: ready" in out
    assert list((state / "engine").glob("catalog-*.duckdb"))
    assert "nhanes_2017" in run("datasets", "list")
    ds = yaml.safe_load((REPO / "policies" / "datasets" / "adult_income.yaml").read_text())
    ds["id"] = "adult_copy"
    ds["columns"]["hours"] = {"type": "int", "bounds": [0, 99]}
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump(ds))
    out = run("datasets", "import", str(tmp_path / "bad.yaml"), "--data-root", str(demo_data_root), code=1)
    assert "columns.hours: not in" in out and "adult_copy" not in run("datasets", "list")


MUTATING = [
    ("datasets", "register", str(REPO / "policies" / "datasets" / "nhanes_2017.yaml")),
    ("grants", "apply", str(REPO / "policies" / "grants" / "g-2026-001.yaml")),
    ("grants", "suspend", "g-2026-001"),
    ("grants", "resume", "g-2026-001"),
    ("grants", "revoke", "g-2026-001", "--reason", "x"),
    ("tokens", "create", "mallory"),
    ("tokens", "revoke", "alice"),
    ("audit", "rotate-key"),
    ("audit", "rotate-signing-key"),
    ("audit", "checkpoint"),
    ("admin", "init", "--user", "mallory"),
]


@pytest.mark.parametrize("args", MUTATING, ids=lambda a: " ".join(a[:2]))
def test_commands_that_change_state_need_the_admin_credential(run, registered, state: Path, tmp_path: Path,  # noqa: ANN001
                                                              args: tuple[str, ...]) -> None:
    before = len(run("audit", "export").splitlines())
    api_token = run("tokens", "create", "alice").strip()  # a valid token, but not an admin credential
    for presented in ({"SANDBOX_ADMIN_TOKEN_FILE": str(tmp_path / "none")},
                      {"SANDBOX_ADMIN_TOKEN": "sbxadm_guessed"},
                      {"SANDBOX_ADMIN_TOKEN": api_token}):
        out = run(*args, code=1, env=presented)
        assert "needs an admin credential" in out
    assert len(run("audit", "export").splitlines()) == before + 1  # only the token.created above


def test_the_actor_is_who_the_credential_says(run, registered, state: Path) -> None:  # noqa: ANN001
    run("grants", "apply", str(REPO / "policies" / "grants" / "g-2026-001.yaml"))
    assert "No such option" in run("grants", "suspend", "g-2026-001", "--actor", "someone", code=2)
    run("grants", "suspend", "g-2026-001", "--reason", "check")
    token = run("tokens", "create", "alice").strip()
    run("tokens", "revoke", "alice")
    entries = [json.loads(line) for line in run("audit", "export").splitlines()]
    by_action = {e["action"]: e for e in entries}
    assert entries[0]["action"] == "token.created" and entries[0]["actor"].startswith("os:")  # admin init
    assert entries[0]["detail"]["scope"] == "admin"
    assert by_action["grant.created"]["actor"] == "admin"
    assert by_action["grant.suspended"]["actor"] == "admin"
    created = [e for e in entries if e["action"] == "token.created" and e["detail"]["user"] == "alice"]
    assert created and created[0]["actor"] == "admin"
    assert token not in json.dumps(entries)  # only its hash is logged
    assert by_action["token.revoked"]["actor"] == "admin" and by_action["token.revoked"]["detail"]["user"] == "alice"


def test_a_second_admin_needs_the_first(run, state: Path, tmp_path: Path) -> None:  # noqa: ANN001
    other = tmp_path / "other.token"
    out = run("admin", "init", "--user", "mallory", "--output", str(other), code=1,
              env={"SANDBOX_ADMIN_TOKEN_FILE": str(tmp_path / "none")})
    assert "needs an admin credential" in out and not other.exists()
    run("admin", "init", "--user", "dana", "--output", str(other))
    assert other.stat().st_mode & 0o077 == 0
    assert run("admin", "whoami", env={"SANDBOX_ADMIN_TOKEN_FILE": str(other)}).strip() == "dana"


def test_first_start_creates_or_registers_the_admin_credential(tmp_path: Path, monkeypatch) -> None:  # noqa: ANN001
    from sandbox.cli.serve import ensure_admin
    from sandbox.services import Services, Settings

    svc = Services(Settings(state_dir=tmp_path / "state", data_root=tmp_path))
    monkeypatch.delenv("SANDBOX_ADMIN_TOKEN", raising=False)
    ensure_admin(svc)  # no credential anywhere: one is created in the keys directory, 0600
    path = tmp_path / "keys" / "admin.token"
    assert path.stat().st_mode & 0o077 == 0 and (tmp_path / "keys").stat().st_mode & 0o077 == 0
    token = path.read_text().strip()
    assert svc.tokens.admin_for(token) == "admin" and svc.tokens.user_for(token) is None  # not an API token
    ensure_admin(svc)
    assert path.read_text().strip() == token and len(svc.tokens.records()) == 1
    # a deployment that provides the credential (the stack's secret): registered once, never after revocation
    monkeypatch.setenv("SANDBOX_ADMIN_TOKEN", "sbxadm_from-the-deployment")
    ensure_admin(svc)
    assert svc.tokens.admin_for("sbxadm_from-the-deployment") == "admin"
    svc.tokens.revoke_user("admin", actor="admin", scope="admin")
    ensure_admin(svc)
    assert svc.tokens.admin_for("sbxadm_from-the-deployment") is None


def test_an_admin_token_file_inside_the_state_is_refused(run, state: Path) -> None:  # noqa: ANN001
    inside = state / "admin.token"
    out = run("admin", "init", "--user", "x", code=2, env={"SANDBOX_ADMIN_TOKEN_FILE": str(inside)})
    assert "inside the state directory" in out and not inside.exists()


def test_serve_refuses_a_catalog_that_does_not_match_its_sources(run, state: Path, tmp_path: Path) -> None:  # noqa: ANN001
    """The check `datasets register` makes also guards the policies `serve` applies at start."""
    policies = tmp_path / "policies"
    shutil.copytree(REPO / "policies", policies)
    path = policies / "datasets" / "nhanes_2017.yaml"
    ds = yaml.safe_load(path.read_text())
    ds["columns"]["sex"] = {"type": "int", "bounds": [0, 1]}
    path.write_text(yaml.safe_dump(ds))
    out = run("serve", "--policies", str(policies), "--port", "1", code=2)
    assert "dataset nhanes_2017: columns.sex: declared int" in out and "nothing applied" in out
    assert "nhanes_2017" not in run("datasets", "list")
