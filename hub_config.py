"""JupyterHub configuration of the trusted-circulation sandbox (loaded by the hub image).

What it sets up:

- **Authentication**: a demo password authenticator (salted PBKDF2 hashes passed in by
  ``scripts/stack``, never plain text) or, with ``SANDBOX_AUTHENTICATOR=oidc``, OAuth2/OIDC
  through ``oauthenticator.generic.GenericOAuthenticator`` (see docs/stack.md).
- **The gateway as a hub service**: notebooks call it directly on the internal network;
  browsers reach it through the proxy at ``/services/gateway/``. The kernel's token carries
  ``access:services!service=gateway`` so the gateway's ``HubAuth`` accepts it.
- **Grant-aware, hardened DockerSpawner**: a ``pre_spawn_hook`` asks the gateway which
  grants are active for the user (``/v1/internal/spawn-check/<user>``), refuses users with
  none, sizes the container from the grant's ``resources`` and passes the gateway URL and
  grant id in the environment. Containers run the pinned notebook image, read-only, with no
  capabilities, each on an internal network of its own that only the gateway and the hub
  join (no notebook can reach another), with a resolver that cannot reach outside, and with
  the grant's memory, CPU, process and home-size caps (``sandbox_hub/``, images/hub).

Every value that differs between deployments comes from the environment (see
docker-compose.yml); every setting below says why it is there.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
from typing import Any
from urllib.parse import quote

from jupyterhub.auth import Authenticator
from tornado import web
from tornado.httpclient import AsyncHTTPClient, HTTPClientError, HTTPRequest
from traitlets import Dict as DictTrait

c = get_config()  # noqa: F821 - provided by JupyterHub when it loads this file


def env(name: str, default: str | None = None) -> str:
    """A required (or defaulted) setting from the environment."""
    value = os.environ.get(name, default)
    if value is None or value == "":
        raise SystemExit(f"hub_config: environment variable {name} is required")
    return value


STACK = env("SANDBOX_STACK", "sandbox")  # prefix of containers, volumes and networks
# The gateway as the hub sees it: an alias that exists on the stack's internal network only.
# (The gateway is also on every user's network as `gateway`; a hub-to-gateway connection
# through one of those would break when that user's server stops and the network goes.)
GATEWAY_URL = env("SANDBOX_GATEWAY_URL", "http://gateway-internal:8080")
# The gateway as notebooks see it (its alias on each user's network).
NOTEBOOK_GATEWAY_URL = env("SANDBOX_NOTEBOOK_GATEWAY_URL", "http://gateway:8080")
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
# The public face: configurable-http-proxy on port 8000 (compose publishes it on the host),
# bound to the hub's address on the `outside` network only (set with the spawner's network
# settings below), so notebooks cannot reach other users' servers through the proxy.
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


def hash_password(password: str, salt: bytes | None = None, rounds: int = 200_000) -> str:
    """``pbkdf2_sha256$rounds$salt$hash`` (what scripts/stack puts in SANDBOX_DEMO_LOGINS)."""
    salt = salt or os.urandom(16)
    digest = hashlib.pbkdf2_hmac("sha256", password.encode(), salt, rounds)
    b64 = base64.urlsafe_b64encode
    return f"pbkdf2_sha256${rounds}${b64(salt).decode()}${b64(digest).decode()}"


def verify_password(password: str, encoded: str) -> bool:
    """Constant-time check of ``password`` against :func:`hash_password`'s output."""
    try:
        algo, rounds, salt, digest = encoded.split("$")
    except ValueError:
        return False
    if algo != "pbkdf2_sha256":
        return False
    salt_b = base64.urlsafe_b64decode(salt)
    expected = hash_password(password, salt_b, int(rounds)).split("$")[3]
    return hmac.compare_digest(expected, digest)


class DemoPasswordAuthenticator(Authenticator):
    """Logins for a demo: user name → PBKDF2 hash, from ``SANDBOX_DEMO_LOGINS`` (JSON).

    The plain passwords exist only where ``scripts/stack`` printed them. Not for production:
    switch to OAuth/OIDC (``SANDBOX_AUTHENTICATOR=oidc``).
    """

    password_hashes = DictTrait(config=True, help="user name -> pbkdf2_sha256 hash")

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
    # ...with the PBKDF2 hashes scripts/stack generated (plain passwords never reach the hub).
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
import asyncio  # noqa: E402
import logging  # noqa: E402
import sys  # noqa: E402
from collections import defaultdict  # noqa: E402

