"""State agrees with the log: replay the audit log and compare every row of the state tables.

Each event's detail carries what replay needs (a grant's whole body on every apply, the new
status on every status change, the charged nano-epsilon, a token's hash, an export request's
new state, files and votes). :func:`reconcile` rebuilds grants, budgets, charges, answers,
tokens, datasets, roles, export request states with their current files and review votes, and
checkpoints from the log alone, and reports every row that differs: table, key, column, the
value in the table, the value from the log. A row the log never created, or a row the log
created that is gone, is reported too.
"""

from __future__ import annotations

import json
import sqlite3
from dataclasses import dataclass, field
from typing import Any

from sandbox.state.audit import AuditLog, Entry
from sandbox.state.db import StateDB

MISSING = "(no row)"
ABSENT = "(no event)"
PRESENT = "(present)"
UNKNOWN: Any = object()  # a value the log does not record (events from before it was logged)
STATUS_ACTIONS = {"grant.suspended": "suspended", "grant.resumed": "active", "grant.revoked": "revoked"}
NANO = 1_000_000_000
VOTE_ACTIONS = ("export.reviewed", "export.approved", "export.rejected", "export.returned")


@dataclass(frozen=True)
class Divergence:
    table: str
    key: str
    column: str
    in_table: Any
    from_log: Any

    def __str__(self) -> str:
        return (f"{self.table}[{self.key}].{self.column}: the table has {_show(self.in_table)}, "
                f"the log says {_show(self.from_log)}")


def _show(value: Any) -> str:
    return value if value in (MISSING, ABSENT, PRESENT) else json.dumps(value, default=str)


def _nano(epsilon: Any) -> int:
    return round(float(epsilon) * NANO)


@dataclass
class Replayed:
    """The state the log implies (``None`` where an old entry does not carry enough to know)."""

    grants: dict[str, dict[str, Any]] = field(default_factory=dict)  # id -> {body, status, status_reason}
    budgets: dict[str, dict[str, Any]] = field(default_factory=dict)  # id -> {total, spent, delta_total}
    charges: dict[str, dict[str, Any]] = field(default_factory=dict)  # query id -> {grant_id, user, epsilon_nano}
    answers: dict[str, str | None] = field(default_factory=dict)  # query id -> answer sha256 (answered)
    tokens: dict[str, dict[str, Any]] = field(default_factory=dict)  # token hash -> {user, scope, revoked}
    datasets: dict[str, Any] = field(default_factory=dict)  # id -> body (None: unknown)
    roles: Any = None
    exports: dict[str, str] = field(default_factory=dict)  # request id -> status
    export_files: dict[str, dict[str, str]] = field(default_factory=dict)  # request id -> {name: sha256}
    export_votes: dict[str, str] = field(default_factory=dict)  # "request/round/reviewer" -> decision
    export_overrides: dict[str, list[str]] = field(default_factory=dict)  # "request/round/admin" -> files
    checkpoints: dict[int, str] = field(default_factory=dict)  # seq -> head
    rho_spent: dict[str, int] = field(default_factory=dict)  # zcdp grant -> rho nano spent
    rho_charges: dict[str, int] = field(default_factory=dict)  # query id -> rho nano
    cap_spent: dict[str, int] = field(default_factory=dict)  # "dataset/operator" ('' = all grants) -> nano
    grant_dataset: dict[str, int] = field(default_factory=dict)  # "grant/dataset" -> units nano
    charge_scopes: dict[str, dict[str, Any]] = field(default_factory=dict)  # query id -> its scope
    notices: dict[str, list[tuple[str, str, str]]] = field(default_factory=dict)  # grant -> (status, text, actor)
    sessions: list[dict[str, Any]] = field(default_factory=list)  # notebook sessions in the order opened
    delta_spent: dict[str, float] = field(default_factory=dict)  # "dataset/grant" -> a zcdp grant's delta
    selection_delta: dict[str, dict[str, Any]] = field(default_factory=dict)  # scope id -> {dataset, grant_id, delta}
    cases: dict[str, str] = field(default_factory=dict)  # case id -> status
    offerings: dict[str, str] = field(default_factory=dict)  # offering id -> status
    alerts_raised: set[int] = field(default_factory=set)  # audit seq of each alert.raised
    alerts_acknowledged: set[str] = field(default_factory=set)  # alert ids
    alerts_enforced: set[str] = field(default_factory=set)  # alert ids that suspended a grant


