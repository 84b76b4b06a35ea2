"""The Helm chart (deploy/helm/haulmesh), rendered by Helm's own engine and checked object by object.

Every rendering (default values, every toggle on, a production-like set) is validated against the strict
Kubernetes schemas of the newest release kubernetes-validate ships (unknown fields are errors), and the
custom resources against tests/deploy/helm/crd_schemas.py; then the chart's promises are asserted: hardened pods,
native gRPC probes, NetworkPolicies admitting exactly each service's callers, only the gateway exposed,
HPAs for telemetry and gateway only, PDBs, certificates, REDIS_URL from a Secret, and values checked by
values.schema.json.
"""

from __future__ import annotations

import base64
import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from services.gateway.config import GatewayConfig
from services.runtime import DEFAULT_PORTS, LIVENESS_SERVICE
from services.telemetry.config import TelemetryConfig

from .conftest import ALL_ON, CHART, NAMESPACE, PRODUCTION, RELEASE, SERVICES, ChartRenderer, Rendered, helm
from .crd_schemas import CUSTOM_RESOURCES

REPO = Path(__file__).resolve().parents[3]
KUBE_VERSION = kubernetes_validate.latest_version()

#: Who calls whom, from the code: each service's outgoing stubs (services/<name>/__main__.py) and the gateway,
#: which transcodes every haulmesh.<area>.v1 API (its own webhook API included).
CALLERS = {
    "tender": {"gateway"},
    "mission": {"gateway", "tender", "telemetry", "billing"},
    "telemetry": {"gateway", "mission", "billing"},
    "billing": {"gateway", "tender", "mission"},
    "gateway": {"gateway"},
}
#: The peers the EDI service calls when it runs (edi.enabled; services/edi/__main__.py, the 214s and 210s from
#: mission's and billing's): their policies admit it then (tests/deploy/helm/test_edi.py).
EDI_CALLS = {"tender", "mission", "billing"}
GRPC_SERVICES = {
    "tender": "haulmesh.tender.v1.TenderService",
    "mission": "haulmesh.mission.v1.MissionService",
    "telemetry": "haulmesh.telemetry.v1.TelemetryService",
    "billing": "haulmesh.billing.v1.BillingService",
    "gateway": "haulmesh.gateway.v1.WebhookService",
}


def _component(obj: dict[str, Any]) -> str:
    return obj["metadata"]["labels"]["app.kubernetes.io/component"]


def _pod_specs(rendered: Rendered) -> list[tuple[str, dict[str, Any]]]:
    return [(o["metadata"]["name"], o["spec"]["template"]["spec"])
            for o in rendered.objects if o["kind"] in ("Deployment", "StatefulSet")]


# --- every object is a valid Kubernetes object --------------------------------------------------------------

def test_every_object_validates_against_the_kubernetes_schemas(rendered: Rendered) -> None:
    assert rendered.objects
    for obj in rendered.objects:
        key = (obj["apiVersion"], obj["kind"])
        where = f"{obj['kind']}/{obj['metadata']['name']}"
        if key in CUSTOM_RESOURCES:
            try:
                jsonschema.Draft202012Validator(CUSTOM_RESOURCES[key]).validate(obj)
            except jsonschema.ValidationError as exc:
                pytest.fail(f"{where}: {'.'.join(map(str, exc.path))}: {exc.message}")
            continue
        try:
            kubernetes_validate.validate(obj, KUBE_VERSION, strict=True)
        except kubernetes_validate.ValidationError as exc:
            pytest.fail(f"{where} (Kubernetes {KUBE_VERSION}): {'.'.join(map(str, exc.path))}: {exc.message}")


def test_validation_catches_an_unknown_field(chart: ChartRenderer) -> None:
    # The validation above must be able to fail: a field Kubernetes does not know, in a rendered Deployment.
    deployment = chart.render().deployment("tender")
    deployment["spec"]["template"]["spec"]["containers"][0]["securityContxt"] = {}
    with pytest.raises(kubernetes_validate.ValidationError, match="securityContxt"):
        kubernetes_validate.validate(deployment, KUBE_VERSION, strict=True)


def test_one_template_per_service_with_the_same_value_keys(chart: ChartRenderer) -> None:
    templates = {p.stem for p in (CHART / "templates").glob("*.yaml")}
    assert set(SERVICES) <= templates
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    keys = {name: set(values["services"][name]) for name in SERVICES}
    assert all(k == keys["tender"] for k in keys.values()), keys
    rendered = chart.render()
    for name in SERVICES:
        assert rendered.container(name)["command"] == ["python", "-m", f"services.{name}"]
        assert (REPO / "services" / name / "__main__.py").is_file()
        assert rendered.get("Service", f"{RELEASE}-{name}")["spec"]["type"] == "ClusterIP"


def test_chart_ports_and_callers_match_the_code(chart: ChartRenderer) -> None:
    rendered = chart.render()
    for name in SERVICES:
        env = rendered.env(name)
        assert env["HAULMESH_PORT"]["value"] == str(DEFAULT_PORTS[name])
        for peer, port in DEFAULT_PORTS.items():
            assert env[f"HAULMESH_{peer.upper()}_ADDR"]["value"] == f"{RELEASE}-{peer}:{port}"
    # Every stub(..., "<peer>") a service opens is admitted by the peer's NetworkPolicy (CALLERS).
    for name in SERVICES:
        source = (REPO / "services" / name / "__main__.py").read_text()
        for peer in re.findall(r"""stub\([^)]*?,\s*["'](\w+)["']\)""", source):
            assert name in CALLERS[peer], f"{name} calls {peer} but the chart does not let it"


# --- hardened pods, probes, resources -------------------------------------------------------------------

def test_pods_are_hardened(rendered: Rendered) -> None:
    specs = _pod_specs(rendered)
    assert len(specs) >= len(SERVICES)
    for name, spec in specs:
        pod = spec["securityContext"]
        assert pod["runAsNonRoot"] is True, name
        assert pod["runAsUser"] > 0, name
        assert pod["seccompProfile"] == {"type": "RuntimeDefault"}, name
        assert spec["automountServiceAccountToken"] is False, name
        assert not spec.get("hostNetwork") and not spec.get("hostPID") and not spec.get("hostIPC"), name
        for container in spec["containers"] + spec.get("initContainers", []):
            sc = container["securityContext"]
            assert sc["readOnlyRootFilesystem"] is True, name
            assert sc["allowPrivilegeEscalation"] is False, name
            assert sc["capabilities"] == {"drop": ["ALL"]}, name
            assert sc["runAsNonRoot"] is True, name
            assert sc.get("privileged") is not True, name
            assert sc["seccompProfile"] == {"type": "RuntimeDefault"}, name
            assert container["resources"]["requests"] and container["resources"]["limits"], name


