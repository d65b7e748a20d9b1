"""50 concurrent queries against a running `sandbox serve` that together exceed the budget."""

from __future__ import annotations

import shutil
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import requests
import yaml
from serving import serving

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def served(tmp_path: Path, demo_data_root: Path, warm_engine_dir: Path):  # noqa: ANN201
    policies = tmp_path / "policies"
    shutil.copytree(REPO / "policies", policies)
    grant_path = policies / "grants" / "g-2026-001.yaml"
    grant = yaml.safe_load(grant_path.read_text())
    grant.update(budget={"epsilon": 10.0}, max_epsilon_per_query=1.0)
    grant_path.write_text(yaml.safe_dump(grant))
    state = tmp_path / "state"
    shutil.copytree(warm_engine_dir, state / "engine")
    with serving(tmp_path, policies, state, demo_data_root) as (url, headers):
        yield url, headers, state


def test_fifty_concurrent_queries_never_overspend(served) -> None:  # noqa: ANN001
    url, headers, state = served

    def one(i: int) -> tuple[int, dict]:
        body = {"sql": f"SELECT COUNT(*) AS n{i} FROM nhanes_2017", "epsilon": 0.5, "grant": "g-2026-001"}
        r = requests.post(url + "/v1/query", json=body, headers=headers, timeout=120)
        return r.status_code, r.json()

    with ThreadPoolExecutor(max_workers=50) as pool:
        results = list(pool.map(one, range(50)))
    statuses = sorted(s for s, _ in results)
    accepted = [b for s, b in results if s == 200]
    assert set(statuses) <= {200, 409}, statuses
    assert len(accepted) == 20  # 20 x 0.5 = the whole budget of 10
    assert all(b["error"]["code"] == "budget_exhausted" for s, b in results if s == 409)
    budget = requests.get(url + "/v1/budget", headers=headers, timeout=10).json()["grants"][0]
    assert budget["epsilon_spent"] == 10.0 and budget["epsilon_remaining"] == 0.0

    from sandbox.services import Services, Settings

    svc = Services(Settings(state_dir=state, data_root=state))
    assert svc.audit.verify().ok
    charged = {e["detail"]["query_id"] for e in svc.audit.entries() if e["action"] == "query.charged"}
    assert {b["query_id"] for b in accepted} <= charged
    assert len(charged) == 20
    refused = [e for e in svc.audit.entries() if e["action"] == "query.refused"]
    assert len(refused) == 30
