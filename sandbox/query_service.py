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

from sandbox.dp.accounting import rho_to_epsilon
from sandbox.dp.planner import (
    ALPHA,
    SELECT,
    cost_for_halfwidth,
    plan_dp,
    planned_halfwidths,
    planned_notes,
    planned_quantiles,
    release,
)
from sandbox.dp.selection import calibrate, selection_delta
from sandbox.engine import EngineError, Generation, catalog_digest, data_building
from sandbox.engines import check_one_engine
from sandbox.errors import BadRequest, Forbidden, NotFound, PolicyError, SandboxError
from sandbox.policy.models import Dataset, Grant
from sandbox.policy.rules import can_use_grant, check_grant_fits_catalog, check_grant_usable, granted_columns
from sandbox.services import Services
from sandbox.sql._join import check_lookup, joined_dataset
from sandbox.sql.analyze import analyze
from sandbox.sql.plan import QueryPlan
from sandbox.sql.post import apply_post
from sandbox.state.audit import AuditEvent
from sandbox.state.ledger import from_nano, to_nano

MIN_EPSILON = 0.001
MAX_EPSILON = 100.0


MIN_RHO = MIN_EPSILON**2 / 2  # the rho of a pure query at the smallest epsilon
MAX_RHO = MAX_EPSILON**2 / 2
MAX_HALFWIDTH = 1e15


@dataclass(frozen=True)
class QueryRequest:
    """``cost`` is epsilon (``unit == "epsilon"``, pure grants) or rho (``unit == "rho"``, zcdp grants)."""

    sql: str
    cost: float
    grant: str | None
    unit: str = "epsilon"
    ci_halfwidth: float | None = None  # plans only: the target instead of a cost

    @property
    def epsilon(self) -> float:
        return self.cost


def parse_request(body: object, max_sql_chars: int, *, plan: bool = False) -> QueryRequest:
    if not isinstance(body, dict):
        raise BadRequest('send a JSON object: {"sql": ..., "epsilon": ..., "grant": ...}', code="bad_json")
    sql = body.get("sql")
    if not isinstance(sql, str) or not sql.strip():
        raise BadRequest("`sql` must be a non-empty string", code="empty_query")
    if len(sql) > max_sql_chars:
        raise BadRequest(f"`sql` is longer than {max_sql_chars} characters", code="sql_too_long")
    _check_text(sql, "sql")
    grant = body.get("grant")
    if grant is not None and not isinstance(grant, str):
        raise BadRequest("`grant` must be a grant id string", code="bad_grant")
    if grant is not None:
        _check_text(grant, "grant")
    allowed = {"sql", "epsilon", "rho", "grant"} | ({"ci_halfwidth"} if plan else set())
    unknown = set(body) - allowed
    if unknown:
        raise BadRequest(f"unknown fields: {', '.join(sorted(unknown))}", code="unknown_field")
    given = [k for k in ("epsilon", "rho", "ci_halfwidth") if body.get(k) is not None]
    if len(given) > 1:
        raise BadRequest(f"send one of {', '.join('`' + g + '`' for g in given)}, not several", code="bad_epsilon")
    if plan and given == ["ci_halfwidth"]:
        return QueryRequest(sql, 0.0, grant, "epsilon", _parse_halfwidth(body["ci_halfwidth"]))
    if given == ["rho"]:
        return QueryRequest(sql, _parse_rho(body["rho"]), grant, "rho")
    return QueryRequest(sql=sql, cost=_parse_epsilon(body.get("epsilon")), grant=grant)


def _check_text(value: str, field: str) -> None:
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise BadRequest(f"`{field}` is not valid Unicode text", code="bad_text") from None