def test_probes_are_native_grpc_health_checks(rendered: Rendered) -> None:
    for name in SERVICES:
        container = rendered.container(name)
        ports = {p["name"]: p["containerPort"] for p in container["ports"]}
        assert ports["grpc"] == DEFAULT_PORTS[name]
        health_port = ports["health"]
        assert rendered.env(name)["HAULMESH_HEALTH_PORT"]["value"] == str(health_port)
        for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
            assert set(container[probe]) & {"grpc", "exec", "httpGet", "tcpSocket"} == {"grpc"}, (name, probe)
            assert container[probe]["grpc"]["port"] == health_port, (name, probe)
        # Liveness asks whether the process answers, not whether its store does: an outage restarts nothing.
        assert container["livenessProbe"]["grpc"]["service"] == LIVENESS_SERVICE
        assert container["startupProbe"]["grpc"]["service"] == LIVENESS_SERVICE
        # Readiness asks for the service's own name: it turns NOT_SERVING first when the pod drains.
        assert container["readinessProbe"]["grpc"]["service"] == GRPC_SERVICES[name]


def test_state_and_tmp_are_writable_volumes_and_tls_is_mounted_whole(rendered: Rendered) -> None:
    for name in SERVICES:
        mounts = {m["mountPath"]: m for m in rendered.container(name)["volumeMounts"]}
        assert {"/var/lib/haulmesh", "/tmp", "/etc/haulmesh/tls"} <= set(mounts)
        assert mounts["/etc/haulmesh/tls"]["readOnly"] is True
        # subPath mounts never see a renewed certificate; the services re-read whole Secret mounts.
        assert not any("subPath" in m for m in mounts.values())


def test_only_billing_mounts_the_evidence_key(chart: ChartRenderer, rendered: Rendered) -> None:
    """Least privilege: the evidence key's Secret reaches the one process that seals packs, optional."""
    for name in SERVICES:
        mounts = {m["mountPath"]: m for m in rendered.container(name)["volumeMounts"]}
        assert ("/etc/haulmesh/evidence" in mounts) == (name == "billing"), name
        assert ("HAULMESH_BILLING_EVIDENCE_KEY_FILE" in rendered.env(name)) == (name == "billing"), name
    assert rendered.env("billing")["HAULMESH_BILLING_EVIDENCE_KEY_FILE"]["value"] == "/etc/haulmesh/evidence/tls.key"
    volume = next(v for v in rendered.deployment("billing")["spec"]["template"]["spec"]["volumes"]
                  if v["name"] == "evidence")
    assert volume["secret"]["optional"] is True and volume["secret"]["secretName"].endswith("-evidence-key")
    named = chart.render({"evidence": {"secretName": "my-evidence"}})
    volume = next(v for v in named.deployment("billing")["spec"]["template"]["spec"]["volumes"]
                  if v["name"] == "evidence")
    assert volume["secret"]["secretName"] == "my-evidence"


def test_only_telemetry_gets_the_archive_and_its_credentials(chart: ChartRenderer, rendered: Rendered) -> None:
    """The archive's bucket and credentials reach telemetry alone; without a url it stays in the pod (a trial)."""
    assert "HAULMESH_ARCHIVE_URL" not in rendered.env("telemetry")
    url = "s3://haulmesh-evidence/frames?endpoint_url=https://s3.example.net&region=us-east-1"
    archived = chart.render({"archive": {"url": url, "retentionDays": 3650, "credentialsSecret": "archive-s3"}})
    for name in SERVICES:
        env, container = archived.env(name), archived.container(name)
        assert ("HAULMESH_ARCHIVE_URL" in env) == (name == "telemetry"), name
        assert bool(container.get("envFrom")) == (name == "telemetry"), name
    assert archived.env("telemetry")["HAULMESH_ARCHIVE_URL"]["value"] == url
    assert archived.env("telemetry")["HAULMESH_ARCHIVE_RETENTION_DAYS"]["value"] == "3650"
    assert archived.container("telemetry")["envFrom"] == [{"secretRef": {"name": "archive-s3"}}]


def test_the_archive_url_must_be_an_s3_bucket(chart: ChartRenderer) -> None:
    with pytest.raises(helm.HelmValuesError, match="archive"):
        chart.render({"archive": {"url": "ftp://somewhere/else"}})


# --- per-process caps (issue 11) ---------------------------------------------------------------------------

#: Each chart key of telemetryCaps / gatewayCaps, its variable, and the code's default (read from the config
#: dataclasses, so a default changed in code and not in values.yaml fails here).
CAPS = {
    "telemetry": {
        "watchPoolConnections": ("HAULMESH_TELEMETRY_WATCH_POOL_CONNECTIONS", "watch_pool_connections"),
        "maxWatchesPerProcess": ("HAULMESH_TELEMETRY_MAX_WATCHES_PER_PROCESS", "max_watches_per_process"),
        "maxWatchesPerTenant": ("HAULMESH_TELEMETRY_MAX_WATCHES_PER_TENANT", "max_watches_per_tenant"),
        "watchRetryAfterSeconds": ("HAULMESH_TELEMETRY_WATCH_RETRY_AFTER_SECONDS", "watch_retry_after_seconds"),
        "maxInflightFramesPerStream": ("HAULMESH_TELEMETRY_MAX_INFLIGHT_FRAMES_PER_STREAM",
                                       "max_inflight_frames_per_stream"),
        "maxInflightFramesPerProcess": ("HAULMESH_TELEMETRY_MAX_INFLIGHT_FRAMES_PER_PROCESS",
                                        "max_inflight_frames_per_process"),
        "maxTrackingFrames": ("HAULMESH_TELEMETRY_MAX_TRACKING_FRAMES", "max_tracking_frames"),
        "maxOutboundMessagesPerStream": ("HAULMESH_TELEMETRY_MAX_OUTBOUND_MESSAGES_PER_STREAM",
                                         "max_outbound_messages_per_stream"),
        "maxCommandAckBytes": ("HAULMESH_TELEMETRY_MAX_COMMAND_ACK_BYTES", "max_command_ack_bytes"),
        "commandAcksKept": ("HAULMESH_TELEMETRY_COMMAND_ACKS_KEPT", "command_acks_kept"),
    },
    "gateway": {
        "sseMaxStreamsPerProcess": ("HAULMESH_SSE_MAX_STREAMS_PER_PROCESS", "sse_max_streams_per_process"),
        "sseMaxStreamsPerCarrier": ("HAULMESH_SSE_MAX_STREAMS_PER_CARRIER", "sse_max_streams_per_carrier"),
        "sseRetryAfterSeconds": ("HAULMESH_SSE_RETRY_AFTER_SECONDS", "sse_retry_after_seconds"),
        "deviceMaxInflightRequests": ("HAULMESH_GATEWAY_DEVICE_MAX_INFLIGHT_REQUESTS", "device_max_inflight_requests"),
    },
}


def _config_of(service: str, env: dict[str, str]) -> Any:
    return (TelemetryConfig.from_env(env) if service == "telemetry" else GatewayConfig.from_env(env, state_dir=REPO))


