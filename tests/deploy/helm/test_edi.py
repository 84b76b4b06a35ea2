"""The EDI service in the chart (edi.enabled; templates/edi.yaml): off by default, then one pod, never two, with its
partners' ConfigMap, the partner folders on a claim, the SFTP door's own Service and host key, and a NetworkPolicy
that admits partners' SFTP from their addresses only and lets the pod reach tender, mission, billing, the store and
DNS only. The rendered environment is read by the service's own config and starts the real service.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import os
import re
import signal
import socket
import sys
import time
import tomllib
import urllib.request
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from services.edi.config import EdiConfig
from services.edi.sftp import SftpLimits
from services.runtime import ServiceConfig, check_health, free_port

from .conftest import ALL_ON, CHART, NAMESPACE, RELEASE, REPO, SERVICES, ChartRenderer, Rendered, helm
from .test_chart import CALLERS, EDI_CALLS, KUBE_VERSION, _grpc_callers
from .test_pod_environment import _pod_environment

EDI = f"{RELEASE}-edi"
#: The service's own default gRPC port (services/runtime OPTIONAL_PORTS).
EDI_PORT = ServiceConfig.from_env("edi", {}).port
EXAMPLE = (REPO / "services" / "edi" / "partners.example.toml").read_text()
#: The smallest value set that runs the service with its SFTP door (inside the cluster only).
ON: dict[str, Any] = {"edi": {"enabled": True, "partners": EXAMPLE, "sftp": {"hostKeySecret": "edi-host-key"}}}
#: The variables the chart sets for edi (brief W2; services/edi/config.py and the SFTP door's wiring).
EDI_VARIABLES = {"HAULMESH_EDI_PARTNERS_FILE", "HAULMESH_EDI_ROOT", "HAULMESH_EDI_ARCHIVE_URL",
                 "HAULMESH_EDI_POLL_SECONDS", "HAULMESH_EDI_FILES_PER_POLL", "HAULMESH_EDI_DUPLICATE_DAYS",
                 "HAULMESH_EDI_SFTP_PORT", "HAULMESH_EDI_SFTP_HOST_KEY_FILE", "HAULMESH_EDI_SFTP_BIND_HOST",
                 "HAULMESH_EDI_SFTP_MAX_CONNECTIONS", "HAULMESH_EDI_SFTP_MAX_FILE_BYTES"}


def _with(**edi: Any) -> dict[str, Any]:
    values = copy.deepcopy(ON)
    values["edi"].update(edi)
    return values


def _edi_objects(rendered: Rendered) -> list[dict[str, Any]]:
    return [o for o in rendered.objects
            if o["metadata"].get("labels", {}).get("app.kubernetes.io/component") == "edi"]


def _volumes(rendered: Rendered) -> dict[str, dict[str, Any]]:
    return {v["name"]: v for v in rendered.deployment("edi")["spec"]["template"]["spec"]["volumes"]}


def _mounts(rendered: Rendered) -> dict[str, dict[str, Any]]:
    return {m["name"]: m for m in rendered.container("edi")["volumeMounts"]}


def _values(rendered: Rendered) -> dict[str, str]:
    return {k: v["value"] for k, v in rendered.env("edi").items() if "value" in v}


def _host_key(path: Path) -> Path:
    """An OpenSSH Ed25519 private key at ``path``, mode 0400 (the chart's defaultMode)."""
    path.write_bytes(Ed25519PrivateKey.generate().private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH, serialization.NoEncryption()))
    path.chmod(0o400)
    return path


def _read_config(rendered: Rendered, tmp_path: Path) -> EdiConfig:
    """EdiConfig from the rendered env, with the pod's mounted files (partners, host key) placed under tmp_path."""
    env = _values(rendered)
    if "HAULMESH_EDI_PARTNERS_FILE" in env:
        partners = tmp_path / "partners.toml"
        partners.write_text(rendered.get("ConfigMap", f"{EDI}-partners")["data"]["partners.toml"])
        env["HAULMESH_EDI_PARTNERS_FILE"] = str(partners)
    if "HAULMESH_EDI_SFTP_HOST_KEY_FILE" in env:
        key = tmp_path / "ssh_host_key"
        env["HAULMESH_EDI_SFTP_HOST_KEY_FILE"] = str(key if key.exists() else _host_key(key))
    return EdiConfig.from_env(env)


