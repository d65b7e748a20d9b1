"""The notebook image's client-only install runs the getting-started notebook.

The files the notebook Dockerfile copies into the image (its ``COPY sandbox/...`` lines, read
from the Dockerfile itself) are copied into a temporary directory; a child Python process that
refuses to import DuckDB, OpenDP, Flask or the gateway package then executes every code cell of
``images/notebook/getting-started.ipynb`` against a real gateway on loopback: in mock mode (as
shipped), then with ``MOCK = False``.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
DOCKERFILE = REPO / "images" / "notebook" / "Dockerfile"
NOTEBOOK = REPO / "images" / "notebook" / "getting-started.ipynb"
BLOCKED = ("duckdb", "opendp", "flask", "gateway", "waitress")


def _client_files(target: Path) -> list[str]:
    """Copy what the Dockerfile's COPY lines put under /opt/sandbox-client/sandbox/."""
    copied = []
    for line in DOCKERFILE.read_text().splitlines():
        parts = line.split()
        if len(parts) < 3 or parts[0] != "COPY" or not parts[1].startswith("sandbox"):
            continue
        sources, dest = parts[1:-1], parts[-1]
        assert dest.startswith("/opt/sandbox-client/sandbox")
        out = target / dest.removeprefix("/opt/sandbox-client/")
        for source in sources:
            path = REPO / source
            if path.is_dir():
                shutil.copytree(path, out, ignore=shutil.ignore_patterns("__pycache__"))
            else:
                out.mkdir(parents=True, exist_ok=True)
                shutil.copy(path, out / path.name)
            copied.append(source)
    return copied


RUNNER = textwrap.dedent("""
    import importlib.abc, json, sys
    BLOCKED = {blocked!r}

    class Block(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in BLOCKED:
                raise ImportError("not in the notebook image: " + name)
            return None

    sys.meta_path.insert(0, Block())
    sys.path.insert(0, {client!r})
    cells = [c for c in json.load(open({notebook!r}))["cells"] if c["cell_type"] == "code"]
    env = {{}}
    for cell in cells:
        source = "".join(cell["source"])
        if {real!r}:
            source = source.replace("MOCK = True", "MOCK = False")
        exec(compile(source, "cell", "exec"), env)
    import sandbox
    loaded = sorted(m.__file__ for n, m in sys.modules.items() if n.split(".")[0] == "sandbox")
    print(json.dumps({{"mock": env["df"].attrs.get("mock", False), "columns": list(env["df"].columns),
                      "rows": len(env["df"]), "spent": env["df"].attrs.get("epsilon_spent"),
                      "files": loaded, "blocked": [m for m in sys.modules if m.split(".")[0] in BLOCKED]}}))
""")


def _run(tmp_path: Path, url: str, token: str, real: bool) -> dict:
    client = tmp_path / "client"
    if not client.exists():
        assert "sandbox/mock.py" in " ".join(_client_files(client))
    script = RUNNER.format(blocked=BLOCKED, client=str(client), notebook=str(NOTEBOOK), real=real)
    env = {**os.environ, "SANDBOX_GATEWAY_URL": url, "SANDBOX_TOKEN": token, "SANDBOX_GRANT": "g-2026-001"}
    env.pop("PYTHONPATH", None)
    proc = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_getting_started_runs_on_the_client_only_install(tmp_path, live_server, services) -> None:  # noqa: ANN001
    token = services.tokens.create("alice")
    before = services.ledger.state("g-2026-001").to_dict()["epsilon_spent"]
    mock = _run(tmp_path, live_server, token, real=False)
    assert mock["mock"] is True and mock["spent"] == 0.0 and mock["rows"] >= 2
    assert mock["blocked"] == []
    assert all(f.startswith(str(tmp_path / "client")) for f in mock["files"]), mock["files"]
    assert services.ledger.state("g-2026-001").to_dict()["epsilon_spent"] == before
    real = _run(tmp_path, live_server, token, real=True)
    assert real["mock"] is False and real["spent"] == 0.5 and real["columns"] == mock["columns"]
    assert real["rows"] == mock["rows"]
    assert services.ledger.state("g-2026-001").to_dict()["epsilon_spent"] == before + 0.5


def test_server_config_copies_the_notebook_once(tmp_path) -> None:  # noqa: ANN001
    """The image's jupyter_server_config.py puts the notebook into an empty home, never over a file."""
    config = (REPO / "images" / "notebook" / "etc" / "jupyter" / "jupyter_server_config.py").read_text()
    config = config.replace("/opt/sandbox-client/getting-started.ipynb", str(NOTEBOOK))

    class Config:
        def __getattr__(self, name: str) -> Config:
            return self

        def __setattr__(self, name: str, value: object) -> None:
            pass

    home = tmp_path / "home"
    home.mkdir()
    old = os.environ.get("HOME")
    os.environ["HOME"] = str(home)
    try:
        exec(compile(config, "jupyter_server_config.py", "exec"), {"get_config": Config})
        assert (home / "getting-started.ipynb").read_bytes() == NOTEBOOK.read_bytes()
        (home / "getting-started.ipynb").write_text("mine")
        exec(compile(config, "jupyter_server_config.py", "exec"), {"get_config": Config})
        assert (home / "getting-started.ipynb").read_text() == "mine"
    finally:
        if old is not None:
            os.environ["HOME"] = old