@pytest.mark.parametrize("service", sorted(CAPS))
def test_the_caps_are_rendered_with_the_codes_defaults_into_their_service_only(rendered: Rendered,
                                                                               service: str) -> None:
    values = yaml.safe_load((CHART / "values.yaml").read_text())[f"{service}Caps"]
    assert set(values) == set(CAPS[service]), "values.yaml and the test's table list the same caps"
    env = rendered.env(service)
    from_pod = {variable: env[variable]["value"] for variable, _ in CAPS[service].values()}
    config = _config_of(service, from_pod)
    for key, (variable, field) in CAPS[service].items():
        assert float(from_pod[variable]) == values[key] == getattr(type(config)(), field), (key, variable)
        assert getattr(config, field) == values[key], (key, "the service reads the rendered value as the default")
    for other in SERVICES:
        if other != service:
            assert not set(rendered.env(other)) & set(from_pod), other


def test_the_caps_can_be_changed_and_the_service_reads_them(chart: ChartRenderer) -> None:
    rendered = chart.render({"telemetryCaps": {"maxWatchesPerTenant": 8, "maxInflightFramesPerProcess": 20000,
                                               "watchRetryAfterSeconds": 2.5},
                             "gatewayCaps": {"sseMaxStreamsPerCarrier": 4, "deviceMaxInflightRequests": 64}})
    telemetry = TelemetryConfig.from_env({k: v["value"] for k, v in rendered.env("telemetry").items() if "value" in v})
    assert (telemetry.max_watches_per_tenant, telemetry.max_inflight_frames_per_process,
            telemetry.watch_retry_after_seconds) == (8, 20000, 2.5)
    assert telemetry.max_watches_per_process == 256  # the keys not given keep their defaults
    gateway = GatewayConfig.from_env({k: v["value"] for k, v in rendered.env("gateway").items() if "value" in v},
                                     state_dir=REPO)
    assert (gateway.sse_max_streams_per_carrier, gateway.device_max_inflight_requests) == (4, 64)


def test_large_and_fractional_numbers_reach_the_services_as_they_read_them(chart: ChartRenderer) -> None:
    # Helm reads values' numbers as float64, which print as "1e+07" from 1,000,000 on: a service reading whole
    # numbers would refuse to start. The schema's largest values must render as plain integers.
    rendered = chart.render({
        "telemetryCaps": {"maxTrackingFrames": 10_000_000, "maxInflightFramesPerProcess": 100_000_000,
                          "maxInflightFramesPerStream": 10_000_000, "watchRetryAfterSeconds": 2.5},
        "gatewayCaps": {"sseMaxStreamsPerProcess": 1_000_000},
        "archive": {"afterSeconds": 2_592_000},
        "auditAnchor": {"intervalSeconds": 86400},
        "gatewayAuth": {"jwksMaxStaleSeconds": 604800, "jwksCooldownSeconds": 0.1}})
    telemetry_env = {k: v["value"] for k, v in rendered.env("telemetry").items() if "value" in v}
    assert telemetry_env["HAULMESH_TELEMETRY_MAX_INFLIGHT_FRAMES_PER_PROCESS"] == "100000000"
    assert telemetry_env["HAULMESH_ARCHIVE_AFTER_SECONDS"] == "2592000"
    telemetry = TelemetryConfig.from_env(telemetry_env)
    assert (telemetry.max_tracking_frames, telemetry.max_inflight_frames_per_process,
            telemetry.max_inflight_frames_per_stream, telemetry.watch_retry_after_seconds) == \
        (10_000_000, 100_000_000, 10_000_000, 2.5)
    gateway = GatewayConfig.from_env({k: v["value"] for k, v in rendered.env("gateway").items() if "value" in v},
                                     state_dir=REPO)
    assert (gateway.sse_max_streams_per_process, gateway.jwks_max_stale_seconds, gateway.jwks_cooldown_seconds) \
        == (1_000_000, 604800, 0.1)
    assert rendered.env("tender")["HAULMESH_AUDIT_CHECKPOINT_INTERVAL_SECONDS"]["value"] == "86400"


@pytest.mark.parametrize(("values", "message"), [
    ({"telemetryCaps": {"maxWatchesPerTenant": 0}}, r"/telemetryCaps/maxWatchesPerTenant"),
    ({"telemetryCaps": {"maxWatchesPerTennant": 8}}, r"additional properties 'maxWatchesPerTennant' not allowed"),
    ({"gatewayCaps": {"deviceMaxInflightRequests": 100000}}, r"/gatewayCaps/deviceMaxInflightRequests"),
    # Set twice (the key and the env map) would render a duplicate entry: the env map refuses the chart's own.
    ({"env": {"HAULMESH_SSE_MAX_STREAMS_PER_CARRIER": "4"}}, r"invalid propertyName"),
    ({"services": {"telemetry": {"env": {"HAULMESH_TELEMETRY_MAX_WATCHES_PER_TENANT": "4"}}}},
     r"invalid propertyName"),
    ({"env": {"HAULMESH_TELEMETRY_MAX_TRACKING_FRAMES": "4"}}, r"invalid propertyName"),
    ({"telemetryCaps": {"maxTrackingFrames": 0}}, r"/telemetryCaps/maxTrackingFrames"),
    # A stream must hold one whole batch (500 frames, HAULMESH_TELEMETRY_MAX_BATCH_FRAMES' most).
    ({"telemetryCaps": {"maxInflightFramesPerStream": 499}}, r"/telemetryCaps/maxInflightFramesPerStream"),
])
def test_bad_caps_are_refused(chart: ChartRenderer, values: dict[str, Any], message: str) -> None:
    with pytest.raises(helm.HelmValuesError, match=message):
        chart.render(values)


def test_a_process_cap_below_the_stream_cap_is_refused_at_render(chart: ChartRenderer) -> None:
    # The service would refuse to start (TelemetryConfig): the chart says so at install, naming both keys.
    with pytest.raises(helm.HelmError, match=r"maxInflightFramesPerProcess \(1000\) must be at least "
                                             r"telemetryCaps.maxInflightFramesPerStream \(2000\)"):
        chart.render({"telemetryCaps": {"maxInflightFramesPerProcess": 1000}})
    equal = chart.render({"telemetryCaps": {"maxInflightFramesPerStream": 3000, "maxInflightFramesPerProcess": 3000}})
    assert equal.env("telemetry")["HAULMESH_TELEMETRY_MAX_INFLIGHT_FRAMES_PER_PROCESS"]["value"] == "3000"


# --- the gateway's token settings (issue 12, docs/security.md "Tokens") ------------------------------------

