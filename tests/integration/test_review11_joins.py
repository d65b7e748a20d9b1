"""Attacks on joins from the second review of issue 11 (see each test's docstring).

Built on the real gateway of ``test_joins`` (real Parquet, real engine, real SQLite state).
"""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from pydantic import ValidationError
from test_joins import GRANT, _ask, _world

from sandbox.errors import BadRequest
from sandbox.policy.models import Column, Dataset
from sandbox.sql.analyze import analyze


def test_a_joined_column_name_cannot_be_declared() -> None:
    """A private column named like a joined lookup column (``regions__pop``) took the lookup
    column's bounds in the joined catalog entry while the engine read the private column (100x
    privacy loss) and it became queryable without being granted. Such names are refused now."""
    with pytest.raises(ValidationError, match="__"):
        Dataset.model_validate({
            "id": "visits", "title": "t", "source": "visits.parquet", "classification": "L2",
            "privacy_unit": "pid", "max_rows_per_unit": 3,
            "columns": {"pid": {"type": "id"}, "regions__pop": {"type": "int", "bounds": [0, 1000000]}},
        })


def test_a_join_whose_names_collide_is_refused(tmp_path: Path) -> None:
    """Defence in depth: a catalog entry that still holds a colliding name (stored before the rule)
    is refused the join with a clear 400, never merged."""
    _client, _headers, services = _world(tmp_path)
    catalog = dict(services.policies.datasets())
    visits = catalog["visits"]
    columns = {**visits.columns, "regions__pop": Column(type="int", bounds=(0, 1_000_000))}
    catalog["visits"] = Dataset.model_construct(**{**dict(visits), "columns": columns})
    granted = {"visits": {"region", "cost"}, "regions": {"code", "name", "pop"}}
    with pytest.raises(BadRequest) as err:
        analyze("SELECT SUM(r.pop) AS s FROM visits v JOIN regions r ON v.region = r.code", catalog, granted)
    assert err.value.code == "join_not_allowed"


def test_the_engine_join_reads_only_declared_private_columns(tmp_path: Path) -> None:
    """The engine's join lists the private columns it reads (never ``p.*``), so no column of the
    private table can stand in for a lookup column."""
    from sandbox.dp.planner import plan_dp
    from sandbox.engine_joins import from_sql
    from sandbox.sql._join import joined_dataset

    _client, _headers, services = _world(tmp_path)
    catalog = services.policies.datasets()
    granted = {"visits": {"region", "cost"}, "regions": {"code", "name", "pop"}}
    plan = analyze("SELECT SUM(r.pop) AS s FROM visits v JOIN regions r ON v.region = r.code", catalog, granted)
    sql = from_sql(plan_dp(plan, joined_dataset(catalog["visits"], catalog["regions"]), 1.0))
    assert "p.*" not in sql
    assert 'p."region"' in sql and 'l."pop" AS "regions__pop"' in sql


def test_a_lookup_refreshed_with_duplicate_keys_after_the_check_cannot_multiply_rows(tmp_path: Path) -> None:
    """The key's uniqueness was checked, then a refresh swapped in a lookup whose key repeats 20
    times before the join ran: counts were multiplied 20x at an unchanged sensitivity. The join
    now keeps only lookup rows whose key is unique, whatever file it runs on."""
    client, headers, services = _world(tmp_path)
    data = tmp_path / "data"
    truth = _ask(client, headers, "SELECT COUNT(*) AS n FROM visits WHERE region = 'n'", 1.0).get_json()["rows"][0][0]
    original = services.engine.lookup_key_unique

    def racing(lookup: str, key: str) -> bool:
        ok = original(lookup, key)
        pq.write_table(pa.table({"code": ["n"] * 20 + ["s", "e"], "name": ["North"] * 20 + ["South", "East"],
                                 "pop": [1] * 22}), data / "regions.parquet")
        services.engine.ensure(services.policies.datasets())
        return ok

    services.engine.lookup_key_unique = racing  # type: ignore[method-assign]
    sql = "SELECT r.name, COUNT(*) AS n FROM visits v JOIN regions r ON v.region = r.code GROUP BY r.name"
    reply = _ask(client, headers, sql, 1.0)
    assert reply.status_code in (200, 503), reply.get_json()
    if reply.status_code == 200:
        rows = dict(reply.get_json()["rows"])
        # 'n' repeats: none of its rows join (never 20x); noise at scale 3 / (1/1)
        assert rows.get("North", 0) < truth / 2, (rows, truth)


def test_a_private_join_with_an_unbounded_int_column_answers(tmp_path: Path) -> None:
    """Every join of two private datasets returned 503 when the dataset had an int column without
    bounds: the engine asked for its fixed-point column, which only bounded columns have."""
    import textwrap

    from sandbox.policy.loader import load_policies
    from sandbox.state.grants_store import apply_policies

    client, headers, services = _world(tmp_path)
    table = pq.read_table(tmp_path / "data" / "visits.parquet")
    table = table.append_column("code", pa.array([7] * table.num_rows))
    pq.write_table(table, tmp_path / "data" / "visits.parquet")
    policies = tmp_path / "policies"
    yaml = (policies / "datasets" / "visits.yaml").read_text()
    (policies / "datasets" / "visits.yaml").write_text(yaml.rstrip() + "\n  code: {type: int}\n")
    grant = (policies / "grants" / "g-join.yaml").read_text().replace("[region, cost]", "[region, cost, code]")
    (policies / "grants" / "g-join.yaml").write_text(textwrap.dedent(grant))
    apply_policies(services.policies, load_policies(policies), "test")
    reply = _ask(client, headers, "SELECT COUNT(*) AS n FROM visits v JOIN other o ON v.pid = o.pid", 0.5)
    assert reply.status_code == 200, reply.get_json()
    reply = _ask(client, headers, "SELECT COUNT(*) AS n FROM visits v JOIN other o ON v.pid = o.pid "
                 "WHERE v.code = 7", 0.5)
    assert reply.status_code == 200, reply.get_json()
    assert GRANT
