"""End to end: sandboxes cannot see each other, and each one is capped by its grant.

Runs before test_stack.py (file order) against the same stack; every server it starts is
stopped again. Probes go only between the stack's own containers.

- Network: alice and bob (members of the same grant) each sit on a network of their own to
  which only the gateway and the hub are attached. A TCP connect from alice's container to
  bob's server fails (and to every address of bob's subnet), while the same probe reaches
  the gateway (positive control) and the hub reaches bob's server (bob's server is up).
- Limits: frank's grant caps memory, CPU, processes and the home's size; the caps are in
  the container's cgroups, a fork loop stops at the pids cap, an allocation beyond memory is
  killed while a smaller one is not, and filling the home stops at the cap with ENOSPC
  while the host holds no more than the cap for it.
"""

from __future__ import annotations

import json
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from .conftest import Stack, run

pytestmark = pytest.mark.needs_docker

LIMITS_GRANT = "g-e2e-limits"
DISK_CAP = 64 * 1024**2
PIDS_CAP = 128
MEM_CAP = 512 * 1024**2
LIMITS_GRANT_YAML = textwrap.dedent(
    f"""\
    id: {LIMITS_GRANT}
    operator: Limits Test Ltd.
    members: [frank, grace]
    mode: scenario
    purpose: End-to-end test of resource limits
    datasets: {{nhanes_2017: {{columns: [sex, age]}}}}
    valid_from: 2026-01-01
    valid_until: 2027-12-31
    budget: {{epsilon: 1.0, delta: 1.0e-6}}
    max_epsilon_per_query: 0.5
    exports: {{reviewers_required: 2}}
    resources: {{cpu: 0.5, memory: 512M, pids: {PIDS_CAP}, disk: {{disk}}}}
    status: active
    use: public_welfare
    """
)

CONNECT = textwrap.dedent("""
    import json, socket, sys
    out = {}
    for host, port in json.loads(sys.argv[1]):
        try:
            socket.create_connection((host, port), timeout=2).close()
            out[f"{host}:{port}"] = "open"
        except OSError as e:
            out[f"{host}:{port}"] = type(e).__name__ + ":" + str(e.errno)
    print(json.dumps(out))
""")


def _connect(stack: Stack, container: str, targets: list[tuple[str, int]], user: str = "1000") -> dict:
    out = run(["docker", "exec", "-i", "-u", user, container, "python3", "-c", CONNECT,
               json.dumps(targets)], timeout=120).stdout
    return json.loads(out.strip().splitlines()[-1])


def _inspect(name: str) -> dict:
    return json.loads(run(["docker", "inspect", name]).stdout)[0]


def _net(stack: Stack, user: str) -> str:
    return f"{stack.name}-net-{user}"