import docker  # noqa: E402 - docker-py, installed with dockerspawner
from dockerspawner import DockerSpawner  # noqa: E402 - after the helpers above
from traitlets import default  # noqa: E402

# The hub-side helpers live beside this file in the hub image (images/hub/sandbox_hub).
_here = os.path.dirname(os.path.abspath(__file__))
sys.path[:0] = [_here, os.path.join(_here, "images", "hub")]
from sandbox_hub.homes import HomeSettings, HomeVolumes  # noqa: E402
from sandbox_hub.networks import (  # noqa: E402
    NetworkSettings,
    UserNetworks,
    address_on,
    network_name,
    stack_container,
)

hub_log = logging.getLogger("sandbox.hub")
# Per-user notebook networks are carved from this IPv4 pool (must not overlap the host's
# networks or Docker's default pools), in blocks of this prefix length (/28 = 4,096 users).
SUBNET_POOL = env("SANDBOX_NOTEBOOK_SUBNETS", "10.213.0.0/16")
SUBNET_PREFIX = int(env("SANDBOX_NOTEBOOK_SUBNET_PREFIX", "28"))
# The network whose address the public proxy binds to (the published port's network).
OUTSIDE_NETWORK = env("SANDBOX_OUTSIDE_NETWORK", f"{STACK}_outside")
# Home size cap and process cap when a grant's `resources` names none.
HOME_SIZE = env("SANDBOX_HOME_SIZE", "10G")
PIDS_LIMIT = int(env("SANDBOX_PIDS_LIMIT", "512"))
# The image that runs the home helper (needs sh, losetup, mkfs.ext4); default: the hub's own.
HOME_HELPER_IMAGE = os.environ.get("SANDBOX_HOME_HELPER_IMAGE", "")

_docker = docker.from_env()
_hub = stack_container(_docker, STACK, "hub")
NETWORKS = UserNetworks(_docker, NetworkSettings(stack=STACK, pool=SUBNET_POOL, prefix=SUBNET_PREFIX))
HOMES = HomeVolumes(_docker, HomeSettings(
    stack=STACK, helper_image=HOME_HELPER_IMAGE or HomeVolumes.helper_image_of(_hub),
    default_size=HOME_SIZE))
# The proxy's public port listens on the hub's outside address only (never on the per-user
# networks, where it would be a path from one notebook to another user's server).
c.JupyterHub.ip = address_on(_hub, OUTSIDE_NETWORK) or "0.0.0.0"
if c.JupyterHub.ip == "0.0.0.0":
    hub_log.warning("hub_config: not on %s; the proxy listens on all interfaces", OUTSIDE_NETWORK)
# One lock per user: network and home are prepared and torn down one spawn/stop at a time.
_user_locks: defaultdict[str, asyncio.Lock] = defaultdict(asyncio.Lock)