#: Each numeric key of gatewayAuth, its variable and GatewayConfig's field (the code's default is read from the
#: dataclass, so a default changed in code and not in values.yaml fails here).
TOKEN_SETTINGS = {
    "leewaySeconds": ("HAULMESH_JWT_LEEWAY_SECONDS", "jwt_leeway_seconds"),
    "jwksRefreshSeconds": ("HAULMESH_JWKS_REFRESH_SECONDS", "jwks_refresh_seconds"),
    "jwksCooldownSeconds": ("HAULMESH_JWKS_COOLDOWN_SECONDS", "jwks_cooldown_seconds"),
    "jwksMaxStaleSeconds": ("HAULMESH_JWKS_MAX_STALE_SECONDS", "jwks_max_stale_seconds"),
    "jwksFetchTimeoutSeconds": ("HAULMESH_JWKS_FETCH_TIMEOUT_SECONDS", "jwks_fetch_timeout_seconds"),
}
TOKEN_VARIABLES = {variable for variable, _ in TOKEN_SETTINGS.values()} | {
    "HAULMESH_JWT_ISSUER_CARRIERS", "HAULMESH_JWKS_CA_FILE"}


def _gateway_config(rendered: Rendered) -> GatewayConfig:
    return GatewayConfig.from_env({k: v["value"] for k, v in rendered.env("gateway").items() if "value" in v},
                                  state_dir=REPO)


def test_the_token_settings_are_rendered_with_the_codes_defaults_into_the_gateway_only(rendered: Rendered) -> None:
    values = yaml.safe_load((CHART / "values.yaml").read_text())["gatewayAuth"]
    env = rendered.env("gateway")
    config = _gateway_config(rendered)
    for key, (variable, field) in TOKEN_SETTINGS.items():
        assert float(env[variable]["value"]) == values[key] == getattr(GatewayConfig(), field), (key, variable)
        assert getattr(config, field) == values[key], (key, "the gateway reads the rendered value")
    # No binding by default (any carrier); a value set that binds the issuer gets exactly its carriers.
    assert values["issuerCarriers"] == [] and GatewayConfig().jwt_issuer_carriers is None
    assert config.jwt_issuer_carriers in (None, frozenset(ALL_ON["gatewayAuth"]["issuerCarriers"]))
    for other in SERVICES:
        if other != "gateway":
            assert not set(rendered.env(other)) & TOKEN_VARIABLES, other


def test_the_token_settings_can_be_changed_and_the_gateway_reads_them(chart: ChartRenderer) -> None:
    rendered = chart.render({**PRODUCTION, "gatewayAuth": {
        "jwksUrl": "https://idp.example/jwks", "leewaySeconds": 5, "issuerCarriers": ["acme", "russell-transport"],
        "jwksRefreshSeconds": 600, "jwksCooldownSeconds": 0.5, "jwksMaxStaleSeconds": 604800,
        "jwksFetchTimeoutSeconds": 2.5, "jwksCaConfigMap": {"name": "idp-ca", "key": "idp.pem"}}})
    config = _gateway_config(rendered)
    assert (config.jwks_url, config.jwt_leeway_seconds, config.jwks_refresh_seconds, config.jwks_cooldown_seconds,
            config.jwks_max_stale_seconds, config.jwks_fetch_timeout_seconds) == \
        ("https://idp.example/jwks", 5, 600, 0.5, 604800, 2.5)
    assert config.jwt_issuer_carriers == {"acme", "russell-transport"}
    # The CA is a ConfigMap mounted read-only into the gateway alone; the variable names the file in it.
    assert config.jwks_ca_file == Path("/etc/haulmesh/jwks-ca/idp.pem")
    (mount,) = [m for m in rendered.container("gateway")["volumeMounts"] if m["name"] == "jwks-ca"]
    assert mount == {"name": "jwks-ca", "mountPath": "/etc/haulmesh/jwks-ca", "readOnly": True}
    (volume,) = [v for v in rendered.deployment("gateway")["spec"]["template"]["spec"]["volumes"]
                 if v["name"] == "jwks-ca"]
    assert volume["configMap"] == {"name": "idp-ca"}
    for other in SERVICES:
        if other != "gateway":
            assert "jwks-ca" not in {m["name"] for m in rendered.container(other)["volumeMounts"]}, other


@pytest.mark.parametrize(("values", "message"), [
    # The schema: ranges and forms, as GatewayConfig checks them (the key's path in the error).
    ({"gatewayAuth": {"leewaySeconds": 301}}, r"at '/gatewayAuth/leewaySeconds'"),
    ({"gatewayAuth": {"jwksRefreshSeconds": 0}}, r"at '/gatewayAuth/jwksRefreshSeconds'"),
    ({"gatewayAuth": {"jwksCooldownSeconds": 0.05}}, r"at '/gatewayAuth/jwksCooldownSeconds'"),
    ({"gatewayAuth": {"jwksMaxStaleSeconds": -1}}, r"at '/gatewayAuth/jwksMaxStaleSeconds'"),
    ({"gatewayAuth": {"jwksFetchTimeoutSeconds": 31}}, r"at '/gatewayAuth/jwksFetchTimeoutSeconds'"),
    ({"gatewayAuth": {"jwksFetchTimeoutSeconds": "5s"}}, r"at '/gatewayAuth/jwksFetchTimeoutSeconds'"),
    ({"gatewayAuth": {"issuerCarriers": ["Acme"]}}, r"at '/gatewayAuth/issuerCarriers/0'"),
    ({"gatewayAuth": {"issuerCarriers": "acme,russell"}}, r"at '/gatewayAuth/issuerCarriers'"),
    ({"gatewayAuth": {"issuerCarriers": ["acme", "acme"]}}, r"at '/gatewayAuth/issuerCarriers'"),
    ({"gatewayAuth": {"jwksCaConfigMap": {"name": "ca", "key": ""}}}, r"at '/gatewayAuth/jwksCaConfigMap/key'"),
    ({"gatewayAuth": {"jwksCooldown": 5}}, r"additional properties 'jwksCooldown' not allowed"),
    # Set twice (the key and the env map) would render a duplicate entry: the env map refuses the chart's own.
    ({"env": {"HAULMESH_JWKS_COOLDOWN_SECONDS": "5"}}, r"invalid propertyName"),
    ({"services": {"gateway": {"env": {"HAULMESH_JWT_ISSUER_CARRIERS": "acme"}}}}, r"invalid propertyName"),
])
def test_bad_token_settings_are_refused_by_the_schema(chart: ChartRenderer, values: dict[str, Any],
                                                      message: str) -> None:
    with pytest.raises(helm.HelmValuesError, match=message):
        chart.render(values)


@pytest.mark.parametrize(("values", "message"), [
    # What the gateway would refuse at start-up (or, for the two key sources, the chart would silently drop).
    ({"gatewayAuth": {"jwksCooldownSeconds": 301}},
     r"gatewayAuth.jwksCooldownSeconds \(301\) must not exceed gatewayAuth.jwksRefreshSeconds \(300\)"),
    ({"gatewayAuth": {"jwksUrl": "https://idp.example/jwks", "jwksConfigMap": {"name": "tms-issuer-jwks"}}},
     r"gatewayAuth.jwksUrl and gatewayAuth.jwksConfigMap.name are exclusive"),
    ({"gatewayAuth": {"jwksConfigMap": {"name": "tms-issuer-jwks"}, "jwksCaConfigMap": {"name": "idp-ca"}}},
     r"gatewayAuth.jwksCaConfigMap is the CA of the jwksUrl's certificate: set gatewayAuth.jwksUrl too"),
])
def test_inconsistent_token_settings_are_refused_at_render(chart: ChartRenderer, values: dict[str, Any],
                                                          message: str) -> None:
    with pytest.raises(helm.HelmError, match=message):
        chart.render(values)


