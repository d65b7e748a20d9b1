"""The hub's demo logins: werkzeug.security hashes made the way scripts/stack makes them."""

from __future__ import annotations

import asyncio
import json
import os
import runpy
from pathlib import Path
from typing import Any

import pytest
from werkzeug.security import generate_password_hash

HUB_CONFIG = Path(__file__).resolve().parents[2] / "hub_config.py"


@pytest.fixture
def hub(monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    pytest.importorskip("jupyterhub")
    config = pytest.importorskip("traitlets.config")
    # what scripts/stack writes into SANDBOX_DEMO_LOGINS
    logins = {"alice": generate_password_hash("s3cret-pw", method="pbkdf2:sha256:600000")}
    for name in ("SANDBOX_INTERNAL_TOKEN", "SANDBOX_GATEWAY_HUB_TOKEN", "SANDBOX_HUB_TOKEN"):
        monkeypatch.setenv(name, "x" * 64)
    monkeypatch.setenv("SANDBOX_DEMO_LOGINS", json.dumps(logins))
    return runpy.run_path(str(HUB_CONFIG), init_globals={"get_config": config.Config})


def test_demo_authenticator_checks_werkzeug_hashes(hub: dict[str, Any]) -> None:
    auth = hub["DemoPasswordAuthenticator"](password_hashes=json.loads(os.environ["SANDBOX_DEMO_LOGINS"]))

    def login(user: str, password: str) -> str | None:
        return asyncio.run(auth.authenticate(None, {"username": user, "password": password}))

    assert login("alice", "s3cret-pw") == "alice"
    assert login("alice", "wrong") is None
    assert login("bob", "s3cret-pw") is None
    assert login("alice", "") is None


def test_malformed_or_legacy_hashes_never_match(hub: dict[str, Any]) -> None:
    verify = hub["verify_password"]
    assert not verify("pw", "garbage")
    assert not verify("pw", "")
    assert not verify("pw", "pbkdf2_sha256$200000$c2FsdA==$ZGlnZXN0")  # the old hand-written format
    assert verify("pw", hub["hash_password"]("pw"))
    assert hub["hash_password"]("pw") != hub["hash_password"]("pw")  # salted
