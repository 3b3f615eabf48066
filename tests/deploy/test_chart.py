"""The Helm chart (deploy/helm/tollgate): every values combination that matters renders,
validates against the Kubernetes schemas, passes the policy scanner except for the exceptions
the chart's README explains, asks for no privilege beyond the kernel side's three capabilities,
and carries an agent configuration that `tollgate validate` accepts."""

import json
import os
import pathlib
import subprocess
import sys

import kubernetes_validate
import pytest
import yaml

from conftest import CHART

KUBE_VERSION = "1.30.0"
DIGEST = "sha256:" + "ab" * 32
COMMON = [
    "--namespace", "tollgate",
    "--set", "secrets.adminToken=test-admin-token",
    "--set", f"image.digest={DIGEST}",
    "--set", f"dataDir.initImage=busybox@{DIGEST}",
]
COMBOS = {
    "default": [],
    "kernel-off": ["--set", "kernel.enabled=false"],
    "host-network-off": ["--set", "hostNetwork=false"],
    "kernel-off-host-network-off": ["--set", "kernel.enabled=false", "--set", "hostNetwork=false"],
    "cluster": [
        "--set", "config.cluster.redis=redis://redis.tollgate.svc:6379/0",
        "--set", "config.cluster.password_env=REDIS_PASSWORD",
        "--set", "secrets.providerKeys.REDIS_PASSWORD=redis-secret",
    ],
    "monitoring": [
        "--set", "serviceMonitor.enabled=true", "--set", "dashboard.enabled=true",
        "--set", "prometheusRule.enabled=true",
    ],
    "existing-secret-pvc": [
        "--set", "secrets.existingSecret=tollgate-keys",
        "--set", "dataDir.persistentVolumeClaim=tollgate-data",
        "--set", "kernel.enabled=false",
    ],
}
# Kinds whose schema is a CRD's, not Kubernetes': checked by hand below.
CRD_KINDS = {"ServiceMonitor", "PrometheusRule"}
KERNEL_CAPS = ["BPF", "NET_ADMIN", "PERFMON"]


def render(renderer, *args):
    r = subprocess.run([str(renderer), str(CHART), *COMMON, *args], capture_output=True, text=True)
    return r


def docs(renderer, combo):
    r = render(renderer, *COMBOS[combo])
    assert r.returncode == 0, r.stderr
    out = [d for d in yaml.safe_load_all(r.stdout) if d]
    assert out, "the chart rendered nothing"
    return out, r.stdout


def values_of(combo):
    args = COMBOS[combo]
    sets = dict(a.split("=", 1) for a in args[1::2])
    return {
        "kernel": sets.get("kernel.enabled", "true") == "true",
        "host_network": sets.get("hostNetwork", "true") == "true",
        "pvc": "dataDir.persistentVolumeClaim" in sets,
    }


def daemonset(objs):
    ds = [o for o in objs if o["kind"] == "DaemonSet"]
    assert len(ds) == 1
    return ds[0]


@pytest.mark.parametrize("combo", sorted(COMBOS))
def test_renders_and_validates_against_the_kubernetes_schemas(renderer, combo):
    objs, _ = docs(renderer, combo)
    kinds = sorted(o["kind"] for o in objs)
    for o in objs:
        assert o["metadata"]["namespace"] == "tollgate", o["metadata"]
        if o["kind"] in CRD_KINDS:
            assert o["apiVersion"] == "monitoring.coreos.com/v1"
            if o["kind"] == "ServiceMonitor":
                assert o["spec"]["endpoints"][0]["port"] == "admin"
            else:
                rules = [r for g in o["spec"]["groups"] for r in g["rules"]]
                assert {r["alert"] for r in rules} >= {
                    "TollgateBudgetBurnRateUSD", "TollgateBreakerOpen", "TollgateLedgerLag", "TollgateReplicaDown",
                }
                assert all(r["expr"].strip() for r in rules)
            continue
        # strict: a field Kubernetes does not know is an error, not silently dropped.
        kubernetes_validate.validate(o, KUBE_VERSION, strict=True)
    assert "DaemonSet" in kinds and "ConfigMap" in kinds
    if combo == "monitoring":
        assert {"ServiceMonitor", "Service", "PrometheusRule"} <= set(kinds)
        dash = [o for o in objs if o["kind"] == "ConfigMap" and o["metadata"]["name"].endswith("-dashboard")]
        panels = json.loads(dash[0]["data"]["tollgate.json"])["panels"]
        assert len(panels) >= 8
    assert ("Secret" in kinds) == (combo != "existing-secret-pvc")


