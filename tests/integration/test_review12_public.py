"""Attacks from the independent review of issue 12 on the public channels: one client shutting the
complaint channel, and hostile input answered with a 500."""

from __future__ import annotations

from sandbox.services import Services

BODY = {"kind": "complaint", "subject": "x", "message": "A" * 4000}


def _file(client, address: str):  # noqa: ANN001, ANN202
    return client.post("/public/feedback", json=BODY, environ_base={"REMOTE_ADDR": address})


def test_one_ipv6_64_cannot_shut_the_complaint_channel(client, services: Services) -> None:  # noqa: ANN001
    codes = [_file(client, f"2001:db8::{i:x}").status_code for i in range(201)]
    assert codes.count(201) == services.settings.oversight.public_filings_per_client_hour
    assert _file(client, "203.0.113.9").status_code == 201  # an honest citizen elsewhere


def test_one_ipv4_24_takes_only_a_share_of_the_hourly_total(client, services: Services) -> None:  # noqa: ANN001
    cfg = services.settings.oversight
    share = int(cfg.public_filings_per_hour * cfg.public_filings_network_share)
    codes = [_file(client, f"198.51.100.{i}").status_code for i in range(1, 255)]
    assert codes.count(201) == share < cfg.public_filings_per_hour
    assert _file(client, "203.0.113.9").status_code == 201
    # the same client through an IPv4-mapped IPv6 address is the same client
    assert _file(client, "::ffff:198.51.100.77").status_code == 429


HUGE = "99999999999999999999999"


def test_hostile_input_is_never_a_500(client, services: Services, alice) -> None:  # noqa: ANN001
    from sandbox import cases

    admin = {"Authorization": f"Bearer {services.tokens.create('admin')}"}
    erin = {"Authorization": f"Bearer {services.tokens.create('erin')}"}
    case_id = cases.file_public(services, "complaint", {"subject": "s", "message": "m"}, "10.1.1.1")
    raw_name = b'{"grant": "g-2026-001", "kind": "product", "name": "\\ud800", "description": "d"}'
    calls = [
        ("post", "/public/requests", None, {"json": {"dataset": ["nhanes_2017"], "subject": "s", "message": "m"}}),
        ("post", "/public/feedback", None, {"json": {"kind": "feedback", "dataset": {"a": 1}, "subject": "s",
                                                     "message": "m"}}),
        ("post", "/public/feedback", None, {"json": {"kind": ["feedback"], "subject": "s", "message": "m"}}),
        ("post", "/v1/offerings", alice, {"json": {"grant": "g-2026-001", "kind": ["product"], "name": "n",
                                                   "description": "d"}}),
        ("post", "/v1/offerings", alice, {"data": raw_name, "content_type": "application/json"}),
        ("post", f"/admin/cases/{case_id}", admin, {"json": {"action": ["close"]}}),
        ("post", f"/admin/cases/{case_id}", admin, {"json": {"action": {"a": 1}}}),
        ("post", f"/admin/offerings/{HUGE}", admin, {"json": {"decision": "approve"}}),
        ("post", f"/admin/alerts/{HUGE}/ack", admin, {"json": {}}),
        ("post", f"/v1/offerings/{HUGE}/withdraw", alice, {"json": {}}),
    ]
    calls += [("get", "/auditor/usage", erin, {"query_string": {"format": "json", "period": p}})
              for p in ("9999-12", "9999-11", "0001-01", "２０２６-１２", "2026-12\n", "2026-13", "abc")]
    for method, path, who, kwargs in calls:
        resp = getattr(client, method)(path, headers=who or {}, **kwargs)
        assert resp.status_code in (400, 403, 404, 409), (path, kwargs, resp.status_code)
        assert "error" in resp.get_json(), path
    assert client.get("/auditor/usage", headers=erin,
                      query_string={"format": "json", "period": "2026-12"}).status_code == 200


def test_period_is_ascii_digits_in_range() -> None:
    import pytest

    from sandbox.errors import BadRequest
    from sandbox.usage import parse_period

    for bad in ("２０２６-１２", "2026-12\n", "9999-12", "1969-12", "2026-1"):
        with pytest.raises(BadRequest):
            parse_period(bad)
    assert parse_period("2026-12")[0].month == 12