def _validate(rendered: Rendered) -> None:
    for obj in _edi_objects(rendered):
        kubernetes_validate.validate(obj, KUBE_VERSION, strict=True)


# --- off by default -------------------------------------------------------------------------------------------

def test_edi_is_off_by_default(chart: ChartRenderer) -> None:
    rendered = chart.render({"certManager": {"enabled": True}, "prometheusRule": {"enabled": True},
                             "serviceMonitor": {"enabled": True}})
    assert _edi_objects(rendered) == []
    assert not [o for o in rendered.objects if o["metadata"]["name"].startswith(EDI)]
    for name in SERVICES:
        assert not {k for k in rendered.env(name) if k.startswith("HAULMESH_EDI_")}, name
        callers, _ = _grpc_callers(rendered.get("NetworkPolicy", f"{RELEASE}-{name}"))
        assert callers == CALLERS[name], name
    (store_rule,) = rendered.get("NetworkPolicy", f"{RELEASE}-valkey")["spec"]["ingress"]
    assert "edi" not in {p["podSelector"]["matchLabels"]["app.kubernetes.io/component"] for p in store_rule["from"]}
    (rule,) = rendered.of_kind("PrometheusRule")
    assert "haulmesh-edi-alerts" not in [g["name"] for g in rule["spec"]["groups"]]
    (monitor,) = rendered.of_kind("ServiceMonitor")
    assert "edi" not in monitor["spec"]["selector"]["matchExpressions"][0]["values"]
    assert "EDI" not in rendered.notes


# --- on: the objects ----------------------------------------------------------------------------------------

def test_one_pod_never_two(chart: ChartRenderer) -> None:
    deployment = chart.render(ON).deployment("edi")
    assert deployment["spec"]["replicas"] == 1
    # Recreate: the old pod is gone before the new one starts (the poller and the door share one RWO volume).
    assert deployment["spec"]["strategy"] == {"type": "Recreate"}
    # No autoscaler or replica count can be set: the schema has no such key.
    with pytest.raises(helm.HelmValuesError, match="additional properties 'replicas' not allowed"):
        chart.render(_with(replicas=2))
    assert not [h for h in chart.render(ALL_ON).of_kind("HorizontalPodAutoscaler")
                if h["spec"]["scaleTargetRef"]["name"] == EDI]


def test_the_pod_is_the_services_hardened_pod(chart: ChartRenderer) -> None:
    rendered = chart.render(ON)
    edi, tender = rendered.deployment("edi")["spec"]["template"]["spec"], rendered.deployment("tender")["spec"][
        "template"]["spec"]
    assert edi["securityContext"] == tender["securityContext"]
    assert edi["automountServiceAccountToken"] is False
    container = rendered.container("edi")
    assert container["command"] == ["python", "-m", "services.edi"]
    assert container["securityContext"] == rendered.container("tender")["securityContext"]
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert container["securityContext"]["capabilities"] == {"drop": ["ALL"]}
    assert container["resources"]["requests"] and container["resources"]["limits"]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"grpc": EDI_PORT, "health": 9465, "metrics": 9464, "sftp": 2222}
    # Native gRPC probes on the plain-text health port; edi serves no gRPC API of its own: the server's status.
    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
        assert container[probe]["grpc"]["port"] == ports["health"], probe
    assert container["readinessProbe"]["grpc"]["service"] == ""
    # The store user of its own (the ACL file's "edi" user) and the mTLS Secret named like the others'.
    assert rendered.env("edi")["REDIS_URL"]["valueFrom"]["secretKeyRef"] == {"name": f"{RELEASE}-redis",
                                                                            "key": "url-edi"}
    assert _volumes(rendered)["tls"]["secret"]["secretName"] == f"{EDI}-tls"
    assert rendered.get("Service", EDI)["spec"]["type"] == "ClusterIP"
    assert {p["name"] for p in rendered.get("Service", EDI)["spec"]["ports"]} == {"grpc", "metrics"}


def test_its_certificate_is_its_spiffe_id(chart: ChartRenderer) -> None:
    rendered = chart.render({**ON, "certManager": {"enabled": True}})
    certificate = rendered.get("Certificate", EDI)
    assert certificate["spec"]["uris"] == ["spiffe://haulmesh.local/service/edi"]
    assert certificate["spec"]["secretName"] == _volumes(rendered)["tls"]["secret"]["secretName"]
    assert EDI in certificate["spec"]["dnsNames"]
    own = chart.render(_with(tlsSecretName="edi-from-haulmesh-pki"))
    assert own.of_kind("Certificate") == []
    assert _volumes(own)["tls"]["secret"]["secretName"] == "edi-from-haulmesh-pki"


