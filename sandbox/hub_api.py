"""A small client of the JupyterHub REST API, for provisioning grants.

``sandbox grants apply|suspend|revoke`` use it when ``SANDBOX_HUB_URL`` (the hub API, e.g.
``http://hub:8081/hub/api``) and ``SANDBOX_HUB_TOKEN`` are set:

- apply: every member becomes a hub user, and group ``grant-<id>`` holds exactly the members;
- suspend / revoke: the members' running servers are stopped (the gateway already refuses
  their queries; stopping the server ends the session too).

The token is the ``sandbox-provisioner`` service's (hub_config.py), whose role holds the least
scopes this needs: ``admin:users`` (create users), ``admin:groups`` (create groups, set
members) and ``servers`` (stop servers). It cannot read tokens, start servers on users'
behalf with other images, or access any server.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

import requests

from sandbox.errors import SandboxError

#: Scopes the provisioner's token needs (documented in docs/stack.md, granted in hub_config.py).
REQUIRED_SCOPES = ("admin:users", "admin:groups", "servers")


class HubError(SandboxError):
    """The hub refused or could not be reached (502)."""

    status = 502
    code = "hub_error"


def group_name(grant_id: str) -> str:
    """The hub group that mirrors a grant's members."""
    return f"grant-{grant_id}"


@dataclass
class ProvisionResult:
    """What one provisioning call changed on the hub."""

    created_users: list[str] = field(default_factory=list)
    added_members: list[str] = field(default_factory=list)
    removed_members: list[str] = field(default_factory=list)
    stopped_servers: list[str] = field(default_factory=list)

    def summary(self) -> str:
        parts = [
            f"{label}: {', '.join(items)}"
            for label, items in (
                ("created users", self.created_users),
                ("added to group", self.added_members),
                ("removed from group", self.removed_members),
                ("stopped servers", self.stopped_servers),
            )
            if items
        ]
        return "; ".join(parts) or "hub already up to date"


class HubClient:
    """Thin wrapper over the hub API with the calls provisioning needs."""

    def __init__(self, url: str, token: str, *, timeout: float = 15.0) -> None:
        self.url = url.rstrip("/")
        self.timeout = timeout
        self.session = requests.Session()
        self.session.headers["Authorization"] = f"token {token}"

    @classmethod
    def from_env(cls) -> HubClient | None:
        """A client from ``SANDBOX_HUB_URL`` and ``SANDBOX_HUB_TOKEN``, or None if unset."""
        url = os.environ.get("SANDBOX_HUB_URL")
        token = os.environ.get("SANDBOX_HUB_TOKEN")
        if not url or not token:
            return None
        return cls(url, token)

    # -- transport -----------------------------------------------------------------------------
    def _call(self, method: str, path: str, *, ok: Iterable[int] = (), **kwargs: Any) -> Any:
        kwargs.setdefault("timeout", self.timeout)
        try:
            resp = self.session.request(method, self.url + path, **kwargs)
        except requests.RequestException as exc:
            raise HubError(f"hub API at {self.url} unreachable: {exc}") from exc
        if resp.status_code >= 400 and resp.status_code not in set(ok):
            try:
                message = resp.json().get("message", resp.text)
            except ValueError:
                message = resp.text
            raise HubError(f"hub API {method} {path}: {resp.status_code} {message}".strip())
        if resp.status_code == 204 or not resp.content:
            return None
        try:
            return resp.json()
        except ValueError:
            return None

    # -- users ---------------------------------------------------------------------------------
    def get_user(self, name: str) -> dict[str, Any] | None:
        resp = self._call("GET", f"/users/{quote(name, safe='')}", ok=(404,))
        return resp if isinstance(resp, dict) and resp.get("name") == name else None

    def ensure_users(self, names: Iterable[str]) -> list[str]:
        """Create the users that do not exist yet; returns the ones created."""
        missing = [n for n in dict.fromkeys(names) if self.get_user(n) is None]
        if missing:
            self._call("POST", "/users", json={"usernames": missing}, ok=(409,))
        return missing

    # -- groups --------------------------------------------------------------------------------
    def get_group(self, name: str) -> dict[str, Any] | None:
        resp = self._call("GET", f"/groups/{quote(name, safe='')}", ok=(404,))
        return resp if isinstance(resp, dict) and resp.get("name") == name else None

    def ensure_group(self, name: str, members: Iterable[str]) -> tuple[list[str], list[str]]:
        """Make group ``name`` hold exactly ``members``; returns (added, removed)."""
        wanted = list(dict.fromkeys(members))
        path = f"/groups/{quote(name, safe='')}"
        group = self.get_group(name)
        if group is None:
            self._call("POST", path, json={"users": wanted}, ok=(409,))
            return wanted, []
        current = set(group.get("users") or [])
        added = [u for u in wanted if u not in current]
        removed = sorted(current - set(wanted))
        if added:
            self._call("POST", path + "/users", json={"users": added})
        if removed:
            self._call("DELETE", path + "/users", json={"users": removed})
        return added, removed

    # -- servers -------------------------------------------------------------------------------
    def stop_servers(self, names: Iterable[str]) -> list[str]:
        """Stop the running default servers of ``names``; returns the users whose server stopped."""
        stopped = []
        for name in dict.fromkeys(names):
            user = self.get_user(name)
            if not user or not (user.get("servers") or user.get("server") or user.get("pending")):
                continue
            self._call("DELETE", f"/users/{quote(name, safe='')}/server", ok=(400, 404))
            stopped.append(name)
        return stopped

    # -- grant-level operations ----------------------------------------------------------------
    def provision_grant(self, grant_id: str, members: Iterable[str], active: bool) -> ProvisionResult:
        """Mirror a grant on the hub; stop members' servers when the grant is not active."""
        members = list(dict.fromkeys(members))
        result = ProvisionResult()
        result.created_users = self.ensure_users(members)
        result.added_members, result.removed_members = self.ensure_group(
            group_name(grant_id), members
        )
        if not active:
            result.stopped_servers = self.stop_servers(members)
        # Former members lose the grant: their sessions under it end too.
        result.stopped_servers += self.stop_servers(result.removed_members)
        return result

    def provision(self, grant: Any) -> ProvisionResult:
        """:meth:`provision_grant` for a grant object (``id``, ``members``, ``status``)."""
        return self.provision_grant(
            str(grant.id), list(grant.members), str(getattr(grant, "status", "active")) == "active"
        )
