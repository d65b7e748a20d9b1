"""The notebook client against a tiny real HTTP server (Flask on a loopback port).

Covers configuration from the environment, Arrow decoding with metadata in ``df.attrs``,
the JSON fallback, error mapping to :class:`GatewayError`, budget lookup and multipart exports.
"""

from __future__ import annotations

import io
import json
import threading
from collections.abc import Iterator

import pandas as pd
import pyarrow as pa
import pytest
from flask import Flask, Response, jsonify, request
from werkzeug.serving import make_server

from sandbox.client import ARROW_STREAM, Client, GatewayError, connect

TOKEN = "t0ken"
META = {
    "query_id": "q-1",
    "epsilon_spent": 0.5,
    "cached": False,
    "accuracy": {"alpha": 0.05, "ci_halfwidth": {"n": 12.5}},
    "budget": {"epsilon_total": 10.0, "epsilon_spent": 0.5, "epsilon_remaining": 9.5},
}


CATALOG_ENTRY = {
    "grant": "g-1", "dataset": "nhanes_2017", "title": "NHANES", "description": "", "classification": "L2",
    "privacy_unit": "seqn", "max_rows_per_unit": 1,
    "columns": [
        {"name": "sex", "type": "category", "values": ["male", "female"]},
        {"name": "age", "type": "int", "bounds": [0, 80], "description": "age in years"},
    ],
}


def make_app(received: list[dict]) -> Flask:
    app = Flask("fake-gateway")

    def err(status: int, code: str, message: str) -> Response:
        resp = jsonify({"error": {"code": code, "message": message}})
        resp.status_code = status
        return resp

    @app.before_request
    def _auth() -> Response | None:
        if request.headers.get("Authorization") != f"Bearer {TOKEN}":
            return err(401, "unauthorized", "unknown or revoked token")
        return None

    @app.get("/v1/catalog")
    def catalog() -> Response:
        return jsonify({"datasets": [CATALOG_ENTRY]})

    @app.post("/v1/query")
    def query() -> Response:
        body = request.get_json()
        received.append({"body": body, "accept": request.headers.get("Accept", "")})
        if body["sql"] == "bad":
            return err(400, "sql_not_allowed", "only SELECT of aggregates")
        if body["sql"] == "broke":
            return err(409, "budget_exhausted", "grant g-1 has 0.1 left")
        if body["sql"] == "crash":
            return Response("<html>proxy error</html>", status=502, mimetype="text/html")
        if body["sql"] == "json":
            return jsonify({**META, "columns": ["sex", "n"], "rows": [["male", 10], ["female", 12]]})
        table = pa.table({"sex": ["male", "female"], "n": [10, 12]})
        table = table.replace_schema_metadata({b"sandbox": json.dumps(META).encode()})
        sink = io.BytesIO()
        with pa.ipc.new_stream(sink, table.schema) as writer:
            writer.write_table(table)
        return Response(sink.getvalue(), mimetype=ARROW_STREAM)

    @app.get("/v1/budget")
    def budget() -> Response:
        return jsonify({"grants": [{"grant": "g-1", "status": "active", **META["budget"]}]})

    @app.post("/v1/exports")
    def exports() -> Response:
        files = [(f.filename, f.read().decode()) for f in request.files.getlist("files")]
        received.append({"form": dict(request.form), "files": files})
        resp = jsonify({"id": "e-1", "status": "submitted", "files": [{"name": files[0][0]}]})
        resp.status_code = 201
        return resp

    return app


@pytest.fixture()
def gateway() -> Iterator[tuple[str, list[dict]]]:
    received: list[dict] = []
    server = make_server("127.0.0.1", 0, make_app(received), threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}", received
    finally:
        server.shutdown()
        thread.join(timeout=5)


def test_connect_reads_environment(monkeypatch: pytest.MonkeyPatch, gateway) -> None:
    url, _ = gateway
    monkeypatch.setenv("SANDBOX_GATEWAY_URL", url + "/")
    monkeypatch.delenv("SANDBOX_TOKEN", raising=False)
    monkeypatch.setenv("JUPYTERHUB_API_TOKEN", TOKEN)
    monkeypatch.setenv("SANDBOX_GRANT", "g-1")
    db = connect()
    assert db.url == url and db.grant == "g-1"
    assert db.catalog(raw=True) == [CATALOG_ENTRY]