def _wait_gone(stack: Stack, user: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while run(["docker", "ps", "-aq", "--filter", f"name=^{stack.notebook(user)}$"]).stdout.strip():
        assert time.monotonic() < deadline, f"{user}'s container still there"
        time.sleep(0.25)


def _stop(stack: Stack, user: str) -> None:
    stack.provisioner("DELETE", f"/users/{user}/server")
    deadline = time.monotonic() + 60
    while stack.provisioner("GET", f"/users/{user}").json().get("pending") and time.monotonic() < deadline:
        time.sleep(0.25)
    _wait_gone(stack, user)


def _start_as_provisioner(stack: Stack, user: str, timeout: float = 120) -> None:
    r = stack.provisioner("POST", f"/users/{user}/server")
    assert r.status_code in (201, 202), r.text
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        model = stack.provisioner("GET", f"/users/{user}").json()
        server = (model.get("servers") or {}).get("")
        if server and server.get("ready"):
            return
        if not model.get("pending") and not server:
            raise AssertionError(f"spawn of {user} failed: {model}")
        time.sleep(0.25)
    raise AssertionError(f"{user}'s server not ready in {timeout}s\n{stack.diagnose(user)}")


@pytest.fixture(scope="module")
def pair(stack: Stack) -> Iterator[dict]:
    """alice's and bob's servers running (same grant), stopped afterwards."""
    for user in ("alice", "bob"):
        stack.start_server(user, stack.user_token(user))
    try:
        yield {u: _inspect(stack.notebook(u)) for u in ("alice", "bob")}
    finally:
        for user in ("alice", "bob"):
            _stop(stack, user)


def test_each_notebook_has_a_network_of_its_own(stack: Stack, pair: dict) -> None:
    subnets = set()
    for user, info in pair.items():
        assert list(info["NetworkSettings"]["Networks"]) == [_net(stack, user)]
        net = json.loads(run(["docker", "network", "inspect", _net(stack, user)]).stdout)[0]
        assert net["Internal"] is True
        assert net["Options"].get("com.docker.network.bridge.inhibit_ipv4") == "true"
        names = sorted(c["Name"] for c in net["Containers"].values())
        gateway, hub = (_inspect(stack.container(s))["Name"].lstrip("/") for s in ("gateway", "hub"))
        assert names == sorted([stack.notebook(user), gateway, hub]), names
        subnet = net["IPAM"]["Config"][0]["Subnet"]
        assert subnet.startswith("10.213."), subnet
        subnets.add(subnet)
    assert len(subnets) == 2
    # nothing of a notebook is on the shared internal network any more
    internal = json.loads(run(["docker", "network", "inspect", f"{stack.name}_internal"]).stdout)[0]
    assert not any(c["Name"].startswith(f"{stack.name}-nb-") for c in internal["Containers"].values())


def test_no_connection_between_notebooks(stack: Stack, pair: dict) -> None:
    bob_ip = pair["bob"]["NetworkSettings"]["Networks"][_net(stack, "bob")]["IPAddress"]
    alice_ip = pair["alice"]["NetworkSettings"]["Networks"][_net(stack, "alice")]["IPAddress"]
    gw_on_alice = _inspect(stack.container("gateway"))["NetworkSettings"]["Networks"][
        _net(stack, "alice")]["IPAddress"]
    bob_net = json.loads(run(["docker", "network", "inspect", _net(stack, "bob")]).stdout)[0]
    bob_subnet_hosts = [ip for c in bob_net["Containers"].values()
                        for ip in [c["IPv4Address"].split("/")[0]]]
    # positive control 1: bob's server is up and accepts connections (from the hub, which is
    # on bob's network)
    hub_view = _connect(stack, stack.container("hub"), [(bob_ip, 8888)], user="0")
    assert hub_view[f"{bob_ip}:8888"] == "open", hub_view
    # from alice: bob's server (by IP), every container on bob's network (bob, and the
    # gateway's and hub's addresses there), on the server port and the gateway port
    targets = [(bob_ip, 8888)] + [(ip, port) for ip in bob_subnet_hosts for port in (8888, 8080, 8081)]
    # positive control 2: the same probe from alice reaches the gateway, by IP and by name
    controls = [(gw_on_alice, 8080), ("gateway", 8080), ("hub", 8081)]
    seen = _connect(stack, stack.notebook("alice"), targets + controls)
    for host, port in controls:
        assert seen[f"{host}:{port}"] == "open", seen
    blocked = {k: v for k, v in seen.items() if k not in {f"{h}:{p}" for h, p in controls}}
    assert blocked and all(v != "open" for v in blocked.values()), blocked
    # and the other way round
    back = _connect(stack, stack.notebook("bob"), [(alice_ip, 8888), ("gateway", 8080)])
    assert back[f"{alice_ip}:8888"] != "open" and back["gateway:8080"] == "open", back


def test_shared_services_do_not_route(stack: Stack, pair: dict) -> None:
    """The gateway and the hub sit on every user's network: they must not forward packets."""
    for service in ("gateway", "hub"):
        value = run(["docker", "exec", stack.container(service), "cat",
                     "/proc/sys/net/ipv4/ip_forward"]).stdout.strip()
        assert value == "0", (service, value)


def test_public_proxy_port_not_on_notebook_networks(stack: Stack, pair: dict) -> None:
    """The proxy (port 8000) would route alice to /user/bob/: it listens on `outside` only."""
    seen = _connect(stack, stack.notebook("alice"), [("hub", 8000), ("hub", 8081)])
    assert seen["hub:8000"] != "open" and seen["hub:8081"] == "open", seen
    # positive control: the published port answers from the host
    assert requests.get(f"{stack.url}/hub/api/", timeout=30).status_code == 200


def test_only_the_gateway_and_hub_api_ports_are_open(stack: Stack, pair: dict) -> None:
    """Every TCP port of the two shared containers, as alice sees them on her network."""
    out = stack.exec_nb("alice", textwrap.dedent("""
        import json, socket
        found = {}
        for host in ("gateway", "hub"):
            ip = socket.gethostbyname(host)
            found[host] = [p for p in range(1, 65536)
                           if socket.socket().connect_ex((ip, p)) == 0]
        print(json.dumps(found))
    """), timeout=600).stdout
    found = json.loads(out.strip().splitlines()[-1])
    assert found == {"gateway": [8080], "hub": [8081]}, found  # positive controls included


def test_network_and_home_released_when_server_stops(stack: Stack, pair: dict) -> None:
    stack.exec_nb("bob", "open('/home/jovyan/bob.txt', 'w').write('kept')")
    _stop(stack, "bob")
    nets = run(["docker", "network", "ls", "-q", "--filter", f"name=^{_net(stack, 'bob')}$"]).stdout
    assert nets.strip() == "", "bob's network outlived his server"
    vols = run(["docker", "volume", "ls", "-q", "--filter", f"name=^{stack.name}-home-bob$"]).stdout
    assert vols.strip() == "", "bob's home mount recipe outlived his server"
    stack.start_server("bob", stack.user_token("bob"))
    assert stack.exec_nb("bob", "print(open('/home/jovyan/bob.txt').read())").stdout.strip() == "kept"


def _apply_limits(stack: Stack, disk: str) -> None:
    run(["docker", "exec", "-i", stack.container("gateway"), "sh", "-c",
         f"cat > /tmp/{LIMITS_GRANT}.yaml"], input=LIMITS_GRANT_YAML.replace("{disk}", disk))
    stack.sandbox_cli("grants", "apply", f"/tmp/{LIMITS_GRANT}.yaml")


@pytest.fixture(scope="module")
def frank(stack: Stack) -> Iterator[dict]:
    """frank's server under a grant with small caps."""
    _apply_limits(stack, "64M")
    _start_as_provisioner(stack, "frank")
    # Left running on purpose: the session's teardown (conftest.py) then shows that
    # `scripts/stack down -v` removes a live user's container, network and loop device too.
    yield _inspect(stack.notebook("frank"))


def test_limits_from_the_grant_in_the_cgroups(stack: Stack, frank: dict) -> None:
    host = frank["HostConfig"]
    assert host["PidsLimit"] == PIDS_CAP
    assert host["Memory"] == MEM_CAP and host["MemorySwap"] == MEM_CAP
    assert host["CpuQuota"] == host["CpuPeriod"] // 2
    # what the kernel enforces, read from inside the container (cgroup v1 and v2 paths)
    out = stack.exec_nb("frank", textwrap.dedent("""
        import json, os
        def first(*paths):
            for p in paths:
                if os.path.exists(p):
                    return open(p).read().strip()
        print(json.dumps({
            "pids": first("/sys/fs/cgroup/pids/pids.max", "/sys/fs/cgroup/pids.max"),
            "mem": first("/sys/fs/cgroup/memory/memory.limit_in_bytes", "/sys/fs/cgroup/memory.max"),
            "cpu": first("/sys/fs/cgroup/cpu/cpu.cfs_quota_us", "/sys/fs/cgroup/cpu.max"),
        }))
    """)).stdout
    seen = json.loads(out.strip().splitlines()[-1])
    assert seen["pids"] == str(PIDS_CAP), seen
    assert seen["mem"] == str(MEM_CAP), seen
    assert seen["cpu"].split()[0] == str(host["CpuQuota"]), seen


def test_fork_loop_stops_at_the_pids_cap(stack: Stack, frank: dict) -> None:
    out = stack.exec_nb("frank", textwrap.dedent(f"""
        import errno, json, subprocess
        procs, error = [], None
        for _ in range({PIDS_CAP} + 64):
            try:
                procs.append(subprocess.Popen(["sleep", "60"]))
            except OSError as e:
                error = errno.errorcode.get(e.errno, str(e.errno))
                break
        started = len(procs)
        for p in procs:
            p.kill()
            p.wait()
        print(json.dumps({{"started": started, "error": error}}))
    """)).stdout
    seen = json.loads(out.strip().splitlines()[-1])
    # the server and kernel threads count too, so fewer than the cap start; but many do
    assert seen["error"] == "EAGAIN", seen
    assert PIDS_CAP // 4 < seen["started"] < PIDS_CAP, seen


def test_memory_beyond_the_cap_is_killed(stack: Stack, frank: dict) -> None:
    alloc = "b = bytearray({n}); b[::4096] = b'x' * len(b[::4096]); print('ALLOCATED')"
    small = stack.exec_nb("frank", alloc.format(n=128 * 1024**2), check=False)
    assert "ALLOCATED" in small.stdout, small.stderr  # positive control
    big = stack.exec_nb("frank", alloc.format(n=MEM_CAP + 256 * 1024**2), check=False)
    assert "ALLOCATED" not in big.stdout
    assert big.returncode in (137, -9), (big.returncode, big.stderr[-500:])
    # the server itself survived its kernel's allocation
    assert _inspect(stack.notebook("frank"))["State"]["Running"] is True


def test_filling_the_home_stops_at_the_cap(stack: Stack, frank: dict) -> None:
    out = stack.exec_nb("frank", textwrap.dedent(f"""
        import errno, json, os
        written, error, message = 0, None, None
        chunk = os.urandom(1024 * 1024)
        try:
            with open("/home/jovyan/fill.bin", "wb") as f:
                for _ in range({2 * DISK_CAP} // len(chunk)):
                    f.write(chunk)
                    f.flush()
                    os.fsync(f.fileno())
                    written += len(chunk)
        except OSError as e:
            error, message = errno.errorcode.get(e.errno), e.strerror
        st = os.statvfs("/home/jovyan")
        os.remove("/home/jovyan/fill.bin")
        with open("/home/jovyan/after.txt", "w") as f:  # the home still works afterwards
            f.write("ok")
        print(json.dumps({{"written": written, "error": error, "message": message,
                          "size": st.f_blocks * st.f_frsize}}))
    """), timeout=300).stdout
    seen = json.loads(out.strip().splitlines()[-1])
    assert seen["error"] == "ENOSPC" and seen["message"] == "No space left on device", seen
    assert DISK_CAP // 2 < seen["written"] <= DISK_CAP, seen
    assert seen["size"] <= DISK_CAP, seen
    # the host holds at most the cap for frank's home (the image is sparse and capped)
    du = run(["docker", "run", "--rm", "--network", "none", "-v", f"{stack.name}-home-images:/images:ro",
              "--entrypoint", "sh", "trusted-sandbox/hub:latest", "-c",
              "stat -c '%s %b %B' /images/frank.ext4"]).stdout.split()
    apparent, blocks, block_size = (int(x) for x in du)
    assert apparent == DISK_CAP and blocks * block_size <= DISK_CAP, du
    assert stack.exec_nb("frank", "print(open('/home/jovyan/after.txt').read())").stdout.strip() == "ok"


def test_container_log_is_capped(stack: Stack, frank: dict) -> None:
    """A kernel writing to the container's stdout cannot fill the host: 3 x 10 MB of log."""
    host = frank["HostConfig"]
    assert host["LogConfig"] == {"Type": "json-file", "Config": {"max-size": "10m", "max-file": "3"}}
    log_path = Path(frank["LogPath"])
    try:
        log_path.stat()
    except PermissionError:
        pytest.skip("the engine's log files are not readable by this user (run as root)")
    stack.exec_nb("frank", textwrap.dedent("""
        line = b"x" * 1023 + b"\\n"
        with open("/proc/1/fd/1", "wb", buffering=0) as out:
            for _ in range(60 * 1024):  # 60 MB
                out.write(line)
    """), timeout=300)
    time.sleep(1)
    logs = list(log_path.parent.glob(log_path.name + "*"))
    total = sum(p.stat().st_size for p in logs)
    # json-file wraps each line (~1.1 kB per 1 kB line): written ~66 MB, kept at most ~30 MB
    assert 10 * 1024**2 < total <= 31 * 1024**2, (total, [p.name for p in logs])


def _home_df(stack: Stack, user: str) -> int:
    out = stack.exec_nb(user, "import os; st = os.statvfs('/home/jovyan'); print(st.f_blocks * st.f_frsize)")
    return int(out.stdout.strip().splitlines()[-1])


def test_raising_the_disk_cap_grows_the_home(stack: Stack, frank: dict) -> None:
    """Runs after the limit tests: frank's grant goes from 64M to 96M; files are kept."""
    stack.exec_nb("frank", "open('/home/jovyan/keep.txt', 'w').write('kept')")
    before = _home_df(stack, "frank")
    _stop(stack, "frank")
    _apply_limits(stack, "96M")
    _start_as_provisioner(stack, "frank")
    after = _home_df(stack, "frank")
    assert before <= DISK_CAP < after <= 96 * 1024**2, (before, after)
    assert stack.exec_nb("frank", "print(open('/home/jovyan/keep.txt').read())").stdout.strip() == "kept"


def test_a_plain_home_volume_moves_into_a_capped_image(stack: Stack, frank: dict) -> None:
    """A home from before the size caps (a plain named volume) keeps its files."""
    vol = f"{stack.name}-home-grace"
    run(["docker", "volume", "create", vol])
    run(["docker", "run", "--rm", "--network", "none", "--user", "1000:1000", "-v", f"{vol}:/home/jovyan",
         "--entrypoint", "sh", "trusted-sandbox/notebook:latest", "-c",  # as a first spawn made it
         "mkdir -p /home/jovyan/work && echo old-notes > /home/jovyan/work/notes.txt"])
    _start_as_provisioner(stack, "grace")
    try:
        home = json.loads(run(["docker", "volume", "inspect", vol]).stdout)[0]
        assert home["Options"]["type"] == "ext4" and home["Options"]["device"].startswith("/dev/loop")
        out = stack.exec_nb("grace", "print(open('/home/jovyan/work/notes.txt').read())").stdout
        assert out.strip() == "old-notes"
        assert _home_df(stack, "grace") <= 96 * 1024**2  # now under the grant's cap
    finally:
        _stop(stack, "grace")