def _number(value: object, field: str, code: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise BadRequest(f"`{field}` must be a number", code=code)
    try:
        number = float(value)
    except OverflowError:
        number = math.inf
    if not math.isfinite(number) or number <= 0:
        raise BadRequest(f"`{field}` must be a finite number above 0", code=code)
    return number


def _parse_epsilon(epsilon: object) -> float:
    if epsilon is None:
        raise BadRequest("`epsilon` is required: the privacy loss you choose to spend, e.g. 0.1", code="bad_epsilon")
    value = _number(epsilon, "epsilon", "bad_epsilon")
    if value < MIN_EPSILON:
        raise BadRequest(
            f"`epsilon` below {MIN_EPSILON} is refused: such answers are pure noise, and dust-sized "
            "queries would let one grant ask billions of questions",
            code="bad_epsilon",
        )
    if value > MAX_EPSILON:
        raise BadRequest(f"`epsilon` above {MAX_EPSILON} is over any grant's cap", code="epsilon_over_cap")
    return value


def _parse_rho(rho: object) -> float:
    value = _number(rho, "rho", "bad_epsilon")
    if value < MIN_RHO:
        raise BadRequest(f"`rho` below {MIN_RHO:g} is refused: such answers are pure noise", code="bad_epsilon")
    if value > MAX_RHO:
        raise BadRequest(f"`rho` above {MAX_RHO:g} is over any grant's cap", code="epsilon_over_cap")
    return value


def _parse_halfwidth(value: object) -> float:
    number = _number(value, "ci_halfwidth", "bad_halfwidth")
    if number > MAX_HALFWIDTH:
        raise BadRequest(f"`ci_halfwidth` above {MAX_HALFWIDTH:g} is not a useful target", code="bad_halfwidth")
    return number


def check_accounting(grant: Grant, unit: str) -> None:
    """A pure grant is charged in epsilon, a zcdp grant in rho."""
    if grant.accounting == "zcdp" and unit != "rho":
        raise BadRequest(
            f"grant {grant.id} uses zcdp accounting: send `rho` (a pure query at epsilon e costs e**2/2 in rho)",
            code="wrong_accounting",
        )
    if grant.accounting == "pure" and unit != "epsilon":
        raise BadRequest(f"grant {grant.id} uses pure accounting: send `epsilon`", code="wrong_accounting")


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


def cache_key(
    grant_id: str, normalized_sql: str, cost: float, data_version: str, catalog_entry: str, unit: str = "epsilon"
) -> str:
    """The answer cache key: grant, data version (source file and catalog entry as built), the
    catalog entry's digest, normalized SQL and cost. A refresh or a new bound is a new key,
    so an old answer is never replayed as current (and the new one is charged)."""
    parts = [grant_id, data_version, catalog_entry, normalized_sql, unit, str(to_nano(cost))]
    return hashlib.sha256("\x00".join(parts).encode()).hexdigest()


def answer_digest(columns: list, rows: list) -> str:
    return hashlib.sha256(json.dumps([columns, rows], default=str).encode()).hexdigest()


class QueryService:
    def __init__(self, services: Services) -> None:
        self.s = services

    def run(self, user: str, body: object) -> dict:
        return self._guarded(user, body, plan=False)

    def plan(self, user: str, body: object) -> dict:
        """Accuracy before spending: free, touches no data and no ledger; same checks and analyzer."""
        return self._guarded(user, body, plan=True)

    def _guarded(self, user: str, body: object, *, plan: bool) -> dict:
        requested = body.get("grant") if isinstance(body, dict) and isinstance(body.get("grant"), str) else None
        if requested is not None:  # a hostile id may hold text SQLite cannot store as UTF-8
            requested = requested[:100].encode("utf-8", "backslashreplace").decode("utf-8")
        sql = body.get("sql") if isinstance(body, dict) and isinstance(body.get("sql"), str) else None
        grant_id: str | None = None  # a refusal is filed under a grant only once it is the caller's
        try:
            req = parse_request(body, self.s.settings.max_sql_chars, plan=plan)
            grant = resolve_grant(self.s, user, req.grant)
            grant_id = grant.id
            return self._plan(user, grant, req) if plan else self._run(user, grant, req)
        except SandboxError as exc:
            self._audit_refusal(user, grant_id or self._members_grant(user, requested), requested, sql,
                                exc.code, exc.status, plan)
            raise
        except Exception:
            self._audit_refusal(user, grant_id, requested, sql, "internal_error", 500, plan)
            raise

    def _members_grant(self, user: str, requested: str | None) -> str | None:
        """The requested grant when the caller is one of its members (refused as suspended, expired...)."""
        if not requested:
            return None
        try:
            return requested if user in self.s.policies.grant(requested).members else None
        except SandboxError:
            return None

    def _audit_refusal(self, user: str, grant_id: str | None, requested: str | None, sql: str | None,
                       code: str, status: int, plan: bool = False) -> None:
        detail: dict[str, object] = {"sql": (sql or "")[:2000], "code": code, "status": status}
        if requested is not None and requested != grant_id:
            # whatever id the body named, it is not the caller's: recorded, never blamed on that grant
            detail["requested_grant"] = requested
        action = "query.plan_refused" if plan else "query.refused"
        self.s.audit.record(AuditEvent(user, action, grant_id, detail))

    def _analyze(self, grant: Grant, req: QueryRequest) -> tuple[QueryPlan, Dataset, dict[str, Dataset]]:
        catalog = self.s.policies.datasets()
        try:  # classification rules are enforced at query time too, not only at apply time
            check_grant_fits_catalog(grant, catalog)
        except PolicyError as exc:
            raise Forbidden(
                f"grant {grant.id} no longer fits the catalog: {exc.message}", code="grant_out_of_policy"
            ) from None
        plan = analyze(req.sql, catalog, granted_columns(grant, catalog))
        check_one_engine(plan, catalog)
        return plan, catalog[plan.dataset], catalog

    def _as_built(self, grant: Grant, req: QueryRequest, plan: QueryPlan, catalog: dict[str, Dataset],
                  gen: Generation | None, *, strict: bool = True) -> tuple[QueryPlan, list[Dataset]]:
        """The plan and the catalog entries of the datasets the query reads, as the generation ``gen``
        was built from them: a query is planned with the entries its data was built from, never a new
        bound over old data. Access was checked on the entries in force (``catalog``, the grant now).
        ``strict``: a dataset ``gen`` lacks, or a query that only fits the new entry, is a 503."""
        ids = [plan.dataset] + ([plan.join.lookup] if plan.join is not None else [])
        engine = self.s.engine
        built: dict[str, Dataset] = {}
        for ds_id in ids:
            entry = gen.entry(ds_id) if gen is not None else None
            if entry is None and not strict:
                return plan, [catalog[i] for i in ids]
            if entry is None:
                if gen is None and not engine.building():
                    raise EngineError("the engine is not ready")
                if engine.building():
                    raise data_building(ds_id, engine.retry_after())
                raise SandboxError(f"dataset {ds_id} has no data loaded yet", code="dataset_unavailable")
            built[ds_id] = entry
        if any(catalog_digest(built[i]) != catalog_digest(catalog[i]) for i in ids):
            # a refresh is under way (or failed): the query must also fit the entries the data was built from
            try:
                plan = analyze(req.sql, {**catalog, **built}, granted_columns(grant, catalog))
            except SandboxError:
                if not strict:
                    return plan, [catalog[i] for i in ids]
                if engine.building():
                    raise data_building(plan.dataset, engine.retry_after()) from None
                raise SandboxError(f"dataset {plan.dataset}: the data of its catalog entry in force is not loaded "
                                   "(its build failed; the administrator has been told)",
                                   code="dataset_unavailable") from None
        return plan, [built[i] for i in ids]

    def _plan(self, user: str, grant: Grant, req: QueryRequest) -> dict:
        plan, dataset, catalog = self._analyze(grant, req)
        # the entries a query would be answered with now (those of the build in force, while a refresh runs)
        plan, entries = self._as_built(grant, req, plan, catalog, self.s.engine.serving(), strict=False)
        dataset = entries[0]
        if plan.join is not None:  # the merged catalog entry, from metadata alone (the key check needs data)
            dataset = joined_dataset(dataset, entries[1])
        delta = _selection_delta(grant, plan)
        unit = "rho" if grant.accounting == "zcdp" else "epsilon"
        out: dict = {"grant": grant.id, "dataset": dataset.id, "accounting": grant.accounting, "charged": False}
        if req.ci_halfwidth is not None:
            cost = cost_for_halfwidth(plan, dataset, req.ci_halfwidth, grant.accounting,
                                      max_cost=MAX_RHO if unit == "rho" else MAX_EPSILON, delta=delta)
            if cost is None:
                raise BadRequest("a target half-width needs a COUNT, COUNT(DISTINCT unit) or SUM column; the "
                                 "intervals of AVG and the spreads depend on the noisy count, and a quantile's "
                                 "accuracy is a rank error: plan it with an epsilon instead", code="bad_halfwidth")
            out["target_ci_halfwidth"] = req.ci_halfwidth
            cost = max(cost, MIN_RHO if unit == "rho" else MIN_EPSILON)  # the smallest cost a query may ask
        else:
            check_accounting(grant, req.unit)
            cost = req.cost
        # the per-query cap is an epsilon; a rho counts with its epsilon at the grant's delta
        if unit == "epsilon":
            within = to_nano(cost) <= to_nano(grant.max_epsilon_per_query)
        else:
            within = rho_to_epsilon(cost, grant.budget.delta) <= grant.max_epsilon_per_query * (1 + 1e-12)
        dp_plan = plan_dp(plan, dataset, from_nano(to_nano(cost)), grant.accounting, delta)
        notes, ranks = planned_notes(dp_plan), planned_quantiles(dp_plan)
        out.update({
            unit: cost,
            "within_per_query_cap": within,
            "budget": self.s.ledger.state(grant.id).to_dict(),
            "accuracy": {"alpha": ALPHA, "ci_halfwidth": planned_halfwidths(dp_plan),
                         **({"ci_halfwidth_null": notes} if notes else {}),
                         **({"quantiles": ranks} if ranks else {})},
            "mechanism": {"name": dp_plan.mechanism,
                          "scales": {p.label: dp_plan.scale(p) for p in dp_plan.primitives},
                          f"{unit}_per_measurement": dp_plan.epsilon_each,
                          **_selection_block(dp_plan)},
        })
        if not all(v is None or math.isfinite(v) for v in out["accuracy"]["ci_halfwidth"].values()):
            raise BadRequest("no accuracy statement for this plan", code="bad_halfwidth")  # never -Infinity
        if unit == "rho":
            out["epsilon_equivalent"] = rho_to_epsilon(cost, grant.budget.delta)
        self.s.audit.record(AuditEvent(user, "query.planned", grant.id,
                                       {"sql": req.sql[:2000], "normalized_sql": plan.normalized_sql,
                                        "dataset": dataset.id, unit: cost}))
        return out

    def _run(self, user: str, grant: Grant, req: QueryRequest) -> dict:
        check_accounting(grant, req.unit)
        plan, _, catalog = self._analyze(grant, req)
        engine = self.s.engine
        # a changed catalog entry or file starts a background build; the generation in force answers
        gen = engine.refresh(catalog)
        plan, versioned = self._as_built(grant, req, plan, catalog, gen)
        assert gen is not None
        pin = {d.id: gen.versions[d.id] for d in versioned}
        dataset = versioned[0]
        if plan.join is not None:  # checked on public data, before any charge
            dataset = check_lookup(engine, plan.join, dataset, {**catalog, **{d.id: d for d in versioned}})
        if any(engine.data_version(ds_id) != version for ds_id, version in pin.items()):
            # swapped since the query was planned (or the lookup checked): it held for other data
            raise EngineError("the data was refreshed while the query was checked; ask again",
                              code="data_refreshed")
        dp_plan = plan_dp(plan, dataset, from_nano(to_nano(req.cost)), grant.accounting, _selection_delta(grant, plan))
        data_version = "+".join(pin[d.id] for d in versioned)
        digest = "+".join(catalog_digest(d) for d in [dataset, *versioned[1:]])
        key = cache_key(grant.id, plan.normalized_sql, req.cost, data_version, digest, req.unit)
        query_id = "q-" + uuid.uuid4().hex[:16]
        zcdp = req.unit == "rho"
        charge = self.s.ledger.charge(
            grant_id=grant.id,
            user=user,
            query_id=query_id,
            epsilon=None if zcdp else req.cost,
            rho=req.cost if zcdp else None,
            max_epsilon_per_query=grant.max_epsilon_per_query,
            cache_key=key,
            audit_detail={"sql": req.sql, "normalized_sql": plan.normalized_sql, "dataset": plan.dataset,
                          "data_version": data_version},
            dataset=catalog[plan.dataset],  # caps as in force now (they are not part of the built entry)
            operator=grant.operator,
            delta=dp_plan.delta,
            # a join on the privacy unit reads a second private dataset: its caps are charged too
            also=tuple(catalog[d.id] for d in versioned[1:] if not (d.public and catalog[d.id].public)),
        )
        if charge.cached_response is not None:
            return {
                **charge.cached_response,
                "epsilon_spent": 0.0,
                **({"rho_spent": 0.0} if zcdp else {}),
                "cached": True,
                "budget": self.s.ledger.state(grant.id).to_dict(),
            }
        try:
            released = release(dp_plan, self.s.engine.exact(dp_plan, pin))
        except SandboxError as exc:
            self.s.ledger.forget_pending(key, query_id, user, grant.id, exc.code)
            raise
        except Exception as exc:  # the budget stays spent; nothing is released
            self.s.ledger.forget_pending(key, query_id, user, grant.id, type(exc).__name__)
            raise
        rows = apply_post(plan, released.columns, released.rows)
        unit = "rho" if zcdp else "epsilon"
        response = {
            "query_id": query_id,
            "grant": grant.id,
            "dataset": plan.dataset,
            "columns": released.columns,
            "rows": rows,
            "epsilon_spent": from_nano(charge.epsilon_nano),
            **({"rho_spent": from_nano(charge.rho_nano)} if zcdp else {}),
            "cached": False,
            "accuracy": {"alpha": ALPHA, "ci_halfwidth": released.ci_halfwidth,
                         **({"quantiles": released.quantiles} if released.quantiles else {})},
            "mechanism": {"name": dp_plan.mechanism, "scales": released.scales,
                          f"{unit}_per_measurement": dp_plan.epsilon_each,
                          "measurements": released.measurements,
                          **({"partition_selection": released.selection} if released.selection else {})},
            "answer_sha256": answer_digest(released.columns, rows),
        }
        self.s.ledger.store_answer(key, query_id, user, grant.id, response)
        response["budget"] = self.s.ledger.state(grant.id).to_dict()
        return response


def _selection_delta(grant: Grant, plan: QueryPlan) -> float:
    """The delta DP partition selection spends (pure grants; zcdp grants are refused it by the planner)."""
    return selection_delta(grant.budget.delta) if plan.open_keys and grant.accounting == "pure" else 0.0


def _selection_block(dp_plan) -> dict:  # noqa: ANN001
    """The partition selection a plan would run: its threshold and delta (before any data)."""
    if SELECT not in dp_plan.primitives:
        return {}
    scale, threshold = calibrate(dp_plan.epsilon_each, dp_plan.delta, dp_plan.unit_groups)
    return {"partition_selection": {"mechanism": "laplace_threshold", "scale": scale, "threshold": threshold,
                                    "epsilon": dp_plan.epsilon_each, "delta": dp_plan.delta}}
