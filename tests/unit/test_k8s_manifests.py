"""deploy/k8s, offline: every manifest against the Kubernetes schemas, and what the
NetworkPolicies allow, evaluated with the API's rules (no cluster needed).

- Schemas: ``kubernetes-validate`` (the official OpenAPI schemas, strict: unknown fields are
  errors) for every object in the manifests and for the Kubernetes objects embedded in the
  zero-to-jupyterhub values (container security context, volumes, pod config).
- Policies: a small evaluator of NetworkPolicy semantics (a pod is isolated for a direction
  once any policy selects it; then a connection needs an allowing rule on *both* ends)
  shows that a notebook reaches only the hub and the gateway, never another notebook, the
  proxy, or anything outside, with positive controls for every allowed path.
- The chart's own values schema: checked when ``Z2JH_CHART`` names the unpacked chart
  (``helm pull jupyterhub/jupyterhub --untar``); the chart is not shipped here.
"""

from __future__ import annotations

import json
import os
import textwrap
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml

kv = pytest.importorskip("kubernetes_validate")

K8S = Path(__file__).resolve().parents[2] / "deploy" / "k8s"
VERSIONS = ["1.32.0", "1.37.0"]  # the chart's minimum and the newest bundled schemas
NAMESPACE = "sandbox"


def manifests() -> list[dict[str, Any]]:
    docs = []
    for path in sorted(K8S.glob("*.yaml")):
        if path.name in ("z2jh-values.yaml", "kustomization.yaml"):
            continue
        docs += [d for d in yaml.safe_load_all(path.read_text()) if d]
    return docs


def values() -> dict[str, Any]:
    return yaml.safe_load((K8S / "z2jh-values.yaml").read_text())


@pytest.mark.parametrize("version", VERSIONS)
def test_every_manifest_is_valid_kubernetes(version: str) -> None:
    docs = manifests()
    kinds = sorted(d["kind"] for d in docs)
    assert kinds == ["Deployment", *["NetworkPolicy"] * 5, *["PersistentVolumeClaim"] * 3,
                     "Secret", "Service", "ServiceAccount"]
    for doc in docs:
        kv.validate(doc, version, strict=True)


def test_the_validator_rejects_a_broken_manifest() -> None:
    """Negative control: the validation above can fail."""
    dep = next(d for d in manifests() if d["kind"] == "Deployment")
    broken = json.loads(json.dumps(dep))
    broken["spec"]["template"]["spec"]["containers"][0]["securityContext"]["readOnlyRootFS"] = True
    with pytest.raises(kv.ValidationError):
        kv.validate(broken, VERSIONS[-1], strict=True)
    broken = json.loads(json.dumps(dep))
    broken["spec"]["replicas"] = "one"
    with pytest.raises(kv.ValidationError):
        kv.validate(broken, VERSIONS[-1], strict=True)


def test_kustomization_lists_the_manifests_but_not_the_example_secret() -> None:
    kust = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    assert sorted(kust["resources"]) == ["gateway.yaml", "networkpolicies.yaml"]
    for res in kust["resources"]:
        assert (K8S / res).exists()