def test_a_cooldown_equal_to_the_refresh_is_accepted(chart: ChartRenderer) -> None:
    rendered = chart.render({"gatewayAuth": {"jwksRefreshSeconds": 60, "jwksCooldownSeconds": 60}})
    assert _gateway_config(rendered).jwks_cooldown_seconds == 60


def test_the_consoles_sign_in_is_rendered_into_the_gateway_and_read_by_it(chart: ChartRenderer,
                                                                          tmp_path: Path) -> None:
    console = {"oidcIssuer": "https://login.acme.example", "oidcClientId": "haulmesh-console",
               "oidcRedirectUrl": "https://haulmesh.acme.example/console/oidc/callback",
               "oidcScopes": "openid profile email haulmesh", "oidcRolesClaim": "groups",
               "tileUrl": "https://tiles.acme.example/{z}/{x}/{y}.png", "sessionSeconds": 3600}
    config = _gateway_config(chart.render({**PRODUCTION, "console": console}))
    assert config.oidc is not None and config.oidc.client_secret is None  # a public client: PKCE alone
    assert (config.oidc.issuer, config.oidc.client_id, config.oidc.redirect_url, config.oidc.scopes,
            config.oidc.roles_claim, config.oidc.carrier_claim) == (
        "https://login.acme.example", "haulmesh-console", "https://haulmesh.acme.example/console/oidc/callback",
        ("openid", "profile", "email", "haulmesh"), "groups", "carrier")
    assert (config.console_tile_url, config.console_session_seconds, config.console_dev_login) == \
        ("https://tiles.acme.example/{z}/{x}/{y}.png", 3600, False)
    # A confidential client's secret: a Secret mounted into the gateway alone, named by the variable.
    rendered = chart.render({**PRODUCTION, "console": {**console, "oidcClientSecret": {"name": "idp-client"}}})
    assert rendered.env("gateway")["HAULMESH_OIDC_CLIENT_SECRET_FILE"]["value"] == "/etc/haulmesh/oidc/client-secret"
    (volume,) = [v for v in rendered.deployment("gateway")["spec"]["template"]["spec"]["volumes"]
                 if v["name"] == "oidc-client"]
    assert volume["secret"]["secretName"] == "idp-client"
    for other in SERVICES:
        if other != "gateway":
            assert not {k for k in rendered.env(other) if k.startswith(("HAULMESH_OIDC_", "HAULMESH_CONSOLE_"))}


@pytest.mark.parametrize(("values", "message"), [
    ({"console": {"oidcIssuer": "http://login.acme.example", "oidcClientId": "c"}}, r"at '/console/oidcIssuer'"),
    ({"console": {"oidcIssuer": "https://login.acme.example"}}, r"at '/console/oidcClientId'"),
    ({"console": {"oidcScopes": "profile email"}}, r"at '/console/oidcScopes'"),
    ({"console": {"sessionSeconds": 60}}, r"at '/console/sessionSeconds'"),
    ({"console": {"tileUrl": "http://tiles.example/{z}/{x}/{y}.png"}}, r"at '/console/tileUrl'"),
    ({"env": {"HAULMESH_CONSOLE_DEV_LOGIN": "1"}}, r"invalid propertyName"),
])
def test_bad_console_settings_are_refused_by_the_schema(chart: ChartRenderer, values: dict[str, Any],
                                                        message: str) -> None:
    with pytest.raises(helm.HelmValuesError, match=message):
        chart.render(values)


# --- network exposure --------------------------------------------------------------------------------------

def _grpc_callers(policy: dict[str, Any]) -> tuple[set[str], list[dict[str, Any]]]:
    """Components admitted on the gRPC port by pod selector, and any other peers admitted there."""
    callers: set[str] = set()
    others: list[dict[str, Any]] = []
    for rule in policy["spec"]["ingress"]:
        if {p["port"] for p in rule["ports"]} != {"grpc"}:
            continue
        for peer in rule.get("from", [{}]):  # no "from": any source
            selector = peer.get("podSelector", {}).get("matchLabels", {})
            if set(peer) == {"podSelector"} and selector.get("app.kubernetes.io/instance") == RELEASE:
                callers.add(selector["app.kubernetes.io/component"])
            else:
                others.append(peer)
    return callers, others


def test_network_policies_admit_exactly_the_callers(chart: ChartRenderer) -> None:
    rendered = chart.render()
    deny = rendered.get("NetworkPolicy", f"{RELEASE}-default-deny")
    assert deny["spec"]["policyTypes"] == ["Ingress"] and "ingress" not in deny["spec"]
    assert deny["spec"]["podSelector"]["matchLabels"]["app.kubernetes.io/instance"] == RELEASE
    for name in SERVICES:
        policy = rendered.get("NetworkPolicy", f"{RELEASE}-{name}")
        assert policy["spec"]["podSelector"]["matchLabels"]["app.kubernetes.io/component"] == name
        callers, others = _grpc_callers(policy)
        assert callers == CALLERS[name], name
        assert others == [], name
        # Health is for the kubelet (node traffic, not subject to policies): no rule opens it.
        opened = {p["port"] for rule in policy["spec"]["ingress"] for p in rule["ports"]}
        assert "health" not in opened
    # The store admits the five services and nothing else.
    store = rendered.get("NetworkPolicy", f"{RELEASE}-valkey")
    (rule,) = store["spec"]["ingress"]
    assert {p["podSelector"]["matchLabels"]["app.kubernetes.io/component"] for p in rule["from"]} == set(SERVICES)


def test_extra_grpc_peers_are_added_to_every_service(chart: ChartRenderer) -> None:
    rendered = chart.render(ALL_ON)
    for name in SERVICES:
        callers, others = _grpc_callers(rendered.get("NetworkPolicy", f"{RELEASE}-{name}"))
        assert callers == CALLERS[name] | ({"edi"} if name in EDI_CALLS else set())  # ALL_ON runs edi
        # The trucks' stream port of telemetry is also open to the external CIDRs (external.telemetry).
        trucks = [{"ipBlock": {"cidr": "0.0.0.0/0"}}] if name == "telemetry" else []
        assert others == ALL_ON["networkPolicy"]["extraGrpcFrom"] + trucks