def test_partners_config_map_volume_and_host_key(chart: ChartRenderer) -> None:
    rendered = chart.render(ON)
    config_map = rendered.get("ConfigMap", f"{EDI}-partners")
    assert tomllib.loads(config_map["data"]["partners.toml"]) == tomllib.loads(EXAMPLE)
    annotations = rendered.deployment("edi")["spec"]["template"]["metadata"]["annotations"]
    changed = chart.render(_with(partners=EXAMPLE + "\n# one more line\n"))
    assert annotations["checksum/edi-partners"] != \
        changed.deployment("edi")["spec"]["template"]["metadata"]["annotations"]["checksum/edi-partners"]
    volumes, mounts, env = _volumes(rendered), _mounts(rendered), _values(rendered)
    assert volumes["edi-partners"]["configMap"]["name"] == f"{EDI}-partners"
    assert env["HAULMESH_EDI_PARTNERS_FILE"] == f"{mounts['edi-partners']['mountPath']}/partners.toml"
    # The partner folders and the local archive on the claim, which outlives an uninstall.
    claim = rendered.get("PersistentVolumeClaim", EDI)
    assert claim["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"
    assert claim["spec"]["accessModes"] == ["ReadWriteOnce"]
    assert claim["spec"]["resources"]["requests"]["storage"] == "10Gi"
    assert volumes["edi-data"]["persistentVolumeClaim"]["claimName"] == EDI
    data = mounts["edi-data"]["mountPath"]
    assert env["HAULMESH_EDI_ROOT"].startswith(data + "/") and env["HAULMESH_EDI_ARCHIVE_URL"].startswith(data + "/")
    # The host key: the operator's Secret, key ssh_host_key, 0400, mounted whole-directory and read-only.
    secret = volumes["edi-sftp-host-key"]["secret"]
    assert secret == {"secretName": "edi-host-key", "defaultMode": 0o400,
                      "items": [{"key": "ssh_host_key", "path": "ssh_host_key"}]}
    assert mounts["edi-sftp-host-key"]["readOnly"] is True
    assert env["HAULMESH_EDI_SFTP_HOST_KEY_FILE"] == f"{mounts['edi-sftp-host-key']['mountPath']}/ssh_host_key"
    assert not [s for s in rendered.of_kind("Secret") if "host" in s["metadata"]["name"]], "the chart makes no key"
    assert not any("subPath" in m for m in mounts.values())


def test_existing_config_map_and_claim(chart: ChartRenderer) -> None:
    values = _with(partners="", existingPartnersConfigMap="tms-partners",
                   persistence={"size": "50Gi", "accessMode": "ReadWriteOncePod", "existingClaim": "edi-folders"})
    rendered = chart.render(values)
    assert not [c for c in rendered.of_kind("ConfigMap") if c["metadata"]["name"] == f"{EDI}-partners"]
    assert not [c for c in rendered.of_kind("PersistentVolumeClaim") if c["metadata"]["name"] == EDI]
    volumes = _volumes(rendered)
    assert volumes["edi-partners"]["configMap"]["name"] == "tms-partners"
    assert volumes["edi-data"]["persistentVolumeClaim"]["claimName"] == "edi-folders"
    assert "checksum/edi-partners" not in rendered.deployment("edi")["spec"]["template"]["metadata"]["annotations"]
    pod = chart.render(_with(persistence={"size": "5Gi", "accessMode": "ReadWriteOncePod", "storageClass": "ssd"}))
    claim = pod.get("PersistentVolumeClaim", EDI)["spec"]
    assert (claim["accessModes"], claim["storageClassName"]) == (["ReadWriteOncePod"], "ssd")
    # No partners at all: the service runs and reads nothing (its log says so); NOTES says so too.
    bare = chart.render(_with(partners=""))
    assert "HAULMESH_EDI_PARTNERS_FILE" not in bare.env("edi") and "edi-partners" not in _volumes(bare)
    assert "no trading partner" in bare.notes


def test_the_sftp_service_is_its_own(chart: ChartRenderer) -> None:
    rendered = chart.render(ALL_ON)
    sftp = rendered.get("Service", f"{EDI}-sftp")
    assert sftp["spec"]["type"] == "LoadBalancer"
    assert sftp["spec"]["ports"] == [{"name": "sftp", "port": 22, "targetPort": "sftp", "protocol": "TCP"}]
    # The partner's own address reaches the pod (the NetworkPolicy's ipBlock, the door's log of refused logins).
    assert sftp["spec"]["externalTrafficPolicy"] == "Local"
    assert sftp["spec"]["loadBalancerSourceRanges"] == ALL_ON["edi"]["sftp"]["allowedCidrs"]
    assert sftp["metadata"]["annotations"] == {"example.com/lb": "internet-facing"}
    assert sftp["spec"]["selector"] == rendered.deployment("edi")["spec"]["selector"]["matchLabels"]
    # Partners deliver while the pod is NOT_SERVING (the store away): the door does not need the store.
    assert sftp["spec"]["publishNotReadyAddresses"] is True
    node_port = chart.render(_with(sftp={"hostKeySecret": "k", "allowedCidrs": ["198.51.100.7/32"],
                                         "service": {"type": "NodePort", "port": 2022, "nodePort": 30022,
                                                     "loadBalancerSourceRanges": ["10.0.0.0/8"]}}))
    _validate(node_port)
    spec = node_port.get("Service", f"{EDI}-sftp")["spec"]
    assert spec["ports"][0]["port"] == 2022 and spec["ports"][0]["nodePort"] == 30022
    assert "loadBalancerSourceRanges" not in spec  # a LoadBalancer's only
    inside = chart.render(ON).get("Service", f"{EDI}-sftp")["spec"]
    assert inside["type"] == "ClusterIP" and "externalTrafficPolicy" not in inside


def test_the_door_can_be_closed(chart: ChartRenderer) -> None:
    rendered = chart.render(_with(sftp={"enabled": False, "service": {"type": "LoadBalancer", "port": 22}}))
    _validate(rendered)
    assert not [s for s in rendered.of_kind("Service") if s["metadata"]["name"] == f"{EDI}-sftp"]
    env = _values(rendered)
    assert env["HAULMESH_EDI_SFTP_PORT"] == "0"
    assert not {k for k in env if k.startswith("HAULMESH_EDI_SFTP_") and k != "HAULMESH_EDI_SFTP_PORT"}
    assert "sftp" not in {p["name"] for p in rendered.container("edi")["ports"]}
    assert "edi-sftp-host-key" not in _volumes(rendered)
    policy = rendered.get("NetworkPolicy", EDI)
    assert "sftp" not in {p["port"] for rule in policy["spec"]["ingress"] for p in rule["ports"]}
    assert "folder mode only" in rendered.notes


# --- the environment is what the service reads ---------------------------------------------------------------

def test_the_rendered_environment_is_read_by_the_service(chart: ChartRenderer, tmp_path: Path) -> None:
    rendered = chart.render(ON)
    env = _values(rendered)
    assert EDI_VARIABLES <= set(env)
    names = [e["name"] for e in rendered.container("edi")["env"]]
    assert len(names) == len(set(names)), "duplicate env entries"
    # Only the peers it calls.
    assert {k for k in env if k.endswith("_ADDR")} == {f"HAULMESH_{p.upper()}_ADDR" for p in EDI_CALLS}
    assert env["HAULMESH_PORT"] == str(EDI_PORT)
    assert env["HAULMESH_EDI_SFTP_PORT"] == "2222" and env["HAULMESH_EDI_SFTP_BIND_HOST"] == "0.0.0.0"
    # Defaults: the code's own.
    values = yaml.safe_load((CHART / "values.yaml").read_text())["edi"]
    limits = SftpLimits()
    assert int(env["HAULMESH_EDI_SFTP_MAX_CONNECTIONS"]) == values["sftp"]["maxConnections"] == limits.max_connections
    assert int(env["HAULMESH_EDI_SFTP_MAX_FILE_BYTES"]) == values["sftp"]["maxFileBytes"] == limits.max_file_bytes
    default = EdiConfig()
    config = _read_config(rendered, tmp_path)
    assert (config.sftp.port, config.sftp.bind_host, config.sftp.generate_host_key) == (2222, "0.0.0.0", False)
    assert (config.sftp.max_connections, config.sftp.max_file_bytes) == (limits.max_connections,
                                                                         limits.max_file_bytes)
    assert (config.poll_interval_seconds, config.files_per_poll, config.duplicate_window_days) == \
        (default.poll_interval_seconds, default.files_per_poll, default.duplicate_window_days) == \
        (values["pollSeconds"], values["filesPerPoll"], values["duplicateDays"])
    assert [p.id for p in config.partners] == [p["id"] for p in tomllib.loads(EXAMPLE)["partner"]]
    assert str(config.root_dir) == env["HAULMESH_EDI_ROOT"]
    # Changed values reach the service as it reads them, the bucket and its credentials included.
    url = "s3://edi-raw/in?endpoint_url=https://s3.example.net&region=us-east-1"
    changed = chart.render(_with(pollSeconds=0.5, filesPerPoll=100, duplicateDays=90,
                                 sftp={"hostKeySecret": "k", "maxConnections": 8, "maxFileBytes": 104857600},
                                 archive={"url": url, "credentialsSecret": "edi-s3", "egress": [
                                     {"to": [{"ipBlock": {"cidr": "203.0.113.0/24"}}]}]}))
    env = _values(changed)
    config = _read_config(changed, tmp_path)
    assert (config.poll_interval_seconds, config.files_per_poll, config.duplicate_window_days, config.archive_url) \
        == (0.5, 100, 90, url)
    assert (config.sftp.max_connections, config.sftp.max_file_bytes) == (8, 104857600)
    closed = _read_config(chart.render(_with(sftp={"enabled": False, "service": {"type": "ClusterIP", "port": 22}})),
                          tmp_path)
    assert not closed.sftp.enabled
    assert changed.container("edi")["envFrom"] == [{"secretRef": {"name": "edi-s3"}}]
    # The bucket's credentials reach edi alone.
    for name in SERVICES:
        assert {"secretRef": {"name": "edi-s3"}} not in changed.container(name).get("envFrom", []), name


def test_the_chart_refuses_to_set_its_variables_twice(chart: ChartRenderer) -> None:
    for variable in EDI_VARIABLES:
        with pytest.raises(helm.HelmValuesError, match="invalid propertyName"):
            chart.render(_with(env={variable: "1"}))


async def test_the_rendered_environment_starts_the_service(chart: ChartRenderer, mesh_pki: Any, store_url: str,
                                                           tmp_path: Path) -> None:
    """The real service, started as the kubelet would with the chart's container: env, mounts (the ConfigMap's file,
    an empty volume, a 0400 host key); it must come up SERVING over mTLS, create the partners' folders on the
    volume, serve its metrics, and stop cleanly on SIGTERM."""
    rendered = chart.render(ON)
    container = copy.deepcopy(rendered.container("edi"))
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    pod = {name: tmp_path / name for name in ("edi-data", "edi-partners", "edi-sftp-host-key")}
    for path in pod.values():
        path.mkdir()
    (pod["edi-partners"] / "partners.toml").write_text(rendered.get("ConfigMap", f"{EDI}-partners")["data"][
        "partners.toml"])
    _host_key(pod["edi-sftp-host-key"] / "ssh_host_key")
    for entry in container["env"]:
        for name, path in pod.items():  # the longest mount path first would matter; these do not nest
            if "value" in entry and entry["value"].startswith(mounts[name] + "/"):
                entry["value"] = str(path) + entry["value"][len(mounts[name]):]
    env = _pod_environment(container, tmp_path / "pod", mesh_pki.directory, "edi", store_url)
    env["HAULMESH_EDI_SFTP_PORT"] = str(free_port())
    (tmp_path / "pod" / "state").mkdir()
    log_path = tmp_path / "service.log"
    with log_path.open("wb") as log:
        process = await asyncio.create_subprocess_exec(
            sys.executable, *container["command"][1:], cwd=REPO, stdout=log, stderr=log,
            env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "PYTHONPATH": str(REPO), **env})
        try:
            credentials = mesh_pki.credentials("service", "gateway")
            status = ""
            for _ in range(150):
                status = await check_health(f"127.0.0.1:{env['HAULMESH_PORT']}", credentials, timeout_seconds=1)
                if status == "SERVING" or process.returncode is not None:
                    break
                await asyncio.sleep(0.1)
            assert status == "SERVING", (status, log_path.read_text()[-3000:])
            for partner in tomllib.loads(EXAMPLE)["partner"]:
                for folder in ("in", "out"):
                    assert (Path(env["HAULMESH_EDI_ROOT"]) / partner["id"] / folder).is_dir()
            metrics_url = f"http://127.0.0.1:{env['HAULMESH_METRICS_PORT']}/metrics"
            body = await asyncio.to_thread(lambda: urllib.request.urlopen(metrics_url, timeout=5).read().decode())
            assert "haulmesh_edi_overdue_total" in body  # what EdiDocumentsOverdue counts
            # The SFTP door answers as an SSH server on the port the chart gives it, with the mounted host key.
            banner = await asyncio.to_thread(_ssh_banner, int(env["HAULMESH_EDI_SFTP_PORT"]))
            assert banner.startswith(b"SSH-2.0-"), banner
        finally:
            if process.returncode is None:
                process.send_signal(signal.SIGTERM)
            code = await asyncio.wait_for(process.wait(), timeout=30)
    assert code == 0, log_path.read_text()[-3000:]