def test_gateway_deployment_state_on_a_claim_and_key_from_a_secret() -> None:
    docs = {(d["kind"], d["metadata"]["name"]): d for d in manifests()}
    dep = docs[("Deployment", "sandbox-gateway")]
    spec = dep["spec"]
    assert spec["replicas"] == 1 and spec["strategy"]["type"] == "Recreate"  # one SQLite writer
    pod = spec["template"]["spec"]
    vols = {v["name"]: v for v in pod["volumes"]}
    ctr = pod["containers"][0]
    mounts = {m["mountPath"]: m for m in ctr["volumeMounts"]}
    assert vols[mounts["/state"]["name"]]["persistentVolumeClaim"]["claimName"] == "sandbox-gateway-state"
    assert ("PersistentVolumeClaim", "sandbox-gateway-state") in docs
    assert mounts["/data"].get("readOnly") is True
    assert vols[mounts["/keys"]["name"]]["secret"]["secretName"] == "sandbox-gateway"
    assert mounts["/keys"].get("readOnly") is True
    env = {e["name"]: e for e in ctr["env"]}
    assert env["SANDBOX_AUDIT_KEY"]["value"].startswith("/keys/")
    assert env["SANDBOX_INTERNAL_TOKEN"]["valueFrom"]["secretKeyRef"]["name"] == "sandbox-gateway"
    # the audit key is not on the state volume
    assert not env["SANDBOX_AUDIT_KEY"]["value"].startswith(mounts["/state"]["mountPath"])
    # the high-water mark is writable, and on a claim of its own (not the state's, not the keys')
    assert env["SANDBOX_AUDIT_MARK"]["value"] == "/mark/audit-mark.json"
    assert vols[mounts["/mark"]["name"]]["persistentVolumeClaim"]["claimName"] == "sandbox-gateway-mark"
    assert not mounts["/mark"].get("readOnly")
    sc = ctr["securityContext"]
    assert sc["readOnlyRootFilesystem"] and sc["capabilities"]["drop"] == ["ALL"]
    assert sc["allowPrivilegeEscalation"] is False and pod["automountServiceAccountToken"] is False
    secret = docs[("Secret", "sandbox-gateway")]
    assert set(secret["stringData"]) == {"internal-token", "audit-mac.key", "checkpoint-signing.pem", "admin.token"}
    for name in ("SANDBOX_SIGNING_KEY", "SANDBOX_ADMIN_TOKEN_FILE"):  # the record's other keys: outside the state
        assert env[name]["value"].startswith("/keys/"), name


def _pod(containers_sc: dict[str, Any], values_: dict[str, Any]) -> dict[str, Any]:
    su = values_["singleuser"]
    return {
        "apiVersion": "v1", "kind": "Pod", "metadata": {"name": "jupyter-alice"},
        "spec": {
            **su["extraPodConfig"],
            "automountServiceAccountToken": values_["hub"]["config"]["KubeSpawner"][
                "automount_service_account_token"],
            "containers": [{
                "name": "notebook", "image": f"{su['image']['name']}:{su['image']['tag']}",
                "securityContext": containers_sc,
                "volumeMounts": su["storage"]["extraVolumeMounts"],
            }],
            "volumes": su["storage"]["extraVolumes"],
        },
    }


@pytest.mark.parametrize("version", VERSIONS)
def test_objects_embedded_in_the_values_are_valid(version: str) -> None:
    v = values()
    sc = v["hub"]["config"]["KubeSpawner"]["container_security_context"]
    kv.validate(_pod(sc, v), version, strict=True)
    assert sc["readOnlyRootFilesystem"] and sc["capabilities"]["drop"] == ["ALL"]
    assert sc["allowPrivilegeEscalation"] is False and sc["runAsNonRoot"] is True


def test_values_hardening_and_hooks() -> None:
    v = values()
    su = v["singleuser"]
    assert su["networkPolicy"]["enabled"] is False  # ours replaces it (it always allows the proxy)
    assert v["hub"]["networkPolicy"]["enabled"] is True
    assert su["storage"]["type"] == "dynamic" and su["storage"]["capacity"]
    assert su["cpu"]["limit"] and su["memory"]["limit"]
    assert v["hub"]["config"]["JupyterHub"]["admin_access"] is False
    assert v["hub"]["services"]["gateway"]["url"] == su["extraEnv"]["SANDBOX_GATEWAY_URL"]
    # the hook code compiles and installs both hooks
    code = v["hub"]["extraConfig"]["10-sandbox-grants"]
    compile(code, "10-sandbox-grants", "exec")
    assert "c.KubeSpawner.pre_spawn_hook = sandbox_pre_spawn" in code
    assert "c.KubeSpawner.post_stop_hook = sandbox_post_stop" in code


