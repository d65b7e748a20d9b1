"""Refresh without downtime (issue 13, item 3), through the real Flask app, real DuckDB and SQLite.

The engine file is rebuilt in the background when the catalog or a source file changes; the only
fake is a gate at the process boundary (around the build child) that holds the build until the
test lets it finish, so that queries can be asked *during* it. What must hold: a query answered
during the build comes from the old file, planned with the old catalog entry (never a new bound
over old data); after the swap, from the new; a new dataset has no answer until built (503
``data_building`` with ``Retry-After``); access (grants, classification) follows the catalog in
force at once; a failed build leaves the old file serving, is audited and is not retried until
something changes; the swap and the catalog change are in the audit log, which still verifies.
"""

from __future__ import annotations

import shutil
import threading
from pathlib import Path

import duckdb
import pytest
from click.testing import CliRunner

import sandbox.engine
from sandbox.policy.models import Grant
from sandbox.services import Services

REPO = Path(__file__).resolve().parents[2]
GRANT = "g-2026-001"
NHANES = "SELECT sex, COUNT(*) AS n FROM nhanes_2017 GROUP BY sex"
ADULT = "SELECT COUNT(*) AS n FROM adult_income"


class Gate:
    """Around ``build_in_child`` (the process boundary): each build waits until released."""

    def __init__(self) -> None:
        self.real = sandbox.engine.build_in_child
        self.calls = 0
        self.started = threading.Event()
        self.open = threading.Event()

    def __call__(self, *args, **kwargs):  # noqa: ANN002, ANN003, ANN204
        self.calls += 1
        self.started.set()
        assert self.open.wait(120), "the test never released the build"
        return self.real(*args, **kwargs)


@pytest.fixture
def world(own_data: tuple[Services, Path], monkeypatch: pytest.MonkeyPatch):  # noqa: ANN201
    svc, root = own_data
    svc.engine.ensure(svc.policies.datasets())
    from gateway.app import create_app

    app = create_app(services=svc)
    app.config["TESTING"] = True
    gate = Gate()
    monkeypatch.setattr(sandbox.engine, "build_in_child", gate)
    headers = {"Authorization": f"Bearer {svc.tokens.create('alice')}"}
    # the copied data root has new inodes, so the start-up built (and audited) a file of its own
    start = [e["action"] for e in svc.audit.entries() if e["action"].startswith("engine.")]
    assert start == ["engine.catalog_changed", "engine.swapped"]
    MARK[svc] = svc.audit.head()[0]
    yield svc, root, app.test_client(), headers, gate
    gate.open.set()  # never leave a build waiting
    svc.engine.wait(120)


def _ask(client, headers, sql: str, epsilon: float):  # noqa: ANN001, ANN202
    return client.post("/v1/query", json={"sql": sql, "epsilon": epsilon, "grant": GRANT}, headers=headers)


MARK: dict[Services, int] = {}  # the audit log's head when the test began


def _actions(svc: Services, prefix: str = "engine.") -> list[dict]:
    """The engine's audit events since the test began."""
    return [e for e in svc.audit.entries() if e["action"].startswith(prefix) and e["seq"] > MARK[svc]]


def _verify(svc: Services) -> tuple[int, str]:
    from sandbox.cli import cli

    r = CliRunner().invoke(cli, ["audit", "verify", "--state", str(svc.settings.state_dir)],
                           env={"SANDBOX_ADMIN_TOKEN": ""}, catch_exceptions=False)
    return r.exit_code, r.output