def _ssh_banner(port: int) -> bytes:
    for _ in range(50):
        with contextlib.suppress(ConnectionRefusedError), socket.create_connection(("127.0.0.1", port), 2) as conn:
            return conn.recv(256)
        time.sleep(0.1)
    return b""


# --- network policies ----------------------------------------------------------------------------------------

def test_the_peers_it_calls_admit_it_and_no_other(chart: ChartRenderer) -> None:
    rendered = chart.render({**ON, "valkey": {"enabled": True}})
    for name in SERVICES:
        callers, others = _grpc_callers(rendered.get("NetworkPolicy", f"{RELEASE}-{name}"))
        assert callers == CALLERS[name] | ({"edi"} if name in EDI_CALLS else set()), name
        assert others == [], name
    (store_rule,) = rendered.get("NetworkPolicy", f"{RELEASE}-valkey")["spec"]["ingress"]
    assert {p["podSelector"]["matchLabels"]["app.kubernetes.io/component"] for p in store_rule["from"]} == \
        {*SERVICES, "edi"}
    # The code agrees: every stub edi opens is to a peer the chart lets it reach.
    source = (REPO / "services" / "edi" / "__main__.py").read_text()
    assert set(re.findall(r"""stub\([^)]*?,\s*["'](\w+)["']\)""", source)) <= EDI_CALLS