def test_only_the_gateway_is_reachable_from_outside(chart: ChartRenderer) -> None:
    for values in ({}, PRODUCTION):
        rendered = chart.render(values)
        exposed = [s["metadata"]["name"] for s in rendered.of_kind("Service") if s["spec"]["type"] != "ClusterIP"]
        assert exposed == [f"{RELEASE}-gateway-external"]
        gateway = rendered.get("Service", f"{RELEASE}-gateway-external")
        assert {p["name"] for p in gateway["spec"]["ports"]} == {"http", "device"}
        if not rendered.of_kind("NetworkPolicy"):
            continue
        # Rules open to any source (no "from", or an ipBlock) exist only on the gateway's http/device ports.
        for policy in rendered.of_kind("NetworkPolicy"):
            for rule in policy["spec"].get("ingress", []):
                peers = rule.get("from")
                if peers is None or any("ipBlock" in p for p in peers):
                    assert _component(policy) == "gateway"
                    assert {p["port"] for p in rule["ports"]} == {"http", "device"}


def test_trucks_stream_port_is_exposed_only_when_asked(chart: ChartRenderer) -> None:
    rendered = chart.render(ALL_ON)
    external = rendered.get("Service", f"{RELEASE}-telemetry-external")
    assert [p["port"] for p in external["spec"]["ports"]] == [DEFAULT_PORTS["telemetry"]]
    policy = rendered.get("NetworkPolicy", f"{RELEASE}-telemetry")
    open_rules = [r for r in policy["spec"]["ingress"] if any("ipBlock" in p for p in r.get("from", []))]
    assert [{p["port"] for p in r["ports"]} for r in open_rules] == [{"grpc"}]
    certificate = rendered.get("Certificate", f"{RELEASE}-telemetry")
    assert "trucks.haulmesh.example" in certificate["spec"]["dnsNames"]


# --- scaling and disruption ----------------------------------------------------------------------------

def test_hpas_only_for_telemetry_and_gateway(rendered: Rendered) -> None:
    hpas = {h["spec"]["scaleTargetRef"]["name"]: h for h in rendered.of_kind("HorizontalPodAutoscaler")}
    assert set(hpas) == {f"{RELEASE}-telemetry", f"{RELEASE}-gateway"}
    for name in SERVICES:
        replicas = rendered.deployment(name)["spec"].get("replicas")
        # The HPA owns the replica count of the Deployments it scales.
        assert (replicas is None) == (f"{RELEASE}-{name}" in hpas), name


def test_autoscaling_other_services_is_refused(chart: ChartRenderer) -> None:
    with pytest.raises(helm.HelmValuesError, match="additional properties 'tender' not allowed"):
        chart.render({"autoscaling": {"tender": {"enabled": True, "minReplicas": 1, "maxReplicas": 3}}})


def test_a_pdb_per_service(rendered: Rendered) -> None:
    pdbs = {_component(p): p for p in rendered.of_kind("PodDisruptionBudget")}
    assert set(pdbs) == set(SERVICES)
    for name, pdb in pdbs.items():
        assert pdb["spec"]["maxUnavailable"] == 1
        assert pdb["spec"]["selector"]["matchLabels"] == \
            rendered.deployment(name)["spec"]["selector"]["matchLabels"]


# --- certificates ------------------------------------------------------------------------------------------

def test_cert_manager_issues_one_spiffe_certificate_per_service(chart: ChartRenderer) -> None:
    rendered = chart.render({"certManager": {"enabled": True}})
    certificates = {_component(c): c for c in rendered.of_kind("Certificate")}
    assert set(certificates) == set(SERVICES)
    for name, certificate in certificates.items():
        spec = certificate["spec"]
        assert spec["uris"] == [f"spiffe://haulmesh.local/service/{name}"]  # exactly one URI SAN
        assert spec["privateKey"]["algorithm"] == "ECDSA" and spec["privateKey"]["size"] == 256
        assert {"server auth", "client auth"} <= set(spec["usages"])
        # The name peers dial (HAULMESH_<NAME>_ADDR) is in the certificate.
        assert f"{RELEASE}-{name}" in spec["dnsNames"]
        assert f"{RELEASE}-{name}.{NAMESPACE}.svc.cluster.local" in spec["dnsNames"]
        volumes = rendered.deployment(name)["spec"]["template"]["spec"]["volumes"]
        (tls,) = [v for v in volumes if v["name"] == "tls"]
        assert tls["secret"]["secretName"] == spec["secretName"]


def test_without_cert_manager_pods_mount_the_named_secrets(chart: ChartRenderer) -> None:
    rendered = chart.render({"services": {"billing": {"tlsSecretName": "billing-from-haulmesh-pki"}}})
    assert rendered.of_kind("Certificate") == []
    for name in SERVICES:
        volumes = rendered.deployment(name)["spec"]["template"]["spec"]["volumes"]
        (tls,) = [v for v in volumes if v["name"] == "tls"]
        expected = "billing-from-haulmesh-pki" if name == "billing" else f"{RELEASE}-{name}-tls"
        assert tls["secret"]["secretName"] == expected
        env = rendered.env(name)
        assert env["HAULMESH_TLS_CERT_FILE"]["value"] == "/etc/haulmesh/tls/tls.crt"
        assert env["HAULMESH_TLS_KEY_FILE"]["value"] == "/etc/haulmesh/tls/tls.key"
        assert env["HAULMESH_TLS_CA_FILE"]["value"] == "/etc/haulmesh/tls/ca.crt"


# --- the store ----------------------------------------------------------------------------------------------

def test_redis_url_always_comes_from_a_secret(rendered: Rendered) -> None:
    secrets = {s["metadata"]["name"] for s in rendered.of_kind("Secret")}
    for name in SERVICES:
        redis_url = rendered.env(name)["REDIS_URL"]
        assert "value" not in redis_url
        ref = redis_url["valueFrom"]["secretKeyRef"]
        # Either a Secret of the chart, or the operator's own (production).
        assert ref["name"] in secrets or ref["name"] == PRODUCTION["redis"]["existingSecret"]


def test_in_chart_valkey_is_aof_with_a_password_secret(chart: ChartRenderer) -> None:
    """AOF on; passwords from a Secret through the environment (store users: tests/deploy/helm/test_store_users.py;
    with valkey.acl.enabled=false one password for all)."""
    rendered = chart.render({"valkey": {"enabled": True, "acl": {"enabled": False}}})
    (statefulset,) = rendered.of_kind("StatefulSet")
    (container,) = statefulset["spec"]["template"]["spec"]["containers"]
    script = " ".join(container["args"])
    assert "--appendonly yes" in script
    assert "$VALKEY_PASSWORD" in script and "requirepass" in script
    password_ref = {e["name"]: e for e in container["env"]}["VALKEY_PASSWORD"]["valueFrom"]["secretKeyRef"]
    password = rendered.get("Secret", password_ref["name"])["data"][password_ref["key"]]
    url = rendered.get("Secret", f"{RELEASE}-redis")["stringData"]["url"]
    assert url == f"redis://:{base64.b64decode(password).decode()}@{RELEASE}-valkey:6379/0"
    with_users = chart.render({"valkey": {"enabled": True}})
    (statefulset,) = with_users.of_kind("StatefulSet")
    (container,) = statefulset["spec"]["template"]["spec"]["containers"]
    assert "--appendonly yes" in " ".join(container["args"])
    ref = {e["name"]: e for e in container["env"]}["VALKEY_REPLICATION_PASSWORD"]["valueFrom"]["secretKeyRef"]
    assert ref == {"name": f"{RELEASE}-valkey", "key": "replication"}


