"""Who is calling? One interface, two implementations.

- :class:`EmbeddedTokenAuthenticator`: ``Authorization: Bearer <token>`` checked against the
  hashed tokens that ``sandbox tokens create`` wrote (embedded mode, no hub).
- ``gateway.hub_auth.HubAuthenticator``: the JupyterHub token path, behind the same interface.

An authenticator answers only *who*; *may* is the grant check that runs on every request.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass

from flask import Request

from sandbox.errors import Unauthorized
from sandbox.state.tokens import TokenStore


@dataclass(frozen=True)
class Identity:
    user: str
    via: str  # "token" | "hub"


def bearer_token(request: Request) -> str | None:
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() in ("bearer", "token") and token.strip():
        return token.strip()
    return None


class Authenticator(ABC):
    """Maps a request to an :class:`Identity` or raises :class:`Unauthorized`."""

    @abstractmethod
    def identify(self, request: Request) -> Identity: ...

    def login_url(self, request: Request) -> str | None:
        """Where a browser without credentials should go, if anywhere."""
        return None


class EmbeddedTokenAuthenticator(Authenticator):
    def __init__(self, tokens: TokenStore) -> None:
        self.tokens = tokens

    def identify(self, request: Request) -> Identity:
        token = bearer_token(request) or request.cookies.get("sandbox_token")
        if not token:
            raise Unauthorized("send Authorization: Bearer <token> (see `sandbox tokens create`)")
        user = self.tokens.user_for(token)
        if user is None:
            raise Unauthorized("unknown or revoked token")
        return Identity(user=user, via="token")
