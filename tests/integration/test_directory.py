"""The open directory and the level rules: metadata only, L1 downloads for anyone, L2-L4 never as files."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest
import yaml
from click.testing import CliRunner

from sandbox.cli import cli
from sandbox.policy.models import Dataset
from sandbox.services import Services

REPO = Path(__file__).resolve().parents[2]


def _register_level(services: Services, ds_id: str, level: str, source: str = "adult_income.parquet") -> Dataset:
    """A catalog entry over a real demo file, at the given level."""
    base = yaml.safe_load((REPO / "policies" / "datasets" / "adult_income.yaml").read_text())
    base.update(id=ds_id, title=f"Adult census ({level})", classification=level, source=source)
    if level == "L3" and "budget" in Dataset.model_fields:  # where the catalog requires an L3 budget
        base["budget"] = {"epsilon": 10.0}
    ds = Dataset.model_validate(base)
    services.policies.apply_dataset(ds, "test")
    return ds


def test_directory_lists_every_resource_with_metadata_only(client) -> None:  # noqa: ANN001
    resp = client.get("/public/datasets.json")
    assert resp.status_code == 200
    data = resp.get_json()
    by_id = {d["id"]: d for d in data["datasets"]}
    assert set(by_id) == {"adult_income", "nhanes_2017"}
    nh = by_id["nhanes_2017"]
    assert nh["level"] == "L2" and nh["level_name"] == "Conditionally open"
    assert "differentially private" in nh["permits"]
    assert nh["publisher"].startswith("US Centers for Disease Control")
    assert {"name": "age", "type": "int", "description": "age in years at screening, top-coded at 80"} in nh["columns"]
    assert nh["grants"] == [{"id": "g-2026-001", "operator": "Acme Health Analytics Ltd.", "status": "active"}]
    assert nh["registered"] and nh["data_modified"]
    assert nh["downloadable"] is False and nh["downloads"] == {}
    # no declared values, bounds or members anywhere
    text = resp.get_data(as_text=True)
    for secret in ("non_hispanic_white", "bounds", "values", "alice", "Self-emp-not-inc"):
        assert secret not in text
    assert set(data["levels"]) == {"L1", "L2", "L3", "L4"}


def test_directory_html_and_json_twin(client) -> None:  # noqa: ANN001
    html = client.get("/public/datasets")
    assert html.status_code == 200 and html.mimetype == "text/html"
    body = html.get_data(as_text=True)
    assert "NHANES 2017-2018 demographics and examination" in body and "not downloadable" in body
    twin = client.get("/public/datasets?format=json")
    assert twin.get_json()["datasets"] == client.get("/public/datasets.json").get_json()["datasets"]


def test_l1_download_without_login_returns_the_data(client, services: Services, demo_data_root: Path) -> None:  # noqa: ANN001
    ds = _register_level(services, "adult_open", "L1")
    source = pq.read_table(demo_data_root / "adult_income.parquet", columns=list(ds.columns))
    resp = client.get("/public/datasets/adult_open.parquet")
    assert resp.status_code == 200, resp.get_data(as_text=True)
    assert resp.mimetype == "application/vnd.apache.parquet"
    got = pq.read_table(io.BytesIO(resp.get_data()))
    assert got.num_rows == source.num_rows == 48842
    assert got.column_names == list(ds.columns)
    assert got.equals(source)
    csv = client.get("/public/datasets/adult_open.csv")
    assert csv.status_code == 200 and csv.mimetype == "text/csv"
    table = pacsv.read_csv(io.BytesIO(csv.get_data()))
    assert table.num_rows == 48842 and table.column_names == list(ds.columns)
    assert table.column("age").to_pylist()[:50] == source.column("age").to_pylist()[:50]
    # the directory links it, and the DCAT catalogue lists its distributions
    entry = next(d for d in client.get("/public/datasets.json").get_json()["datasets"] if d["id"] == "adult_open")
    assert entry["downloadable"] and entry["downloads"]["csv"] == "/public/datasets/adult_open.csv"


@pytest.mark.parametrize("level", ["L2", "L3", "L4"])
def test_other_levels_are_never_downloadable(client, services: Services, alice, level: str) -> None:  # noqa: ANN001
    _register_level(services, "adult_level", level)
    for fmt in ("parquet", "csv"):
        for headers in ({}, alice):  # not even for a grant holder
            resp = client.get(f"/public/datasets/adult_level.{fmt}", headers=headers)
            assert resp.status_code == 403
            assert resp.get_json()["error"]["code"] == "not_open_data"
            assert b"Private" not in resp.get_data()


def test_download_refusals_for_unknown_ids_formats_and_paths(client, services: Services) -> None:  # noqa: ANN001
    _register_level(services, "adult_open", "L1")
    assert client.get("/public/datasets/nhanes_2017.csv").status_code == 403
    assert client.get("/public/datasets/nope.csv").status_code == 404
    assert client.get("/public/datasets/adult_open.json").status_code == 404
    assert client.get("/public/datasets/adult_open.sqlite").status_code == 404
    for path in ("/public/datasets/..%2Fnhanes_2017.csv", "/public/datasets/../nhanes_2017.parquet",
                 "/public/datasets/%2E%2E%2Fadult_income.parquet"):
        assert client.get(path).status_code == 404, path


def test_l1_source_gone_is_404_not_500(client, services: Services) -> None:  # noqa: ANN001
    base = yaml.safe_load((REPO / "policies" / "datasets" / "adult_income.yaml").read_text())
    base.update(id="ghost", classification="L1", source="ghost.parquet")
    services.policies.apply_dataset(Dataset.model_validate(base), "test")
    resp = client.get("/public/datasets/ghost.csv")
    assert resp.status_code == 404 and resp.get_json()["error"]["code"] == "source_missing"


def test_l1_source_unreadable_is_404_not_500(client, services: Services, tmp_path: Path) -> None:  # noqa: ANN001
    """A source replaced by garbage after registration: refused cleanly, nothing half-written is served."""
    data_root = tmp_path / "data"
    data_root.mkdir()
    (data_root / "broken.parquet").write_bytes(b"PAR1 this is not parquet")
    services.settings.data_root = data_root
    base = yaml.safe_load((REPO / "policies" / "datasets" / "adult_income.yaml").read_text())
    base.update(id="broken", classification="L1", source="broken.parquet")
    services.policies.apply_dataset(Dataset.model_validate(base), "test")
    for fmt in ("csv", "parquet"):
        resp = client.get(f"/public/datasets/broken.{fmt}")
        assert resp.status_code == 404 and resp.get_json()["error"]["code"] == "source_unreadable"
    assert not list((services.db.dir / "open-data").glob("broken*"))


def test_dcat_jsonld_parses_as_rdf(client, services: Services) -> None:  # noqa: ANN001
    rdflib = pytest.importorskip("rdflib")
    _register_level(services, "adult_open", "L1")
    services.settings.oversight.public_base_url = "http://localhost"
    resp = client.get("/public/datasets.jsonld")
    assert resp.status_code == 200 and resp.mimetype == "application/ld+json"
    graph = rdflib.Graph().parse(data=resp.get_data(as_text=True), format="json-ld")
    dcat = rdflib.Namespace("http://www.w3.org/ns/dcat#")
    dct = rdflib.Namespace("http://purl.org/dc/terms/")
    datasets = set(graph.subjects(rdflib.RDF.type, dcat.Dataset))
    assert len(datasets) == 3
    ids = {str(graph.value(d, dct.identifier)) for d in datasets}
    assert ids == {"adult_income", "adult_open", "nhanes_2017"}
    urls = {str(u) for u in graph.objects(None, dcat.downloadURL)}
    assert urls == {"http://localhost/public/datasets/adult_open.parquet",
                    "http://localhost/public/datasets/adult_open.csv"}
    catalog = next(graph.subjects(rdflib.RDF.type, dcat.Catalog))
    assert len(set(graph.objects(catalog, dcat.dataset))) == 3


def test_register_checks_the_source_and_the_schema(tmp_path: Path, demo_data_root: Path) -> None:
    runner = CliRunner()
    env = {"SANDBOX_STATE": str(tmp_path / "state"), "SANDBOX_DATA_ROOT": str(demo_data_root)}
    base = yaml.safe_load((REPO / "policies" / "datasets" / "nhanes_2017.yaml").read_text())

    def register(doc: dict) -> tuple[int, str]:
        path = tmp_path / "entry.yaml"
        path.write_text(yaml.safe_dump(doc))
        result = runner.invoke(cli, ["datasets", "register", str(path)], env=env)
        return result.exit_code, result.output

    code, out = register({**base, "source": "missing.parquet"})
    assert code == 1 and "source missing.parquet not found under the data root" in out
    code, out = register({**base, "columns": {**base["columns"], "shoe_size": {"type": "int", "bounds": [1, 60]}}})
    assert code == 1 and "columns.shoe_size: not in nhanes_2017.parquet" in out
    code, out = register({**base, "columns": {**base["columns"], "sex": {"type": "int", "bounds": [0, 1]}}})
    assert code == 1 and "columns.sex: declared int" in out
    listing = runner.invoke(cli, ["datasets", "list"], env=env)
    assert "nhanes_2017" not in listing.output  # nothing was registered
    code, out = register(base)
    assert code == 0 and "nhanes_2017: created" in out
    assert runner.invoke(cli, ["datasets", "register", "--help"]).exit_code == 0


def test_level_rules_are_distinct(client, services: Services, alice) -> None:  # noqa: ANN001
    """L2 answers DP queries under a grant; L3 caps epsilon per query; L4 is never granted."""
    from sandbox.errors import PolicyError
    from sandbox.policy.rules import check_grant_fits_catalog

    resp = client.post("/v1/query", headers=alice, json={
        "sql": "SELECT COUNT(*) AS n FROM nhanes_2017", "epsilon": 0.5, "grant": "g-2026-001"})
    assert resp.status_code == 200 and resp.get_json()["epsilon_spent"] == 0.5
    grant = services.policies.grant("g-2026-001")
    catalog = dict(services.policies.datasets())
    for level, needle in (("L3", "max_epsilon_per_query <= 0.5"), ("L4", "never granted")):
        catalog["nhanes_2017"] = catalog["nhanes_2017"].model_copy(update={"classification": level})
        with pytest.raises(PolicyError, match=needle):
            check_grant_fits_catalog(grant, catalog)
    assert json.dumps(catalog["adult_income"].model_dump(mode="json"))  # unchanged entry still valid


def test_dataset_budget_left_is_published_where_one_is_set(client, services: Services, alice) -> None:  # noqa: ANN001
    """Runs once the ledger keeps dataset budgets (``Ledger.dataset_budgets``, dataset YAML ``budget``)."""
    from sandbox.state.ledger import Ledger

    if not hasattr(Ledger, "dataset_budgets"):
        pytest.skip("this ledger keeps no dataset-level budgets")
    from sandbox.policy import models

    ds = services.policies.datasets()["nhanes_2017"]
    services.policies.apply_dataset(ds.model_copy(update={"budget": models.DatasetBudget(epsilon=50.0)}), "admin")
    body = {"sql": "SELECT COUNT(*) AS n FROM nhanes_2017", "epsilon": 0.5, "grant": "g-2026-001"}
    assert client.post("/v1/query", headers=alice, json=body).status_code == 200
    entries = {d["id"]: d for d in client.get("/public/datasets.json").get_json()["datasets"]}
    assert entries["nhanes_2017"]["budget"]["epsilon_total"] == 50.0
    assert entries["nhanes_2017"]["budget"]["epsilon_remaining"] == pytest.approx(49.5)
    assert entries["adult_income"]["budget"] is None


@pytest.mark.parametrize("level", ["L3", "L4"])
def test_l3_cap_and_l4_refusal_through_the_query_api(client, services: Services, alice, level: str) -> None:  # noqa: ANN001
    """The demo grant allows 1.0 epsilon per query: over the L3 cap of 0.5, and L4 is never granted."""
    body = {**services.policies.datasets()["nhanes_2017"].model_dump(mode="json"), "classification": level}
    if level == "L3" and "budget" in Dataset.model_fields:  # where the catalog requires an L3 budget
        body["budget"] = {"epsilon": 50.0}
    services.policies.apply_dataset(Dataset.model_validate(body), "admin")
    resp = client.post("/v1/query", headers=alice, json={"sql": "SELECT COUNT(*) AS n FROM nhanes_2017",
                                                         "epsilon": 0.1, "grant": "g-2026-001"})
    assert resp.status_code == 403 and resp.get_json()["error"]["code"] == "grant_out_of_policy"
    assert level in resp.get_json()["error"]["message"]
    assert services.ledger.state("g-2026-001").epsilon_spent == 0
    entry = next(d for d in client.get("/public/datasets.json").get_json()["datasets"] if d["id"] == "nhanes_2017")
    assert entry["level"] == level and not entry["downloadable"]
    assert client.get("/public/grants.json").get_json()["grants"][0]["status"] == "out_of_policy"