def test_a_new_bound_is_answered_with_the_old_bound_from_the_old_file_until_the_swap(world) -> None:  # noqa: ANN001
    svc, _root, client, headers, gate = world
    before = _ask(client, headers, NHANES, 0.5).get_json()
    old_build, old_version = svc.engine.build_id, svc.engine.data_version("nhanes_2017")
    ds = svc.policies.datasets()["nhanes_2017"]
    assert ds.max_rows_per_unit == 1
    svc.policies.apply_dataset(ds.model_copy(update={"max_rows_per_unit": 2}), "admin")

    during = _ask(client, headers, NHANES, 0.4)
    assert during.status_code == 200, during.get_json()
    assert gate.started.wait(60) and svc.engine.building()  # the new file is being built meanwhile
    assert svc.engine.build_id == old_build
    # planned with the entry the old file was built from: one row per person, the old noise scale
    scale = during.get_json()["mechanism"]["scales"]["count(*)"]
    assert scale == pytest.approx(before["mechanism"]["scales"]["count(*)"] * 0.5 / 0.4)
    charged = [e for e in svc.audit.entries() if e["action"] == "query.charged"]
    assert charged[-1]["detail"]["data_version"] == old_version

    gate.open.set()
    assert svc.engine.wait(120) and not svc.engine.building()
    after = _ask(client, headers, NHANES, 0.4).get_json()
    assert after["cached"] is False and after["query_id"] != during.get_json()["query_id"]
    assert after["mechanism"]["scales"]["count(*)"] == pytest.approx(2 * scale)  # the new bound, on the new file
    new_build = svc.engine.build_id
    assert new_build != old_build and svc.engine.data_version("nhanes_2017") != old_version
    assert svc.ledger.state(GRANT).epsilon_spent == pytest.approx(1.3)  # nothing refunded or reset
    assert [p.name for p in svc.engine.engine_dir.glob("catalog-*.duckdb")] == [f"catalog-{new_build}.duckdb"]

    events = _actions(svc)
    assert [e["action"] for e in events] == ["engine.catalog_changed", "engine.swapped"]
    changed, swapped = (e["detail"] for e in events)
    assert changed == {"build": new_build, "serving": old_build, "added": [], "removed": [],
                       "changed": ["nhanes_2017"]}
    assert swapped["build"] == new_build and swapped["previous"] == old_build
    assert swapped["versions"]["nhanes_2017"] == svc.engine.data_version("nhanes_2017")
    assert swapped["rows"]["nhanes_2017"] > 0 and swapped["seconds"] >= 0
    assert all(e["actor"] == "gateway:engine" for e in events)
    seqs = {e["action"]: e["seq"] for e in svc.audit.entries()}
    assert seqs["dataset.changed"] < seqs["engine.catalog_changed"] < seqs["engine.swapped"]
    code, out = _verify(svc)
    assert code == 0, out


def test_a_refreshed_file_is_answered_from_the_old_data_until_the_swap(world) -> None:  # noqa: ANN001
    """A source file replaced under the same entry: the old rows answer until the new file is in force."""
    svc, root, client, headers, gate = world
    rows = duckdb.sql(f"SELECT COUNT(*) FROM '{root / 'adult_income.parquet'}'").fetchall()[0][0]
    first = _ask(client, headers, ADULT, 1.0).get_json()
    tmp = root / "adult_income.new.parquet"
    duckdb.sql(f"COPY (SELECT * FROM '{root / 'adult_income.parquet'}' LIMIT 5000) TO '{tmp}' (FORMAT parquet)")
    tmp.replace(root / "adult_income.parquet")
    during = _ask(client, headers, ADULT, 0.9).get_json()
    assert gate.started.wait(60)
    halfwidth = during["accuracy"]["ci_halfwidth"]["n"]
    assert abs(during["rows"][0][0] - rows) <= 3 * halfwidth  # the old rows
    gate.open.set()
    assert svc.engine.wait(120)
    after = _ask(client, headers, ADULT, 0.9).get_json()
    assert abs(after["rows"][0][0] - 5000) <= 3 * halfwidth  # the new rows
    assert first["query_id"] != after["query_id"]
    changed = _actions(svc, "engine.catalog_changed")[0]["detail"]
    assert changed["changed"] == ["adult_income"]


def test_a_new_dataset_has_no_answer_until_built(world) -> None:  # noqa: ANN001
    svc, root, client, headers, gate = world
    shutil.copy(root / "adult_income.parquet", root / "adult_copy.parquet")
    entry = svc.policies.datasets()["adult_income"].model_dump(mode="json")
    entry.update(id="adult_copy", source="adult_copy.parquet", budget=None, max_epsilon_per_operator=None)
    from sandbox.policy.models import Dataset

    svc.policies.apply_dataset(Dataset.model_validate(entry), "admin")
    body = svc.policies.grant(GRANT).model_dump(mode="json")
    body["datasets"]["adult_copy"] = {"columns": ["age", "sex"]}
    svc.policies.apply_grant(Grant.model_validate(body), "admin")
    spent = svc.ledger.state(GRANT).epsilon_spent

    r = _ask(client, headers, "SELECT COUNT(*) AS n FROM adult_copy", 0.5)
    assert r.status_code == 503 and r.get_json()["error"]["code"] == "data_building", r.get_json()
    assert 1 <= int(r.headers["Retry-After"]) <= 300
    assert svc.ledger.state(GRANT).epsilon_spent == spent  # refused before any charge
    assert _ask(client, headers, NHANES, 0.5).status_code == 200  # the others keep answering
    gate.open.set()
    assert svc.engine.wait(120)
    r = _ask(client, headers, "SELECT COUNT(*) AS n FROM adult_copy", 0.5)
    assert r.status_code == 200, r.get_json()
    assert _actions(svc, "engine.catalog_changed")[0]["detail"]["added"] == ["adult_copy"]