@pytest.mark.parametrize("combo", sorted(COMBOS))
def test_least_privilege_and_operations(renderer, combo):
    objs, text = docs(renderer, combo)
    v = values_of(combo)
    assert "privileged: true" not in text
    ds = daemonset(objs)
    spec = ds["spec"]["template"]["spec"]
    assert spec["automountServiceAccountToken"] is False
    assert spec.get("hostNetwork", False) == v["host_network"]
    rolling = ds["spec"]["updateStrategy"]["rollingUpdate"]
    if v["host_network"]:
        # The new agent takes the kernel programs over before the old one drains.
        assert rolling == {"maxSurge": 1, "maxUnavailable": 0}
    else:
        assert rolling == {"maxUnavailable": 1}
    assert spec["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
    assert any(t["key"] == "nvidia.com/gpu" for t in spec["tolerations"])
    (c,) = spec["containers"]
    sc = c["securityContext"]
    assert sc["allowPrivilegeEscalation"] is False and sc["privileged"] is False
    assert sc["readOnlyRootFilesystem"] is True
    assert sc["capabilities"]["drop"] == ["ALL"]
    assert sorted(sc["capabilities"].get("add", [])) == (KERNEL_CAPS if v["kernel"] else [])
    if not v["kernel"]:
        assert sc["runAsNonRoot"] is True and sc["runAsUser"] != 0
    for probe, path in [("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")]:
        assert c[probe]["httpGet"] == {"path": path, "port": "admin"}
    assert c["resources"]["requests"]["memory"] and c["resources"]["limits"]["memory"]
    mounts = {m["name"]: m for m in c["volumeMounts"]}
    vols = {x["name"]: x for x in spec["volumes"]}
    assert mounts["data"]["mountPath"] == "/var/lib/tollgate"
    if v["pvc"]:
        assert vols["data"]["persistentVolumeClaim"]["claimName"] == "tollgate-data"
    else:
        assert vols["data"]["hostPath"]["path"] == "/var/lib/tollgate"
    assert ("bpffs" in mounts) == v["kernel"] and ("cgroup" in mounts) == v["kernel"]
    if v["kernel"]:
        assert vols["bpffs"]["hostPath"]["path"] == "/sys/fs/bpf"
        assert mounts["cgroup"]["readOnly"] is True
    ports = {p["name"]: p for p in c["ports"]}
    assert ("hostPort" in ports["http"]) == (not v["host_network"])
    # The config is mounted as a directory, not a subPath, so ConfigMap updates reach the agent.
    assert "subPath" not in mounts["config"]
    inits = spec.get("initContainers", [])
    if not v["kernel"] and not v["pvc"]:
        (init,) = inits
        assert init["securityContext"]["capabilities"] == {"drop": ["ALL"], "add": ["CHOWN"]}
    else:
        assert inits == []
    env = {e["name"]: e for e in c.get("env", [])}
    assert env["TOLLGATE_NODE_NAME"]["valueFrom"]["fieldRef"]["fieldPath"] == "spec.nodeName"


@pytest.mark.parametrize("combo", sorted(COMBOS))
def test_the_agent_accepts_the_rendered_configuration(renderer, tollgate_bin, tmp_path, combo):
    objs, _ = docs(renderer, combo)
    (cm,) = [o for o in objs if o["kind"] == "ConfigMap" and "tollgate.yaml" in o["data"]]
    path = tmp_path / "tollgate.yaml"
    path.write_text(cm["data"]["tollgate.yaml"])
    env = dict(os.environ, ADMIN_TOKEN="test-admin-token", REDIS_PASSWORD="x")
    r = subprocess.run([str(tollgate_bin), "validate", "--config", str(path)], capture_output=True, text=True, env=env)
    assert r.returncode == 0, r.stdout + r.stderr
    v = values_of(combo)
    assert f"kernel {'auto' if v['kernel'] else 'off'}" in r.stdout, r.stdout
    listen = "127.0.0.1:4000" if v["host_network"] else "0.0.0.0:4000"
    assert f"listen {listen}" in r.stdout, r.stdout


def test_a_template_that_cannot_render_fails(renderer, tmp_path):
    r = subprocess.run([str(renderer), str(CHART), "--namespace", "tollgate"], capture_output=True, text=True)
    assert r.returncode != 0
    assert "secrets.adminToken is required" in r.stderr
    broken = tmp_path / "chart"
    subprocess.run(["cp", "-r", str(CHART), str(broken)], check=True)
    (broken / "templates" / "broken.yaml").write_text("kind: {{ .Values.nope | nosuchfunction }}\n")
    r = render(renderer)
    assert r.returncode == 0, r.stderr
    r = subprocess.run([str(renderer), str(broken), *COMMON], capture_output=True, text=True)
    assert r.returncode != 0 and "nosuchfunction" in r.stderr, r.stderr


# Policy-scanner findings the chart accepts, each explained in deploy/helm/tollgate/README.md.
ACCEPTED_EVERYWHERE = {
    "CKV_K8S_15",  # pullPolicy IfNotPresent: the image is pinned by digest
    "CKV_K8S_35",  # provider keys as env vars: the agent reads api_key_env
}
ACCEPTED_KERNEL = {"CKV_K8S_23", "CKV_K8S_40", "CKV_K8S_25"}  # uid 0 with three capabilities
ACCEPTED_HOST_NETWORK = {"CKV_K8S_19"}  # interception redirects to a host-netns listener
ACCEPTED_HOST_PORT = {"CKV_K8S_26"}  # without hostNetwork, node-local clients use the hostPort
ACCEPTED_CHOWN_INIT = {"CKV_K8S_25"}  # the hostPath data dir handed to uid 65532
# Findings that must pass in every rendering: the least-privilege core.
REQUIRED_PASSING = {
    "CKV_K8S_16",  # not privileged
    "CKV_K8S_20",  # allowPrivilegeEscalation false
    "CKV_K8S_22",  # read-only root file system
    "CKV_K8S_28",  # NET_RAW dropped
    "CKV_K8S_37",  # capabilities dropped
    "CKV_K8S_8", "CKV_K8S_9",  # liveness and readiness probes
    "CKV_K8S_10", "CKV_K8S_11", "CKV_K8S_12", "CKV_K8S_13",  # requests and limits
    "CKV_K8S_17", "CKV_K8S_18",  # no host PID, no host IPC
    "CKV_K8S_21",  # not the default namespace
    "CKV_K8S_43",  # image by digest
    "CKV2_K8S_6",  # a NetworkPolicy
}


def test_policy_scanner(renderer, tmp_path):
    checkov = pathlib.Path(sys.executable).parent / "checkov"
    assert checkov.exists(), f"{checkov} is missing (tests/deploy/requirements.txt installs it)"
    for combo in COMBOS:
        _, text = docs(renderer, combo)
        (tmp_path / f"{combo}.yaml").write_text(text)
    r = subprocess.run(
        [str(checkov), "-d", str(tmp_path), "--framework", "kubernetes", "-o", "json", "--compact"],
        capture_output=True, text=True,
    )
    assert r.stdout.strip(), r.stderr
    report = json.loads(r.stdout)
    report = report if isinstance(report, list) else [report]
    failed, passed = {}, {}
    for part in report:
        for c in part["results"].get("failed_checks", []):
            failed.setdefault(pathlib.Path(c["file_path"]).stem, set()).add(c["check_id"])
        for c in part["results"].get("passed_checks", []):
            passed.setdefault(pathlib.Path(c["file_path"]).stem, set()).add(c["check_id"])
    for combo in COMBOS:
        v = values_of(combo)
        accepted = set(ACCEPTED_EVERYWHERE)
        accepted |= ACCEPTED_KERNEL if v["kernel"] else set()
        accepted |= ACCEPTED_HOST_NETWORK if v["host_network"] else ACCEPTED_HOST_PORT
        if not v["kernel"] and not v["pvc"]:
            accepted |= ACCEPTED_CHOWN_INIT
        unexpected = failed.get(combo, set()) - accepted
        assert not unexpected, f"{combo}: checkov findings the chart does not accept: {sorted(unexpected)}"
        missing = REQUIRED_PASSING - passed.get(combo, set())
        assert not missing, f"{combo}: checks that did not pass: {sorted(missing)}"
        if not v["kernel"]:
            assert {"CKV_K8S_23", "CKV_K8S_40"} <= passed.get(combo, set()), combo