def test_its_ingress_is_sftp_from_the_partners_and_metrics(chart: ChartRenderer) -> None:
    rendered = chart.render(ALL_ON)
    policy = rendered.get("NetworkPolicy", EDI)["spec"]
    assert policy["podSelector"]["matchLabels"] == rendered.deployment("edi")["spec"]["selector"]["matchLabels"]
    assert policy["policyTypes"] == ["Ingress", "Egress"]
    by_port = {tuple(p["port"] for p in rule["ports"]): rule.get("from") for rule in policy["ingress"]}
    assert by_port[("sftp",)] == [{"ipBlock": {"cidr": "198.51.100.0/24"}}]
    assert by_port[("metrics",)] == [{"namespaceSelector": {"matchLabels": {
        "kubernetes.io/metadata.name": "monitoring"}}}]
    # gRPC: operators' tooling only (networkPolicy.extraGrpcFrom); no service calls edi.
    assert by_port[("grpc",)] == ALL_ON["networkPolicy"]["extraGrpcFrom"]
    assert set(by_port) == {("sftp",), ("metrics",), ("grpc",)}
    bare = chart.render(ON).get("NetworkPolicy", EDI)["spec"]
    assert {tuple(p["port"] for p in rule["ports"]) for rule in bare["ingress"]} == {("sftp",), ("metrics",)}
    # A ClusterIP door with no CIDRs: any source in the cluster (no "from").
    (sftp_rule,) = [r for r in bare["ingress"] if r["ports"][0]["port"] == "sftp"]
    assert "from" not in sftp_rule


