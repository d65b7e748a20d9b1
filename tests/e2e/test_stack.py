"""End to end: the compose stack, a grant, an operator's sandbox, and what it cannot do.

Runs in file order against one stack (see conftest.py). Every network target is loopback,
the project's own containers, or the stack's own Docker networks; the one outside name is
``deb.debian.org`` (the mirror the base image comes from), used only for a DNS lookup.
"""

from __future__ import annotations

import hashlib
import http.server
import json
import textwrap
import threading
import time
from collections.abc import Iterator

import pytest
import requests

from sandbox.exports.canonical import render

from .conftest import Stack, run

pytestmark = pytest.mark.needs_docker

GRANT = "g-2026-001"  # policies/grants: members alice and bob
OTHER_GRANT = "g-e2e-other"
OTHER_GRANT_YAML = textwrap.dedent(
    f"""\
    id: {OTHER_GRANT}
    operator: Other Institution Ltd.
    members: [eve]
    mode: scenario
    purpose: End-to-end test of grant isolation
    datasets: {{nhanes_2017: {{columns: [sex, age]}}}}
    valid_from: 2026-01-01
    valid_until: 2027-12-31
    budget: {{epsilon: 5.0, delta: 1.0e-6}}
    max_epsilon_per_query: 1.0
    exports: {{reviewers_required: 2}}
    resources: {{cpu: 0.5, memory: 1G}}
    status: active
    use: public_welfare
    """
)
QUERY = "SELECT sex, COUNT(*) AS n FROM nhanes_2017 GROUP BY sex"


@pytest.fixture(scope="module")
def alice(stack: Stack) -> Iterator[dict]:
    """alice's running sandbox: her API token, spawn time and kernel token."""
    # A second grant alice is not in (its member eve is created on the hub by the CLI).
    run(["docker", "exec", "-i", stack.container("gateway"), "sh", "-c",
         f"cat > /tmp/{OTHER_GRANT}.yaml"], input=OTHER_GRANT_YAML)
    stack.sandbox_cli("grants", "apply", f"/tmp/{OTHER_GRANT}.yaml")
    token = stack.user_token("alice")
    spawn_s = stack.start_server("alice", token)
    stack.timings["spawn_ready_s"] = round(spawn_s, 2)
    kernel_token = stack.exec_nb(
        "alice", "import os; print(os.environ['JUPYTERHUB_API_TOKEN'])"
    ).stdout.strip()
    yield {"token": token, "spawn_s": spawn_s, "kernel_token": kernel_token}


def test_grant_apply_provisions_hub(stack: Stack, alice: dict) -> None:
    group = stack.provisioner("GET", f"/groups/grant-{GRANT}").json()
    assert sorted(group["users"]) == ["alice", "bob"]
    assert stack.provisioner("GET", "/users/eve").status_code == 200


def test_container_is_hardened(stack: Stack, alice: dict) -> None:
    info = json.loads(run(["docker", "inspect", stack.notebook("alice")]).stdout)[0]
    host = info["HostConfig"]
    assert host["ReadonlyRootfs"] is True
    assert host["CapDrop"] == ["ALL"] or set(host["CapDrop"]) == {"ALL"}
    assert any(opt.startswith("no-new-privileges") for opt in host["SecurityOpt"])
    assert "/tmp" in host["Tmpfs"]
    assert host["PidsLimit"] == 512  # the default resources.pids
    assert host["Memory"] == 2 * 1024**3  # the grant's resources.memory: 2G
    assert host["MemorySwap"] == host["Memory"]  # no swap beyond it
    assert host["CpuQuota"] == host["CpuPeriod"] * 1  # resources.cpu: 1.0
    assert host["AutoRemove"] is True
    assert host["Dns"] == ["192.0.2.1"]
    assert list(info["NetworkSettings"]["Networks"]) == [f"{stack.name}-net-alice"]
    assert info["Config"]["User"] in ("1000:1000", "1000")
    env = dict(e.split("=", 1) for e in info["Config"]["Env"])
    assert env["SANDBOX_GRANT"] == GRANT
    assert env["SANDBOX_GATEWAY_URL"].startswith("http://gateway:8080")
    assert not any("INTERNAL_TOKEN" in k or k == "SANDBOX_HUB_TOKEN" for k in env)
    mounts = {m["Destination"]: m for m in info["Mounts"]}
    assert set(mounts) == {"/home/jovyan"}
    home = json.loads(run(["docker", "volume", "inspect", mounts["/home/jovyan"]["Name"]]).stdout)[0]
    assert home["Options"]["type"] == "ext4" and home["Options"]["device"].startswith("/dev/loop")


