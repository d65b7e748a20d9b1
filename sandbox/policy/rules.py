"""Grant policy as ``check_*`` functions that raise and ``can_*`` functions that return bools.

The same checks run when a grant is applied and on every request, so a catalog change or
a date passing takes effect without any command.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping

from sandbox.errors import Conflict, Forbidden, PolicyError
from sandbox.policy.models import Dataset, Grant

L3_MAX_EPSILON_PER_QUERY = 0.5


def check_grant_fits_catalog(grant: Grant, catalog: Mapping[str, Dataset]) -> None:
    """Classification and column rules: raised as PolicyError at apply time."""
    problems = []
    for ds_id, granted in grant.datasets.items():
        ds = catalog.get(ds_id)
        if ds is None:
            problems.append(f"datasets.{ds_id}: no such dataset in the catalog")
            continue
        if ds.classification == "L4":
            problems.append(f"datasets.{ds_id}: L4 (core) data is never granted")
        if ds.classification == "L3":
            if grant.exports.reviewers_required < 2:
                problems.append(f"datasets.{ds_id}: L3 data needs exports.reviewers_required: 2")
            if grant.max_epsilon_per_query > L3_MAX_EPSILON_PER_QUERY:
                problems.append(
                    f"datasets.{ds_id}: L3 data needs max_epsilon_per_query <= {L3_MAX_EPSILON_PER_QUERY}"
                )
        for col in granted.columns:
            spec = ds.columns.get(col)
            if spec is None:
                problems.append(f"datasets.{ds_id}.columns: {col!r} is not in the catalog entry")
            elif spec.type == "id":
                problems.append(f"datasets.{ds_id}.columns: {col!r} is the privacy unit (type id)")
    if problems:
        raise PolicyError(f"grant {grant.id}: " + "; ".join(problems))


def can_use_grant(grant: Grant, user: str, today: dt.date) -> bool:
    try:
        check_grant_usable(grant, user, today)
    except Forbidden:
        return False
    return True


def check_grant_usable(grant: Grant, user: str, today: dt.date) -> None:
    """Membership, status and validity window; raises Forbidden with a stable code."""
    if user not in grant.members:
        raise Forbidden(f"{user} is not a member of grant {grant.id}", code="not_a_member")
    if grant.status == "revoked":
        raise Forbidden(f"grant {grant.id} has been revoked", code="grant_revoked")
    if grant.status == "suspended":
        raise Forbidden(f"grant {grant.id} is suspended", code="grant_suspended")
    if today < grant.valid_from:
        raise Forbidden(
            f"grant {grant.id} is valid from {grant.valid_from.isoformat()}", code="grant_not_yet_valid"
        )
    if today > grant.valid_until:
        raise Forbidden(
            f"grant {grant.id} expired on {grant.valid_until.isoformat()}", code="grant_expired"
        )


def granted_columns(grant: Grant, catalog: Mapping[str, Dataset]) -> dict[str, set[str]]:
    """What the grant allows now: datasets still in the catalog, columns still declared and not ids."""
    allowed: dict[str, set[str]] = {}
    for ds_id, granted in grant.datasets.items():
        ds = catalog.get(ds_id)
        if ds is None or ds.classification == "L4":
            continue
        allowed[ds_id] = {
            c for c in granted.columns if c in ds.columns and ds.columns[c].type != "id"
        }
    return allowed


def effective_status(grant: Grant, today: dt.date) -> str:
    """active | suspended | revoked | expired | pending, as the public register shows it."""
    if grant.status != "active":
        return grant.status
    if today > grant.valid_until:
        return "expired"
    if today < grant.valid_from:
        return "pending"
    return "active"


def check_caps_not_raised(old: Dataset, new: Dataset) -> None:
    """A dataset's caps across grants may be declared or lowered, never raised or removed (never refreshed)."""
    problems = []
    old_total = old.budget.epsilon if old.budget else None
    new_total = new.budget.epsilon if new.budget else None
    if old_total is not None and (new_total is None or new_total > old_total):
        problems.append(f"budget.epsilon: {old_total:g} -> {new_total}")
    if old.budget is not None and new.budget is not None and new.budget.delta > old.budget.delta:
        problems.append(f"budget.delta: {old.budget.delta:g} -> {new.budget.delta:g}")
    named = set(old.operator_caps) | set(new.operator_caps)
    # "" stands for any operator not named: the default cap
    for operator in sorted(named | {""}):
        before = old.operator_cap(operator) if operator else old.max_epsilon_per_operator
        after = new.operator_cap(operator) if operator else new.max_epsilon_per_operator
        if before is not None and (after is None or after > before):
            problems.append(f"operator cap of {operator or 'operators not named'}: {before:g} -> {after}")
    if problems:
        raise Conflict(
            f"dataset {new.id}: caps across grants are fixed once applied and only ever lowered ("
            + "; ".join(problems) + ")",
            code="budget_fixed",
        )
