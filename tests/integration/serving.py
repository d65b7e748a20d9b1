"""A real `sandbox serve` on loopback for the tests that drive it over HTTP with concurrent clients."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import requests

CLI = [sys.executable, "-m", "sandbox.cli"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def serving(tmp_path: Path, policies: Path, state: Path, data_root: Path,
            start_timeout: float = 60) -> Iterator[tuple[str, dict[str, str]]]:
    """``sandbox serve`` over ``policies`` and ``state`` with 16 threads, an admin and a token for alice:
    yields (url, headers), stops the server afterwards."""
    subprocess.run(CLI + ["admin", "init", "--state", str(state)], check=True, capture_output=True)
    token = subprocess.run(CLI + ["tokens", "create", "alice", "--state", str(state)],
                           check=True, capture_output=True, text=True).stdout.strip()
    port = _free_port()
    log_path = tmp_path / "serve.log"
    with log_path.open("w") as log:
        proc = subprocess.Popen(
            CLI + ["serve", "--data-root", str(data_root), "--policies", str(policies), "--state", str(state),
                   "--port", str(port), "--threads", "16"],
            stdout=subprocess.DEVNULL, stderr=log, text=True, env={**os.environ},
        )
        try:
            url, headers = f"http://127.0.0.1:{port}", {"Authorization": f"Bearer {token}"}
            deadline = time.monotonic() + start_timeout
            while True:
                try:
                    requests.get(url + "/v1/budget", headers=headers, timeout=2)
                    break
                except requests.ConnectionError:
                    if proc.poll() is not None or time.monotonic() > deadline:
                        proc.kill()
                        pytest.fail("sandbox serve did not start: " + log_path.read_text())
                    time.sleep(0.2)
            yield url, headers
        finally:
            proc.terminate()
            proc.wait(timeout=30)
