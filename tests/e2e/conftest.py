"""Fixtures for the end-to-end suite: the real stack, under a unique compose project.

The session fixture builds the images if missing (images/build.sh --if-missing), brings the
stack up with ``scripts/stack up`` (the README's first command) under a unique
``SANDBOX_STACK`` name and a free port, and tears it all down afterwards (notebook
containers, compose services, networks and volumes). Every wait is bounded. The suite is
skipped, with the reason, only when ``docker info`` fails.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import requests

ROOT = Path(__file__).resolve().parents[2]
TIMINGS_FILE = ROOT / "build" / "e2e-timings.json"


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Every test under tests/e2e needs Docker."""
    for item in items:
        if "tests/e2e/" in str(item.fspath).replace(os.sep, "/"):
            item.add_marker(pytest.mark.needs_docker)


def run(cmd: list[str], *, timeout: float = 120, check: bool = True, input: str | None = None,
        env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """Run a command, capturing output; on failure, show it."""
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, input=input,
                          env=env, cwd=ROOT)
    if check and proc.returncode != 0:
        raise AssertionError(
            f"{' '.join(cmd)} -> {proc.returncode}\nstdout:\n{proc.stdout[-4000:]}\n"
            f"stderr:\n{proc.stderr[-4000:]}"
        )
    return proc


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Stack:
    """A running stack and the handles the tests need."""

    name: str
    port: int
    env: dict[str, str]
    secrets: dict[str, str]
    logins: dict[str, str]
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def api(self) -> str:
        return self.url + "/hub/api"

    def container(self, service: str) -> str:
        """Container id of a compose service."""
        out = run(["docker", "ps", "-q", "--filter", f"label=com.docker.compose.project={self.name}",
                   "--filter", f"label=com.docker.compose.service={service}"]).stdout.split()
        assert out, f"no running {service} container"
        return out[0]

    def notebook(self, user: str) -> str:
        return f"{self.name}-nb-{user}"

    def stack(self, *args: str, timeout: float = 600, check: bool = True,
              input: str | None = None) -> subprocess.CompletedProcess[str]:
        return run(["scripts/stack", *args], timeout=timeout, check=check, input=input, env=self.env)

    def sandbox_cli(self, *args: str, input: str | None = None,
                    check: bool = True) -> subprocess.CompletedProcess[str]:
        """`sandbox ...` inside the gateway container (where the state volume is)."""
        return run(["docker", "exec", "-i", self.container("gateway"), "sandbox", *args],
                   input=input, check=check, timeout=120)

    def provisioner(self, method: str, path: str, **kw: Any) -> requests.Response:
        """A call to the hub API with the provisioner service's token."""
        headers = {"Authorization": f"token {self.secrets['SANDBOX_HUB_TOKEN']}"}
        return requests.request(method, self.api + path, headers=headers, timeout=30, **kw)

    def user_token(self, user: str) -> str:
        """A fresh hub API token for a demo user, obtained with the user's password."""
        resp = requests.post(
            f"{self.api}/users/{user}/tokens",
            json={"auth": {"username": user, "password": self.logins[user]},
                  "note": "e2e", "expires_in": 3600},
            timeout=30,
        )
        assert resp.status_code in (200, 201), resp.text
        return resp.json()["token"]

    def start_server(self, user: str, token: str, timeout: float = 120) -> float:
        """Start ``user``'s server through the hub API; returns seconds until ready."""
        headers = {"Authorization": f"token {token}"}
        t0 = time.monotonic()
        resp = requests.post(f"{self.api}/users/{user}/server", headers=headers, timeout=timeout)
        assert resp.status_code in (201, 202), f"{resp.status_code} {resp.text}"
        deadline = t0 + timeout
        while time.monotonic() < deadline:
            model = requests.get(f"{self.api}/users/{user}", headers=headers, timeout=30).json()
            server = (model.get("servers") or {}).get("")
            if server and server.get("ready"):
                return time.monotonic() - t0
            if not model.get("pending") and not server:
                raise AssertionError(f"spawn of {user} failed: {model}")
            time.sleep(0.25)
        raise AssertionError(f"{user}'s server not ready in {timeout}s\n{self.diagnose(user)}")

    def diagnose(self, user: str) -> str:
        """What the hub logged and what the engine holds for ``user``, for a failed spawn's message."""
        hub = run(["docker", "logs", "--tail", "60", self.container("hub")], check=False)
        nb = run(["docker", "ps", "-a", "--filter", f"name=^{self.notebook(user)}$",
                  "--format", "{{.Names}} {{.Status}}"], check=False).stdout.strip()
        return f"notebook container: {nb or 'none'}\nhub log (last 60 lines):\n{hub.stdout}{hub.stderr}"

    def exec_nb(self, user: str, code: str, *, check: bool = True,
                timeout: float = 120) -> subprocess.CompletedProcess[str]:
        """Run Python as the notebook user inside ``user``'s running notebook container."""
        return run(["docker", "exec", "-i", "-u", "1000", self.notebook(user), "python3", "-"],
                   input=code, check=check, timeout=timeout)