def test_dp_query_moves_budget(stack: Stack, alice: dict) -> None:
    out = stack.exec_nb("alice", textwrap.dedent(f"""
        import json, sandbox
        db = sandbox.connect()
        before = db.budget(raw=True)
        df = db.query({QUERY!r}, epsilon=0.5)
        after = db.budget(raw=True)
        print(json.dumps({{"cols": list(df.columns), "rows": len(df), "attrs": df.attrs,
                          "before": before, "after": after}}, default=str))
    """)).stdout
    result = json.loads(out.strip().splitlines()[-1])
    assert "n" in result["cols"] and result["rows"] >= 1
    attrs = result["attrs"]
    assert attrs["epsilon_spent"] == pytest.approx(0.5)
    assert "ci_halfwidth" in attrs["accuracy"]
    assert attrs["budget"]["epsilon_spent"] >= 0.5
    spent = {b["grant"]: b["epsilon_spent"] for b in result["before"]["grants"]}
    assert {b["grant"]: b["epsilon_spent"] for b in result["after"]["grants"]}[GRANT] == \
        pytest.approx(spent[GRANT] + 0.5)


def _gateway_token(stack: Stack, user: str) -> str:
    """A hub token of ``user`` limited to the gateway service, used from outside the sandbox."""
    r = requests.post(f"{stack.api}/users/{user}/tokens",
                      headers={"Authorization": f"token {stack.user_token(user)}"},
                      json={"scopes": ["access:services!service=gateway"], "expires_in": 600}, timeout=30)
    assert r.status_code in (200, 201), r.text
    return r.json()["token"]


def test_export_reviewed_and_downloaded_outside(stack: Stack, alice: dict) -> None:
    """db.export in the notebook -> two reviewers approve -> alice downloads, outside, the canonical
    rendering of what she sent (the airlock never releases uploaded bytes)."""
    out = stack.exec_nb("alice", textwrap.dedent(f"""
        import json, sandbox
        db = sandbox.connect()
        df = db.query({QUERY!r}, epsilon=0.2)
        req = db.export(df, title="Counts by sex", justification="e2e: planning report")
        print(json.dumps({{"id": req["id"], "csv": df.to_csv(index=False)}}))
    """)).stdout
    sent = json.loads(out.strip().splitlines()[-1])
    gateway = f"{stack.url}/services/gateway"
    for reviewer in ("carol", "dave"):
        r = requests.post(f"{gateway}/v1/exports/{sent['id']}/reviews",
                          headers={"Authorization": f"token {_gateway_token(stack, reviewer)}"},
                          json={"decision": "approve", "comment": "aggregates only"}, timeout=30)
        assert r.status_code == 200, r.text
    mine = {"Authorization": f"token {_gateway_token(stack, 'alice')}"}
    status = requests.get(f"{gateway}/v1/exports/{sent['id']}", headers=mine, timeout=30).json()["status"]
    assert status == "approved"
    r = requests.get(f"{gateway}/v1/exports/{sent['id']}/files/result-1.csv", headers=mine, timeout=30)
    assert r.status_code == 200, r.text
    expected, _ = render("csv", sent["csv"].encode())  # the same canonicalization the gateway ran
    assert r.content == expected
    assert r.headers["X-Content-SHA256"] == hashlib.sha256(expected).hexdigest()
    # a reviewer cannot take the file out
    r = requests.get(f"{gateway}/v1/exports/{sent['id']}/files/result-1.csv",
                     headers={"Authorization": f"token {_gateway_token(stack, 'carol')}"}, timeout=30)
    assert r.status_code in (403, 404)


