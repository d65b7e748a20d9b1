"""One query, start to finish: who -> may -> parse -> plan -> charge -> compute -> noise -> cache.

The grant is checked on every request; the ledger is charged before the engine is touched;
every attempt, accepted or refused, lands in the audit log.
"""

from __future__ import annotations

import hashlib
import json
import math
import uuid
from dataclasses import dataclass

from sandbox.dp.planner import ALPHA, plan_dp, release
from sandbox.dp.selection import selection_delta
from sandbox.errors import BadRequest, Forbidden, NotFound, PolicyError, SandboxError
from sandbox.policy.models import Grant
from sandbox.policy.rules import can_use_grant, check_grant_fits_catalog, check_grant_usable, granted_columns
from sandbox.services import Services
from sandbox.sql._join import check_lookup
from sandbox.sql.analyze import analyze
from sandbox.sql.post import apply_post
from sandbox.state.audit import AuditEvent
from sandbox.state.ledger import from_nano, to_nano

MIN_EPSILON = 0.001
MAX_EPSILON = 100.0


@dataclass(frozen=True)
class QueryRequest:
    sql: str
    epsilon: float
    grant: str | None


def parse_request(body: object, max_sql_chars: int) -> QueryRequest:
    if not isinstance(body, dict):
        raise BadRequest('send a JSON object: {"sql": ..., "epsilon": ..., "grant": ...}', code="bad_json")
    sql = body.get("sql")
    if not isinstance(sql, str) or not sql.strip():
        raise BadRequest("`sql` must be a non-empty string", code="empty_query")
    if len(sql) > max_sql_chars:
        raise BadRequest(f"`sql` is longer than {max_sql_chars} characters", code="sql_too_long")
    _check_text(sql, "sql")
    epsilon = _parse_epsilon(body.get("epsilon"))
    grant = body.get("grant")
    if grant is not None and not isinstance(grant, str):
        raise BadRequest("`grant` must be a grant id string", code="bad_grant")
    if grant is not None:
        _check_text(grant, "grant")
    unknown = set(body) - {"sql", "epsilon", "grant"}
    if unknown:
        raise BadRequest(f"unknown fields: {', '.join(sorted(unknown))}", code="unknown_field")
    return QueryRequest(sql=sql, epsilon=epsilon, grant=grant)


def _check_text(value: str, field: str) -> None:
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise BadRequest(f"`{field}` is not valid Unicode text", code="bad_text") from None


def _parse_epsilon(epsilon: object) -> float:
    if epsilon is None:
        raise BadRequest("`epsilon` is required: the privacy loss you choose to spend, e.g. 0.1", code="bad_epsilon")
    if isinstance(epsilon, bool) or not isinstance(epsilon, int | float):
        raise BadRequest("`epsilon` must be a number", code="bad_epsilon")
    try:
        value = float(epsilon)
    except OverflowError:
        value = math.inf
    if not math.isfinite(value) or value <= 0:
        raise BadRequest("`epsilon` must be a finite number above 0", code="bad_epsilon")
    if value < MIN_EPSILON:
        raise BadRequest(
            f"`epsilon` below {MIN_EPSILON} is refused: such answers are pure noise, and dust-sized "
            "queries would let one grant ask billions of questions",
            code="bad_epsilon",
        )
    if value > MAX_EPSILON:
        raise BadRequest(f"`epsilon` above {MAX_EPSILON} is over any grant's cap", code="epsilon_over_cap")
    return value


def resolve_grant(services: Services, user: str, grant_id: str | None) -> Grant:
    """The grant the caller names (or their only usable one), checked now."""
    today = services.today()
    if grant_id is None:
        usable = [g for g in services.policies.grants_for(user) if can_use_grant(g, user, today)]
        if len(usable) != 1:
            raise BadRequest(
                "name the grant: you hold "
                + (f"{len(usable)} usable grants" if usable else "no usable grant"),
                code="grant_required" if usable else "no_usable_grant",
            )
        return usable[0]
    try:
        grant = services.policies.grant(grant_id)
    except NotFound:
        raise Forbidden(f"no grant {grant_id} for {user}", code="not_a_member") from None
    check_grant_usable(grant, user, today)
    return grant


def cache_key(grant_id: str, normalized_sql: str, epsilon: float) -> str:
    return hashlib.sha256(f"{grant_id}\x00{normalized_sql}\x00{to_nano(epsilon)}".encode()).hexdigest()


