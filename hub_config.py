"""JupyterHub configuration of the trusted-circulation sandbox (loaded by the hub image).

What it sets up:

- **Authentication**: a demo password authenticator (salted hashes made by
  ``werkzeug.security`` in ``scripts/stack``, never plain text) or, with ``SANDBOX_AUTHENTICATOR=oidc``, OAuth2/OIDC
  through ``oauthenticator.generic.GenericOAuthenticator`` (see docs/stack.md).
- **The gateway as a hub service**: notebooks call it directly on the internal network;
  browsers reach it through the proxy at ``/services/gateway/``. The kernel's token carries
  ``access:services!service=gateway`` so the gateway's ``HubAuth`` accepts it.
- **Grant-aware, hardened DockerSpawner**: a ``pre_spawn_hook`` asks the gateway which
  grants are active for the user (``/v1/internal/spawn-check/<user>``), refuses users with
  none, sizes the container from the grant's ``resources`` and passes the gateway URL and
  grant id in the environment. Containers run the pinned notebook image, read-only, with no
  capabilities, on the internal network only, with a resolver that cannot reach outside.

Every value that differs between deployments comes from the environment (see
docker-compose.yml); every setting below says why it is there.
"""

from __future__ import annotations

import json
import os
from typing import Any
from urllib.parse import quote

from jupyterhub.auth import Authenticator
from tornado import web
from tornado.httpclient import AsyncHTTPClient, HTTPClientError, HTTPRequest
from traitlets import Dict as DictTrait
from werkzeug.security import check_password_hash, generate_password_hash

c = get_config()  # noqa: F821 - provided by JupyterHub when it loads this file


def env(name: str, default: str | None = None) -> str:
    """A required (or defaulted) setting from the environment."""
    value = os.environ.get(name, default)
    if value is None or value == "":
        raise SystemExit(f"hub_config: environment variable {name} is required")
    return value


STACK = env("SANDBOX_STACK", "sandbox")  # prefix of containers, volumes and networks
NETWORK = env("SANDBOX_INTERNAL_NETWORK", f"{STACK}_internal")  # the internal Docker network
GATEWAY_URL = env("SANDBOX_GATEWAY_URL", "http://gateway:8080")  # as seen on that network
INTERNAL_TOKEN = env("SANDBOX_INTERNAL_TOKEN")  # shared secret for the spawn check
NOTEBOOK_IMAGE = env("SANDBOX_NOTEBOOK_IMAGE", "trusted-sandbox/notebook:latest")
# A resolver address that routes nowhere: notebook containers keep Docker's embedded DNS
# for container names but its upstream for outside names is this black hole, so even an
# engine affected by CVE-2024-29018 cannot forward their DNS queries to the outside.
BLACKHOLE_DNS = env("SANDBOX_BLACKHOLE_DNS", "192.0.2.1")  # TEST-NET-1, never routed
DATA_DIR = env("SANDBOX_HUB_DATA", "/data")  # the hub's named volume
DEMO_LOGINS: dict[str, str] = json.loads(os.environ.get("SANDBOX_DEMO_LOGINS") or "{}")

# ---------------------------------------------------------------------------------------
# Hub, proxy and database
# ---------------------------------------------------------------------------------------
# The public face: configurable-http-proxy listens on all interfaces of the hub container,
# port 8000 (compose publishes it on the host).
c.JupyterHub.ip = "0.0.0.0"
c.JupyterHub.port = 8000
# Debian's node CHP (the PyPI port mishandles '@' in user names and has no TLS), started by
# the hub; its REST API stays on the hub container's loopback, unreachable from notebooks.
c.ConfigurableHTTPProxy.command = ["configurable-http-proxy"]
c.ConfigurableHTTPProxy.api_url = "http://127.0.0.1:8001"
# The hub API listens on all interfaces of the hub container (internal network included;
# an explicit bind URL, else JupyterHub binds to whatever `hub` resolves to in its own
# container, which may be its address on the outside network)...
c.JupyterHub.hub_bind_url = "http://0.0.0.0:8081"
# ...and notebooks and the gateway reach it by its compose service name.
c.JupyterHub.hub_connect_url = "http://hub:8081"
# Hub state (users, groups, tokens) and the cookie secret live in the hub's named volume.
c.JupyterHub.db_url = f"sqlite:///{DATA_DIR}/jupyterhub.sqlite"
c.JupyterHub.cookie_secret_file = f"{DATA_DIR}/jupyterhub_cookie_secret"
# One server per user: a sandbox is a person's workspace under their grant.
c.JupyterHub.allow_named_servers = False
# On hub shutdown, stop the notebook containers (they are removed on stop, see below).
c.JupyterHub.cleanup_servers = True
# Land users in JupyterLab.
c.Spawner.default_url = "/lab"