def test_no_raw_data_in_notebook(stack: Stack, alice: dict) -> None:
    out = stack.exec_nb("alice", textwrap.dedent("""
        import os, sandbox
        found = []
        for root, dirs, files in os.walk("/", onerror=lambda e: None):
            if root.startswith(("/proc", "/sys")):
                dirs[:] = []
                continue
            # the raw files by name, or any Parquet/DuckDB file of real size (pyarrow ships
            # tiny test files under site-packages, which are not data)
            for f in files:
                path = os.path.join(root, f)
                if f in ("nhanes_2017.parquet", "adult_income.parquet") or (
                        f.endswith((".parquet", ".duckdb")) and os.path.getsize(path) > 32768):
                    found.append(path)
        print("FOUND", found)
        print("DATA_DIR", os.path.exists("/data"))
        print("GETTING_STARTED", os.path.isfile(os.path.expanduser("~/getting-started.ipynb")))
        for mod in ("duckdb", "opendp", "flask"):
            try:
                __import__(mod)
                print("IMPORTABLE", mod)
            except ImportError:
                pass
    """)).stdout
    assert "FOUND []" in out
    assert "DATA_DIR False" in out
    assert "GETTING_STARTED True" in out  # copied into the home volume at server start
    assert "IMPORTABLE" not in out


def test_gateway_data_path_unreachable(stack: Stack, alice: dict) -> None:
    out = stack.exec_nb("alice", textwrap.dedent("""
        import os, requests, sandbox
        db = sandbox.connect()
        for sql in ("SELECT * FROM read_parquet('/data/nhanes_2017.parquet')",
                    "SELECT COUNT(*) FROM '/data/nhanes_2017.parquet'",
                    "SELECT * FROM nhanes_2017"):
            try:
                db.query(sql, epsilon=0.1)
                print("ALLOWED", sql)
            except sandbox.client.GatewayError as e:
                print("REFUSED", e.status, e.code)
        h = {"Authorization": "Bearer " + os.environ["JUPYTERHUB_API_TOKEN"]}
        for path in ("/data/nhanes_2017.parquet", "/nhanes_2017.parquet", "/static/../data/x"):
            r = requests.get("http://gateway:8080" + path, headers=h, timeout=10)
            print("HTTP", path, r.status_code, r.content[:4] == b"PAR1")
    """)).stdout
    assert "ALLOWED" not in out
    assert out.count("REFUSED 400") + out.count("REFUSED 403") == 3, out
    for line in out.splitlines():
        if line.startswith("HTTP"):
            assert line.split()[2] in ("401", "403", "404") and line.endswith("False"), line


def test_jupyter_server_locked_down(stack: Stack, alice: dict) -> None:
    out = stack.exec_nb("alice", textwrap.dedent("""
        import os, json, urllib.request, urllib.error
        open("/home/jovyan/probe.txt", "w").write("x")
        base = "http://127.0.0.1:8888/user/alice"
        h = {"Authorization": "token " + os.environ["JUPYTERHUB_API_TOKEN"]}
        def status(method, path, body=None):
            req = urllib.request.Request(base + path, method=method, headers=h, data=body)
            try:
                return urllib.request.urlopen(req, timeout=10).status
            except urllib.error.HTTPError as e:
                return e.code
        print(json.dumps({
            "contents": status("GET", "/api/contents"),
            "files": status("GET", "/files/probe.txt"),
            "download": status("GET", "/files/probe.txt?download=1"),
            "nbconvert": status("GET", "/nbconvert/html/probe.txt"),
            "terminal": status("POST", "/api/terminals", b"{}"),
        }))
    """)).stdout
    codes = json.loads(out.strip().splitlines()[-1])
    assert codes["contents"] == 200  # the server itself works...
    for key in ("files", "download", "nbconvert", "terminal"):  # ...its side doors do not
        assert codes[key] in (403, 404), codes