def replay(entries: list[Entry]) -> Replayed:
    state = Replayed()
    for e in entries:
        _apply(state, e)
    return state


def _apply(state: Replayed, e: Entry) -> None:  # noqa: C901 - one branch per event kind, flat on purpose
    d = e.detail
    if e.action in ("grant.created", "grant.changed") and e.grant_id:
        body = d.get("grant")
        old = state.grants.get(e.grant_id, {"status_reason": None})
        if body and old.get("status") is not None and old.get("status") != body.get("status"):
            state.notices.pop(e.grant_id, None)  # a reason published for the old status no longer applies
        state.grants[e.grant_id] = {
            "body": body, "status": body.get("status") if body else None, "status_reason": old["status_reason"]}
        if body:
            budget = state.budgets.setdefault(e.grant_id, {"spent": 0, "delta_total": body["budget"]["delta"]})
            budget["total"] = _nano(body["budget"]["epsilon"])
    elif e.action in STATUS_ACTIONS and e.grant_id:
        status = d.get("to", STATUS_ACTIONS[e.action])
        state.notices.pop(e.grant_id, None)
        if status == "revoked" and str(d.get("reason") or "").strip():
            state.notices[e.grant_id] = [("revoked", str(d["reason"]).strip(), e.actor)]
        grant = state.grants.setdefault(e.grant_id, {"body": None, "status": None, "status_reason": None})
        grant["status"] = status
        grant["status_reason"] = d.get("reason") or None
        if grant["body"] is not None:
            grant["body"] = {**grant["body"], "status": status}
    elif e.action == "query.charged" and e.grant_id:
        units = int(d["epsilon_nano"]) if "epsilon_nano" in d else _nano(d.get("epsilon", 0))
        state.charges[str(d.get("query_id"))] = {"grant_id": e.grant_id, "user": e.actor, "epsilon_nano": units}
        state.budgets.setdefault(e.grant_id, {"spent": 0, "delta_total": None, "total": None})
        state.budgets[e.grant_id]["spent"] += units
        _apply_scopes(state, e, units)
    elif e.action == "query.answered":
        state.answers[str(d.get("query_id"))] = d.get("answer_sha256")
    elif e.action == "query.failed":
        state.answers.pop(str(d.get("query_id")), None)
    elif e.action == "token.created":
        state.tokens[d["token_sha256"]] = {"user": d.get("user"), "scope": d.get("scope", "api"), "revoked": False}
    elif e.action == "token.revoked":
        for digest in d.get("token_sha256", []):
            if digest in state.tokens:
                state.tokens[digest]["revoked"] = True
    elif e.action in ("dataset.created", "dataset.changed") and isinstance(d.get("dataset"), str):
        state.datasets[d["dataset"]] = d.get("body")
    elif e.action == "roles.applied":
        state.roles = d
    elif e.action.startswith("export.") and isinstance(d.get("request"), str) and d.get("to"):
        _apply_export(state, e, d["request"])
    elif e.action == "case.filed" and isinstance(d.get("case"), str):
        state.cases[d["case"]] = "open"
    elif e.action.startswith("case.") and isinstance(d.get("case"), str) and d.get("to"):
        state.cases[d["case"]] = str(d["to"])
    elif e.action == "offering.submitted" and d.get("offering") is not None:
        state.offerings[str(d["offering"])] = "submitted"
    elif e.action.startswith("offering.") and d.get("offering") is not None and d.get("to"):
        state.offerings[str(d["offering"])] = str(d["to"])
    elif e.action == "alert.raised":
        state.alerts_raised.add(e.seq)
    elif e.action == "alert.acknowledged" and d.get("alert") is not None:
        state.alerts_acknowledged.add(str(d["alert"]))
    elif e.action == "alert.enforced" and d.get("alert") is not None:
        state.alerts_enforced.add(str(d["alert"]))
    elif e.action == "grant.reason_published" and e.grant_id:
        state.notices.setdefault(e.grant_id, []).append((str(d.get("status")), str(d.get("reason")), e.actor))
    elif e.action == "server.started":
        at = d.get("at", UNKNOWN)  # events from before `at` was logged: the times are not compared
        for open_session in state.sessions:
            if open_session["user"] == e.actor and open_session["stopped_at"] is None:
                open_session["stopped_at"] = at
        state.sessions.append({"user": e.actor, "grant_id": e.grant_id, "started_at": at, "stopped_at": None})
    elif e.action == "server.stopped":
        for open_session in state.sessions:
            if open_session["user"] == e.actor and open_session["stopped_at"] is None:
                open_session["stopped_at"] = d.get("at", UNKNOWN)
    elif e.action == "audit.checkpoint":
        state.checkpoints[int(d["seq"])] = str(d.get("head"))


