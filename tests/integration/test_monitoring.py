"""Early warning: scripted bursts raise alerts, an id-probing burst suspends the grant for the very next
request, bad tokens are audited without their text, alerts reach a loopback webhook, and the emergency
stop suspends every grant and stops every notebook through the real hub client."""

from __future__ import annotations

import datetime as dt
import io
import json
import re
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from click.testing import CliRunner

from sandbox import monitoring
from sandbox.cli import cli
from sandbox.hub_api import HubClient
from sandbox.policy.monitoring import HoursRule, MonitoringPolicy
from sandbox.services import Services

GRANT = "g-2026-001"


class _Recorder(BaseHTTPRequestHandler):
    """A loopback HTTP peer: records every request; answers like the JupyterHub users API."""

    calls: list[tuple[str, str, bytes]] = []

    def _record(self) -> bytes:
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        self.calls.append((self.command, self.path, body))
        return body

    def do_POST(self) -> None:  # noqa: N802
        self._record()
        self.send_response(204)
        self.end_headers()

    def do_GET(self) -> None:  # noqa: N802
        self._record()
        match = re.fullmatch(r"/hub/api/users/([a-z]+)", self.path)
        if not match:
            self.send_response(404)
            self.end_headers()
            return
        body = json.dumps({"name": match.group(1), "servers": {"": {"ready": True}}}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_DELETE(self) -> None:  # noqa: N802
        self._record()
        self.send_response(204)
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def peer() -> Iterator[tuple[str, list]]:
    calls: list = []
    handler = type("Handler", (_Recorder,), {"calls": calls})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}", calls
    finally:
        server.shutdown()
        thread.join(timeout=5)


@pytest.fixture
def admin(services: Services) -> dict[str, str]:
    return {"Authorization": f"Bearer {services.tokens.create('admin')}"}


def _query(client, headers, sql: str, epsilon: float = 0.1):  # noqa: ANN001, ANN202
    return client.post("/v1/query", headers=headers, json={"sql": sql, "epsilon": epsilon, "grant": GRANT})


def test_id_probing_burst_suspends_the_grant_for_the_very_next_request(client, services: Services, alice,  # noqa: ANN001
                                                                        admin) -> None:
    threshold = services.settings.oversight.monitoring.id_probing.threshold
    codes = []
    for i in range(30):
        resp = _query(client, alice, f"SELECT COUNT(*) FROM nhanes_2017 WHERE seqn = {93703 + i}")
        codes.append(resp.get_json()["error"]["code"])
    # refused as probes up to the threshold, then refused because the grant is suspended
    assert codes[:threshold] == ["id_column"] * threshold
    assert codes[threshold:] == ["grant_suspended"] * (30 - threshold)
    assert services.policies.grant(GRANT).status == "suspended"
    resp = _query(client, alice, "SELECT COUNT(*) AS n FROM nhanes_2017")
    assert resp.status_code == 403 and resp.get_json()["error"]["code"] == "grant_suspended"
    alerts = client.get("/admin/alerts/?format=json", headers=admin).get_json()["alerts"]
    probing = [a for a in alerts if a["rule"] == "id_probing"]
    assert len(probing) == 1 and probing[0]["suspended"] and probing[0]["actor"] == "alice"
    assert probing[0]["grant_id"] == GRANT
    suspended = [e for e in services.audit.entries() if e["action"] == "grant.suspended"]
    assert suspended[-1]["actor"] == "monitor" and "id_probing" in suspended[-1]["detail"]["reason"]
    assert any(e["action"] == "alert.raised" and e["detail"]["rule"] == "id_probing" for e in services.audit.entries())
    page = client.get("/admin/alerts/", headers=admin)
    assert page.status_code == 200 and "grant suspended automatically" in page.get_data(as_text=True)
    assert services.audit.verify().ok


