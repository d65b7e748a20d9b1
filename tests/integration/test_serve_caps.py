"""Caps across grants under 50 concurrent requests against a running `sandbox serve`."""

from __future__ import annotations

import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import requests
import yaml
from serving import serving

REPO = Path(__file__).resolve().parents[2]
GRANTS = ("g-2026-001", "g-2026-002")  # two grants of one operator, both held by alice


def _policies(tmp_path: Path, warm_engine_dir: Path, caps: dict) -> tuple[Path, Path]:
    """Two grants of one operator under the dataset's ``caps``; a state with a warm engine."""
    policies = tmp_path / "policies"
    shutil.copytree(REPO / "policies", policies)
    ds_path = policies / "datasets" / "nhanes_2017.yaml"
    ds_path.write_text(yaml.safe_dump({**yaml.safe_load(ds_path.read_text()), **caps}))
    first = yaml.safe_load((policies / "grants" / "g-2026-001.yaml").read_text())
    first.update(budget={"epsilon": 10.0}, max_epsilon_per_query=1.0)
    (policies / "grants" / "g-2026-001.yaml").write_text(yaml.safe_dump(first))
    (policies / "grants" / "g-2026-002.yaml").write_text(yaml.safe_dump({**first, "id": "g-2026-002"}))
    state = tmp_path / "state"
    shutil.copytree(warm_engine_dir, state / "engine")
    return policies, state


@pytest.mark.parametrize(
    ("caps", "affordable", "cap"),
    [
        ({"operator_caps": {"Acme Health Analytics Ltd.": 7.5}}, 15, "operator"),  # 7.5 / 0.5
        ({"budget": {"epsilon": 6.0}, "max_epsilon_per_operator": 9.0}, 12, "dataset"),
    ],
)
def test_fifty_concurrent_queries_across_two_grants_never_exceed_a_cap(  # noqa: PLR0913
    tmp_path: Path, demo_data_root: Path, warm_engine_dir: Path, caps: dict, affordable: int, cap: str
) -> None:
    policies, state = _policies(tmp_path, warm_engine_dir, caps)
    with serving(tmp_path, policies, state, demo_data_root, start_timeout=90) as (url, headers):
        def one(i: int) -> tuple[int, dict]:
            body = {"sql": f"SELECT COUNT(*) AS n{i} FROM nhanes_2017", "epsilon": 0.5, "grant": GRANTS[i % 2]}
            r = requests.post(url + "/v1/query", json=body, headers=headers, timeout=120)
            return r.status_code, r.json()

        with ThreadPoolExecutor(max_workers=50) as pool:
            results = list(pool.map(one, range(50)))
        accepted = [b for s, b in results if s == 200]
        assert {s for s, _ in results} <= {200, 409}
        assert len(accepted) == affordable
        refusals = [b["error"] for s, b in results if s == 409]
        assert all(e["code"] == "budget_exhausted" for e in refusals)
        assert {e["detail"]["cap"] for e in refusals} == {cap}  # each grant alone could afford 20
        budgets = requests.get(url + "/v1/budget", headers=headers, timeout=10).json()["grants"]
        assert sum(g["epsilon_spent"] for g in budgets) == affordable * 0.5
        shown = {c["cap"]: c for c in budgets[0]["caps"] if c["dataset"] == "nhanes_2017"}
        assert shown[cap]["epsilon_spent"] == affordable * 0.5 and shown[cap]["epsilon_remaining"] == 0.0

    from sandbox.services import Services, Settings

    svc = Services(Settings(state_dir=state, data_root=state))
    assert svc.audit.verify().ok
    assert svc.ledger.reconcile() == []
    charged = [e for e in svc.audit.entries() if e["action"] == "query.charged"]
    assert len(charged) == affordable
    out = subprocess.run([sys.executable, "-m", "sandbox.cli", "budget", "show", "--state", str(state)],
                         check=True, capture_output=True, text=True).stdout
    assert "operator Acme Health Analytics Ltd." in out and "nhanes_2017" in out
