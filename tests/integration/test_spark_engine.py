"""The Spark engine (real Spark in local mode, real DuckDB, the real Flask app) answers as the DuckDB engine.

One world of small Parquet files is built by both engines under one bounding key: the kept rows
are the same rows (every column, ``__unit`` and ``__row`` bit for bit), and the exact bounded
aggregates of many plans are equal before noise. The data holds values whose text forms agree in
both engines' PRF messages (strings, whole numbers, short decimals; see the README), NULLs, values
outside the bounds, units over the bound. Then a dataset marked ``engine: spark`` answers through
the gateway with noise, and an unknown engine name is refused when the catalog entry is read.
"""

from __future__ import annotations

import hashlib
import hmac
import random
import secrets
import shutil
import textwrap
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from sandbox.bounding import KEY_FILE
from sandbox.dp.planner import plan_dp
from sandbox.engines import PerDatasetEngine
from sandbox.errors import PolicyError
from sandbox.policy.loader import load_dataset, load_policies
from sandbox.policy.models import Dataset
from sandbox.services import Services, Settings
from sandbox.sql._join import joined_dataset
from sandbox.sql.analyze import analyze
from sandbox.state.grants_store import apply_policies

pytestmark = pytest.mark.spark
JAVA = shutil.which("java")
GRANT = "g-spark"
WARDS = ["a", "b", "c"]
TAGS = ['plain', 'quote " and \\ slash', 'é', '日本', 'tab\there', 'x/y']

VISITS = textwrap.dedent("""
    id: visits
    title: Clinic visits
    source: visits.parquet
    classification: L2
    privacy_unit: pid
    max_rows_per_unit: 3
    engine: {engine}
    columns:
      pid: {{type: id}}
      ward: {{type: category, values: [a, b, c]}}
      region: {{type: category, values: [n, s, e, w]}}
      tag: {{type: text}}
      code: {{type: int}}
      cost: {{type: int, bounds: [0, 100]}}
      score: {{type: float, bounds: [-2.5, 7.5], scale: 2}}
""")
OTHER = textwrap.dedent("""
    id: other
    title: Other visits of the same patients
    source: other.parquet
    classification: L2
    privacy_unit: pid
    max_rows_per_unit: 2
    engine: {engine}
    columns:
      pid: {{type: id}}
      kind: {{type: category, values: [x, y]}}
      dose: {{type: int, bounds: [0, 10]}}
""")
REGIONS = textwrap.dedent("""
    id: regions
    title: Regions
    source: regions.parquet
    classification: L1
    privacy_unit: row
    max_rows_per_unit: 1
    public: true
    key: code
    engine: {engine}
    columns:
      code: {{type: category, values: [n, s, e, w]}}
      name: {{type: category, values: [North, South, East, West]}}
      pop: {{type: int, bounds: [0, 10000]}}
""")
GRANT_YAML = textwrap.dedent(f"""
    id: {GRANT}
    operator: Spark Test Ltd.
    members: [alice]
    mode: scenario
    purpose: comparing engines
    datasets: {{visits: {{columns: [ward, region, tag, code, cost, score]}}, other: {{columns: [kind, dose]}},
                regions: {{columns: [code, name, pop]}}}}
    valid_from: 2020-01-01
    valid_until: 2099-12-31
    budget: {{epsilon: 10.0, delta: 1.0e-6}}
    max_epsilon_per_query: 1.0
""")


def _write_data(data: Path) -> None:
    rnd = random.Random(13)
    rows: list[dict[str, Any]] = []
    for p in range(500):
        for _ in range(rnd.choice([1, 1, 2, 3, 4, 6, 9])):  # many units over the bound of 3
            rows.append({
                "pid": f"p{p:04d}" if p % 50 else p,  # ints and strings: ids are compared as text
                "ward": rnd.choice(WARDS + [None]),
                "region": rnd.choice("nsew"),
                "tag": rnd.choice(TAGS),
                "code": rnd.choice([7, 11, 13, None]),
                "cost": rnd.choice([-5, 0, 3, 17, 42, 99, 100, 130, None]),  # some outside the bounds
                "score": rnd.choice([-3.0, -2.5, -0.75, 0.0, 0.1, 1.25, 2.5, 3.33, 7.5, 8.0, None]),
            })
    # single-row units (no PRF message) far outside the bounds: FLOOR of -1e300 saturates a BIGINT in Spark
    for i, score in enumerate([-1e300, 1e300, -1e19]):
        rows.append({"pid": f"q{i}", "ward": "a", "region": "n", "tag": "plain", "code": 7, "cost": 3, "score": score})
    rnd.shuffle(rows)
    for row in rows:
        row["pid"] = str(row["pid"])
    pq.write_table(pa.Table.from_pylist(rows), data / "visits.parquet", row_group_size=300)
    other = [{"pid": f"p{p:04d}", "kind": rnd.choice("xy"), "dose": rnd.randint(0, 12)}
             for p in range(0, 500, 2) for _ in range(rnd.randint(1, 4))]
    pq.write_table(pa.Table.from_pylist(other), data / "other.parquet")
    pq.write_table(pa.table({"code": list("nse"), "name": ["North", "South", "East"], "pop": [1000, 2500, 400]}),
                   data / "regions.parquet")