@pytest.fixture()
def host_http_server() -> Iterator[int]:
    """A throw-away HTTP server on all host interfaces (the egress target)."""
    server = http.server.ThreadingHTTPServer(("0.0.0.0", 0), http.server.SimpleHTTPRequestHandler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()


def _gateway_ip(network: str) -> str:
    cfg = json.loads(run(["docker", "network", "inspect", network]).stdout)[0]["IPAM"]["Config"][0]
    return cfg.get("Gateway") or cfg["Subnet"].rsplit(".", 1)[0] + ".1"


def test_no_egress(stack: Stack, alice: dict, host_http_server: int) -> None:
    # The host, as seen from the stack's outside network, the default bridge and the internal
    # network's own (unassigned) gateway address: none may be reachable from a notebook.
    targets = [_gateway_ip(f"{stack.name}_outside"), _gateway_ip("bridge"),
               _gateway_ip(f"{stack.name}_internal"), _gateway_ip(f"{stack.name}-net-alice")]
    probe = textwrap.dedent(f"""
        import socket, urllib.request
        for ip in {targets!r}:
            try:
                urllib.request.urlopen(f"http://{{ip}}:{host_http_server}/", timeout=5)
                print("HTTP reached", ip)
            except Exception as e:
                print("HTTP blocked", ip, type(e).__name__)
        try:
            socket.getaddrinfo("deb.debian.org", 80)
            print("DNS resolved")
        except socket.gaierror as e:
            print("DNS blocked", e)
    """)
    # Positive control: a container on the stack's *outside* network reaches the host and
    # resolves the name, so the notebook's failures are its isolation, not a dead target.
    hub_image = run(["docker", "inspect", "-f", "{{.Config.Image}}",
                     stack.container("hub")]).stdout.strip()
    control = run(["docker", "run", "--rm", "-i", "--network", f"{stack.name}_outside",
                   "--entrypoint", "python3", hub_image, "-"], input=probe, timeout=60,
                  check=False).stdout
    out = stack.exec_nb("alice", probe + "\nprint('GATEWAY', socket.gethostbyname('gateway'))")
    out = out.stdout
    assert "HTTP reached" not in out, out
    assert out.count("HTTP blocked") == len(targets), out
    assert "DNS blocked" in out, out
    assert "GATEWAY " in out  # internal names still resolve
    assert f"HTTP reached {targets[0]}" in control, f"positive control failed: {control}"
    if "DNS resolved" not in control:
        pytest.skip(f"egress and DNS asserted; the DNS positive control had no resolver: {control}")


def test_proxy_api_unreachable_from_notebook(stack: Stack, alice: dict) -> None:
    """The proxy's REST API listens on the hub container's loopback only; the hub API answers."""
    out = stack.exec_nb("alice", textwrap.dedent("""
        import socket
        def opens(host, port):
            try:
                socket.create_connection((host, port), timeout=3).close()
                return True
            except OSError:
                return False
        print(opens("hub", 8001), opens("hub", 8081))
    """)).stdout.split()
    assert out[-2:] == ["False", "True"]


def test_kernel_token_limits(stack: Stack, alice: dict) -> None:
    kt = {"Authorization": f"token {alice['kernel_token']}"}
    # another grant: refused by the gateway
    out = stack.exec_nb("alice", textwrap.dedent(f"""
        import sandbox
        try:
            sandbox.connect().query({QUERY!r}, epsilon=0.1, grant={OTHER_GRANT!r})
            print("ALLOWED")
        except sandbox.client.GatewayError as e:
            print("REFUSED", e.status, e.code)
    """)).stdout
    assert "REFUSED 403" in out, out
    # the hub API beyond its own scopes
    assert requests.get(f"{stack.api}/users", headers=kt, timeout=30).status_code == 403
    assert requests.get(f"{stack.api}/users/bob", headers=kt, timeout=30).status_code in (403, 404)
    assert requests.post(f"{stack.api}/users/bob/server", headers=kt, timeout=30).status_code \
        in (403, 404)
    assert requests.post(f"{stack.api}/users/alice/tokens", headers=kt, json={},
                         timeout=30).status_code in (403, 404)
    assert requests.get(f"{stack.api}/groups", headers=kt, timeout=30).status_code == 403


def test_other_users_server_unreachable(stack: Stack, alice: dict) -> None:
    bob_token = stack.user_token("bob")
    stack.start_server("bob", bob_token)
    bob_ip = json.loads(run(["docker", "inspect", stack.notebook("bob")]).stdout)[0][
        "NetworkSettings"]["Networks"][f"{stack.name}-net-bob"]["IPAddress"]
    kt = {"Authorization": f"token {alice['kernel_token']}"}
    # through the proxy, with alice's kernel token and her own API token
    for headers in (kt, {"Authorization": f"token {alice['token']}"}):
        r = requests.get(f"{stack.url}/user/bob/api/contents", headers=headers, timeout=30,
                         allow_redirects=False)
        assert r.status_code in (302, 403, 404), r.status_code
    # directly from alice's container to bob's server: no connection at all (bob is on a
    # network of his own; tests/e2e/test_isolation.py has the positive controls)
    out = stack.exec_nb("alice", textwrap.dedent(f"""
        import os, urllib.request, urllib.error
        req = urllib.request.Request("http://{bob_ip}:8888/user/bob/api/contents",
            headers={{"Authorization": "token " + os.environ["JUPYTERHUB_API_TOKEN"]}})
        try:
            print("STATUS", urllib.request.urlopen(req, timeout=5).status)
        except urllib.error.HTTPError as e:
            print("STATUS", e.code)
        except OSError as e:
            print("NO CONNECTION", type(e).__name__)
    """)).stdout
    assert "NO CONNECTION" in out and "STATUS" not in out, out
    requests.delete(f"{stack.api}/users/bob/server",
                    headers={"Authorization": f"token {bob_token}"}, timeout=60)


def test_review_ui_through_hub_oauth(stack: Stack) -> None:
    """A reviewer's browser: hub login, OAuth to the gateway service, the review page."""
    s = requests.Session()
    r = s.get(f"{stack.url}/services/gateway/review/", timeout=30)
    assert "/hub/login" in r.url and "oauth2%2Fauthorize" in r.url
    r = s.post(r.url, data={"username": "carol", "password": stack.logins["carol"],
                            "_xsrf": s.cookies.get("_xsrf", "")}, timeout=30)
    assert r.status_code == 200 and r.url == f"{stack.url}/services/gateway/review/", r.url
    # without the cookie the gateway sends the browser back to the hub
    r = requests.get(f"{stack.url}/services/gateway/review/", timeout=30,
                     allow_redirects=False)
    assert r.status_code in (302, 303)


def test_user_without_grant_cannot_spawn(stack: Stack, alice: dict) -> None:
    r = stack.provisioner("POST", "/users/mallory")
    assert r.status_code in (201, 409), r.text
    r = stack.provisioner("POST", "/users/mallory/server")
    assert r.status_code >= 400, r.text
    assert "grant" in r.text
    ps = run(["docker", "ps", "-aq", "--filter", f"name=^{stack.notebook('mallory')}$"]).stdout
    assert ps.strip() == ""


def test_restart_keeps_home_and_starts(stack: Stack, alice: dict) -> None:
    """Stop and start again: the home volume persists and the server still comes up."""
    stack.exec_nb("alice", "open('/home/jovyan/kept.txt', 'w').write('kept')")
    headers = {"Authorization": f"token {alice['token']}"}
    r = requests.delete(f"{stack.api}/users/alice/server", headers=headers, timeout=60)
    assert r.status_code in (202, 204), r.text
    deadline = time.monotonic() + 60
    while requests.get(f"{stack.api}/users/alice", headers=headers,
                       timeout=30).json().get("pending") and time.monotonic() < deadline:
        time.sleep(0.25)
    stack.timings["respawn_ready_s"] = round(stack.start_server("alice", alice["token"]), 2)
    assert stack.exec_nb("alice", "print(open('/home/jovyan/kept.txt').read())").stdout.strip() \
        == "kept"


def test_suspending_grant_stops_servers(stack: Stack, alice: dict) -> None:
    out = stack.sandbox_cli("grants", "suspend", GRANT, "--reason", "e2e").stdout
    assert "stopped" in out or GRANT in out
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        ps = run(["docker", "ps", "-q", "--filter", f"name=^{stack.notebook('alice')}$"]).stdout
        if not ps.strip():
            break
        time.sleep(0.5)
    else:
        raise AssertionError("alice's server still running after the grant was suspended")
    # and she cannot start a new one while it is suspended
    r = requests.post(f"{stack.api}/users/alice/server",
                      headers={"Authorization": f"token {alice['token']}"}, timeout=60)
    assert r.status_code >= 400, r.text


def test_notebook_hours_are_metered(stack: Stack, alice: dict) -> None:
    """The hub reports starts and stops; the usage report turns them into notebook hours."""
    period = time.strftime("%Y-%m", time.gmtime())
    out = stack.sandbox_cli("usage", "report", "--period", period, "--format", "json").stdout
    row = next(g for g in json.loads(out) if g["grant"] == GRANT)
    assert row["notebook_hours"] > 0, row


def test_revoking_grant_mid_session(stack: Stack, alice: dict) -> None:
    """Revocation: the very next gateway call 403s, the server is stopped, spawning is refused."""
    stack.sandbox_cli("grants", "resume", GRANT)
    stack.start_server("alice", alice["token"])
    ok = stack.exec_nb("alice", f"import sandbox; print(len(sandbox.connect().query({QUERY!r}, epsilon=0.1)))")
    assert ok.stdout.strip().splitlines()[-1] == "2"
    # a token of alice's own that outlives her server, used through the hub's proxy
    r = requests.post(f"{stack.api}/users/alice/tokens",
                      headers={"Authorization": f"token {alice['token']}"},
                      json={"scopes": ["access:services!service=gateway"], "expires_in": 600}, timeout=30)
    assert r.status_code in (200, 201), r.text
    token = r.json()["token"]
    out = stack.sandbox_cli("grants", "revoke", GRANT, "--reason", "e2e: breach of purpose").stdout
    assert "revoked" in out
    r = requests.post(f"{stack.url}/services/gateway/v1/query",
                      json={"sql": QUERY, "epsilon": 0.2, "grant": GRANT},
                      headers={"Authorization": f"token {token}"}, timeout=30)
    assert r.status_code == 403 and r.json()["error"]["code"] == "grant_revoked", r.text
    deadline = time.monotonic() + 60
    while run(["docker", "ps", "-q", "--filter", f"name=^{stack.notebook('alice')}$"]).stdout.strip():
        assert time.monotonic() < deadline, "alice's server still running after revocation"
        time.sleep(0.5)
    r = requests.post(f"{stack.api}/users/alice/server",
                      headers={"Authorization": f"token {alice['token']}"}, timeout=60)
    assert r.status_code >= 400, r.text
    assert "final" in stack.sandbox_cli("grants", "resume", GRANT, check=False).stderr


def test_the_record_is_anchored_outside_the_state_volume(stack: Stack) -> None:
    """The gateway's keys are secrets of the gateway only; the log verifies, also against its checkpoints."""
    gateway = stack.container("gateway")
    in_state = run(["docker", "exec", gateway, "ls", "-a", "/state"]).stdout.split()
    assert not {"audit-mac.key", "checkpoint-signing.pem", "admin.token", "keys"} & set(in_state), in_state
    assert run(["docker", "exec", gateway, "ls", "/run/secrets"]).stdout.split() == \
        ["admin_token", "audit_mac_key", "checkpoint_signing_key"]
    hub = run(["docker", "exec", stack.container("hub"), "ls", "/run/secrets"], check=False)
    assert hub.returncode != 0 or not hub.stdout.strip()  # the hub holds none of them
    # the public checkpoints through the hub's proxy, without login
    doc = requests.get(f"{stack.url}/services/gateway/public/checkpoints.json", timeout=30).json()
    assert doc["algorithm"] == "Ed25519" and doc["checkpoints"] and doc["public_keys"]
    out = stack.sandbox_cli("audit", "verify", "--checkpoints",
                            "http://127.0.0.1:8080/services/gateway/public/checkpoints.json").stdout
    assert "audit log intact" in out and "the log agrees with every one" in out
    entries = [json.loads(line) for line in stack.sandbox_cli("audit", "export").stdout.splitlines()]
    actors = {e["actor"] for e in entries if e["action"].startswith("grant.")}
    # who the admin credential says, the gateway itself, or the early-warning monitor: never free text
    assert actors <= {"admin", "gateway:startup", "monitor"}, actors
    # the high-water mark is written beside, not inside, the read-only secrets, and follows the head
    mark = json.loads(run(["docker", "exec", gateway, "cat", "/mark/audit-mark.json"]).stdout)
    assert mark["seq"] >= max(e["seq"] for e in entries), (mark, len(entries))
    assert "audit-mark.json" not in in_state