class SandboxSpawner(DockerSpawner):
    """DockerSpawner on a per-user network that returns once the server answers HTTP.

    JupyterHub's own readiness check backs off exponentially (0.2 s, 0.4 s, ... up to 5 s),
    which on a server that needs ~5 s to import adds seconds of idle waiting to every spawn,
    so ``start`` polls every 0.1 s. ``poll`` also re-attaches the gateway and the hub to the
    user's network if they lost it (e.g. the gateway container was re-created).
    """

    @default("network_name")
    def _user_network(self) -> str:
        return network_name(STACK, self.escaped_name)

    async def poll(self) -> int | str | None:  # type: ignore[override]
        status = await super().poll()
        if status is None:
            try:
                await asyncio.to_thread(NETWORKS.reattach, self.escaped_name)
            except Exception as exc:  # noqa: BLE001 - polling must not fail on this
                self.log.warning("could not re-attach services to %s: %s", self.network_name, exc)
        return status

    async def start(self) -> tuple[str, int]:  # type: ignore[override]
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
# Each notebook on a network of its own (SandboxSpawner.network_name: <stack>-net-<user>,
# created by the pre-spawn hook with only the gateway and the hub attached); the hub reaches
# the server by its IP there.
c.DockerSpawner.use_internal_ip = True
# Per-user home: a size-capped ext4 volume the pre-spawn hook prepares (the only writable
# place besides tmpfs /tmp); see sandbox_hub/homes.py.
c.DockerSpawner.volumes = {f"{STACK}-home-{{username}}": "/home/jovyan"}
# The server's root directory is that home.
c.DockerSpawner.notebook_dir = "/home/jovyan"
# Kernel-level hardening applied to every notebook container.
c.DockerSpawner.extra_host_config = {
    "cap_drop": ["ALL"],  # no capabilities at all (the server runs as uid 1000)
    "security_opt": ["no-new-privileges"],  # setuid binaries cannot gain privileges
    "read_only": True,  # read-only root file system...
    "tmpfs": {"/tmp": "rw,nosuid,nodev,noexec,size=256m"},  # ...with a small scratch /tmp
    "pids_limit": PIDS_LIMIT,  # no fork bombs (the grant's resources.pids, set per spawn)
    "dns": [BLACKHOLE_DNS],  # outside names resolve nowhere (see BLACKHOLE_DNS)
    "init": True,  # reap zombie kernels
    # What a kernel writes to the container's stdout lands in the engine's log files: capped
    # here (3 x 10 MB), whatever the daemon's defaults are, so a loop cannot fill the host.
    "log_config": {"type": "json-file", "config": {"max-size": "10m", "max-file": "3"}},
    # Open files (sockets included) per process.
    "ulimits": [{"name": "nofile", "soft": 8192, "hard": 8192}],
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
    pids = int(resources.get("pids") or PIDS_LIMIT)
    spawner.extra_host_config = {
        **spawner.extra_host_config,
        "pids_limit": pids,  # tasks (processes and threads) in the container
        "memswap_limit": spawner.mem_limit,  # = mem_limit: no swap beyond the memory cap
    }
    # The user's own network (gateway and hub attached) and size-capped home, prepared here.
    key = spawner.escaped_name
    async with _user_locks[key]:
        try:
            spawner.network_name = await asyncio.to_thread(NETWORKS.ensure, key, name)
            await asyncio.to_thread(HOMES.ensure, key, name, resources.get("disk"))
        except Exception as exc:
            spawner.log.error("cannot prepare the sandbox of %s: %s", name, exc)
            raise web.HTTPError(503, f"cannot prepare the sandbox of {name}: {exc}") from exc
    spawner.environment.update(
        {
            "SANDBOX_GATEWAY_URL": NOTEBOOK_GATEWAY_URL,
            "SANDBOX_GRANT": str(grant["id"]),
            "SANDBOX_GRANTS": ",".join(str(g["id"]) for g in grants),
        }
    )
    spawner.log.info(
        "spawning %s under grant %s on %s (cpu=%s, mem=%s, pids=%s, disk=%s)",
        name, grant["id"], spawner.network_name, spawner.cpu_limit, spawner.mem_limit, pids,
        resources.get("disk") or HOME_SIZE,
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
    """Close the metered session, release the home's loop device, remove the user's network."""
    await report_server_event(spawner.user.name, spawner.environment.get("SANDBOX_GRANT"), "stopped")
    key = spawner.escaped_name
    async with _user_locks[key]:
        # The container is auto-removed: wait (bounded) until it is gone from the engine.
        for _ in range(100):
            try:
                await asyncio.to_thread(_docker.api.inspect_container, spawner.container_name)
            except docker.errors.NotFound:
                break
            await asyncio.sleep(0.1)
        for what, step in (("home", HOMES.release), ("network", NETWORKS.remove)):
            try:
                await asyncio.to_thread(step, key)
            except Exception as exc:  # noqa: BLE001 - a stop must complete; the next spawn repairs
                spawner.log.warning("could not release the %s of %s: %s", what, spawner.user.name, exc)


# Notebook hours: start is reported by SandboxSpawner.start, stop here.
c.Spawner.post_stop_hook = post_stop_hook
