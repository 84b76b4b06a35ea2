"""Render the chart with Helm's own engine (the helm-python-sdk wheel binds Helm's Go library) and hand the
tests the rendered Kubernetes objects.

No cluster is involved: rendering is offline (Helm's ``lookup`` answers empty), exactly as ``helm template``.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

try:
    import helm_python as helm
except ImportError:  # no wheel for this platform: the chart tests skip, the Dockerfile tests still run
    helm = None
HELM_MISSING = ("helm-python-sdk (Helm's own Go library for Python) is not importable here; it ships wheels for "
                "Linux, macOS and Windows: pip install -e '.[dev]'")

REPO = Path(__file__).resolve().parents[3]
CHART = REPO / "deploy" / "helm" / "haulmesh"
RELEASE = "haulmesh"
NAMESPACE = "haulmesh"
SERVICES = ("tender", "mission", "telemetry", "billing", "gateway")

#: Every toggle of the chart on (the in-chart Valkey is the store toggle; see PRODUCTION for redis by URL).
ALL_ON: dict[str, Any] = {
    "image": {"digest": "sha256:" + "ab" * 32},
    "valkey": {"enabled": True, "persistence": {"enabled": True, "storageClass": "fast"}},
    "certManager": {"enabled": True},
    "metrics": {"enabled": True},
    "autoscaling": {"gateway": {"enabled": True}, "telemetry": {"enabled": True}},
    "podDisruptionBudget": {"enabled": True},
    "external": {
        "gateway": {"enabled": True, "dnsNames": ["api.haulmesh.example"], "loadBalancerSourceRanges": ["0.0.0.0/0"]},
        "telemetry": {"enabled": True, "dnsNames": ["trucks.haulmesh.example"]},
    },
    "networkPolicy": {
        "enabled": True,
        "externalCidrs": ["0.0.0.0/0"],
        "extraGrpcFrom": [{"podSelector": {"matchLabels": {"app.kubernetes.io/name": "haulmesh-operator"}}}],
    },
    "serviceMonitor": {"enabled": True, "labels": {"release": "kube-prometheus-stack"}},
    "prometheusRule": {
        "enabled": True,
        "additionalGroups": [{"name": "extra", "rules": [{"record": "haulmesh:up:sum", "expr": "sum(up)"}]}],
    },
    "gatewayAuth": {"jwksConfigMap": {"name": "tms-issuer-jwks"}, "issuer": "https://idp.example",
                    "audience": "haulmesh", "issuerCarriers": ["acme"]},
    "serviceAccount": {"create": True, "annotations": {"example.com/role": "haulmesh"}},
    "imagePullSecrets": [{"name": "registry"}],
    # The EDI service with its SFTP door on a load balancer, its archive in a bucket (tests/deploy/helm/test_edi.py).
    "edi": {
        "enabled": True,
        "partners": (REPO / "services" / "edi" / "partners.example.toml").read_text(),
        "archive": {"url": "s3://haulmesh-edi/raw?endpoint_url=https://s3.example.net&region=us-east-1",
                    "credentialsSecret": "edi-archive-s3",
                    "egress": [{"to": [{"ipBlock": {"cidr": "203.0.113.0/24"}}],
                                "ports": [{"port": 443, "protocol": "TCP"}]}]},
        "sftp": {"hostKeySecret": "haulmesh-edi-host-key", "allowedCidrs": ["198.51.100.0/24"],
                 "service": {"type": "LoadBalancer", "annotations": {"example.com/lb": "internet-facing"}}},
        "podAnnotations": {"example.com/team": "haulmesh"},
    },
    "services": {
        name: {"podAnnotations": {"example.com/team": "haulmesh"},
               "topologySpreadConstraints": [{"maxSkew": 1, "topologyKey": "topology.kubernetes.io/zone",
                                              "whenUnsatisfiable": "ScheduleAnyway",
                                              "labelSelector": {"matchLabels": {
                                                  "app.kubernetes.io/component": name}}}],
               "extraEnv": [{"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}}]}
        for name in SERVICES
    },
}

#: What production looks like: your own Redis through an existing Secret, no in-chart store, JWKS by URL.
PRODUCTION: dict[str, Any] = {
    "valkey": {"enabled": False},
    "redis": {"existingSecret": "haulmesh-redis-url", "existingSecretKey": "REDIS_URL"},
    "gatewayAuth": {"jwksUrl": "https://idp.example/.well-known/jwks.json"},
    "certManager": {"enabled": True},
    "serviceMonitor": {"enabled": True},
    "prometheusRule": {"enabled": True},
}

VALUE_SETS = {"default": {}, "all-toggles-on": ALL_ON, "production": PRODUCTION}


@dataclass
class Rendered:
    """One rendering: the objects, by kind and name."""

    objects: list[dict[str, Any]]
    notes: str

    def of_kind(self, kind: str) -> list[dict[str, Any]]:
        return [o for o in self.objects if o["kind"] == kind]

    def get(self, kind: str, name: str) -> dict[str, Any]:
        matches = [o for o in self.of_kind(kind) if o["metadata"]["name"] == name]
        assert len(matches) == 1, f"expected one {kind} {name}, found {len(matches)}"
        return matches[0]

    def deployment(self, service: str) -> dict[str, Any]:
        return self.get("Deployment", f"{RELEASE}-{service}")

    def container(self, service: str) -> dict[str, Any]:
        (container,) = self.deployment(service)["spec"]["template"]["spec"]["containers"]
        return container

    def env(self, service: str) -> dict[str, dict[str, Any]]:
        return {e["name"]: e for e in self.container(service)["env"]}


class ChartRenderer:
    """The loaded chart; ``render(values)`` runs Helm's engine (schema validation included)."""

    def __init__(self, chart: Any) -> None:
        self.chart = chart

    def render(self, values: dict[str, Any] | None = None) -> Rendered:
        manifests = self.chart.render(copy.deepcopy(values or {}), name=RELEASE, namespace=NAMESPACE,
                                      is_install=True)
        objects: list[dict[str, Any]] = []
        notes = ""
        for path, text in sorted(manifests.items()):
            if path.endswith("NOTES.txt"):
                notes = text
                continue
            objects += [doc for doc in yaml.safe_load_all(text) if doc]
        return Rendered(objects, notes)


@pytest.fixture(scope="session")
def sdk() -> Any:
    """The helm_python module (skips the test when the wheel is unavailable)."""
    if helm is None:
        pytest.skip(HELM_MISSING)
    return helm


@pytest.fixture(scope="session")
def chart(sdk: Any) -> Iterator[ChartRenderer]:
    with sdk.Chart.load(str(CHART)) as loaded:
        yield ChartRenderer(loaded)


@pytest.fixture(scope="session", params=list(VALUE_SETS), ids=list(VALUE_SETS))
def rendered(request: pytest.FixtureRequest, chart: ChartRenderer) -> Rendered:
    """The chart rendered with each value set in turn (default values, every toggle on, production)."""
    return chart.render(VALUE_SETS[request.param])