def _apply_scopes(state: Replayed, e: Entry, eps_units: int) -> None:
    """zCDP rho and the caps across grants a charge also moved (when its event names them)."""
    d, gid, qid = e.detail, str(e.grant_id), str(e.detail.get("query_id"))
    units = int(d["rho_nano"]) if "rho_nano" in d else eps_units
    if "rho_nano" in d:
        state.rho_spent[gid] = state.rho_spent.get(gid, 0) + units
        state.rho_charges[qid] = units
    for scope in d.get("cap_scopes") or []:
        ds, op, cap = str(scope["dataset"]), str(scope["operator_key"]), int(scope["cap_epsilon_nano"])
        for key in (f"{ds}/{op}", f"{ds}/"):
            state.cap_spent[key] = state.cap_spent.get(key, 0) + cap
        state.grant_dataset[f"{gid}/{ds}"] = state.grant_dataset.get(f"{gid}/{ds}", 0) + units
        state.charge_scopes[str(scope["scope"])] = {"grant_id": gid, "dataset": ds, "operator": op,
                                                     "units_nano": units, "cap_epsilon_nano": cap}
        delta = d.get("delta")
        if isinstance(delta, (int, float)) and delta > 0:
            if "rho_nano" in d:  # a zcdp grant's delta counts once per dataset (its first charge there)
                state.delta_spent.setdefault(f"{ds}/{gid}", float(delta))
            else:  # a pure grant's partition selection, per query and dataset
                state.selection_delta[str(scope["scope"])] = {"dataset": ds, "grant_id": gid, "delta": float(delta)}


def _apply_export(state: Replayed, e: Entry, rid: str) -> None:
    d = e.detail
    state.exports[rid] = str(d["to"])
    if e.action == "export.submitted" and isinstance(d.get("files"), dict):
        state.export_files[rid] = dict(d["files"])
    elif e.action == "export.files_changed":
        files = state.export_files.setdefault(rid, {})
        for name in d.get("removed") or []:
            files.pop(name, None)
        files.update(d.get("added") or {})
    if e.action == "export.override" and "round" in d:
        key = f"{rid}/{d['round']}/{e.actor}"
        state.export_overrides.setdefault(key, []).append(_files_key(d.get("files") or {}))
    if e.action in VOTE_ACTIONS and "decision" in d and "round" in d:
        state.export_votes[f"{rid}/{d['round']}/{e.actor}"] = str(d["decision"])


def _files_key(files: Any) -> str:
    return json.dumps(files, sort_keys=True, separators=(",", ":"))


