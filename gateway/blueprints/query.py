"""The query API: catalog (metadata only), DP queries, budgets."""

from __future__ import annotations

import json

import pyarrow as pa
from flask import Blueprint, Response, jsonify, request

from gateway.context import identity, json_body, services
from sandbox.auditing import check_no_data_access
from sandbox.errors import BadRequest
from sandbox.policy.rules import can_use_grant, granted_columns
from sandbox.query_service import QueryService

bp = Blueprint("query", __name__)
ARROW = "application/vnd.apache.arrow.stream"


@bp.get("/v1/catalog")
def catalog():  # noqa: ANN201
    user = identity().user
    s = services()
    check_no_data_access(s, user)
    datasets = s.policies.datasets()
    out = []
    for grant in s.policies.grants_for(user):
        if not can_use_grant(grant, user, s.today()):
            continue
        for ds_id, cols in sorted(granted_columns(grant, datasets).items()):
            ds = datasets[ds_id]
            out.append(
                {
                    "grant": grant.id,
                    "dataset": ds_id,
                    "title": ds.title,
                    "description": ds.description,
                    "classification": ds.classification,
                    "privacy_unit": ds.privacy_unit,
                    "max_rows_per_unit": ds.max_rows_per_unit,
                    **({"public": True, "key": ds.key} if ds.public else {}),
                    "columns": [
                        {"name": name, **ds.columns[name].model_dump(exclude_none=True, exclude={"scale"})}
                        for name in ds.columns
                        if name in cols
                    ],
                }
            )
    return jsonify({"datasets": out})


@bp.post("/v1/query")
def query():  # noqa: ANN201
    user = identity().user
    s = services()
    check_no_data_access(s, user, "query.refused")
    if request.content_length and request.content_length > s.settings.max_body_bytes:
        raise BadRequest(f"the body is larger than {s.settings.max_body_bytes} bytes", code="body_too_large")
    body = json_body()
    result = QueryService(s).run(user, body)
    if ARROW in request.headers.get("Accept", ""):
        return _arrow_response(result)
    return jsonify(result)


@bp.post("/v1/plan")
def plan():  # noqa: ANN201
    """Half-widths for a cost, or the cost for a half-width: free, no data touched, nothing charged."""
    user = identity().user
    s = services()
    if request.content_length and request.content_length > s.settings.max_body_bytes:
        raise BadRequest(f"the body is larger than {s.settings.max_body_bytes} bytes", code="body_too_large")
    return jsonify(QueryService(s).plan(user, json_body()))


@bp.get("/v1/budget")
def budget():  # noqa: ANN201
    """Each grant's budget, with its operator's cap and the dataset cap on each of its datasets."""
    user = identity().user
    s = services()
    catalog = s.policies.datasets()
    grants = []
    for grant in s.policies.grants_for(user):
        caps = [c.to_dict() for ds_id in sorted(grant.datasets) if ds_id in catalog
                for c in s.ledger.cap_states(catalog[ds_id], grant.operator)]
        grants.append({"grant": grant.id, "status": grant.status, **s.ledger.state(grant.id).to_dict(),
                       "caps": caps})
    return jsonify({"grants": grants})


def _arrow_response(result: dict) -> Response:
    columns = result["columns"]
    data = {name: [row[i] for row in result["rows"]] for i, name in enumerate(columns)}
    meta = {k: v for k, v in result.items() if k not in ("columns", "rows")}
    table = pa.table(data) if columns else pa.table({})
    table = table.replace_schema_metadata({b"sandbox": json.dumps(meta).encode()})
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    return Response(sink.getvalue().to_pybytes(), mimetype=ARROW)
