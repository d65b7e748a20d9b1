"""One internal Docker network per notebook user; only the gateway and the hub join it.

Why: on a shared network every notebook can open a TCP connection to every other one (the
issue measured alice's container reaching bob's Jupyter server). A socket between two
sandboxes is a channel around the gateway and the airlock, so each user's notebook gets a
bridge network of its own:

- ``internal: true`` (no route out) and ``com.docker.network.bridge.inhibit_ipv4`` (the host
  has no address on it, so host services are unreachable too), like the stack's own
  ``internal`` network;
- the gateway (alias ``gateway``) and the hub (alias ``hub``) are connected to it, so the
  notebook reaches exactly those two by the names it already uses;
- its subnet comes from a dedicated pool (default ``10.213.0.0/16`` in /28 blocks, 4,096
  networks), not from Docker's default address pools, which run out after about 30 networks.

Users are separated at layer 3: another user's notebook sits on another bridge and another
subnet, the notebook has no capability to add routes or craft raw packets, and the gateway
and hub containers run with ``net.ipv4.ip_forward=0`` (docker-compose.yml), so they cannot be
used as routers between the networks they share.

The hub calls :meth:`UserNetworks.ensure` before a spawn and :meth:`UserNetworks.remove`
after a stop; both are synchronous docker-py calls (run them in a thread).
"""

from __future__ import annotations

import contextlib
import ipaddress
import logging
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import docker
from docker.errors import APIError, NotFound
from docker.types import IPAMConfig, IPAMPool

log = logging.getLogger("sandbox.hub.networks")

LABEL_STACK = "org.trusted-sandbox.stack"
LABEL_KIND = "org.trusted-sandbox.kind"
LABEL_USER = "org.trusted-sandbox.user"
KIND_NETWORK = "notebook-network"
INHIBIT_IPV4 = "com.docker.network.bridge.inhibit_ipv4"


class SubnetPoolExhausted(RuntimeError):
    """No free block is left in the configured pool."""


def network_name(stack: str, user_key: str) -> str:
    """``<stack>-net-<escaped user>`` (the user key is DockerSpawner's escaped name)."""
    return f"{stack}-net-{user_key}"


def free_subnet(pool: str, prefix: int, taken: Iterable[str]) -> ipaddress.IPv4Network:
    """The first ``/prefix`` block of ``pool`` that overlaps none of the ``taken`` subnets."""
    pool_net = ipaddress.ip_network(pool, strict=True)
    if not isinstance(pool_net, ipaddress.IPv4Network):
        raise ValueError(f"subnet pool must be IPv4: {pool}")
    if not pool_net.prefixlen <= prefix <= 29:
        raise ValueError(f"block size /{prefix} must be between /{pool_net.prefixlen} and /29")
    used = []
    for text in taken:
        try:
            net = ipaddress.ip_network(text, strict=False)
        except ValueError:
            continue
        if isinstance(net, ipaddress.IPv4Network) and net.overlaps(pool_net):
            used.append(net)
    for candidate in pool_net.subnets(new_prefix=prefix):
        if not any(candidate.overlaps(u) for u in used):
            return candidate
    raise SubnetPoolExhausted(f"no free /{prefix} left in {pool} ({len(used)} in use)")


@dataclass
class NetworkSettings:
    """What differs between deployments (hub_config.py fills it from the environment)."""

    stack: str  # compose project name: prefix of networks, label of the service containers
    pool: str = "10.213.0.0/16"  # where per-user subnets are carved from
    prefix: int = 28  # block size per user network (/28: 14 addresses, 3 used)
    # compose service name -> DNS alias it gets on every user network
    services: dict[str, str] = field(default_factory=lambda: {"gateway": "gateway", "hub": "hub"})


def stack_container(client: docker.DockerClient, stack: str, service: str) -> Any:
    """The running container of a compose service of this stack."""
    found = client.containers.list(filters={"label": [f"com.docker.compose.project={stack}",
                                                      f"com.docker.compose.service={service}"]})
    if not found:
        raise RuntimeError(f"no running '{service}' container in stack {stack}")
    return found[0]


def address_on(container: Any, network: str) -> str | None:
    """The IPv4 address of ``container`` on ``network`` (None if not attached)."""
    container.reload()
    nets = container.attrs.get("NetworkSettings", {}).get("Networks") or {}
    return (nets.get(network) or {}).get("IPAddress") or None