def test_acks_wait_for_the_replicas_the_chart_runs(chart: ChartRenderer) -> None:
    """valkey.replicas: pods 1..n replicate pod 0, the services reach pod 0 only, and every ack waits for all n
    (HAULMESH_STORE_ACK_REPLICAS); an operator's own store says how many with redis.ackReplicas."""
    single = chart.render({"valkey": {"enabled": True}})
    assert {single.env(name)["HAULMESH_STORE_ACK_REPLICAS"]["value"] for name in SERVICES} == {"0"}
    (statefulset,) = single.of_kind("StatefulSet")
    assert statefulset["spec"]["replicas"] == 1
    assert "replicaof" not in " ".join(statefulset["spec"]["template"]["spec"]["containers"][0]["args"])

    replicated = chart.render({"valkey": {"enabled": True, "replicas": 2}})
    assert {replicated.env(name)["HAULMESH_STORE_ACK_REPLICAS"]["value"] for name in SERVICES} == {"2"}
    (statefulset,) = replicated.of_kind("StatefulSet")
    assert statefulset["spec"]["replicas"] == 3
    script = " ".join(statefulset["spec"]["template"]["spec"]["containers"][0]["args"])
    assert f"if [ \"${{HOSTNAME##*-}}\" != 0 ]; then echo 'replicaof {RELEASE}-valkey 6379'" in script
    assert "masterauth" in script and "--appendonly yes" in script  # replicas fsync too: WAITAOF counts them
    selector = replicated.get("Service", f"{RELEASE}-valkey")["spec"]["selector"]
    assert selector["statefulset.kubernetes.io/pod-name"] == f"{RELEASE}-valkey-0"

    own = chart.render({**PRODUCTION, "redis": {**PRODUCTION["redis"], "ackReplicas": 1}})
    assert {own.env(name)["HAULMESH_STORE_ACK_REPLICAS"]["value"] for name in SERVICES} == {"1"}


def test_redis_by_url_goes_into_a_secret(chart: ChartRenderer) -> None:
    rendered = chart.render({"valkey": {"enabled": False}, "redis": {"url": "rediss://redis.example:6380/0"}})
    assert rendered.of_kind("StatefulSet") == []
    assert rendered.get("Secret", f"{RELEASE}-redis")["stringData"]["url"] == "rediss://redis.example:6380/0"


@pytest.mark.parametrize(("values", "message"), [
    ({"valkey": {"enabled": False}}, "no store"),
    ({"redis": {"url": "redis://elsewhere:6379"}}, "exclusive"),
    ({"valkey": {"enabled": False}, "redis": {"url": "http://redis:6379"}}, "/redis/url"),
])
def test_store_misconfiguration_is_refused(chart: ChartRenderer, values: dict[str, Any], message: str) -> None:
    with pytest.raises(helm.HelmError, match=message):
        chart.render(values)


# --- observability ----------------------------------------------------------------------------------------