def _body_diff(table: str, key: str, in_table: Any, from_log: Any, prefix: str = "body") -> list[Divergence]:
    if isinstance(in_table, dict) and isinstance(from_log, dict):
        out: list[Divergence] = []
        for k in sorted(set(in_table) | set(from_log)):
            out.extend(_body_diff(table, key, in_table.get(k, MISSING), from_log.get(k, ABSENT), f"{prefix}.{k}"))
        return out
    return [] if in_table == from_log else [Divergence(table, key, prefix, in_table, from_log)]


def _keys(table_rows: dict[str, Any], log_rows: dict[str, Any], table: str) -> list[Divergence]:
    out = [Divergence(table, k, "row", PRESENT, ABSENT) for k in sorted(set(table_rows) - set(log_rows))]
    out += [Divergence(table, k, "row", MISSING, PRESENT) for k in sorted(set(log_rows) - set(table_rows))]
    return out


def reconcile(db: StateDB, audit: AuditLog) -> list[Divergence]:
    """Every difference between the state tables and the state the log implies."""
    log = replay(list(audit.iter_entries()))
    out: list[Divergence] = []
    out += _grants(db, log)
    out += _budgets(db, log)
    out += _charges(db, log)
    out += _tokens(db, log)
    out += _catalog(db, log)
    out += _exports(db, log)
    out += _scopes(db, log)
    out += _oversight(db, log)
    out += _sessions(db, log)
    out += _notices(db, log)
    rows = {str(r["seq"]): r["head"] for r in db.read("SELECT seq, head FROM checkpoints")}
    expected = {str(k): v for k, v in log.checkpoints.items()}
    out += _keys(rows, expected, "checkpoints")
    out += [Divergence("checkpoints", k, "head", rows[k], expected[k]) for k in sorted(set(rows) & set(expected))
            if rows[k] != expected[k]]
    return out


def _grants(db: StateDB, log: Replayed) -> list[Divergence]:
    rows = {r["id"]: r for r in db.read("SELECT id, body, status, status_reason FROM grants")}
    out = _keys(rows, log.grants, "grants")
    for gid in sorted(set(rows) & set(log.grants)):
        row, want = rows[gid], log.grants[gid]
        if want["status"] is not None and row["status"] != want["status"]:
            out.append(Divergence("grants", gid, "status", row["status"], want["status"]))
        if row["status_reason"] != want["status_reason"]:
            out.append(Divergence("grants", gid, "status_reason", row["status_reason"], want["status_reason"]))
        if want["body"] is not None:
            out += _body_diff("grants", gid, json.loads(row["body"]), want["body"])
    return out


def _budgets(db: StateDB, log: Replayed) -> list[Divergence]:
    rows = {r["grant_id"]: r for r in db.read("SELECT * FROM budgets")}
    out = _keys(rows, log.budgets, "budgets")
    for gid in sorted(set(rows) & set(log.budgets)):
        row, want = rows[gid], log.budgets[gid]
        pairs = (("epsilon_total", row["epsilon_total_nano"], want.get("total")),
                 ("epsilon_spent", row["epsilon_spent_nano"], want["spent"]),
                 ("delta_total", row["delta_total"], want.get("delta_total")))
        for column, have, expect in pairs:
            if expect is not None and have != expect:
                scale = NANO if column.startswith("epsilon") else 1
                out.append(Divergence("budgets", gid, column, have / scale, expect / scale))
    return out