def _policies(root: Path, engine: str) -> Path:
    policies = root / f"policies-{engine}"
    (policies / "datasets").mkdir(parents=True)
    (policies / "grants").mkdir()
    for name, text in (("visits", VISITS), ("other", OTHER), ("regions", REGIONS)):
        (policies / "datasets" / f"{name}.yaml").write_text(text.format(engine=engine))
    (policies / "grants" / f"{GRANT}.yaml").write_text(GRANT_YAML)
    return policies


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The same data built by the DuckDB engine and by the Spark engine, under one bounding key."""
    if JAVA is None:
        pytest.skip("no Java runtime (Debian: apt-get install openjdk-17-jre-headless); the Spark engine needs one")
    root = tmp_path_factory.mktemp("spark-world")
    data = root / "data"
    data.mkdir()
    _write_data(data)
    key = secrets.token_bytes(32)
    engines = {}
    catalogs = {}
    for name in ("duckdb", "spark"):
        catalog = load_policies(_policies(root, name)).datasets
        engine_dir = root / f"engine-{name}"
        engine_dir.mkdir()
        (engine_dir / KEY_FILE).write_bytes(key)
        engine = PerDatasetEngine(data, engine_dir)
        engine.ensure(catalog)
        engines[name], catalogs[name] = engine, catalog
    return {"root": root, "data": data, "key": key, "engines": engines, "catalogs": catalogs}


def _exact(world: dict[str, Any], name: str, sql: str) -> dict:
    catalog = world["catalogs"][name]
    granted = {"visits": set(catalog["visits"].columns) - {"pid"}, "other": {"kind", "dose"},
               "regions": {"code", "name", "pop"}}
    plan = analyze(sql, catalog, granted)
    ds = catalog[plan.dataset]
    if plan.join is not None:
        ds = joined_dataset(ds, catalog[plan.join.lookup])
    dp = plan_dp(plan, ds, 1.0, "pure", 1e-6 if plan.open_keys else 0.0)
    return {key: {p.label: v for p, v in values.items()} for key, values in world["engines"][name].exact(dp).items()}


QUERIES = [
    "SELECT COUNT(*), COUNT(DISTINCT pid), COUNT(cost), SUM(cost), AVG(score) FROM visits",
    "SELECT ward, COUNT(*) AS n, COUNT(DISTINCT pid) AS people, SUM(score) FROM visits GROUP BY ward",
    "SELECT ward, region, VAR_POP(score), STDDEV_SAMP(cost), VAR_SAMP(cost) FROM visits GROUP BY ward, region",
    "SELECT FLOOR(cost / 10) * 10 AS band, COUNT(*), SUM(score) FROM visits GROUP BY band",
    "SELECT FLOOR(score / 2.5) * 2.5 AS band, COUNT(*), AVG(cost) FROM visits GROUP BY band",
    "SELECT FLOOR(score / 0.5) * 0.5 AS band, COUNT(*) FROM visits WHERE ward = 'a' GROUP BY band",
    "SELECT FLOOR(score / 2) * 2 AS band, COUNT(*) FROM visits GROUP BY band",
    "SELECT COUNT(*), SUM(cost) FROM visits WHERE cost BETWEEN 10 AND 60 AND ward IN ('a', 'b')",
    "SELECT COUNT(*) FROM visits WHERE NOT (score > 1.2 OR cost IS NULL) AND ward IS NOT NULL",
    "SELECT COUNT(*), SUM(score) FROM visits WHERE cost * 1.5 - score >= 20.25",
    # division by zero and by a negative zero: IEEE in both engines, never an error on some rows
    "SELECT COUNT(*) FROM visits WHERE 1 / (cost - 17) > 0",
    "SELECT COUNT(*) FROM visits WHERE 1 / (score * -1) < 0",
    "SELECT COUNT(*) FROM visits WHERE cost / (cost - cost) > 5 OR score / 0 < 0",
    "SELECT COUNT(*) FROM visits WHERE (cost - 17) / (cost - 17) = (cost - 17) / (cost - 17)",
    "SELECT ward, MEDIAN(cost), MIN(score), MAX(score) FROM visits GROUP BY ward",
    "SELECT QUANTILE_CONT(score, 0.9), QUANTILE_CONT(cost, 0.25) FROM visits WHERE region <> 'w'",
    "SELECT tag, COUNT(*), SUM(cost) FROM visits GROUP BY tag",
    "SELECT code, COUNT(DISTINCT pid) FROM visits GROUP BY code",
    "SELECT r.name AS region, COUNT(*) AS n, SUM(r.pop) AS pop, SUM(v.cost) FROM visits AS v "
    "JOIN regions AS r ON v.region = r.code GROUP BY r.name",
    "SELECT COUNT(*), COUNT(DISTINCT pid) FROM visits AS v LEFT JOIN regions AS r ON v.region = r.code "
    "WHERE r.pop > 500",
    "SELECT v.ward, COUNT(*), COUNT(DISTINCT pid), SUM(o.dose) FROM visits AS v JOIN other AS o "
    "ON v.pid = o.pid GROUP BY v.ward",
    "SELECT o.kind, COUNT(*), SUM(v.cost) FROM visits AS v LEFT JOIN other AS o ON v.pid = o.pid GROUP BY o.kind",
]


@pytest.mark.parametrize("sql", QUERIES)
def test_exact_aggregates_equal_duckdb_before_noise(world: dict[str, Any], sql: str) -> None:
    duck, spark = _exact(world, "duckdb", sql), _exact(world, "spark", sql)
    assert duck, "the query selects something"
    assert spark == duck


def _rows(engine: PerDatasetEngine, table: str) -> list[tuple]:
    """Every row of an engine table, ``__unit`` and ``__row`` as unsigned 64-bit integers."""
    mask = (1 << 64) - 1
    if engine._backend(table.removeprefix("__ids_")) is None:
        rows = engine._run(f'SELECT * FROM "{table}"')
        names = [d[0] for d in engine._cursor().execute(f'SELECT * FROM "{table}" LIMIT 0').description]
    else:
        frame = engine.spark()._serving_for(None).session.table(table)
        names, rows = frame.columns, [tuple(r) for r in frame.collect()]
    fixed = [tuple(v & mask if n in ("__unit", "__row") else v for n, v in zip(names, r, strict=True)) for r in rows]
    return sorted(fixed, key=repr)


@pytest.mark.parametrize("table", ["visits", "other", "regions", "__ids_visits", "__ids_other"])
def test_the_kept_rows_are_the_same_rows(world: dict[str, Any], table: str) -> None:
    duck, spark = world["engines"]["duckdb"], world["engines"]["spark"]
    assert spark.has_table(table.removeprefix("__ids_")) and spark._backend(table.removeprefix("__ids_")) is not None
    left, right = _rows(duck, table), _rows(spark, table)
    assert left == right
    if table == "visits":  # units over the bound kept 3 rows: the selection was exercised
        assert len(left) < pq.read_metadata(world["data"] / "visits.parquet").num_rows


def test_the_spark_hmac_is_rfc_2104(world: dict[str, Any]) -> None:
    from sandbox.engine_spark import _pads
    from sandbox.spark_sql import PADS_VIEW, hmac_spark

    session = world["engines"]["spark"].spark()._serving_for(None).session.newSession()
    key = secrets.token_bytes(32)
    _pads(session, key).createOrReplaceTempView(PADS_VIEW)
    messages = ["", "a", "unit:p0001", '{"u":"1","c1":"é"}', "x" * 200]
    for msg in messages:
        got = session.sql(f"SELECT {hmac_spark(':m')} FROM {PADS_VIEW}", args={"m": msg}).collect()[0][0]
        assert got == hmac.new(key, msg.encode(), hashlib.sha256).hexdigest()


def test_versions_and_identifier_matches(world: dict[str, Any]) -> None:
    spark, duck = world["engines"]["spark"], world["engines"]["duckdb"]
    catalog = world["catalogs"]["spark"]
    from sandbox.engine import data_versions

    assert spark.data_version("visits") == data_versions(catalog, world["data"])["visits"]
    # the catalog entry says which engine: the two builds have different data versions
    assert spark.data_version("visits") != duck.data_version("visits")
    values = ["p0001", "p0003", " p0005 ", "0", "50.0", "nobody"]
    assert spark.unit_id_matches("visits", values) == duck.unit_id_matches("visits", values) == 5
    assert spark.lookup_key_unique("regions", "code") is True
    assert world["engines"]["spark"].build_id != world["engines"]["duckdb"].build_id


def _gateway(world: dict[str, Any], tmp_path: Path, engine: str) -> tuple[Any, dict[str, str], Services]:
    services = Services(Settings(state_dir=tmp_path / "state", data_root=world["data"]))
    shutil.copytree(world["root"] / f"engine-{engine}", tmp_path / "state" / "engine", dirs_exist_ok=True)
    apply_policies(services.policies, load_policies(world["root"] / f"policies-{engine}"), "test")
    from gateway.app import create_app

    app = create_app(services=services)
    app.config["TESTING"] = True
    return app.test_client(), {"Authorization": f"Bearer {services.tokens.create('alice')}"}, services


def test_a_spark_dataset_answers_through_the_gateway_with_noise(world: dict[str, Any], tmp_path: Path) -> None:
    client, alice, services = _gateway(world, tmp_path, "spark")
    sql = "SELECT ward, COUNT(*) AS n, SUM(cost) AS total FROM visits GROUP BY ward"
    resp = client.post("/v1/query", headers=alice, json={"sql": sql, "epsilon": 1.0, "grant": GRANT})
    assert resp.status_code == 200, resp.get_json()
    body = resp.get_json()
    assert services.engine._backend("visits") is not None  # answered by Spark
    exact = _exact(world, "duckdb", sql)
    ci = body["accuracy"]["ci_halfwidth"]
    assert [r[0] for r in body["rows"]] == WARDS
    for ward, n, total in body["rows"]:
        truth = exact[(ward,)]
        assert abs(n - truth["count(*)"]) <= 3 * ci["n"]
        assert abs(total - truth["sum(cost)"]) <= 3 * ci["total"]
    assert body["epsilon_spent"] == 1.0 and body["mechanism"]["name"] == "discrete_laplace"
    noisy = [tuple(r) for r in body["rows"]]
    again = client.post("/v1/query", headers=alice, json={"sql": sql, "epsilon": 1.0, "grant": GRANT}).get_json()
    assert again["cached"] is True and [tuple(r) for r in again["rows"]] == noisy
    # the export identifier check reads the Spark engine's keyed ids too
    assert services.engine.unit_id_matches("visits", ["p0001", "p0002", "zz"]) == 2


def test_a_join_across_engines_is_refused_before_any_charge(world: dict[str, Any], tmp_path: Path) -> None:
    client, alice, services = _gateway(world, tmp_path, "spark")
    regions = load_dataset(world["root"] / "policies-duckdb" / "datasets" / "regions.yaml")  # back on DuckDB
    services.policies.apply_dataset(regions, "test")
    sql = "SELECT COUNT(*) FROM visits AS v JOIN regions AS r ON v.region = r.code"
    for path in ("/v1/query", "/v1/plan"):
        resp = client.post(path, headers=alice, json={"sql": sql, "epsilon": 0.5, "grant": GRANT})
        assert resp.status_code == 400 and resp.get_json()["error"]["code"] == "join_across_engines", resp.get_json()
    assert services.ledger.state(GRANT).epsilon_spent == 0.0


def test_an_unknown_engine_is_refused_with_a_clear_message(tmp_path: Path) -> None:
    path = tmp_path / "visits.yaml"
    path.write_text(VISITS.format(engine="postgres"))
    with pytest.raises(PolicyError) as info:
        load_dataset(path)
    assert "engine: unknown engine 'postgres'" in info.value.message and "duckdb, spark" in info.value.message
    spark = Dataset.model_validate({**_plain(), "engine": "spark"})
    assert spark.model_dump()["engine"] == "spark"
    assert "engine" not in Dataset.model_validate(_plain()).model_dump()  # the default is not written


def _plain() -> dict[str, Any]:
    return {"id": "t", "title": "t", "source": "t.parquet", "classification": "L2", "privacy_unit": "row",
            "max_rows_per_unit": 1, "columns": {"n": {"type": "int", "bounds": [0, 9]}}}