def test_catalog_is_a_readable_table(gateway) -> None:
    url, _ = gateway
    df = Client(url, TOKEN).catalog()
    assert list(df["column"]) == ["sex", "age"]
    assert df.loc[0, "categories"] == ["male", "female"] and df.loc[0, "bounds"] is None
    assert df.loc[1, "bounds"] == (0, 80) and df.loc[1, "categories"] is None
    assert set(df["dataset"]) == {"nhanes_2017"} and set(df["granted_by"]) == {"g-1"}
    assert df.loc[1, "description"] == "age in years"
    assert df.attrs["raw"] == [CATALOG_ENTRY]


def test_connect_without_configuration(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("SANDBOX_GATEWAY_URL", "SANDBOX_TOKEN", "JUPYTERHUB_API_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    with pytest.raises(GatewayError) as info:
        connect()
    assert info.value.code == "not_configured"
    with pytest.raises(GatewayError, match="no token"):
        connect(url="http://127.0.0.1:9")


def test_query_decodes_arrow_with_metadata(gateway) -> None:
    url, received = gateway
    df = Client(url, TOKEN, grant="g-1").query("SELECT sex, COUNT(*) AS n ...", epsilon=0.5)
    assert list(df.columns) == ["sex", "n"]
    assert df["n"].tolist() == [10, 12]
    assert df.attrs["query_id"] == "q-1"
    assert df.attrs["epsilon_spent"] == 0.5
    assert df.attrs["accuracy"]["ci_halfwidth"]["n"] == 12.5
    assert df.attrs["budget"]["epsilon_remaining"] == 9.5
    assert received[0]["body"] == {"sql": "SELECT sex, COUNT(*) AS n ...", "epsilon": 0.5,
                                   "grant": "g-1"}
    assert received[0]["accept"].startswith(ARROW_STREAM)


def test_query_json_fallback(gateway) -> None:
    url, _ = gateway
    df = Client(url, TOKEN).query("json", epsilon=0.1, grant="g-2")
    assert isinstance(df, pd.DataFrame)
    assert df.to_dict("records") == [{"sex": "male", "n": 10}, {"sex": "female", "n": 12}]
    assert df.attrs["budget"]["epsilon_total"] == 10.0


@pytest.mark.parametrize(
    ("sql", "status", "code"),
    [("bad", 400, "sql_not_allowed"), ("broke", 409, "budget_exhausted"), ("crash", 502, "http_502")],
)
def test_errors_map_to_gateway_error(gateway, sql: str, status: int, code: str) -> None:
    url, _ = gateway
    with pytest.raises(GatewayError) as info:
        Client(url, TOKEN).query(sql, epsilon=0.1)
    assert (info.value.status, info.value.code) == (status, code)
    assert info.value.message


def test_bad_token_is_unauthorized(gateway) -> None:
    url, _ = gateway
    with pytest.raises(GatewayError) as info:
        Client(url, "wrong").catalog()
    assert info.value.status == 401 and info.value.code == "unauthorized"


def test_unreachable_gateway() -> None:
    with pytest.raises(GatewayError) as info:
        Client("http://127.0.0.1:9", TOKEN, timeout=2).catalog()
    assert info.value.code == "unreachable" and info.value.status == 0


def test_budget_for_one_grant(gateway) -> None:
    url, _ = gateway
    db = Client(url, TOKEN)
    table = db.budget()
    assert table.to_dict("records") == [{"grant": "g-1", "status": "active", **META["budget"]}]
    assert table.attrs["raw"]["grants"][0]["status"] == "active"
    assert db.budget(raw=True)["grants"][0]["grant"] == "g-1"
    assert db.budget("g-1")["epsilon_remaining"].tolist() == [9.5]
    assert db.budget("g-1", raw=True)["epsilon_remaining"] == 9.5
    with pytest.raises(GatewayError, match="no budget"):
        db.budget("g-9")


def test_export_sends_multipart(gateway, tmp_path) -> None:
    url, received = gateway
    path = tmp_path / "table.csv"
    path.write_text("a,b\n1,2\n")
    frame = pd.DataFrame({"x": [1]})
    out = Client(url, TOKEN, grant="g-1").export([path, frame], "Table 1", "for the report")
    assert out["id"] == "e-1"
    sent = received[-1]
    assert sent["form"] == {"title": "Table 1", "justification": "for the report", "grant": "g-1"}
    assert sent["files"] == [("table.csv", "a,b\n1,2\n"), ("result-2.csv", "x\n1\n")]