def test_grant_sizes_become_binary_quantities() -> None:
    code = values()["hub"]["extraConfig"]["10-sandbox-grants"]
    ns: dict[str, Any] = {}
    # only the pure helper, without the hub's environment
    helper = code[code.index("def _gib"):code.index("async def _sandbox_call")]
    exec(compile(textwrap.dedent(helper), "gib", "exec"), ns)  # noqa: S102 - our own file
    assert ns["_gib"]("10G") == "10Gi" and ns["_gib"]("512M") == "512Mi"


def _helm_merge(base: Any, over: Any) -> Any:
    """Helm's coalescing of user values over chart defaults (maps merge, the rest replaces)."""
    if isinstance(base, dict) and isinstance(over, dict):
        out = dict(base)
        for k, v in over.items():
            out[k] = _helm_merge(base.get(k), v) if k in base else v
        return out
    return over


@pytest.mark.skipif(not os.environ.get("Z2JH_CHART"),
                    reason="set Z2JH_CHART to the unpacked chart (helm pull jupyterhub/jupyterhub --untar)")
def test_values_against_the_charts_own_schema() -> None:
    """What `helm install` checks: chart defaults + our values against values.schema.json."""
    import jsonschema

    chart = Path(os.environ["Z2JH_CHART"])
    schema_file = next(p for p in (chart / "values.schema.json", chart / "values.schema.yaml") if p.exists())
    schema = yaml.safe_load(schema_file.read_text())  # JSON is YAML
    merged = _helm_merge(yaml.safe_load((chart / "values.yaml").read_text()), values())
    jsonschema.validate(merged, schema)
    # negative control: a misspelt key is refused by the chart's schema
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(_helm_merge(merged, {"singleuser": {"netwrokPolicy": {}}}), schema)


# ----------------------------------------------------------------------------------------
# NetworkPolicy semantics
# ----------------------------------------------------------------------------------------


@dataclass
class Pod:
    name: str
    labels: dict[str, str]
    namespace: str = NAMESPACE
    ns_labels: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.ns_labels = {"kubernetes.io/metadata.name": self.namespace, **self.ns_labels}


def _matches(selector: dict[str, Any] | None, labels: dict[str, str]) -> bool:
    if selector is None:
        return True
    assert set(selector) <= {"matchLabels", "matchExpressions"}, f"evaluator does not know {selector}"
    for expr in selector.get("matchExpressions") or []:
        assert expr["operator"] in ("In", "NotIn"), expr
        inside = labels.get(expr["key"]) in expr["values"]
        if inside != (expr["operator"] == "In"):
            return False
    return all(labels.get(k) == v for k, v in (selector.get("matchLabels") or {}).items())


def _peer_matches(peer: dict[str, Any], policy_ns: str, pod: Pod) -> bool:
    assert "ipBlock" not in peer, "evaluator does not model ipBlock"
    if "namespaceSelector" in peer:
        if not _matches(peer["namespaceSelector"], pod.ns_labels):
            return False
    elif pod.namespace != policy_ns:
        return False
    return _matches(peer.get("podSelector"), pod.labels)


def _rule_allows(rule: dict[str, Any], key: str, policy_ns: str, peer: Pod | None,
                 port: int, proto: str) -> bool:
    ports = rule.get("ports")
    if ports and not any(p.get("port") == port and p.get("protocol", "TCP") == proto for p in ports):
        return False
    peers = rule.get(key)
    if not peers:
        return True  # no from/to: every peer
    return peer is not None and any(_peer_matches(p, policy_ns, peer) for p in peers)


def _direction_allows(policies: list[dict[str, Any]], pod: Pod, direction: str, peer: Pod | None,
                      port: int, proto: str) -> bool:
    key, rules_key = ("from", "ingress") if direction == "Ingress" else ("to", "egress")
    selecting = [p for p in policies if pod.namespace == NAMESPACE
                 and _matches(p["spec"]["podSelector"] or None, pod.labels)
                 and direction in p["spec"]["policyTypes"]]
    if not selecting:
        return True  # not isolated in this direction
    return any(_rule_allows(r, key, NAMESPACE, peer, port, proto)
               for p in selecting for r in p["spec"].get(rules_key) or [])