def _charges(db: StateDB, log: Replayed) -> list[Divergence]:
    rows = {r["query_id"]: r for r in db.read("SELECT query_id, grant_id, user, epsilon_nano FROM charges")}
    out = _keys(rows, log.charges, "charges")
    for qid in sorted(set(rows) & set(log.charges)):
        for column in ("grant_id", "user", "epsilon_nano"):
            if rows[qid][column] != log.charges[qid][column]:
                out.append(Divergence("charges", qid, column, rows[qid][column], log.charges[qid][column]))
    for r in db.read("SELECT query_id, status, response FROM answers"):
        qid = r["query_id"]
        if qid not in log.charges:
            out.append(Divergence("answers", qid, "row", PRESENT, ABSENT))
        elif r["status"] == "done":
            have = (json.loads(r["response"]) or {}).get("answer_sha256") if r["response"] else None
            if qid not in log.answers:
                out.append(Divergence("answers", qid, "status", "done", "not answered"))
            elif have != log.answers[qid]:
                out.append(Divergence("answers", qid, "answer_sha256", have, log.answers[qid]))
    return out


def _tokens(db: StateDB, log: Replayed) -> list[Divergence]:
    rows = {r["token_hash"]: r for r in db.read("SELECT token_hash, user, scope, revoked_at FROM tokens")}
    out = _keys(rows, log.tokens, "tokens")
    for digest in sorted(set(rows) & set(log.tokens)):
        row, want = rows[digest], log.tokens[digest]
        short = digest[:12]
        if row["user"] != want["user"]:
            out.append(Divergence("tokens", short, "user", row["user"], want["user"]))
        if row["scope"] != want["scope"]:
            out.append(Divergence("tokens", short, "scope", row["scope"], want["scope"]))
        if (row["revoked_at"] is not None) != want["revoked"]:
            out.append(Divergence("tokens", short, "revoked", row["revoked_at"] is not None, want["revoked"]))
    return out


def _catalog(db: StateDB, log: Replayed) -> list[Divergence]:
    rows = {r["id"]: json.loads(r["body"]) for r in db.read("SELECT id, body FROM datasets")}
    out = _keys(rows, log.datasets, "datasets")
    for ds in sorted(set(rows) & set(log.datasets)):
        if log.datasets[ds] is not None:
            out += _body_diff("datasets", ds, rows[ds], log.datasets[ds])
    role_rows = db.read("SELECT body FROM roles WHERE id = 1")
    have = json.loads(role_rows[0]["body"]) if role_rows else None
    if have != log.roles and not (have is None and log.roles is None):
        out += _body_diff("roles", "1", have if have is not None else MISSING,
                          log.roles if log.roles is not None else ABSENT)
    return out


def _exports(db: StateDB, log: Replayed) -> list[Divergence]:
    try:
        rows = {r["id"]: r["status"] for r in db.read("SELECT id, status FROM export_requests")}
        file_rows = db.read("SELECT request_id, name, sha256 FROM export_files WHERE removed_at IS NULL")
        vote_rows = db.read("SELECT request_id, round, reviewer, decision FROM export_reviews")
        override_rows = db.read("SELECT request_id, round, admin, files FROM export_overrides")
    except sqlite3.Error:  # the exports module is optional (or older, without overrides)
        return []
    out = _keys(rows, log.exports, "export_requests")
    out += [Divergence("export_requests", rid, "status", rows[rid], log.exports[rid])
            for rid in sorted(set(rows) & set(log.exports)) if rows[rid] != log.exports[rid]]
    files = {f"{r['request_id']}/{r['name']}": r["sha256"] for r in file_rows}
    logged = {f"{rid}/{name}": sha for rid, fs in log.export_files.items() for name, sha in fs.items()}
    out += _keys(files, logged, "export_files")
    out += [Divergence("export_files", k, "sha256", files[k], logged[k])
            for k in sorted(set(files) & set(logged)) if files[k] != logged[k]]
    overrides: dict[str, list[str]] = {}
    for r in override_rows:
        key = f"{r['request_id']}/{r['round']}/{r['admin']}"
        overrides.setdefault(key, []).append(_files_key(json.loads(r["files"])))
    out += _keys(overrides, log.export_overrides, "export_overrides")
    out += [Divergence("export_overrides", k, "files", sorted(overrides[k]), sorted(log.export_overrides[k]))
            for k in sorted(set(overrides) & set(log.export_overrides))
            if sorted(overrides[k]) != sorted(log.export_overrides[k])]
    votes = {f"{r['request_id']}/{r['round']}/{r['reviewer']}": r["decision"] for r in vote_rows}
    out += _keys(votes, log.export_votes, "export_reviews")
    out += [Divergence("export_reviews", k, "decision", votes[k], log.export_votes[k])
            for k in sorted(set(votes) & set(log.export_votes)) if votes[k] != log.export_votes[k]]
    return out