def answer_digest(columns: list, rows: list) -> str:
    return hashlib.sha256(json.dumps([columns, rows], default=str).encode()).hexdigest()


class QueryService:
    def __init__(self, services: Services) -> None:
        self.s = services

    def run(self, user: str, body: object) -> dict:
        grant_id = body.get("grant") if isinstance(body, dict) and isinstance(body.get("grant"), str) else None
        sql = body.get("sql") if isinstance(body, dict) and isinstance(body.get("sql"), str) else None
        try:
            req = parse_request(body, self.s.settings.max_sql_chars)
            grant = resolve_grant(self.s, user, req.grant)
            grant_id = grant.id
            return self._run(user, grant, req)
        except SandboxError as exc:
            self._audit_refusal(user, grant_id, sql, exc.code, exc.status)
            raise
        except Exception:
            self._audit_refusal(user, grant_id, sql, "internal_error", 500)
            raise

    def _audit_refusal(self, user: str, grant_id: str | None, sql: str | None, code: str, status: int) -> None:
        detail = {"sql": (sql or "")[:2000], "code": code, "status": status}
        if grant_id is not None:  # a hostile id may hold text SQLite cannot store as UTF-8
            grant_id = grant_id[:100].encode("utf-8", "backslashreplace").decode("utf-8")
        self.s.audit.record(AuditEvent(user, "query.refused", grant_id, detail))

    def _run(self, user: str, grant: Grant, req: QueryRequest) -> dict:
        catalog = self.s.policies.datasets()
        try:  # classification rules are enforced at query time too, not only at apply time
            check_grant_fits_catalog(grant, catalog)
        except PolicyError as exc:
            raise Forbidden(
                f"grant {grant.id} no longer fits the catalog: {exc.message}", code="grant_out_of_policy"
            ) from None
        plan = analyze(req.sql, catalog, granted_columns(grant, catalog))
        self.s.engine.ensure(catalog)
        dataset = catalog[plan.dataset]
        if not self.s.engine.has_table(dataset.id):
            raise SandboxError(f"dataset {dataset.id} has no data loaded yet", code="dataset_unavailable")
        if plan.join is not None:  # checked on public data, before any charge
            dataset = check_lookup(self.s.engine, plan.join, dataset, catalog)
        delta = selection_delta(grant.budget.delta) if plan.open_keys else 0.0
        dp_plan = plan_dp(plan, dataset, from_nano(to_nano(req.epsilon)), delta)
        key = cache_key(grant.id, plan.normalized_sql, req.epsilon)
        query_id = "q-" + uuid.uuid4().hex[:16]
        charge = self.s.ledger.charge(
            grant_id=grant.id,
            user=user,
            query_id=query_id,
            epsilon=req.epsilon,
            max_epsilon_per_query=grant.max_epsilon_per_query,
            cache_key=key,
            audit_detail={"sql": req.sql, "normalized_sql": plan.normalized_sql, "dataset": plan.dataset},
            delta=dp_plan.delta,
        )
        if charge.cached_response is not None:
            return {
                **charge.cached_response,
                "epsilon_spent": 0.0,
                "cached": True,
                "budget": self.s.ledger.state(grant.id).to_dict(),
            }
        try:
            released = release(dp_plan, self.s.engine.exact(dp_plan))
        except SandboxError as exc:
            self.s.ledger.forget_pending(key, query_id, user, grant.id, exc.code)
            raise
        except Exception as exc:  # the budget stays spent; nothing is released
            self.s.ledger.forget_pending(key, query_id, user, grant.id, type(exc).__name__)
            raise
        rows = apply_post(plan, released.columns, released.rows)
        response = {
            "query_id": query_id,
            "grant": grant.id,
            "dataset": plan.dataset,
            "columns": released.columns,
            "rows": rows,
            "epsilon_spent": from_nano(charge.epsilon_nano),
            "cached": False,
            "accuracy": {"alpha": ALPHA, "ci_halfwidth": released.ci_halfwidth,
                         **({"quantiles": released.quantiles} if released.quantiles else {})},
            "mechanism": {"name": "discrete_laplace", "scales": released.scales,
                          "epsilon_per_measurement": dp_plan.epsilon_each,
                          "measurements": released.measurements,
                          **({"partition_selection": released.selection} if released.selection else {})},
            "answer_sha256": answer_digest(released.columns, rows),
        }
        self.s.ledger.store_answer(key, query_id, user, grant.id, response)
        response["budget"] = self.s.ledger.state(grant.id).to_dict()
        return response

