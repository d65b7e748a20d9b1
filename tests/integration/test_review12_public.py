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