def test_its_egress_reaches_its_peers_the_store_dns_and_the_archive_only(chart: ChartRenderer) -> None:
    rendered = chart.render(ALL_ON)
    egress = rendered.get("NetworkPolicy", EDI)["spec"]["egress"]
    peers: dict[str, list[int]] = {}
    others = []
    for rule in egress:
        ports = [p["port"] for p in rule["ports"]]
        for peer in rule["to"]:
            labels = peer.get("podSelector", {}).get("matchLabels", {})
            if set(peer) == {"podSelector"} and labels.get("app.kubernetes.io/instance") == RELEASE:
                peers[labels["app.kubernetes.io/component"]] = ports
            else:
                others.append((peer, ports))
    topology = {"tender": 50051, "mission": 50052, "billing": 50054}
    assert peers == {**{name: [port] for name, port in topology.items()}, "valkey": [6379]}
    dns = yaml.safe_load((CHART / "values.yaml").read_text())["edi"]["networkPolicy"]["dnsTo"]
    assert others == [(peer, [53, 53]) for peer in dns] + [({"ipBlock": {"cidr": "203.0.113.0/24"}}, [443])]
    # Without the restriction: ingress only, as the other services.
    free = chart.render(_with(networkPolicy={"restrictEgress": False})).get("NetworkPolicy", EDI)["spec"]
    assert free["policyTypes"] == ["Ingress"] and "egress" not in free
    # With your own store: its rule, from extraEgress, and no in-chart Valkey.
    store = {"to": [{"ipBlock": {"cidr": "10.0.40.0/24"}}], "ports": [{"port": 6379, "protocol": "TCP"}]}
    own = chart.render({**_with(networkPolicy={"extraEgress": [store]}), "valkey": {"enabled": False},
                        "redis": {"existingSecret": "haulmesh-redis-url"}})
    _validate(own)
    egress = own.get("NetworkPolicy", EDI)["spec"]["egress"]
    assert egress[-1] == store
    assert not [r for r in egress for p in r["to"]
                if p.get("podSelector", {}).get("matchLabels", {}).get("app.kubernetes.io/component") == "valkey"]