def test_access_follows_the_catalog_and_grants_in_force_at_once(world) -> None:  # noqa: ANN001
    """While the old file still serves, a reclassified dataset and a revoked grant are refused at once."""
    svc, _root, client, headers, gate = world
    assert _ask(client, headers, ADULT, 0.5).status_code == 200
    nhanes = svc.policies.datasets()["nhanes_2017"]
    svc.policies.apply_dataset(nhanes.model_copy(update={"max_rows_per_unit": 2}), "admin")  # a build starts
    assert _ask(client, headers, NHANES, 0.5).status_code == 200
    assert gate.started.wait(60) and svc.engine.building()
    adult = svc.policies.datasets()["adult_income"]
    svc.policies.apply_dataset(adult.model_copy(update={"classification": "L4"}), "admin")
    r = _ask(client, headers, ADULT, 0.5)
    assert r.status_code == 403 and r.get_json()["error"]["code"] == "grant_out_of_policy", r.get_json()
    svc.policies.set_status(GRANT, "revoked", "admin", "test")
    r = _ask(client, headers, NHANES, 0.5)
    assert r.status_code == 403, r.get_json()
    assert svc.engine.building()  # all of it before the new file was in force


def test_a_failed_build_leaves_the_old_file_serving_and_is_not_retried_until_a_change(world) -> None:  # noqa: ANN001
    svc, root, client, headers, gate = world
    gate.open.set()
    src = root / "adult_income.parquet"
    good = root / "adult_income.good"
    shutil.copy(src, good)
    first = _ask(client, headers, ADULT, 0.5).get_json()
    old_build = svc.engine.build_id
    broken = root / "adult_income.broken.parquet"  # a refresh that lost a declared column
    duckdb.sql(f"COPY (SELECT * EXCLUDE (occupation) FROM '{src}') TO '{broken}' (FORMAT parquet)")
    broken.replace(src)
    assert _ask(client, headers, ADULT, 0.5).get_json()["query_id"] == first["query_id"]  # the old file
    assert svc.engine.wait(120)
    assert svc.engine.build_id == old_build and gate.calls == 1
    for _ in range(3):  # still served, and no build is started again for the same failure
        r = _ask(client, headers, ADULT, 0.3)
        assert r.status_code == 200, r.get_json()
        assert not svc.engine.building()
    assert gate.calls == 1
    failed = _actions(svc, "engine.build_failed")
    assert len(failed) == 1 and failed[0]["detail"]["code"] == "import_failed"
    assert failed[0]["detail"]["serving"] == old_build
    shutil.copy(good, src)  # fixed: a change, so it is tried again
    assert _ask(client, headers, ADULT, 0.3).status_code == 200
    assert svc.engine.wait(120) and gate.calls == 2
    assert _actions(svc)[-1]["action"] == "engine.swapped"
    code, out = _verify(svc)
    assert code == 0, out


def test_a_swap_between_the_charge_and_the_engine_is_a_503_never_other_data(world, monkeypatch) -> None:  # noqa: ANN001
    """The pin contract is kept: a query planned on one file and swapped under is 503 ``data_refreshed``
    (spent, nothing released), never answered from the new file with the old plan."""
    svc, _root, client, headers, gate = world
    gate.open.set()
    exact = svc.engine.exact

    def swapped_first(plan, pin=None):  # noqa: ANN001, ANN202
        ds = svc.policies.datasets()["nhanes_2017"]
        svc.policies.apply_dataset(ds.model_copy(update={"max_rows_per_unit": 3}), "admin")
        svc.engine.ensure(svc.policies.datasets())
        return exact(plan, pin)

    monkeypatch.setattr(svc.engine, "exact", swapped_first)
    r = _ask(client, headers, NHANES, 0.5)
    assert r.status_code == 503 and r.get_json()["error"]["code"] == "data_refreshed", r.get_json()
    assert svc.ledger.state(GRANT).epsilon_spent == pytest.approx(0.5)


def test_the_old_file_is_closed_once_its_last_query_is_done(world) -> None:  # noqa: ANN001
    """After the swap nothing holds the old generation: its DuckDB (memory, the unlinked file) is released."""
    import gc
    import weakref

    svc, _root, client, headers, gate = world
    gate.open.set()
    assert _ask(client, headers, NHANES, 0.5).status_code == 200  # a cursor of this thread on the old file
    old = weakref.ref(svc.engine.serving())
    ds = svc.policies.datasets()["nhanes_2017"]
    svc.policies.apply_dataset(ds.model_copy(update={"max_rows_per_unit": 2}), "admin")
    assert _ask(client, headers, NHANES, 0.4).status_code == 200
    assert svc.engine.wait(120)
    assert _ask(client, headers, NHANES, 0.3).status_code == 200
    gc.collect()
    assert old() is None