def test_auto_suspension_stops_the_members_notebooks(client, services: Services, alice, peer,  # noqa: ANN001
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    url, calls = peer
    monkeypatch.setenv("SANDBOX_HUB_URL", url + "/hub/api")
    monkeypatch.setenv("SANDBOX_HUB_TOKEN", "provisioner-token")
    for i in range(10):
        _query(client, alice, f"SELECT COUNT(*) FROM nhanes_2017 WHERE seqn = {i}")
    assert services.policies.grant(GRANT).status == "suspended"
    stopped = sorted(path for method, path, _ in calls if method == "DELETE")
    assert stopped == ["/hub/api/users/alice/server", "/hub/api/users/bob/server"]


def test_bad_token_burst_alerts_and_reaches_the_webhook(client, services: Services, peer) -> None:  # noqa: ANN001
    url, calls = peer
    services.settings.oversight.alert_webhook_url = url + "/hook"
    secret_tokens = [f"sbx_not-a-real-token-{i:02d}" for i in range(10)]
    for token in secret_tokens:
        resp = client.get("/v1/catalog", headers={"Authorization": f"Bearer {token}"})
        assert resp.status_code == 401
    entries = [e for e in services.audit.entries() if e["action"] == "auth.bad_token"]
    assert len(entries) == 1 and entries[0]["detail"]["count"] == 10  # aggregated: one entry
    log_text = json.dumps(list(services.audit.entries()))
    for token in secret_tokens:
        assert token not in log_text and token[4:] not in log_text
    detail = entries[0]["detail"]
    assert all(len(p) == 8 for p in detail["token_sha256_prefix"]) and detail["path"] == ["/v1/catalog"]
    alerts = [a for a in monitoring.alerts_store.listing(services.db.conn) if a["rule"] == "bad_tokens"]
    assert len(alerts) == 1 and alerts[0]["detail"]["count"] == 10
    posted = [json.loads(body) for method, path, body in calls if method == "POST" and path == "/hook"]
    assert [p["alert"]["rule"] for p in posted] == ["bad_tokens"]
    # no credential at all is not a bad token
    client.get("/v1/catalog")
    assert len([e for e in services.audit.entries() if e["action"] == "auth.bad_token"]) == 1


def test_bad_tokens_are_written_at_most_once_a_minute(client, services: Services, monkeypatch) -> None:  # noqa: ANN001
    """Review of issue 12: 300 anonymous bad tokens wrote 121 audit rows; now one a minute, counted."""
    now = [1_800_000_000.0]
    monkeypatch.setattr(monitoring, "_clock", lambda: now[0])
    for i in range(300):
        client.get("/v1/budget", headers={"Authorization": f"Bearer junk{i}"})
    entries = [e for e in services.audit.entries() if e["action"] == "auth.bad_token"]
    assert [e["detail"]["count"] for e in entries] == [10]  # written at the alert threshold
    assert [a["rule"] for a in monitoring.alerts_store.listing(services.db.conn)] == ["bad_tokens"]
    now[0] += 60  # the next minute: any request writes what was counted since
    client.get("/public/grants.json")
    entries = [e for e in services.audit.entries() if e["action"] == "auth.bad_token"]
    assert [e["detail"]["count"] for e in entries] == [10, 290]
    client.get("/public/grants.json")
    assert len([e for e in services.audit.entries() if e["action"] == "auth.bad_token"]) == 2


def test_unreachable_webhook_does_not_break_requests(client, services: Services) -> None:  # noqa: ANN001
    services.settings.oversight.alert_webhook_url = "http://127.0.0.1:9/nothing-listens"
    services.settings.oversight.alert_webhook_timeout = 0.5
    for i in range(10):
        assert client.get("/v1/catalog", headers={"Authorization": f"Bearer x{i}"}).status_code == 401
    assert [a["rule"] for a in monitoring.alerts_store.listing(services.db.conn)] == ["bad_tokens"]


def test_refused_burst_and_budget_burn(client, services: Services, alice) -> None:  # noqa: ANN001
    for i in range(20):
        assert _query(client, alice, f"SELECT * FROM nhanes_2017 LIMIT {i + 1}").status_code == 400
    assert services.policies.grant(GRANT).status == "active"  # this rule only warns by default
    for i in range(3):
        assert _query(client, alice, f"SELECT COUNT(*) AS n{i} FROM nhanes_2017", epsilon=1.0).status_code == 200
    rules = [a["rule"] for a in monitoring.alerts_store.listing(services.db.conn)]
    assert sorted(rules) == ["budget_burn", "refused_burst"]
    burn = next(a for a in monitoring.alerts_store.listing(services.db.conn) if a["rule"] == "budget_burn")
    assert burn["grant_id"] == GRANT and burn["detail"]["share"] >= 0.25


def test_exports_failing_checks_alert(client, services: Services, alice) -> None:  # noqa: ANN001
    upload = {"files": (io.BytesIO(b"sex,n\nfemale,3\n"), "t.csv"), "grant": GRANT, "title": "small cell",
              "justification": "j"}
    resp = client.post("/v1/exports", headers=alice, data=upload, content_type="multipart/form-data")
    assert resp.status_code == 201
    alerts = monitoring.alerts_store.listing(services.db.conn)
    assert [a["rule"] for a in alerts] == ["export_checks_failed"]
    assert alerts[0]["detail"]["requests"] == [resp.get_json()["id"]]


def test_spawn_outside_hours(client, services: Services) -> None:  # noqa: ANN001
    hour = dt.datetime.now(dt.UTC).hour
    services.settings.internal_token = "internal-secret"
    policy = MonitoringPolicy(spawn_outside_hours=HoursRule(start_hour=(hour + 2) % 24,
                                                            end_hour=(hour + 2) % 24 + 1))
    services.settings.oversight.monitoring = policy
    resp = client.post("/v1/internal/server-events", headers={"Authorization": "Bearer internal-secret"},
                       json={"user": "alice", "grant": GRANT, "event": "started"})
    assert resp.status_code == 200
    alerts = monitoring.alerts_store.listing(services.db.conn)
    assert [a["rule"] for a in alerts] == ["spawn_outside_hours"] and alerts[0]["actor"] == "alice"
    # inside working hours nothing is raised
    services.settings.oversight.monitoring = MonitoringPolicy(
        spawn_outside_hours=HoursRule(start_hour=0, end_hour=24))
    client.post("/v1/internal/server-events", headers={"Authorization": "Bearer internal-secret"},
                json={"user": "bob", "grant": GRANT, "event": "started"})
    assert len(monitoring.alerts_store.listing(services.db.conn)) == 1


def test_alerts_page_is_for_admins_and_acknowledging_is_audited(client, services: Services, alice, admin) -> None:  # noqa: ANN001
    alert_id = monitoring.raise_alert(services, "manual", "t", None, None, "test alert", {})
    assert client.get("/admin/alerts/?format=json", headers=alice).status_code == 403
    assert client.get("/admin/alerts/?format=json").status_code == 401
    assert client.post(f"/admin/alerts/{alert_id}/ack", headers=alice, json={}).status_code == 403
    resp = client.post(f"/admin/alerts/{alert_id}/ack", headers=admin, json={})
    assert resp.status_code == 200 and resp.get_json()["acknowledged_by"] == "admin"
    assert client.post(f"/admin/alerts/{alert_id}/ack", headers=admin, json={}).status_code == 409
    assert client.post("/admin/alerts/999/ack", headers=admin, json={}).status_code == 404
    # a form post needs the CSRF token
    assert client.post(f"/admin/alerts/{alert_id}/ack", headers=admin, data={"csrf_token": "x"}).status_code == 403
    assert [e["action"] for e in services.audit.entries()][-1] == "alert.acknowledged"
    assert client.get("/admin/alerts/?format=json&open=1", headers=admin).get_json()["alerts"] == []


def test_emergency_stop_suspends_everything_and_stops_notebooks(client, services: Services, alice, peer) -> None:  # noqa: ANN001
    url, calls = peer
    assert _query(client, alice, "SELECT COUNT(*) AS n FROM nhanes_2017").status_code == 200
    outcome = monitoring.emergency_stop(services, "admin", "suspected breach", HubClient(url + "/hub/api", "t"))
    assert outcome["suspended"] == [GRANT] and outcome["servers_stopped"] == ["alice", "bob"]
    for user in ("alice", "bob"):
        assert ("DELETE", f"/hub/api/users/{user}/server", b"") in calls
    resp = _query(client, alice, "SELECT COUNT(*) AS n FROM nhanes_2017")
    assert resp.status_code == 403 and resp.get_json()["error"]["code"] == "grant_suspended"
    actions = [e["action"] for e in services.audit.entries()]
    assert actions[-3:] == ["emergency.stop", "grant.suspended", "emergency.stopped"] or \
        actions.index("emergency.stop") < actions.index("grant.suspended") < actions.index("emergency.stopped")
    assert services.policies.grant(GRANT).status == "suspended"


def test_emergency_stop_cli(services: Services) -> None:
    runner = CliRunner()
    env = {"SANDBOX_STATE": str(services.db.dir)}
    result = runner.invoke(cli, ["emergency", "stop", "--reason", "drill"], env=env, input="n\n")
    assert result.exit_code == 1 and services.policies.grant(GRANT).status == "active"
    result = runner.invoke(cli, ["emergency", "stop", "--reason", "drill", "--yes"], env=env)
    assert result.exit_code == 0, result.output
    assert "suspended 1 grant(s): g-2026-001" in result.output
    assert services.policies.grant(GRANT).status == "suspended"
    result = runner.invoke(cli, ["emergency", "stop", "--reason", " ", "--yes"], env=env)
    assert result.exit_code == 2
    for args in (["emergency", "stop", "--help"], ["monitor", "scan", "--help"], ["alerts", "list", "--help"],
                 ["alerts", "ack", "--help"], ["cases", "act", "--help"]):
        assert runner.invoke(cli, args).exit_code == 0
    listing = runner.invoke(cli, ["alerts", "list"], env=env)
    assert listing.exit_code == 0


def test_old_history_raises_nothing_when_first_scanned(services: Services) -> None:
    """Monitoring installed over an existing log: bursts older than the horizon suspend nobody."""
    from sandbox.state.audit import AuditEvent

    for i in range(15):
        services.audit.record(AuditEvent("alice", "query.refused", GRANT, {"code": "id_column", "sql": f"q{i}"}))
    services.settings.oversight.monitor_horizon_hours = 0.0  # everything already written is history
    assert monitoring.scan(services) == []
    assert services.policies.grant(GRANT).status == "active"
    services.settings.oversight.monitor_horizon_hours = 24.0
    for i in range(10):  # a fresh burst is caught
        services.audit.record(AuditEvent("alice", "query.refused", GRANT, {"code": "id_column", "sql": f"r{i}"}))
    assert "id_probing" in [a.rule for a in monitoring.scan(services)]
    assert services.policies.grant(GRANT).status == "suspended"