def _docker_ok() -> str | None:
    if shutil.which("docker") is None:
        return "docker CLI not installed"
    try:
        proc = subprocess.run(["docker", "info"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"docker info failed: {exc}"
    if proc.returncode != 0:
        return f"docker info failed: {proc.stderr.strip()[:300]}"
    return None


@pytest.fixture(scope="session")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    reason = _docker_ok()
    if reason:
        pytest.skip(f"needs a working Docker engine: {reason}")
    name = f"sbxe2e{secrets.token_hex(3)}"
    port = free_port()
    state = tmp_path_factory.mktemp("stack")
    env = {**os.environ, "SANDBOX_STACK": name, "SANDBOX_HUB_PORT": str(port),
           "SANDBOX_HUB_BIND": "127.0.0.1", "SANDBOX_STACK_DIR": str(state)}
    timings: dict[str, float] = {}
    t0 = time.monotonic()
    run(["images/build.sh", "--if-missing"], timeout=3000, env=env)
    timings["images_if_missing_s"] = round(time.monotonic() - t0, 1)
    t1 = time.monotonic()
    try:
        run(["scripts/stack", "up"], timeout=900, env=env)
        timings["stack_up_to_ready_s"] = round(time.monotonic() - t1, 1)
        stack_env = dict(
            line.split("=", 1) for line in (state / "stack.env").read_text().splitlines() if line
        )
        logins = dict(line.split() for line in (state / "demo-logins.txt").read_text().splitlines())
        st = Stack(name=name, port=port, env=env, secrets=stack_env, logins=logins,
                   timings=timings)
        yield st
    finally:
        def home_loops() -> list[str]:
            """Loop devices backed by a home image (the helper mounts the images at /images)."""
            if not shutil.which("losetup"):
                return []
            return [ln for ln in run(["losetup", "-a"], check=False).stdout.splitlines() if "(/images/" in ln]

        loops_before = home_loops()
        run(["scripts/stack", "down", "-v", "--timeout", "10"], timeout=300, check=False, env=env)
        # `scripts/stack down -v` must leave nothing of the stack behind on the host: no
        # container, network (per-user ones included), volume, or attached home image.
        left = {
            "containers": run(["docker", "ps", "-aq", "--filter", f"name=^{name}"], check=False).stdout.split(),
            "networks": run(["docker", "network", "ls", "-q", "--filter", f"name=^{name}"],
                            check=False).stdout.split(),
            "volumes": run(["docker", "volume", "ls", "-q", "--filter", f"name=^{name}"],
                           check=False).stdout.split(),
            "loop devices": [ln for ln in home_loops() if ln in loops_before],
        }
        if left["volumes"]:
            run(["docker", "volume", "rm", "-f", *left["volumes"]], check=False)
        TIMINGS_FILE.parent.mkdir(parents=True, exist_ok=True)
        TIMINGS_FILE.write_text(json.dumps(timings, indent=2) + "\n")
        print(f"\ne2e timings: {json.dumps(timings)}")
        assert not any(left.values()), f"scripts/stack down -v left behind: {left}"
