"""HubAuthenticator's decisions, with a stand-in for jupyterhub's HubOAuth (no hub needed)."""

from __future__ import annotations

from typing import Any

import pytest
from flask import Flask

from gateway.hub_auth import HubAuthenticator, HubUnavailable
from sandbox.errors import Forbidden, Unauthorized

SCOPE = "access:services!service=gateway"


class FakeHubAuth:
    """The three things HubAuthenticator uses: cookie_name, user_for_token, check_scopes."""

    cookie_name = "service-gateway"
    access_scopes = {SCOPE}

    def __init__(self, models: dict[str, Any]) -> None:
        self.models = models

    def user_for_token(self, token: str, sync: bool = True) -> dict | None:
        model = self.models.get(token)
        if isinstance(model, Exception):
            raise model
        return model

    def check_scopes(self, required: set[str], model: dict) -> set[str]:
        return set(required) & set(model.get("scopes", []))


@pytest.fixture()
def auth() -> HubAuthenticator:
    return HubAuthenticator(FakeHubAuth({
        "kernel": {"kind": "user", "name": "alice", "scopes": [SCOPE, "users:activity!user"]},
        "noscope": {"kind": "user", "name": "bob", "scopes": ["users:activity!user"]},
        "service": {"kind": "service", "name": "sandbox-provisioner", "scopes": [SCOPE]},
        "down": OSError("connection refused"),
    }))


def identify(auth: HubAuthenticator, headers: dict | None = None, cookies: str | None = None):
    app = Flask("t")
    environ = {"HTTP_COOKIE": cookies} if cookies else {}
    with app.test_request_context("/v1/catalog", headers=headers or {}, environ_base=environ):
        from flask import request

        return auth.identify(request)


@pytest.mark.parametrize("scheme", ["Bearer", "token"])
def test_kernel_token_identifies_user(auth: HubAuthenticator, scheme: str) -> None:
    ident = identify(auth, {"Authorization": f"{scheme} kernel"})
    assert (ident.user, ident.via) == ("alice", "hub")


def test_oauth_cookie_identifies_user(auth: HubAuthenticator) -> None:
    assert identify(auth, cookies="service-gateway=kernel").user == "alice"


def test_missing_unknown_and_unscoped_tokens(auth: HubAuthenticator) -> None:
    with pytest.raises(Unauthorized):
        identify(auth)
    with pytest.raises(Unauthorized):
        identify(auth, {"Authorization": "Bearer nobody"})
    with pytest.raises(Forbidden) as info:
        identify(auth, {"Authorization": "Bearer noscope"})
    assert info.value.code == "missing_scope"
    with pytest.raises(Forbidden) as info:
        identify(auth, {"Authorization": "Bearer service"})
    assert info.value.code == "not_a_user"


def test_hub_down_is_503(auth: HubAuthenticator) -> None:
    with pytest.raises(HubUnavailable) as info:
        identify(auth, {"Authorization": "Bearer down"})
    assert info.value.status == 503
