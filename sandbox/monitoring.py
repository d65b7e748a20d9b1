"""Early warning: rules over the audit stream raise alerts, and a rule may suspend a grant.

``scan`` reads the audit entries written since the last scan (a cursor in SQLite), evaluates the
rules of ``sandbox.policy.monitoring`` over sliding windows ending at each entry, and in one write
transaction stores each new alert with its ``alert.raised`` audit entry and moves the cursor. Then
it suspends the grants of rules marked ``suspend`` (each suspension audited by the grant store),
logs each alert and posts it to the webhook if one is set. The gateway scans after every request
that wrote to the audit log, so a suspension is in force for the very next request.

Rules: ``refused_burst`` (refused queries of one user), ``id_probing`` (refusals for id or ungranted
columns by one user under one grant), ``bad_tokens`` (bad credentials presented, all clients),
``budget_burn`` (share of a grant's budget spent within the window), ``export_checks_failed``
(export requests with a failing automatic check), ``spawn_outside_hours`` (notebook servers started
outside working hours).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import logging
import sqlite3
import threading
import time
import zoneinfo
from collections.abc import Iterable
from dataclasses import dataclass, field

import requests

from sandbox.errors import Conflict, NotFound
from sandbox.oversight import settings_of
from sandbox.policy.monitoring import MonitoringPolicy
from sandbox.services import Services
from sandbox.state import alerts_store, monitor_reads
from sandbox.state.audit import AuditEvent, Entry

log = logging.getLogger("sandbox.monitoring")
SCAN_BATCH = 5000
_scan_lock = threading.Lock()
REFUSALS = ("query.refused", "query.plan_refused")


@dataclass
class Alert:
    rule: str
    subject: str
    grant_id: str | None
    actor: str | None
    message: str
    detail: dict = field(default_factory=dict)
    suspend: bool = False
    id: int = 0


# -- bad credentials ------------------------------------------------------------------------------
_clock = time.time  # the counter's clock (tests move it)
SAMPLES = 5  # token hash prefixes, paths and client keys kept per aggregated entry


class _BadTokenCounter:
    """Bad credentials are counted per process and written as at most one ``auth.bad_token`` entry a
    minute (``count`` attempts since ``first``, with a few samples). The entry is written as soon as
    the count reaches the alert threshold (so a burst alerts at once), or in a later minute at the
    next bad credential or the next request (``flush``)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.reset()

    def reset(self) -> None:
        self.pending = 0
        self.first: float | None = None
        self.samples: dict[str, list[str]] = {"token_sha256_prefix": [], "path": [], "client": []}
        self.written_minute = -1

    def add(self, sample: dict[str, str], threshold: int) -> dict | None:
        with self.lock:
            if not self.pending:
                self.first = _clock()
            self.pending += 1
            for key, value in sample.items():
                if value not in self.samples[key] and len(self.samples[key]) < SAMPLES:
                    self.samples[key].append(value)
            return self._take(self.pending >= threshold)

    def flush(self) -> dict | None:
        with self.lock:
            return self._take(False) if self.pending else None

    def _take(self, due: bool) -> dict | None:
        minute = int(_clock() // 60)
        first_minute = int(self.first // 60) if self.first is not None else minute
        if minute == self.written_minute or not (due or first_minute < minute):
            return None
        first = dt.datetime.fromtimestamp(self.first or _clock(), dt.UTC).isoformat(timespec="seconds")
        detail: dict = {"count": self.pending, "first": first, **self.samples}
        self.pending, self.first = 0, None
        self.samples = {k: [] for k in self.samples}
        self.written_minute = minute
        return detail


_counters: dict[str, _BadTokenCounter] = {}
_counters_lock = threading.Lock()


def _bad_tokens(services: Services) -> _BadTokenCounter:
    """This process's counter for one state directory."""
    with _counters_lock:
        return _counters.setdefault(str(services.db.dir), _BadTokenCounter())


def record_bad_token(services: Services, token: str, path: str, client: str) -> None:
    """Count a bad credential: the first 8 hex digits of its SHA-256 (never the token text), the path
    and a keyed hash of the client, written in aggregate (see ``_BadTokenCounter``)."""
    from sandbox.cases import client_key

    digest = hashlib.sha256(token.encode("utf-8", "replace")).hexdigest()
    sample = {"token_sha256_prefix": digest[:8],
              "path": path[:200].encode("utf-8", "backslashreplace").decode("utf-8"),
              "client": client_key(services, client)}
    rule = settings_of(services).monitoring.bad_tokens
    _write_bad_tokens(services, _bad_tokens(services).add(sample, rule.threshold if rule.enabled else 10))


def flush_bad_tokens(services: Services) -> None:
    """Write the bad credentials counted in earlier minutes (after every request)."""
    _write_bad_tokens(services, _bad_tokens(services).flush())


def _write_bad_tokens(services: Services, detail: dict | None) -> None:
    if detail is not None:
        services.audit.record(AuditEvent("anonymous", "auth.bad_token", None, detail))


# -- alerts ---------------------------------------------------------------------------------------
def _store_alert(services: Services, conn: sqlite3.Connection, alert: Alert) -> int:
    seq = services.audit.append(conn, AuditEvent("monitor", "alert.raised", alert.grant_id, {
        "rule": alert.rule, "subject": alert.subject, "message": alert.message, **alert.detail,
    }))
    return alerts_store.insert(conn, rule=alert.rule, subject=alert.subject, grant_id=alert.grant_id,
                               actor=alert.actor, message=alert.message, detail=alert.detail, audit_seq=seq)


def raise_alert(services: Services, rule: str, subject: str, grant_id: str | None, actor: str | None,
                message: str, detail: dict) -> int:
    """Store and announce one alert outside a scan (e.g. the emergency stop)."""
    alert = Alert(rule, subject, grant_id, actor, message, detail)
    with services.db.work() as work:
        conn = work.conn
        alert.id = _store_alert(services, conn, alert)
    _announce(services, [alert])
    return alert.id


def _announce(services: Services, alerts: Iterable[Alert]) -> None:
    cfg = settings_of(services)
    for alert in alerts:
        log.warning("ALERT %s [%s] %s", alert.rule, alert.subject, alert.message)
        if not cfg.alert_webhook_url:
            continue
        body = {"alert": {"id": alert.id, "rule": alert.rule, "subject": alert.subject, "grant": alert.grant_id,
                          "actor": alert.actor, "message": alert.message, "detail": alert.detail,
                          "suspended": alert.suspend}}
        try:
            requests.post(cfg.alert_webhook_url, json=body, timeout=cfg.alert_webhook_timeout)
        except requests.RequestException as exc:
            log.error("alert webhook %s failed: %s", cfg.alert_webhook_url, exc)


def acknowledge(services: Services, alert_id: int, user: str) -> dict:
    if not 0 < alert_id < 2**63:  # SQLite integers: anything else names no alert
        raise NotFound(f"no alert {alert_id}", code="unknown_alert")
    with services.db.work() as work:
        conn = work.conn
        alert = alerts_store.get(conn, alert_id)
        if alert is None:
            raise NotFound(f"no alert {alert_id}", code="unknown_alert")
        if alert["acknowledged_at"]:
            raise Conflict(f"alert {alert_id} was already acknowledged", code="already_acknowledged")
        alerts_store.acknowledge(conn, alert_id, user)
        services.audit.append(conn, AuditEvent(user, "alert.acknowledged", alert["grant_id"], {"alert": alert_id}))
    return alerts_store.get(services.db.conn, alert_id) or {}


# -- rules ----------------------------------------------------------------------------------------
def _window_start(ts: str, minutes: int) -> str:
    return (dt.datetime.fromisoformat(ts) - dt.timedelta(minutes=minutes)).isoformat(timespec="microseconds")


def _evaluate(services: Services, conn: sqlite3.Connection, policy: MonitoringPolicy, e: Entry) -> list[Alert]:
    action, ts, actor, gid = e.action, e.ts, e.actor, e.grant_id
    detail = e.detail
    found: list[Alert] = []
    if action in REFUSALS:  # plans are refused by the same checks: probing through /v1/plan counts too
        rule = policy.refused_burst
        if rule.enabled:
            since = _window_start(ts, rule.window_minutes)
            n = monitor_reads.count_actor_actions(conn, REFUSALS, actor, since, e.seq)
            if n >= rule.threshold:
                # any grant id may be named in a refused request: this rule is about the user, never a grant
                found.append(Alert("refused_burst", f"user:{actor}", None, actor,
                                   f"{actor}: {n} refused queries or plans within {rule.window_minutes} min",
                                   {"count": n}, False))
        rule_p = policy.id_probing
        if rule_p.enabled and detail.get("code") in rule_p.codes:
            since = _window_start(ts, rule_p.window_minutes)
            n = monitor_reads.count_actor_codes(conn, REFUSALS, actor, gid, since, e.seq, tuple(rule_p.codes))
            if n >= rule_p.threshold:
                found.append(Alert("id_probing", f"user:{actor}:grant:{gid}", gid, actor,
                                   f"{actor} probed identifiers or ungranted columns {n} times within "
                                   f"{rule_p.window_minutes} min" + (f" under grant {gid}" if gid else ""),
                                   {"count": n}, rule_p.suspend and gid is not None))
    elif action == "auth.bad_token" and policy.bad_tokens.enabled:
        rule_b = policy.bad_tokens
        since = _window_start(ts, rule_b.window_minutes)
        n = monitor_reads.bad_tokens_presented(conn, since, e.seq)
        if n >= rule_b.threshold:
            found.append(Alert("bad_tokens", "gateway", None, None,
                               f"{n} bad credentials presented within {rule_b.window_minutes} min", {"count": n}))
    elif action == "query.charged" and gid and policy.budget_burn.enabled:
        found.extend(_budget_burn(services, conn, policy, e))
    elif action == "export.submitted" and gid and policy.export_checks_failed.enabled:
        found.extend(_export_failures(conn, policy, e, detail))
    elif action == "server.started" and policy.spawn_outside_hours.enabled:
        rule_h = policy.spawn_outside_hours
        local = dt.datetime.fromisoformat(ts).astimezone(zoneinfo.ZoneInfo(rule_h.timezone))
        if not rule_h.start_hour <= local.hour < rule_h.end_hour:
            found.append(Alert("spawn_outside_hours", f"spawn:{e.seq}", gid, actor,
                               f"{actor} started a notebook server at {local:%H:%M} {rule_h.timezone}, outside "
                               f"{rule_h.start_hour:02d}:00-{rule_h.end_hour:02d}:00",
                               {"local_time": local.isoformat(timespec="minutes")}, rule_h.suspend and gid is not None))
    return found


def _budget_burn(services: Services, conn: sqlite3.Connection, policy: MonitoringPolicy, e: Entry) -> list[Alert]:
    rule = policy.budget_burn
    grant_id = e.grant_id or ""
    total = monitor_reads.budget_total_nano(conn, grant_id)
    if not total:
        return []
    since = _window_start(e.ts, rule.window_minutes)
    share = monitor_reads.spent_since_nano(conn, grant_id, since) / total
    if share < rule.fraction:
        return []
    return [Alert("budget_burn", f"grant:{e.grant_id}", e.grant_id, e.actor,
                  f"grant {e.grant_id} spent {share:.0%} of its budget within {rule.window_minutes} min",
                  {"share": round(share, 4)}, rule.suspend)]


def _export_failures(conn: sqlite3.Connection, policy: MonitoringPolicy, e: Entry, detail: dict) -> list[Alert]:
    rule = policy.export_checks_failed
    since = _window_start(e.ts, rule.window_minutes)
    submitted = monitor_reads.submitted_details(conn, e.grant_id or "", since, e.seq)
    failing = [r for r in (x.get("request") for x in submitted) if r and _has_failure(conn, r)]
    if detail.get("request") not in failing or len(failing) < rule.threshold:
        return []
    return [Alert("export_checks_failed", f"grant:{e.grant_id}", e.grant_id, e.actor,
                  f"{len(failing)} export request(s) under grant {e.grant_id} failed an automatic check within "
                  f"{rule.window_minutes} min", {"requests": failing[-10:]}, rule.suspend)]


def _has_failure(conn: sqlite3.Connection, request_id: str) -> bool:
    try:
        files = monitor_reads.file_checks(conn, request_id)
    except sqlite3.Error:  # the exports module is not installed
        return False
    return any(c.get("outcome") == "fail" for checks in files for c in checks)


# -- the scan -------------------------------------------------------------------------------------
def pending(services: Services) -> bool:
    """Cheap read: has the audit log grown since the last scan?"""
    head = monitor_reads.last_seq(services.db.conn)
    return head > alerts_store.cursor(services.db.conn)


def scan(services: Services) -> list[Alert]:
    """Evaluate the rules over entries not scanned yet; store, enforce and announce the new alerts."""
    policy = settings_of(services).monitoring
    raised: list[Alert] = []
    with _scan_lock:
        while True:
            with services.db.work() as work:
                conn = work.conn
                last = alerts_store.cursor(conn)
                rows = monitor_reads.entries_after(conn, last, SCAN_BATCH, skip_actor="monitor")
                head = monitor_reads.last_seq(conn)
                batch: list[Alert] = []
                horizon = (dt.datetime.now(dt.UTC) - dt.timedelta(hours=settings_of(services).monitor_horizon_hours)
                           ).isoformat(timespec="microseconds")
                for e in rows:
                    if e.ts < horizon:  # old history (e.g. a first scan after an upgrade) raises nothing
                        continue
                    for alert in _evaluate(services, conn, policy, e):
                        window = getattr(policy, alert.rule).window_minutes
                        if alerts_store.raised_since(conn, alert.rule, alert.subject, _window_start(e.ts, window)) \
                                or any(a.rule == alert.rule and a.subject == alert.subject for a in batch):
                            continue
                        alert.id = _store_alert(services, conn, alert)
                        batch.append(alert)
                new_last = rows[-1].seq if len(rows) == SCAN_BATCH else head
                alerts_store.set_cursor(conn, max(new_last, last))
            raised.extend(batch)
            if len(rows) < SCAN_BATCH:
                break
    for alert in raised:
        if alert.suspend and alert.grant_id:
            _suspend(services, alert)
    _announce(services, raised)
    return raised


def _suspend(services: Services, alert: Alert) -> None:
    try:
        grant = services.policies.grant(alert.grant_id or "")
    except NotFound:
        alert.suspend = False
        return
    if grant.status != "active":
        alert.suspend = False  # already stopped: nothing was done
        return
    try:
        # the reason is published on the register: it names the rule, never the user
        reason = f"automatic suspension by the early-warning rule {alert.rule} (alert {alert.id})"
        services.policies.set_status(grant.id, "suspended", "monitor", reason)
    except Conflict:  # revoked meanwhile
        alert.suspend = False
        return
    from sandbox.offerings import publish_reason

    publish_reason(services, grant.id, "monitor", reason)
    with services.db.work() as work:
        alerts_store.mark_suspended(work.conn, alert.id)
        work.record(AuditEvent("monitor", "alert.enforced", grant.id, {"alert": alert.id, "suspended": True}))
    _stop_notebooks(grant.members)


def _stop_notebooks(members: Iterable[str]) -> None:
    """Stop the members' notebook servers when the hub is configured here (best effort, logged)."""
    from sandbox.hub_api import HubClient

    hub = HubClient.from_env()
    if hub is None:
        return
    try:
        hub.stop_servers(members)
    except Exception:  # noqa: BLE001 - the grant is suspended whatever the hub says
        log.exception("could not stop the notebook servers of a suspended grant")


def scan_quietly(services: Services) -> None:
    """For the gateway's after-request hook: never let monitoring break a response."""
    try:
        flush_bad_tokens(services)
        if pending(services):
            scan(services)
    except Exception:  # noqa: BLE001 - logged; the request itself succeeded or failed on its own
        log.exception("monitoring scan failed")


# -- emergency stop -------------------------------------------------------------------------------
def emergency_stop(services: Services, actor: str, reason: str, hub: object | None = None) -> dict:
    """Suspend every active grant and stop every member's notebook server, in one audited command.

    ``emergency.stop`` is audited first (with the grants it will suspend), then each suspension
    through the grant store (``grant.suspended``, reason prefixed ``emergency stop:``), then the
    servers stopped through the hub client when one is configured; ``emergency.stopped`` records
    the outcome.
    """
    reason = reason.strip()
    if not reason:
        from sandbox.errors import BadRequest

        raise BadRequest("an emergency stop needs a reason", code="missing_reason")
    grants = [g for g in services.policies.grants() if g.status == "active"]
    members = sorted({m for g in services.policies.grants() for m in g.members})
    services.audit.record(AuditEvent(actor, "emergency.stop", None,
                                     {"reason": reason, "grants": [g.id for g in grants]}))
    suspended = []
    for grant in grants:
        try:
            services.policies.set_status(grant.id, "suspended", actor, f"emergency stop: {reason}")
            suspended.append(grant.id)
            from sandbox.offerings import publish_reason

            publish_reason(services, grant.id, actor, "emergency stop of every grant by the authority")
        except Conflict:  # revoked meanwhile
            continue
    stopped: list[str] = []
    hub_error = None
    if hub is not None:
        try:
            stopped = list(hub.stop_servers(members))  # type: ignore[attr-defined]
        except Exception as exc:  # noqa: BLE001 - recorded; the grants are suspended whatever the hub says
            hub_error = str(exc)[:500]
    outcome = {"suspended": suspended, "servers_stopped": stopped, "hub": hub is not None, "hub_error": hub_error}
    services.audit.record(AuditEvent(actor, "emergency.stopped", None, outcome))
    return outcome