# ---------------------------------------------------------------------------------------
# Authentication
# ---------------------------------------------------------------------------------------


PASSWORD_METHOD = "pbkdf2:sha256:600000"  # werkzeug's format: method$salt$hash (what scripts/stack writes)


def hash_password(password: str) -> str:
    return generate_password_hash(password, method=PASSWORD_METHOD)


def verify_password(password: str, encoded: str) -> bool:
    """Constant-time check with werkzeug.security; a malformed hash never matches."""
    try:
        return check_password_hash(encoded, password)
    except (ValueError, TypeError):
        return False


class DemoPasswordAuthenticator(Authenticator):
    """Logins for a demo: user name → werkzeug password hash, from ``SANDBOX_DEMO_LOGINS`` (JSON).

    The plain passwords exist only where ``scripts/stack`` printed them. Not for production:
    switch to OAuth/OIDC (``SANDBOX_AUTHENTICATOR=oidc``).
    """

    password_hashes = DictTrait(config=True, help="user name -> werkzeug.security password hash")

    async def authenticate(self, handler: Any, data: dict[str, str]) -> str | None:
        user = (data or {}).get("username", "")
        encoded = self.password_hashes.get(user)
        if encoded and verify_password((data or {}).get("password", ""), encoded):
            return user
        return None


ADMINS = {u for u in os.environ.get("SANDBOX_HUB_ADMINS", "admin").split(",") if u}
if os.environ.get("SANDBOX_AUTHENTICATOR", "demo") == "oidc":
    # Production: any OAuth2/OIDC provider (Keycloak, Entra ID, ...). Settings per
    # oauthenticator's GenericOAuthenticator; secrets come from the environment.
    c.JupyterHub.authenticator_class = "generic-oauth"
    c.GenericOAuthenticator.client_id = env("OAUTH_CLIENT_ID")
    c.GenericOAuthenticator.client_secret = env("OAUTH_CLIENT_SECRET")
    c.GenericOAuthenticator.oauth_callback_url = env("OAUTH_CALLBACK_URL")
    c.GenericOAuthenticator.authorize_url = env("OAUTH_AUTHORIZE_URL")
    c.GenericOAuthenticator.token_url = env("OAUTH_TOKEN_URL")
    c.GenericOAuthenticator.userdata_url = env("OAUTH_USERDATA_URL")
    c.GenericOAuthenticator.scope = ["openid", "profile", "email"]
    # The OIDC claim that becomes the hub user name (must match grant `members`).
    c.GenericOAuthenticator.username_claim = env("OAUTH_USERNAME_CLAIM", "preferred_username")
else:
    # Demo: the password authenticator defined above...
    c.JupyterHub.authenticator_class = DemoPasswordAuthenticator
    # ...with the werkzeug.security hashes scripts/stack generated (plain passwords never reach the hub).
    c.DemoPasswordAuthenticator.password_hashes = DEMO_LOGINS
# Who may log in: the demo logins, plus every user the provisioner created from a grant
# (`sandbox grants apply` → hub API). Spawning is further gated by an active grant.
c.Authenticator.allowed_users = set(DEMO_LOGINS)
c.Authenticator.allow_existing_users = True
# Hub admins (the agency's administrators).
c.Authenticator.admin_users = ADMINS
# Authentication state is not needed (no upstream tokens are passed to notebooks).
c.Authenticator.enable_auth_state = False

