"""The JupyterHub token path of the gateway (``sandbox serve --auth hub``).

Inside the stack the gateway is a JupyterHub service. Callers are identified by hub tokens:

- notebooks send the kernel's ``$JUPYTERHUB_API_TOKEN`` as ``Authorization: Bearer|token ...``
  (the spawner gives that token the ``access:services!service=gateway`` scope);
- browsers (review UI) carry the OAuth cookie that :mod:`gateway.hub_oauth` sets after the
  hub's OAuth flow.

Either way the token is resolved with ``HubAuth.user_for_token`` (the hub answers
``GET /hub/api/user`` *with that token*, so the gateway's own token needs no special scopes)
and must hold ``access:services!service=gateway`` (``check_scopes``). Only users pass:
service tokens are refused. ``jupyterhub`` is imported lazily so that embedded mode does not
need it installed.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

from flask import Request, url_for

from gateway.auth import Authenticator, Identity, bearer_token
from sandbox.errors import Forbidden, SandboxError, Unauthorized

if TYPE_CHECKING:  # pragma: no cover
    from jupyterhub.services.auth import HubOAuth

#: The scope a token needs to call the gateway (what the hub's `user` role grants).
DEFAULT_SCOPE = "access:services!service=gateway"


class HubUnavailable(SandboxError):
    """The hub could not be asked who a token belongs to (503)."""

    status = 503
    code = "hub_unavailable"


class HubAuthenticator(Authenticator):
    """Identify callers by JupyterHub tokens (header or OAuth cookie)."""

    def __init__(self, hub_auth: HubOAuth, required_scopes: set[str] | None = None) -> None:
        self.hub_auth = hub_auth
        self.required_scopes = set(required_scopes or hub_auth.access_scopes or {DEFAULT_SCOPE})

    @classmethod
    def from_env(cls, cache_max_age: int = 60) -> HubAuthenticator:
        """Build from the environment JupyterHub gives a service.

        Reads ``JUPYTERHUB_API_TOKEN``, ``JUPYTERHUB_API_URL``, ``JUPYTERHUB_SERVICE_NAME``,
        ``JUPYTERHUB_SERVICE_PREFIX``, ``JUPYTERHUB_CLIENT_ID``, ``JUPYTERHUB_OAUTH_CALLBACK_URL``
        and (optionally) ``JUPYTERHUB_OAUTH_ACCESS_SCOPES``; ``cache_max_age`` bounds how long
        a resolved token is trusted without asking the hub again (seconds).
        """
        try:
            from jupyterhub.services.auth import HubOAuth
        except ImportError as exc:  # pragma: no cover - depends on the install
            raise RuntimeError("--auth hub needs the `jupyterhub` package installed") from exc
        for name in ("JUPYTERHUB_API_TOKEN", "JUPYTERHUB_API_URL"):
            if not os.environ.get(name):
                raise RuntimeError(f"--auth hub needs {name} in the environment")
        os.environ.setdefault("JUPYTERHUB_SERVICE_NAME", "gateway")
        os.environ.setdefault(
            "JUPYTERHUB_CLIENT_ID", f"service-{os.environ['JUPYTERHUB_SERVICE_NAME']}"
        )
        return cls(HubOAuth(cache_max_age=cache_max_age))

    # -- Authenticator -------------------------------------------------------------------------
    def token_from(self, request: Request) -> str | None:
        """The hub token of a request: header first, then the OAuth cookie."""
        return bearer_token(request) or request.cookies.get(self.hub_auth.cookie_name) or None

    def identify(self, request: Request) -> Identity:
        token = self.token_from(request)
        if not token:
            raise Unauthorized(
                "send Authorization: Bearer <hub token> (inside a notebook: sandbox.connect())"
            )
        model = self.user_model(token)
        if model is None:
            raise Unauthorized("unknown, expired or revoked hub token")
        if model.get("kind", "user") != "user":
            raise Forbidden("only users can call the gateway", code="not_a_user")
        if not self.hub_auth.check_scopes(self.required_scopes, model):
            raise Forbidden(
                f"the token lacks the scope {' or '.join(sorted(self.required_scopes))}",
                code="missing_scope",
            )
        return Identity(user=str(model["name"]), via="hub")

    def user_model(self, token: str) -> dict[str, Any] | None:
        """The hub's model of the token's owner (with the token's ``scopes``), or None."""
        try:
            return self.hub_auth.user_for_token(token, sync=True)
        except Exception as exc:  # tornado.web.HTTPError from HubAuth, or a network error
            raise HubUnavailable(f"cannot reach the hub to check the token: {exc}") from exc

    def login_url(self, request: Request) -> str | None:
        """Browsers without a cookie start the hub's OAuth flow (see gateway.hub_oauth)."""
        target = request.full_path.rstrip("?")
        script = request.script_root or ""
        return url_for("hub_oauth.login", next=script + target)