# --- what the chart refuses ----------------------------------------------------------------------------------

@pytest.mark.parametrize(("edi", "message"), [
    ({"sftp": {"hostKeySecret": ""}}, r"edi.sftp.hostKeySecret is required"),
    ({"sftp": {"hostKeySecret": "k", "service": {"type": "LoadBalancer", "port": 22}}},
     r"edi.sftp.allowedCidrs is empty with edi.sftp.service.type=LoadBalancer"),
    ({"sftp": {"hostKeySecret": "k", "service": {"type": "NodePort", "port": 22}}},
     r"edi.sftp.allowedCidrs is empty with edi.sftp.service.type=NodePort"),
    ({"existingPartnersConfigMap": "mine"}, r"edi.partners and edi.existingPartnersConfigMap are exclusive"),
    ({"archive": {"url": "s3://edi-raw/in"}}, r"edi.archive.egress must admit the S3 endpoint"),
])
def test_inconsistent_values_are_refused_at_render(chart: ChartRenderer, edi: dict[str, Any], message: str) -> None:
    with pytest.raises(helm.HelmError, match=message):
        chart.render(_with(**edi))


def test_the_audit_bucket_needs_an_egress_rule(chart: ChartRenderer) -> None:
    audit = {"auditAnchor": {"checkpointUrl": "s3://haulmesh-audit/checkpoints"}}
    with pytest.raises(helm.HelmError, match=r"edi.networkPolicy.extraEgress must admit the audit checkpoints"):
        chart.render({**ON, **audit})
    rule = {"to": [{"ipBlock": {"cidr": "203.0.113.0/24"}}], "ports": [{"port": 443, "protocol": "TCP"}]}
    rendered = chart.render({**_with(networkPolicy={"extraEgress": [rule]}), **audit})
    assert rule in rendered.get("NetworkPolicy", EDI)["spec"]["egress"]


def test_an_own_store_needs_an_egress_rule(chart: ChartRenderer) -> None:
    own_store = {"valkey": {"enabled": False}, "redis": {"existingSecret": "haulmesh-redis-url"}}
    with pytest.raises(helm.HelmError, match=r"edi.networkPolicy.extraEgress must admit your store"):
        chart.render({**ON, **own_store})
    # Unless egress is not restricted, or no NetworkPolicy is rendered at all.
    chart.render({**_with(networkPolicy={"restrictEgress": False}), **own_store})
    chart.render({**ON, **own_store, "networkPolicy": {"enabled": False}})


