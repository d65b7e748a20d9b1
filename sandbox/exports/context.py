"""What the checks need to know, gathered from the state: unit columns, the id matcher,
the noisy answers the grant released, and the tables of its already approved exports."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from sandbox.exports import store
from sandbox.exports.canonical import TABLE_KINDS
from sandbox.exports.canonical.tables import read_canonical
from sandbox.exports.checks import CheckContext
from sandbox.exports.checks.file_gates import DEFAULT_LIMITS
from sandbox.policy.models import Grant
from sandbox.state import exports_repo

if TYPE_CHECKING:
    from sandbox.engine import Engine
    from sandbox.state.db import StateDB
    from sandbox.state.grants_store import PolicyStore
    from sandbox.state.ledger import Ledger


def check_context(policies: PolicyStore, ledger: Ledger, engine: Engine, db: StateDB, grant: Grant, user: str,
                  count_columns: list[str]) -> CheckContext:
    """What the checks need: unit columns, the id matcher, released answers, released exports."""
    catalog = policies.datasets()
    units = {ds: catalog[ds].privacy_unit for ds in grant.datasets
             if ds in catalog and catalog[ds].privacy_unit != "row"}

    def matcher(ds_id: str, values: list[str]) -> int:
        engine.refresh(catalog)  # never waits for a build: a new dataset's ids are a 503 (the check: review)
        return engine.unit_id_matches(ds_id, values)

    mine = ledger.released_answers(grant.id, user)
    released = ledger.released_answers(grant.id) + _released_exports(db, grant.id)
    return CheckContext(units=units, matcher=matcher, answers=mine, released=released,
                        count_columns=tuple(count_columns), limits=DEFAULT_LIMITS)


def _released_exports(db: StateDB, grant_id: str) -> list[dict[str, Any]]:
    """Tables of the grant's approved/released exports, shaped like released answers."""
    blobs = store.BlobStore(db)
    out = []
    conn = db.conn
    for req in exports_repo.list_requests(conn, grant_id=grant_id, statuses=("approved", "released")):
        for f in exports_repo.current_files(conn, req.id):
            data = blobs.get(req.id, f.sha256)
            if data is None or f.kind not in TABLE_KINDS:
                continue
            table = read_canonical(f.kind, data)
            out.append({"query_id": f"{req.id}/{f.name}", "epsilon": 0.0,
                        "response": {"columns": table.columns, "rows": table.rows}})
    return out