class UserNetworks:
    """Create, attach and remove the per-user notebook networks of one stack."""

    def __init__(self, client: docker.DockerClient, settings: NetworkSettings) -> None:
        self.client = client
        self.settings = settings

    def name(self, user_key: str) -> str:
        return network_name(self.settings.stack, user_key)

    def _services(self) -> list[tuple[Any, str]]:
        return [(stack_container(self.client, self.settings.stack, svc), alias)
                for svc, alias in self.settings.services.items()]

    def _taken_subnets(self) -> list[str]:
        out = []
        for net in self.client.api.networks():
            for cfg in (net.get("IPAM") or {}).get("Config") or []:
                if cfg.get("Subnet"):
                    out.append(cfg["Subnet"])
        return out

    def _create(self, user_key: str, user: str) -> Any:
        name = self.name(user_key)
        labels = {LABEL_STACK: self.settings.stack, LABEL_KIND: KIND_NETWORK, LABEL_USER: user}
        for _attempt in range(8):  # another hub on this engine may take the same block
            subnet = free_subnet(self.settings.pool, self.settings.prefix, self._taken_subnets())
            try:
                net = self.client.networks.create(
                    name, driver="bridge", internal=True, check_duplicate=True, labels=labels,
                    options={INHIBIT_IPV4: "true"},
                    ipam=IPAMConfig(pool_configs=[IPAMPool(subnet=str(subnet))]),
                )
                log.info("created network %s (%s) for %s", name, subnet, user)
                return net
            except APIError as exc:
                text = str(exc).lower()
                if "already exists" in text or exc.status_code == 409:
                    return self.client.networks.get(name)
                if "overlap" in text:
                    continue
                raise
        raise SubnetPoolExhausted(f"could not allocate a subnet for {name} after 8 attempts")

    def ensure(self, user_key: str, user: str) -> str:
        """The user's network exists and the gateway and the hub are attached; its name."""
        try:
            net = self.client.networks.get(self.name(user_key))
        except NotFound:
            net = self._create(user_key, user)
        self.attach_services(net)
        return net.name

    def attach_services(self, net: Any) -> None:
        """Connect the gateway and the hub (idempotent; after a gateway re-creation too)."""
        net.reload()
        attached = set(net.attrs.get("Containers") or {})
        for container, alias in self._services():
            if container.id in attached:
                continue
            try:
                net.connect(container, aliases=[alias])
                log.info("attached %s to %s as %s", container.name, net.name, alias)
            except APIError as exc:
                if "already exists" not in str(exc).lower():
                    raise

    def reattach(self, user_key: str) -> None:
        """For a running server: re-attach services if the network lost them."""
        try:
            self.attach_services(self.client.networks.get(self.name(user_key)))
        except NotFound:
            log.warning("network %s is gone while its server runs", self.name(user_key))

    def members(self, user_key: str) -> dict[str, str]:
        """Container name -> IPv4 address of everything attached to the user's network."""
        net = self.client.networks.get(self.name(user_key))
        net.reload()
        return {c["Name"]: c["IPv4Address"].split("/")[0]
                for c in (net.attrs.get("Containers") or {}).values()}

    def _is_service(self, container_id: str) -> bool:
        try:
            labels = self.client.api.inspect_container(container_id)["Config"].get("Labels") or {}
        except NotFound:
            return True  # gone already: nothing to wait for
        return (labels.get("com.docker.compose.project") == self.settings.stack
                and labels.get("com.docker.compose.service") in self.settings.services)

    def remove(self, user_key: str) -> bool:
        """Detach the services and delete the network once no notebook is on it."""
        try:
            net = self.client.networks.get(self.name(user_key))
        except NotFound:
            return True
        net.reload()
        attached = net.attrs.get("Containers") or {}
        others = [c.get("Name") for cid, c in attached.items() if not self._is_service(cid)]
        if others:
            log.warning("keeping %s: still attached %s", net.name, others)
            return False
        for cid in attached:
            try:
                net.disconnect(cid, force=True)
            except APIError as exc:
                log.warning("could not detach %s from %s: %s", cid[:12], net.name, exc)
        with contextlib.suppress(NotFound):
            net.remove()
        log.info("removed network %s", net.name)
        return True