def _totals(table: str, rows: dict[str, int], logged: dict[str, int]) -> list[Divergence]:
    out = _keys(rows, logged, table)
    out += [Divergence(table, k, "spent", rows[k] / NANO, logged[k] / NANO)
            for k in sorted(set(rows) & set(logged)) if rows[k] != logged[k]]
    return out


def _scopes(db: StateDB, log: Replayed) -> list[Divergence]:
    """zCDP budgets and the caps across grants (tables of the ledger; absent in older states)."""
    out: list[Divergence] = []
    try:
        rho = {r["grant_id"]: r["rho_spent_nano"] for r in db.read("SELECT grant_id, rho_spent_nano FROM zcdp_budgets")}
        rho_charges = {r["query_id"]: r["rho_nano"] for r in db.read("SELECT query_id, rho_nano FROM zcdp_charges")}
        caps = {f"{r['dataset']}/{r['operator']}": r["epsilon_spent_nano"]
                for r in db.read("SELECT dataset, operator, epsilon_spent_nano FROM cap_spent")}
        per_grant = {f"{r['grant_id']}/{r['dataset']}": r["units_nano"]
                     for r in db.read("SELECT grant_id, dataset, units_nano FROM grant_dataset_spent")}
        scopes = {r["query_id"]: dict(r) for r in db.read("SELECT * FROM charge_scopes")}
    except sqlite3.Error:
        return out
    rho_logged = {g: log.rho_spent.get(g, 0) for g in rho}  # a zcdp grant with no charge yet has spent 0
    out += [Divergence("zcdp_budgets", g, "rho_spent", rho[g] / NANO, rho_logged[g] / NANO)
            for g in sorted(rho) if rho[g] != rho_logged[g]]
    out += [Divergence("zcdp_budgets", g, "row", MISSING, PRESENT) for g in sorted(set(log.rho_spent) - set(rho))]
    out += _totals("zcdp_charges", rho_charges, log.rho_charges)
    out += _totals("cap_spent", caps, log.cap_spent)
    out += _totals("grant_dataset_spent", per_grant, log.grant_dataset)
    out += _keys(scopes, log.charge_scopes, "charge_scopes")
    out += _deltas(db, log)
    for qid in sorted(set(scopes) & set(log.charge_scopes)):
        for column, want in log.charge_scopes[qid].items():
            if scopes[qid][column] != want:
                out.append(Divergence("charge_scopes", qid, column, scopes[qid][column], want))
    return out


def _notices(db: StateDB, log: Replayed) -> list[Divergence]:
    """What the public register says about a suspended or revoked grant: each notice as the log has it."""
    try:
        rows = db.read("SELECT grant_id, status, text, actor FROM grant_notices ORDER BY id")
    except sqlite3.Error:
        return []
    table: dict[str, list[tuple[str, str, str]]] = {}
    for r in rows:
        table.setdefault(r["grant_id"], []).append((r["status"], r["text"], r["actor"]))
    out: list[Divergence] = []
    for gid in sorted(set(table) | set(log.notices)):
        have, want = table.get(gid, []), log.notices.get(gid, [])
        for i in range(max(len(have), len(want))):
            key = f"{gid}#{i + 1}"
            if i >= len(have) or i >= len(want):
                out.append(Divergence("grant_notices", key, "row", PRESENT if i < len(have) else MISSING,
                                      PRESENT if i < len(want) else ABSENT))
                continue
            for column, a, b in zip(("status", "text", "actor"), have[i], want[i], strict=True):
                if a != b:
                    out.append(Divergence("grant_notices", key, column, a, b))
    return out


