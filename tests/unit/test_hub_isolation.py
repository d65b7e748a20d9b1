"""The hub's per-user network and home-volume helpers: the pure parts (no Docker needed).

The Docker side (networks created, services attached, homes capped) is proven end to end
in tests/e2e/test_isolation.py.
"""

from __future__ import annotations

import ipaddress
import sys
from pathlib import Path

import pytest
from pydantic import ValidationError

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "images" / "hub"))

from sandbox_hub.homes import HELPER, parse_size  # noqa: E402
from sandbox_hub.networks import SubnetPoolExhausted, free_subnet, network_name  # noqa: E402

from sandbox.policy.models import Resources  # noqa: E402


def test_free_subnet_skips_every_overlap() -> None:
    taken = ["10.213.0.0/28", "10.213.0.32/27", "172.17.0.0/16", "fe80::/64", "not-a-net"]
    got = free_subnet("10.213.0.0/16", 28, taken)
    assert got == ipaddress.ip_network("10.213.0.16/28")
    # the next free block after the /27 is taken by this one
    got2 = free_subnet("10.213.0.0/16", 28, [*taken, str(got)])
    assert got2 == ipaddress.ip_network("10.213.0.64/28")


def test_free_subnet_never_overlaps_a_wider_taken_network() -> None:
    # a foreign /20 inside the pool (e.g. another tool's bridge) blocks all of its /28s
    got = free_subnet("10.213.0.0/16", 28, ["10.213.0.0/20"])
    assert got == ipaddress.ip_network("10.213.16.0/28")


def test_free_subnet_exhausted_and_bad_pools() -> None:
    pool = "10.213.0.0/26"  # four /28 blocks
    taken: list[str] = []
    for _ in range(4):
        taken.append(str(free_subnet(pool, 28, taken)))
    assert len(set(taken)) == 4
    with pytest.raises(SubnetPoolExhausted):
        free_subnet(pool, 28, taken)
    with pytest.raises(ValueError):
        free_subnet("10.213.0.0/16", 30, [])  # too small for notebook, gateway and hub
    with pytest.raises(ValueError):
        free_subnet("10.213.0.1/16", 28, [])  # host bits set: a typo, not a pool
    with pytest.raises(ValueError):
        free_subnet("fd00::/64", 120, [])


def test_network_names_follow_escaped_users() -> None:
    assert network_name("sandbox", "alice") == "sandbox-net-alice"
    assert network_name("s", "a-40b") == "s-net-a-40b"


@pytest.mark.parametrize(("text", "expected"), [
    ("16M", 16 * 1024**2), ("512M", 512 * 1024**2), ("10G", 10 * 1024**3), ("1T", 1024**4),
    ("2GiB", 2 * 1024**3), (64 * 1024**2, 64 * 1024**2),
])
def test_parse_size(text: str | int, expected: int) -> None:
    assert parse_size(text) == expected


@pytest.mark.parametrize("text", ["", "0G", "10X", "-1G", "1M", "1.5G", 1024])
def test_parse_size_refuses(text: str | int) -> None:
    with pytest.raises(ValueError):
        parse_size(text)


def test_helper_program_is_posix_sh_with_every_action() -> None:
    for action in ("ensure)", "detach)", "detach-all)"):
        assert action in HELPER
    # capped, owned by the notebook user, and no root-reserved blocks the user cannot fill
    assert "-m 0 -E root_owner=1000:1000" in HELPER


def test_grant_resources_defaults_and_validation() -> None:
    r = Resources()
    assert (r.pids, r.disk) == (512, "10G")
    assert Resources(pids=128, disk="64M").disk == "64M"
    for bad in ({"disk": "8M"}, {"disk": "10"}, {"disk": "1.5G"}, {"pids": 10}, {"pids": 10**6},
                {"swap": "1G"}):
        with pytest.raises(ValidationError):
            Resources(**bad)
