"""`grants apply --dry-run` runs exactly the checks of the real apply (one function, rolled back);
blank operator or purpose is refused."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from sandbox.cli import cli

REPO = Path(__file__).resolve().parents[2]
GRANT_FILE = REPO / "policies" / "grants" / "g-2026-001.yaml"


@pytest.fixture
def run(tmp_path: Path, demo_data_root: Path):  # noqa: ANN201
    runner = CliRunner()
    env = {"SANDBOX_STATE": str(tmp_path / "state"), "SANDBOX_DATA_ROOT": str(demo_data_root)}

    def invoke(*args: str) -> tuple[int, str]:
        result = runner.invoke(cli, [*args], env=env)
        return result.exit_code, result.output

    code, out = invoke("datasets", "register", *map(str, sorted((REPO / "policies" / "datasets").glob("*.yaml"))))
    assert code == 0, out
    return invoke


def _variant(tmp_path: Path, name: str, **changes: object) -> str:
    doc = yaml.safe_load(GRANT_FILE.read_text())
    doc.update(changes)
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(doc))
    return str(path)


def _audit_count(run) -> int:  # noqa: ANN001
    code, out = run("audit", "verify")
    assert code == 0, out
    return int(out.split("intact: ")[1].split(" entries")[0])


def test_dry_run_agrees_with_the_real_apply(run, tmp_path: Path) -> None:  # noqa: ANN001
    assert run("grants", "apply", str(GRANT_FILE))[0] == 0
    variants = {
        "budget_raised": {"budget": {"epsilon": 20.0, "delta": 1e-6}},  # refused: a budget is never raised
        "budget_lowered": {"budget": {"epsilon": 5.0, "delta": 1e-6}},
        "purpose": {"purpose": "Regional clinic siting"},
        "unchanged": {},
        "ungranted_column": {"datasets": {"nhanes_2017": {"columns": ["seqn"]}}},
        "no_dataset": {"datasets": {"nope": {"columns": ["a"]}}},
        "resumed_by_file": {"status": "active"},
    }
    for name, changes in variants.items():
        path = _variant(tmp_path, name, **changes)
        before = _audit_count(run)
        dry_code, dry_out = run("grants", "apply", path, "--dry-run")
        assert _audit_count(run) == before, name  # a dry run changes nothing, not even the log
        real_code, real_out = run("grants", "apply", path)
        assert dry_code == real_code, (name, dry_out, real_out)
        if real_code == 0:
            outcome = real_out.strip().splitlines()[-1].split(": ")[1]
            assert f"would be {outcome}" in dry_out, (name, dry_out, real_out)
        else:
            assert dry_out.strip().splitlines()[-1] == real_out.strip().splitlines()[-1], name
        # reset between variants: the lowered budget stays lowered, which the next variants see
    code, out = run("grants", "apply", _variant(tmp_path, "raise_again", budget={"epsilon": 10.0, "delta": 1e-6}),
                    "--dry-run")
    assert code == 1 and "never raised" in out


def test_dry_run_of_a_revoked_grant_is_refused_like_the_apply(run, tmp_path: Path) -> None:  # noqa: ANN001
    assert run("grants", "apply", str(GRANT_FILE))[0] == 0
    assert run("grants", "revoke", "g-2026-001", "--reason", "misuse")[0] == 0
    path = _variant(tmp_path, "again", purpose="Something else")
    dry = run("grants", "apply", path, "--dry-run")
    real = run("grants", "apply", path)
    assert dry[0] == real[0] == 1 and "revocation is final" in dry[1]


def test_dry_run_of_a_new_grant_creates_nothing(run, tmp_path: Path) -> None:  # noqa: ANN001
    code, out = run("grants", "apply", str(GRANT_FILE), "--dry-run")
    assert code == 0 and "g-2026-001: would be created" in out
    assert run("grants", "list", "--format", "json")[1].strip() == "[]"
    assert run("budget", "show", "g-2026-001")[0] == 1  # no budget was left behind


@pytest.mark.parametrize("field", ["operator", "purpose"])
@pytest.mark.parametrize("value", ["", "   "])
def test_blank_operator_or_purpose_is_refused(run, tmp_path: Path, field: str, value: str) -> None:  # noqa: ANN001
    path = _variant(tmp_path, "blank", **{field: value})
    for args in (("grants", "apply", path, "--dry-run"), ("grants", "apply", path)):
        code, out = run(*args)
        # the field named; the wording depends on which of the model's checks catches it first
        assert code == 2 and f"{field}: " in out and ("blank" in out or "pattern" in out or "at least 1" in out)
    assert run("grants", "list", "--format", "json")[1].strip() == "[]"