def _sessions(db: StateDB, log: Replayed) -> list[Divergence]:
    """Notebook sessions (billed as hours): each row, in order, as the server.* events imply."""
    rows = [dict(r) for r in db.read("SELECT id, user, grant_id, started_at, stopped_at FROM sessions ORDER BY id")]
    out: list[Divergence] = []
    for i in range(max(len(rows), len(log.sessions))):
        key = str(rows[i]["id"]) if i < len(rows) else f"#{i + 1}"
        if i >= len(rows) or i >= len(log.sessions):
            out.append(Divergence("sessions", key, "row", PRESENT if i < len(rows) else MISSING,
                                  PRESENT if i < len(log.sessions) else ABSENT))
            continue
        for column, want in log.sessions[i].items():
            if want is not UNKNOWN and rows[i][column] != want:
                out.append(Divergence("sessions", key, column, rows[i][column], want))
    return out


def _deltas(db: StateDB, log: Replayed) -> list[Divergence]:
    """The delta tallies of the dataset caps: a row the log implies must be there with its delta (a deleted
    or lowered row would let more queries past the cap). Rows the log does not imply (a backfill's, from
    charges logged before the events named their scopes) are left to the charges they come from."""
    out: list[Divergence] = []
    try:
        spent = {f"{r['dataset']}/{r['grant_id']}": r["delta"]
                 for r in db.read("SELECT dataset, grant_id, delta FROM dataset_delta_spent")}
        selected = {r["query_id"]: dict(r) for r in db.read("SELECT * FROM dataset_selection_delta")}
    except sqlite3.Error:
        return out
    for key, want in sorted(log.delta_spent.items()):
        if key not in spent:
            out.append(Divergence("dataset_delta_spent", key, "row", MISSING, PRESENT))
        elif abs(spent[key] - want) > 1e-15:
            out.append(Divergence("dataset_delta_spent", key, "delta", spent[key], want))
    for key, row in sorted(log.selection_delta.items()):
        have = selected.get(key)
        if have is None:
            out.append(Divergence("dataset_selection_delta", key, "row", MISSING, PRESENT))
            continue
        for column, want in row.items():
            if (abs(have[column] - want) > 1e-15) if column == "delta" else have[column] != want:
                out.append(Divergence("dataset_selection_delta", key, column, have[column], want))
    return out


def _oversight(db: StateDB, log: Replayed) -> list[Divergence]:
    """Cases, operators' declarations and alerts (tables of the oversight modules, when installed)."""
    out: list[Divergence] = []
    for table, logged in (("cases", log.cases), ("offerings", log.offerings)):
        try:
            rows = {str(r["id"]): r["status"] for r in db.read(f"SELECT id, status FROM {table}")}  # noqa: S608
        except sqlite3.Error:
            continue
        out += _keys(rows, logged, table)
        out += [Divergence(table, k, "status", rows[k], logged[k])
                for k in sorted(set(rows) & set(logged)) if rows[k] != logged[k]]
    try:
        alerts = db.read("SELECT id, audit_seq, suspended, acknowledged_at FROM alerts")
    except sqlite3.Error:
        return out
    for r in alerts:
        key = str(r["id"])
        if r["audit_seq"] not in log.alerts_raised:
            out.append(Divergence("alerts", key, "row", PRESENT, ABSENT))
        if (r["acknowledged_at"] is not None) != (key in log.alerts_acknowledged):
            out.append(Divergence("alerts", key, "acknowledged", r["acknowledged_at"] is not None,
                                  key in log.alerts_acknowledged))
        if bool(r["suspended"]) != (key in log.alerts_enforced):
            out.append(Divergence("alerts", key, "suspended", bool(r["suspended"]), key in log.alerts_enforced))
    return out