# ---------------------------------------------------------------------------------------
# Services and roles
# ---------------------------------------------------------------------------------------
c.JupyterHub.services = [
    {
        # The DP gateway: registered so the proxy routes /services/gateway/ to it, and so
        # it gets its own token and OAuth client for the review UI in browsers.
        "name": "gateway",
        "url": GATEWAY_URL,
        "api_token": env("SANDBOX_GATEWAY_HUB_TOKEN"),
        "oauth_no_confirm": True,  # our own service: no "authorize access" page
        "display": True,  # listed on the hub home page
    },
    {
        # The provisioner (`sandbox grants apply` with SANDBOX_HUB_URL/SANDBOX_HUB_TOKEN):
        # no URL, only a token whose scopes are the role below.
        "name": "sandbox-provisioner",
        "api_token": env("SANDBOX_HUB_TOKEN"),
    },
]
c.JupyterHub.load_roles = [
    {
        # Every user may call the gateway; *which data* is the gateway's grant check.
        "name": "user",
        "scopes": ["self", "access:services!service=gateway"],
    },
    {
        # Least scopes for provisioning: create users, create groups and set members,
        # stop servers of members of a suspended or revoked grant.
        "name": "sandbox-provisioner",
        "scopes": ["admin:users", "admin:groups", "servers"],
        "services": ["sandbox-provisioner"],
    },
    {
        # The gateway resolves callers' tokens with the tokens themselves (HubAuth) and
        # needs nothing more than reading user names for its audit log.
        "name": "gateway-service",
        "scopes": ["read:users:name"],
        "services": ["gateway"],
    },
]
# The kernel's $JUPYTERHUB_API_TOKEN: the default server scopes plus access to the gateway
# (by default it carries no service access, so the gateway would refuse it).
c.Spawner.server_token_scopes = [
    "users:activity!user",
    "access:servers!server",
    "access:services!service=gateway",
]

# ---------------------------------------------------------------------------------------
# DockerSpawner, hardened
# ---------------------------------------------------------------------------------------
from dockerspawner import DockerSpawner  # noqa: E402 - after the helpers above


class SandboxSpawner(DockerSpawner):
    """DockerSpawner that returns only once the server answers HTTP (polled every 0.1 s).

    JupyterHub's own readiness check backs off exponentially (0.2 s, 0.4 s, ... up to 5 s),
    which on a server that needs ~5 s to import adds seconds of idle waiting to every spawn.
    """

    async def start(self) -> tuple[str, int]:  # type: ignore[override]
        import asyncio
        import time

        from tornado.httpclient import HTTPClientError as _HTTPClientError

        ip, port = await super().start()
        await report_server_event(self.user.name, self.environment.get("SANDBOX_GRANT"), "started")
        url = f"http://{ip}:{port}{self.server.base_url}api"
        deadline = time.monotonic() + self.http_timeout
        client = AsyncHTTPClient()
        while time.monotonic() < deadline:
            try:
                await client.fetch(url, request_timeout=2, connect_timeout=1)
                break
            except _HTTPClientError as exc:  # any HTTP answer means it is up
                if exc.code != 599:
                    break
            except OSError:
                pass
            await asyncio.sleep(0.1)
        return ip, port


# Our hardened DockerSpawner subclass (above).
c.JupyterHub.spawner_class = SandboxSpawner


def _pinned_image(ref: str) -> str:
    """Resolve a tag to the image id at hub start, so re-tagging cannot swap the image."""
    try:
        import docker

        return docker.from_env().images.get(ref).id
    except Exception as exc:  # noqa: BLE001 - fall back to the reference, loudly
        print(f"hub_config: cannot resolve {ref} to an image id ({exc}); using the tag")
        return ref


# The notebook image, pinned to the id its tag has when the hub starts.
c.DockerSpawner.image = _pinned_image(NOTEBOOK_IMAGE)
# Users cannot choose an image (empty = only the configured one, and user_options refused).
c.DockerSpawner.allowed_images = {}
# Containers are removed when the server stops: nothing survives but the home volume.
c.DockerSpawner.remove = True
# Never pull: the image is built locally (and no registry may be reachable).
c.DockerSpawner.pull_policy = "never"
# Container names: <stack>-nb-<user>.
c.DockerSpawner.prefix = f"{STACK}-nb"
# Only the internal network (no route outside); the hub reaches the server by its IP there.
c.DockerSpawner.network_name = NETWORK
c.DockerSpawner.use_internal_ip = True
# Per-user home in a named volume (the only writable place besides tmpfs /tmp).
c.DockerSpawner.volumes = {f"{STACK}-home-{{username}}": "/home/jovyan"}
# The server's root directory is that home.
c.DockerSpawner.notebook_dir = "/home/jovyan"
# Kernel-level hardening applied to every notebook container.
c.DockerSpawner.extra_host_config = {
    "cap_drop": ["ALL"],  # no capabilities at all (the server runs as uid 1000)
    "security_opt": ["no-new-privileges"],  # setuid binaries cannot gain privileges
    "read_only": True,  # read-only root file system...
    "tmpfs": {"/tmp": "rw,nosuid,nodev,noexec,size=256m"},  # ...with a small scratch /tmp
    "pids_limit": 512,  # no fork bombs
    "dns": [BLACKHOLE_DNS],  # outside names resolve nowhere (see BLACKHOLE_DNS)
    "init": True,  # reap zombie kernels
}
# The single-user server ignores ~/.jupyter (JUPYTERHUB_DISABLE_USER_CONFIG=1); the image
# also points JUPYTER_CONFIG_DIR at the read-only /etc/jupyter.
c.Spawner.disable_user_config = True
# Defaults if a grant names no resources (the hook below applies the grant's).
c.Spawner.mem_limit = "2G"
c.Spawner.cpu_limit = 1.0
# Spawning is local and the image is present: fail fast instead of hanging.
c.Spawner.start_timeout = 60
c.Spawner.http_timeout = 30