def test_the_whole_internet_must_be_asked_for(chart: ChartRenderer) -> None:
    rendered = chart.render(_with(sftp={"hostKeySecret": "k", "allowedCidrs": ["0.0.0.0/0"],
                                        "service": {"type": "LoadBalancer", "port": 22}}))
    _validate(rendered)
    (rule,) = [r for r in rendered.get("NetworkPolicy", EDI)["spec"]["ingress"] if r["ports"][0]["port"] == "sftp"]
    assert rule["from"] == [{"ipBlock": {"cidr": "0.0.0.0/0"}}]


@pytest.mark.parametrize(("edi", "message"), [
    ({"replicas": 2}, r"additional properties 'replicas' not allowed"),
    ({"sftp": {"service": {"type": "LoadBalancer", "port": 0}}}, r"/edi/sftp/service/port"),
    ({"sftp": {"service": {"type": "LoadBalancer", "port": 70000}}}, r"/edi/sftp/service/port"),
    ({"sftp": {"service": {"type": "NodePort", "port": 22, "nodePort": 22}}}, r"/edi/sftp/service/nodePort"),
    ({"sftp": {"service": {"type": "ExternalName", "port": 22}}}, r"/edi/sftp/service/type"),
    ({"sftp": {"allowedCidrs": ["partners.example.com"]}}, r"/edi/sftp/allowedCidrs/0"),
    ({"sftp": {"maxConnections": 0}}, r"/edi/sftp/maxConnections"),
    ({"sftp": {"maxFileBytes": "16MiB"}}, r"/edi/sftp/maxFileBytes"),
    ({"sftp": {"hostkeySecret": "k"}}, r"additional properties 'hostkeySecret' not allowed"),
    ({"archive": {"url": "ftp://somewhere/else"}}, r"/edi/archive/url"),
    ({"persistence": {"size": "10Gi", "accessMode": "ReadWriteMany"}}, r"/edi/persistence/accessMode"),
    ({"pollSeconds": 0}, r"/edi/pollSeconds"),
    ({"filesPerPoll": 1001}, r"/edi/filesPerPoll"),
    ({"duplicateDays": 0}, r"/edi/duplicateDays"),
    ({"enabled": "yes"}, r"/edi/enabled"),
])
def test_bad_values_are_refused_by_the_schema(chart: ChartRenderer, edi: dict[str, Any], message: str) -> None:
    values = copy.deepcopy(ON)
    for key, value in edi.items():
        if isinstance(value, dict) and isinstance(values["edi"].get(key), dict):
            values["edi"][key] = {**values["edi"][key], **value}
        else:
            values["edi"][key] = value
    with pytest.raises(helm.HelmValuesError, match=message):
        chart.render(values)


# --- observability, lint, notes --------------------------------------------------------------------------------

def test_it_is_scraped_and_alerted_on(chart: ChartRenderer) -> None:
    rendered = chart.render(ALL_ON)
    (monitor,) = rendered.of_kind("ServiceMonitor")
    assert "edi" in monitor["spec"]["selector"]["matchExpressions"][0]["values"]
    (rule,) = rendered.of_kind("PrometheusRule")
    groups = {g["name"]: g for g in rule["spec"]["groups"]}
    assert groups["haulmesh-edi-alerts"] == yaml.safe_load((CHART / "files" / "edi-rules.yaml").read_text())[
        "groups"][0]
    assert "{{ $labels.set }}" in yaml.safe_dump(groups["haulmesh-edi-alerts"])  # Prometheus's, not Helm's


@pytest.mark.parametrize("values", [ON, _with(sftp={"enabled": False, "service": {"type": "ClusterIP", "port": 22}})],
                         ids=["sftp", "folders-only"])
def test_helm_lint_strict_and_kubernetes_schemas(sdk: Any, chart: ChartRenderer, values: dict[str, Any]) -> None:
    report = sdk.lint(str(CHART), values, strict=True, namespace=NAMESPACE, kube_version=f"v{KUBE_VERSION}.0")
    assert [m for m in report["messages"] if m["severity"] >= 2] == [] and report["errors"] == [], report
    _validate(chart.render(values))


def test_notes_tell_how_partners_connect(chart: ChartRenderer) -> None:
    notes = chart.render(ALL_ON).notes
    assert f"{EDI}-sftp" in notes and "haulmesh-edi-host-key" in notes and "198.51.100.0/24" in notes
    assert "docs/runbooks/edi.md" in notes and "ssh-keygen -lf" in notes
