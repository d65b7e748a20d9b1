"""Attacks from the independent review of issue 12: private reasons reaching the public register.

A suspension's or an emergency stop's reason may name a person: it stays in the audit log and the
auditors' view. The register shows only text published on purpose (``grants publish-reason``, an
automatic suspension's rule, a revocation's ``--reason``), for the status in force."""

from __future__ import annotations

import time

from sandbox import offerings
from sandbox.monitoring import emergency_stop
from sandbox.services import Services

GRANT = "g-2026-001"
PRIVATE = "Bob Smith (bob) exfiltrated rows; police case 4711"


def _reasons(client) -> list[object]:  # noqa: ANN001
    record = client.get(f"/public/grants/{GRANT}?format=json").get_json()["status_reason"]
    entry = client.get("/public/grants.json").get_json()["grants"][0]["status_reason"]
    return [record, entry]


def _pages(client) -> str:  # noqa: ANN001
    return "".join(client.get(p).get_data(as_text=True) for p in
                   ("/public/grants", "/public/grants.json", "/public/grants.csv", f"/public/grants/{GRANT}"))


def test_revocation_through_apply_never_publishes_the_suspension_reason(client, services: Services) -> None:  # noqa: ANN001
    services.policies.set_status(GRANT, "suspended", "admin", PRIVATE)
    assert _reasons(client) == [offerings.GENERIC_SUSPENSION] * 2
    grant = services.policies.grant(GRANT).model_copy(update={"status": "revoked"})
    assert services.policies.apply_grant(grant, "admin").outcome == "changed"
    assert _reasons(client) == ["revoked by the authority"] * 2
    assert "Bob Smith" not in _pages(client)
    # the private reason was cleared by the status change; the audit log keeps it
    assert services.policies.grant_records()[0]["status_reason"] is None


def test_emergency_stop_reason_stays_private(client, services: Services) -> None:  # noqa: ANN001
    emergency_stop(services, "admin", PRIVATE)
    assert _reasons(client) == ["emergency stop of every grant by the authority"] * 2
    grant = services.policies.grant(GRANT).model_copy(update={"status": "revoked"})
    services.policies.apply_grant(grant, "admin")
    assert "Bob Smith" not in _pages(client)


def test_a_notice_is_for_one_suspension_only(client, services: Services) -> None:  # noqa: ANN001
    emergency_stop(services, "admin", "drill")
    services.policies.set_status(GRANT, "active", "admin", "resumed")
    time.sleep(0.01)  # same second: updated_at has seconds, notices microseconds
    services.policies.set_status(GRANT, "suspended", "admin", PRIVATE)
    assert _reasons(client) == [offerings.GENERIC_SUSPENSION] * 2
    offerings.publish_reason(services, GRANT, "admin", "under investigation")
    assert _reasons(client) == ["under investigation"] * 2
    services.policies.set_status(GRANT, "revoked", "admin", "operator sold derived records")
    assert _reasons(client) == ["operator sold derived records"] * 2
    assert "Bob Smith" not in _pages(client)