async def spawn_check(user: str) -> list[dict[str, Any]]:
    """The user's active, in-window grants, as the gateway's state has them."""
    req = HTTPRequest(
        f"{GATEWAY_URL}/v1/internal/spawn-check/{quote(user, safe='')}",
        headers={"Authorization": f"Bearer {INTERNAL_TOKEN}"},
        request_timeout=10,
    )
    try:
        resp = await AsyncHTTPClient().fetch(req)
    except HTTPClientError as exc:
        if exc.code == 404:
            return []
        raise web.HTTPError(503, f"grant check failed: gateway answered {exc.code}") from exc
    except OSError as exc:
        raise web.HTTPError(503, f"grant check failed: gateway unreachable ({exc})") from exc
    return list(json.loads(resp.body).get("grants") or [])


async def pre_spawn_hook(spawner: Any) -> None:
    """Refuse users without an active grant; size and configure the container from it."""
    name = spawner.user.name
    grants = sorted(await spawn_check(name), key=lambda g: str(g.get("id")))
    if not grants:
        spawner.log.warning("refusing to spawn for %s: no active grant", name)
        raise web.HTTPError(403, f"{name} holds no active grant: no sandbox can be started")
    grant = grants[0]  # one sandbox per user; the first active grant is its default
    resources = grant.get("resources") or {}
    if resources.get("memory"):
        spawner.mem_limit = str(resources["memory"])
    if resources.get("cpu"):
        spawner.cpu_limit = float(resources["cpu"])
    spawner.environment.update(
        {
            "SANDBOX_GATEWAY_URL": GATEWAY_URL,
            "SANDBOX_GRANT": str(grant["id"]),
            "SANDBOX_GRANTS": ",".join(str(g["id"]) for g in grants),
        }
    )
    spawner.log.info(
        "spawning %s under grant %s (cpu=%s, mem=%s)",
        name, grant["id"], spawner.cpu_limit, spawner.mem_limit,
    )


# Grant check, sizing and environment before every spawn (above).
c.Spawner.pre_spawn_hook = pre_spawn_hook


async def report_server_event(user: str, grant: str | None, event: str) -> None:
    """Tell the gateway a server started or stopped (notebook hours for usage metering).

    Best effort: metering must never block a spawn or a stop, so failures are only logged.
    """
    body = json.dumps({"user": user, "grant": grant, "event": event})
    req = HTTPRequest(
        f"{GATEWAY_URL}/v1/internal/server-events",
        method="POST",
        body=body,
        headers={"Authorization": f"Bearer {INTERNAL_TOKEN}", "Content-Type": "application/json"},
        request_timeout=5,
    )
    try:
        await AsyncHTTPClient().fetch(req)
    except (HTTPClientError, OSError) as exc:
        import logging

        logging.getLogger("sandbox.hub").warning("could not report %s of %s's server: %s", event, user, exc)


async def post_stop_hook(spawner: Any) -> None:
    """Close the user's metered session when the server stops (for any reason)."""
    await report_server_event(spawner.user.name, spawner.environment.get("SANDBOX_GRANT"), "stopped")


# Notebook hours: start is reported by SandboxSpawner.start, stop here.
c.Spawner.post_stop_hook = post_stop_hook