def test_service_monitor_and_prometheus_rule_are_toggles(chart: ChartRenderer) -> None:
    off = chart.render()
    assert off.of_kind("ServiceMonitor") == [] and off.of_kind("PrometheusRule") == []
    on = chart.render(ALL_ON)
    (monitor,) = on.of_kind("ServiceMonitor")
    assert monitor["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    assert [e["port"] for e in monitor["spec"]["endpoints"]] == ["metrics"]
    for name in SERVICES:
        service = on.get("Service", f"{RELEASE}-{name}")
        assert "metrics" in {p["name"] for p in service["spec"]["ports"]}
        assert on.env(name)["HAULMESH_METRICS_PORT"]["value"] == "9464"
    (rule,) = on.of_kind("PrometheusRule")
    assert [g["name"] for g in rule["spec"]["groups"]] == [
        "haulmesh-slo-recording", "haulmesh-slo-alerts", "haulmesh-operations-alerts", "haulmesh-edi-alerts", "extra"]
    # Alert templates reach Prometheus unrendered by Helm.
    assert "{{ $labels.group }}" in yaml.safe_dump(rule)


def test_metrics_off_sets_the_port_to_zero(chart: ChartRenderer) -> None:
    rendered = chart.render({"metrics": {"enabled": False}})
    for name in SERVICES:
        assert rendered.env(name)["HAULMESH_METRICS_PORT"]["value"] == "0"
        assert "metrics" not in {p["name"] for p in rendered.container(name)["ports"]}


# --- configuration ----------------------------------------------------------------------------------------

def _readme_variables() -> list[str]:
    """Every variable of the README's configuration reference (its first column)."""
    text = (REPO / "README.md").read_text()
    section = text.split("## Configuration", 1)[1].split("\n## ", 1)[0]
    names: list[str] = []
    for line in section.splitlines():
        if line.startswith("| `"):
            names += re.findall(r"`([A-Z][A-Z0-9_<>]*)`", line.split("|")[1])
    return names


def test_every_readme_variable_can_be_set(chart: ChartRenderer) -> None:
    names = _readme_variables()
    assert "REDIS_URL" in names and "HAULMESH_TELEMETRY_RETENTION_DAYS" in names
    schema = json.loads((CHART / "values.schema.json").read_text())
    managed = set(schema["$defs"]["env"]["propertyNames"]["allOf"][1]["not"]["enum"])
    # The rest go through the env maps (every service, or one service: the service's value wins).
    free = {n: "1" for n in names if n not in managed and "<" not in n}
    assert len(free) > 20
    per_service = {"telemetry": {"env": {"HAULMESH_LOG_LEVEL": "DEBUG"}}}
    rendered = chart.render({**ALL_ON, "env": free, "services": per_service})
    # Variables the chart sets from its own keys, and where.
    gateway_only = {"HAULMESH_HTTP_PORT", "HAULMESH_GATEWAY_DEVICE_PORT", "HAULMESH_JWKS_FILE",
                    "HAULMESH_JWT_ISSUER", "HAULMESH_JWT_AUDIENCE", *TOKEN_VARIABLES} - {"HAULMESH_JWKS_CA_FILE"}
    billing_only = {"HAULMESH_BILLING_EVIDENCE_CERT_FILE", "HAULMESH_BILLING_EVIDENCE_KEY_FILE"}
    telemetry_only = {"HAULMESH_ARCHIVE_RETENTION_DAYS", "HAULMESH_ARCHIVE_AFTER_SECONDS"}
    edi_only = {n for n in names if n.startswith("HAULMESH_EDI_")}  # the EDI service's (tests/deploy/helm/test_edi.py)
    # Never set: HAULMESH_CERT_DIR (the explicit TLS files win), HAULMESH_JWKS_URL (ALL_ON mounts a JWKS file;
    # PRODUCTION sets the URL, checked below), HAULMESH_ARCHIVE_URL (archive.url, checked in the archive test),
    # HAULMESH_AUDIT_CHECKPOINT_URL (auditAnchor.checkpointUrl, checked in the audit anchor test),
    # HAULMESH_JWKS_CA_FILE (only with a JWKS URL: checked in the token settings' test).
    unset = {"HAULMESH_CERT_DIR", "HAULMESH_JWKS_URL", "HAULMESH_ARCHIVE_URL", "HAULMESH_AUDIT_CHECKPOINT_URL",
             "HAULMESH_JWKS_CA_FILE"}
    for name in SERVICES:
        env = rendered.env(name)
        for variable in names:
            if "<" in variable:  # HAULMESH_<SERVICE>_ADDR
                assert all(f"HAULMESH_{peer.upper()}_ADDR" in env for peer in SERVICES)
            elif variable in unset or (variable in gateway_only and name != "gateway") \
                    or (variable in billing_only and name != "billing") \
                    or (variable in telemetry_only and name != "telemetry") or variable in edi_only:
                assert variable not in env, (name, variable)
            else:
                assert variable in env, (name, variable)
        names_in_order = [e["name"] for e in rendered.container(name)["env"]]
        assert len(names_in_order) == len(set(names_in_order)), f"{name}: duplicate env entries"
    assert rendered.env("telemetry")["HAULMESH_LOG_LEVEL"]["value"] == "DEBUG"
    assert rendered.env("tender")["HAULMESH_LOG_LEVEL"]["value"] == "1"
    assert chart.render(PRODUCTION).env("gateway")["HAULMESH_JWKS_URL"]["value"] == \
        PRODUCTION["gatewayAuth"]["jwksUrl"]


@pytest.mark.parametrize(("values", "message"), [
    ({"services": {"tender": {"replicas": "two"}}}, r"at '/services/tender/replicas': got string, want integer"),
    ({"serviceMonitor": {"enabeld": True}}, r"additional properties 'enabeld' not allowed"),
    ({"tracing": {"enabled": True}}, r"additional properties 'tracing' not allowed"),
    ({"services": {"fleet": {}}}, r"additional properties 'fleet' not allowed"),
    ({"env": {"REDIS_URL": "redis://x"}}, r"invalid propertyName 'REDIS_URL'"),
    ({"securityContext": {"runAsUser": 0}}, r"/securityContext/runAsUser"),
    ({"gatewayAuth": {"jwksUrl": "http://idp.example/jwks"}}, r"/gatewayAuth/jwksUrl"),
    ({"external": {"gateway": {"type": "ExternalName"}}}, r"/external/gateway/type"),
])
def test_bad_values_are_refused_with_a_clear_error(chart: ChartRenderer, values: dict[str, Any],
                                                    message: str) -> None:
    with pytest.raises(helm.HelmValuesError, match=message):
        chart.render(values)


# --- lint, as `helm lint --strict` -------------------------------------------------------------------------

@pytest.mark.parametrize("values", [None, ALL_ON, PRODUCTION], ids=["default", "all-toggles-on", "production"])
def test_helm_lint_strict_is_clean(sdk: Any, values: dict[str, Any] | None) -> None:
    report = sdk.lint(str(CHART), values, strict=True, namespace=NAMESPACE, kube_version=f"v{KUBE_VERSION}.0")
    assert report["total_charts_linted"] == 1
    # Strict: warnings count as failures, as with `helm lint --strict`; info (severity 1) is advice only.
    problems = [m for m in report["messages"] if m["severity"] >= 2]
    assert problems == [] and report["errors"] == [], report


def test_helm_lint_strict_can_fail(sdk: Any, tmp_path: Path) -> None:
    broken = tmp_path / "haulmesh"
    broken.mkdir()
    (broken / "Chart.yaml").write_text("apiVersion: v2\nname: haulmesh\nversion: not-semver\n")
    (broken / "values.yaml").write_text("{}\n")
    report = sdk.lint(str(broken), strict=True)
    assert report["errors"] or any(m["severity"] >= 2 for m in report["messages"])


def test_notes_tell_what_was_installed(chart: ChartRenderer) -> None:
    notes = chart.render().notes
    assert f"{RELEASE}-gateway-external" in notes and "evaluation only" in notes
    assert "evaluation only" not in chart.render(PRODUCTION).notes


def test_the_chart_rule_file_passes_promtool() -> None:
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool is not installed (the CI script installs Debian's prometheus package; "
                    "apt-get install prometheus)")
    result = subprocess.run([promtool, "check", "rules", str(CHART / "files" / "prometheus-rules.yaml")],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_chart_carries_the_projects_alert_rules_unchanged() -> None:
    # Helm reads no file outside the chart, so the chart holds a copy of deploy/prometheus/rules.yaml.
    source = CHART.parents[1] / "prometheus" / "rules.yaml"
    assert (CHART / "files" / "prometheus-rules.yaml").read_bytes() == source.read_bytes(), (
        "cp deploy/prometheus/rules.yaml deploy/helm/haulmesh/files/prometheus-rules.yaml")


def test_every_service_signs_its_audit_checkpoints_with_a_kept_key(chart: ChartRenderer, rendered: Rendered) -> None:
    """The audit anchor (docs/security.md): every service mounts the Ed25519 key the chart makes (kept across
    upgrades) or a Secret of the operator's; checkpoints go to their own bucket with their own credentials."""
    secret = rendered.get("Secret", f"{RELEASE}-audit-signing-key")
    assert secret["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"
    pem = base64.b64decode(secret["data"]["audit-signing-key.pem"])
    assert isinstance(serialization.load_pem_private_key(pem, password=None), Ed25519PrivateKey)
    for name in SERVICES:
        assert rendered.env(name)["HAULMESH_AUDIT_SIGNING_KEY_FILE"]["value"] == \
            "/etc/haulmesh/audit/audit-signing-key.pem"
        assert "/etc/haulmesh/audit" in {m["mountPath"] for m in rendered.container(name)["volumeMounts"]}
        assert "HAULMESH_AUDIT_CHECKPOINT_URL" not in rendered.env(name)
    url = "s3://haulmesh-audit/checkpoints?endpoint_url=https://s3.example.net&region=us-east-1"
    own = chart.render({"auditAnchor": {"secretName": "my-audit-key", "checkpointUrl": url,
                                        "credentialsSecret": "audit-s3", "intervalSeconds": 60}})
    assert not [d for d in own.of_kind("Secret") if d["metadata"]["name"].endswith("-audit-signing-key")]
    for name in SERVICES:
        env = own.env(name)
        assert env["HAULMESH_AUDIT_CHECKPOINT_URL"]["value"] == url
        assert env["HAULMESH_AUDIT_CHECKPOINT_INTERVAL_SECONDS"]["value"] == "60"
        assert {"secretRef": {"name": "audit-s3"}} in own.container(name)["envFrom"]
        volume = next(v for v in own.deployment(name)["spec"]["template"]["spec"]["volumes"] if v["name"] == "audit")
        assert volume["secret"]["secretName"] == "my-audit-key"
