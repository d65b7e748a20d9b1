"""Attacks from the independent review of issue 12 on the open directory: the privacy unit's ids in
an open-data file, catalogue URLs taken from the Host header, rendered files outliving L1."""

from __future__ import annotations

import io

import pyarrow.parquet as pq

from sandbox.services import Services


def _reclassify(services: Services, ds_id: str, level: str) -> None:
    ds = services.policies.datasets()[ds_id]
    services.policies.apply_dataset(ds.model_copy(update={"classification": level}), "test")


def test_open_data_files_never_carry_the_privacy_unit(client, services: Services) -> None:  # noqa: ANN001
    _reclassify(services, "nhanes_2017", "L1")
    csv = client.get("/public/datasets/nhanes_2017.csv")
    assert csv.status_code == 200
    header = csv.get_data(as_text=True).splitlines()[0]
    assert "seqn" not in header and "age" in header
    table = pq.read_table(io.BytesIO(client.get("/public/datasets/nhanes_2017.parquet").data))
    assert "seqn" not in table.column_names and "sex" in table.column_names


def test_rendered_files_are_deleted_when_a_resource_stops_being_open(client, services: Services) -> None:  # noqa: ANN001
    _reclassify(services, "nhanes_2017", "L1")
    assert client.get("/public/datasets/nhanes_2017.csv").status_code == 200
    out = services.db.dir / "open-data"
    assert list(out.glob("nhanes_2017-*"))
    _reclassify(services, "nhanes_2017", "L2")
    assert client.get("/public/datasets.json").status_code == 200  # any directory view prunes
    assert not list(out.glob("nhanes_2017-*"))
    assert client.get("/public/datasets/nhanes_2017.csv").status_code == 403


def test_catalogue_urls_never_come_from_the_host_header(client, services: Services) -> None:  # noqa: ANN001
    _reclassify(services, "adult_income", "L1")
    doc = client.get("/public/datasets.jsonld", headers={"Host": "evil.example"}).get_json()
    assert doc["@id"] == "/public/datasets.jsonld"  # relative while no public base URL is configured
    assert "evil.example" not in str(doc)
    services.settings.oversight.public_base_url = "https://data.example.gov"
    doc = client.get("/public/datasets.jsonld", headers={"Host": "evil.example"}).get_json()
    assert doc["@id"] == "https://data.example.gov/public/datasets.jsonld" and "evil.example" not in str(doc)