def allowed(src: Pod, dst: Pod | None, port: int, proto: str = "TCP") -> bool:
    """``dst=None`` is an address outside the cluster."""
    policies = [d for d in manifests() if d["kind"] == "NetworkPolicy"]
    if not _direction_allows(policies, src, "Egress", dst, port, proto):
        return False
    return dst is None or _direction_allows(policies, dst, "Ingress", src, port, proto)


SINGLEUSER = {"component": "singleuser-server", "app": "jupyterhub",
              "hub.jupyter.org/network-access-hub": "true"}  # KubeSpawner's labels in z2jh
ALICE = Pod("jupyter-alice", SINGLEUSER)
BOB = Pod("jupyter-bob", SINGLEUSER)
HUB = Pod("hub", {"component": "hub", "app": "jupyterhub",
                  "hub.jupyter.org/network-access-singleuser": "true"})
PROXY = Pod("proxy", {"component": "proxy", "app": "jupyterhub",
                      "hub.jupyter.org/network-access-singleuser": "true"})
GATEWAY = Pod("sandbox-gateway", {"app.kubernetes.io/name": "sandbox-gateway",
                                  "hub.jupyter.org/network-access-hub": "true"})
DNS = Pod("coredns", {"k8s-app": "kube-dns"}, namespace="kube-system")
OTHER_NS = Pod("jupyter-mallory", SINGLEUSER, namespace="elsewhere")


def test_notebooks_reach_only_hub_gateway_and_dns() -> None:
    # positive controls: the paths a sandbox needs
    assert allowed(ALICE, GATEWAY, 8080)
    assert allowed(ALICE, HUB, 8081)
    assert allowed(ALICE, DNS, 53, "UDP") and allowed(ALICE, DNS, 53, "TCP")
    # and nothing else
    assert not allowed(ALICE, BOB, 8888)
    assert not allowed(BOB, ALICE, 8888)
    for port in (22, 80, 443, 8000, 8001, 8888):
        assert not allowed(ALICE, BOB, port)
    assert not allowed(ALICE, PROXY, 8000)  # the proxy would route to /user/bob/
    assert not allowed(ALICE, HUB, 8000) and not allowed(ALICE, GATEWAY, 8081)
    assert not allowed(ALICE, None, 443)  # no egress out of the cluster
    assert not allowed(ALICE, Pod("web", {}, namespace="elsewhere"), 80)
    assert not allowed(ALICE, Pod("coredns-impostor", {"k8s-app": "kube-dns"}), 53, "UDP")


def test_who_reaches_a_notebook() -> None:
    assert allowed(PROXY, ALICE, 8888)  # browser traffic
    assert allowed(HUB, ALICE, 8888)
    assert not allowed(GATEWAY, ALICE, 8888)
    assert not allowed(OTHER_NS, ALICE, 8888)
    assert not allowed(PROXY, ALICE, 22)


def test_gateway_paths() -> None:
    assert allowed(HUB, GATEWAY, 8080)  # spawn check
    assert allowed(PROXY, GATEWAY, 8080)  # review UI through /services/gateway/
    assert allowed(GATEWAY, HUB, 8081)  # HubAuth
    assert not allowed(GATEWAY, None, 443)  # the gateway has no egress either
    assert not allowed(GATEWAY, ALICE, 8888)
    assert not allowed(Pod("stray", {"app": "x"}), GATEWAY, 8080)
    assert allowed(PROXY, HUB, 8081)


def test_default_deny_is_fail_closed() -> None:
    """A notebook whose labels no allow-rule matches (e.g. a chart relabelling) gets nothing."""
    relabelled = Pod("jupyter-alice", {"app.kubernetes.io/component": "singleuser-server"})
    assert not allowed(relabelled, GATEWAY, 8080)
    assert not allowed(relabelled, BOB, 8888)
    assert not allowed(relabelled, None, 443)
