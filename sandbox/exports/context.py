"""What the checks need to know, gathered from the state: unit columns, the id matcher,
the noisy answers the grant released, and the tables of its already approved exports."""

from __future__ import annotations

from typing import Any

from sandbox.exports import store
from sandbox.exports.canonical import TABLE_KINDS
from sandbox.exports.canonical.tables import read_canonical
from sandbox.exports.checks import CheckContext
from sandbox.exports.checks.file_gates import DEFAULT_LIMITS
from sandbox.policy.models import Grant
from sandbox.services import Services


def check_context(services: Services, grant: Grant, user: str, count_columns: list[str]) -> CheckContext:
    """What the checks need: unit columns, the id matcher, released answers, released exports."""
    catalog = services.policies.datasets()
    units = {ds: catalog[ds].privacy_unit for ds in grant.datasets
             if ds in catalog and catalog[ds].privacy_unit != "row"}

    def matcher(ds_id: str, values: list[str]) -> int:
        services.engine.refresh(catalog)  # never waits for a build: a new dataset's ids are a 503 (the check: review)
        return services.engine.unit_id_matches(ds_id, values)

    mine = services.ledger.released_answers(grant.id, user)
    released = services.ledger.released_answers(grant.id) + _released_exports(services, grant.id)
    return CheckContext(units=units, matcher=matcher, answers=mine, released=released,
                        count_columns=tuple(count_columns), limits=DEFAULT_LIMITS)


def _released_exports(services: Services, grant_id: str) -> list[dict[str, Any]]:
    """Tables of the grant's approved/released exports, shaped like released answers."""
    blobs = store.BlobStore(services.db)
    out = []
    conn = services.db.conn
    for req in store.list_requests(conn, grant_id=grant_id, statuses=("approved", "released")):
        for f in store.current_files(conn, req["id"]):
            data = blobs.get(req["id"], f["sha256"])
            if data is None or f["kind"] not in TABLE_KINDS:
                continue
            table = read_canonical(f["kind"], data)
            out.append({"query_id": f"{req['id']}/{f['name']}", "epsilon": 0.0,
                        "response": {"columns": table.columns, "rows": table.rows}})
    return out
