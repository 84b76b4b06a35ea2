"""Typed configuration read from the environment, validated once at start-up.

Every variable is documented in the README's configuration reference. Units are in the field names.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ._errors import ConfigError

__all__ = [
    "AUDIT_SIGNING_KEY_NAME",
    "AUDIT_VERIFY_KEY_NAME",
    "DEFAULT_PORTS",
    "MESH_SERVICES",
    "TRACES_EXPORTERS",
    "ServiceConfig",
    "TlsConfig",
    "TracingConfig",
    "default_state_dir",
    "read_json_file",
]

#: Every process of the mesh, in start order, with its default gRPC port.
DEFAULT_PORTS: dict[str, int] = {
    "billing": 50054,
    "mission": 50052,
    "tender": 50051,
    "telemetry": 50053,
    "gateway": 50055,
}
MESH_SERVICES: tuple[str, ...] = tuple(DEFAULT_PORTS)
#: Services the mesh starts only when asked (``Mesh(optional=...)``, ``haulmesh run``) or configured for: the EDI
#: service (issue 15) serves carriers whose TMS speaks X12; a test mesh without it starts no process for it. No
#: service calls them, so they are not among every service's peers.
OPTIONAL_PORTS: dict[str, int] = {
    "edi": 50056,
}
OPTIONAL_SERVICES: tuple[str, ...] = tuple(OPTIONAL_PORTS)
DEFAULT_GATEWAY_HTTP_PORT = 8080
#: The gateway's HTTPS listener for trucks (client certificates required).
DEFAULT_GATEWAY_DEVICE_PORT = 8443
#: Values of HAULMESH_TRACES_EXPORTER.
TRACES_EXPORTERS = ("none", "console", "otlp")


def default_state_dir(env: Mapping[str, str] | None = None) -> Path:
    """Where local state lives: certificates, the embedded store's data, logs."""
    env = os.environ if env is None else env
    return Path(env.get("HAULMESH_STATE_DIR", ".haulmesh")).resolve()


def _float(env: Mapping[str, str], key: str, default: float, *, minimum: float = 0.0) -> float:
    raw = env.get(key)
    if raw is None or raw == "":
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ConfigError(f"{key} must be a number, got {raw!r}", field=key) from None
    if value < minimum:
        raise ConfigError(f"{key} must be at least {minimum}, got {value}", field=key)
    return value


def _port(env: Mapping[str, str], key: str, default: int) -> int:
    raw = env.get(key)
    if raw is None or raw == "":
        return default
    if not raw.isdigit() or not 0 < int(raw) < 65536:
        raise ConfigError(f"{key} must be a TCP port 1-65535, got {raw!r}", field=key)
    return int(raw)


def _count(env: Mapping[str, str], key: str, default: int, *, maximum: int) -> int:
    raw = env.get(key, "").strip()
    if raw == "":
        return default
    if not raw.isdigit() or not 1 <= int(raw) <= maximum:
        raise ConfigError(f"{key} must be a whole number from 1 to {maximum}, got {raw!r}", field=key)
    return int(raw)


def _whole(env: Mapping[str, str], key: str, default: int, *, maximum: int) -> int:
    """A whole number from 0 to ``maximum``."""
    raw = env.get(key, "").strip()
    if raw == "":
        return default
    if not raw.isdigit() or int(raw) > maximum:
        raise ConfigError(f"{key} must be a whole number from 0 to {maximum}, got {raw!r}", field=key)
    return int(raw)


def _optional_port(env: Mapping[str, str], key: str) -> int:
    """A port where 0 (or unset) means the listener is off."""
    return 0 if env.get(key, "").strip() in ("", "0") else _port(env, key, 0)


def _address(env: Mapping[str, str], key: str, default: str) -> str:
    value = env.get(key) or default
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ConfigError(f"{key} must be host:port, got {value!r}", field=key)
    return value


@dataclass(frozen=True)
class TlsConfig:
    """Where this workload's certificate, key and trust bundle live. Files are re-read when they change."""

    ca_file: Path
    cert_file: Path
    key_file: Path

    @classmethod
    def for_workload(cls, stem: str, env: Mapping[str, str] | None = None) -> TlsConfig:
        """``HAULMESH_TLS_{CA,CERT,KEY}_FILE`` or ``<cert dir>/{ca,<stem>,<stem>-key}.pem``."""
        env = os.environ if env is None else env
        cert_dir = Path(env.get("HAULMESH_CERT_DIR") or default_state_dir(env) / "certs")
        return cls(
            ca_file=Path(env.get("HAULMESH_TLS_CA_FILE") or cert_dir / "ca.pem"),
            cert_file=Path(env.get("HAULMESH_TLS_CERT_FILE") or cert_dir / f"{stem}.pem"),
            key_file=Path(env.get("HAULMESH_TLS_KEY_FILE") or cert_dir / f"{stem}-key.pem"),
        )

    def check_readable(self) -> None:
        """Fail start-up with the file that is missing, rather than with a TLS error on the first call."""
        for name in ("ca_file", "cert_file", "key_file"):
            path: Path = getattr(self, name)
            if not path.is_file():
                raise ConfigError(
                    f"TLS {name.replace('_', ' ')} {path} does not exist (run 'haulmesh pki dev-bootstrap' "
                    "or set HAULMESH_TLS_* / HAULMESH_CERT_DIR)",
                    field=name,
                )


@dataclass(frozen=True)
class TracingConfig:
    """Where this process's spans go (see _tracing.py). The OTLP endpoint, headers and timeout are read by the
    exporter itself from OpenTelemetry's standard ``OTEL_EXPORTER_OTLP_[TRACES_]*`` variables."""

    #: ``none`` (nothing is installed), ``console`` (spans as JSON on stdout) or ``otlp`` (OTLP over HTTP).
    exporter: str = "none"
    #: Fraction of new traces recorded; a call that arrives inside a trace follows its caller's decision.
    sample_ratio: float = 1.0

    @property
    def enabled(self) -> bool:
        return self.exporter != "none"

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> TracingConfig:
        env = os.environ if env is None else env
        exporter = (env.get("HAULMESH_TRACES_EXPORTER") or "none").strip().lower()
        if exporter not in TRACES_EXPORTERS:
            raise ConfigError(f"HAULMESH_TRACES_EXPORTER must be one of {', '.join(TRACES_EXPORTERS)}, "
                              f"got {env['HAULMESH_TRACES_EXPORTER']!r}", field="HAULMESH_TRACES_EXPORTER")
        ratio = _float(env, "HAULMESH_TRACES_SAMPLE_RATIO", 1.0)
        if ratio > 1.0:
            raise ConfigError(f"HAULMESH_TRACES_SAMPLE_RATIO must be between 0 and 1, got {ratio}",
                              field="HAULMESH_TRACES_SAMPLE_RATIO")
        return cls(exporter=exporter, sample_ratio=ratio)


@dataclass(frozen=True)
class ServiceConfig:
    """Everything one service process needs, read from the environment by :meth:`from_env`."""

    service_name: str
    listen_host: str
    port: int
    tls: TlsConfig
    state_dir: Path
    redis_url: str | None
    #: host:port of every mesh service this one may call, by service name.
    peer_addresses: dict[str, str] = field(default_factory=dict)
    grace_period_seconds: float = 10.0
    #: Time between health turning NOT_SERVING and the listener closing, so load balancers notice first.
    shutdown_drain_seconds: float = 0.0
    call_timeout_seconds: float = 5.0
    #: Attempts in all (first + retries) of an idempotent call to another service that failed UNAVAILABLE
    #: (HAULMESH_CALL_MAX_ATTEMPTS, 1 to 5; 1 turns retries off); all within the call's one deadline.
    call_max_attempts: int = 3
    #: How long a change acknowledged to a TMS, an operator or a vehicle may wait for the store's fsync
    #: (WAITAOF) before the caller is told UNAVAILABLE STORE_NOT_DURABLE instead of success.
    durable_timeout_seconds: float = 3.0
    #: Replicas that must also have fsync'd a change before it is acknowledged (HAULMESH_STORE_ACK_REPLICAS:
    #: ``WAITAOF 1 <n>``); 0 (the default) waits for the primary's disk only. Set it to the replicas the store
    #: runs (with AOF on) so that a failover to one of them loses nothing acknowledged (docs/capacity.md).
    store_ack_replicas: int = 0
    #: Whether those replicas must have the change on disk (HAULMESH_STORE_ACK_REPLICA_DISK=1, the default:
    #: ``WAITAOF 1 <n>``, ≈ 1 s per ack) or only received it (0: ``WAIT <n>`` + the primary's fsync, ≈ 1 ms).
    store_ack_replica_disk: bool = True
    #: Tests only (HAULMESH_TEST_FAULTS_FILE): a JSON file that, while it exists, records incoming calls and
    #: injects UNAVAILABLE into some (services/runtime/_faults.py). None (unset) in production; refused (ConfigError)
    #: unless HAULMESH_TEST_MODE=1 says too that this is a test, so one stray variable cannot fail production calls.
    test_faults_file: Path | None = None
    max_message_bytes: int = 4 * 1024 * 1024
    log_level: str = "INFO"
    #: The gateway's HTTP listener (unused by other services).
    http_port: int = DEFAULT_GATEWAY_HTTP_PORT
    #: Prometheus exposition port on ``listen_host``; 0 turns the endpoint off (the default).
    metrics_port: int = 0
    #: A plain-text port serving only grpc.health.v1, for the kubelet's native gRPC probes (which can present
    #: no client certificate); 0 turns it off (the default). It reveals nothing but serving status.
    health_port: int = 0
    #: The gateway's HTTPS listener for trucks, mTLS with the mesh CA (unused by other services).
    device_port: int = DEFAULT_GATEWAY_DEVICE_PORT
    #: Tracing (HAULMESH_TRACES_*): off unless an exporter is named.
    tracing: TracingConfig = field(default_factory=TracingConfig)
    #: Worker processes sharing the port (HAULMESH_WORKERS; only for services that support it, see _workers.py).
    workers: int = 1
    #: This process's index among the workers (set by the supervising parent), None when not a worker.
    worker_index: int | None = None
    #: The server's keepalive policy (docs/decisions.md, "Keepalive, both ends"): it pings every connection
    #: after this much silence, so a link that died without a FIN or RST (a truck out of coverage, a NAT that
    #: forgot the flow) is found, its streams ended and their memory freed.
    keepalive_time_seconds: float = 20.0
    #: How long a keepalive ping may go unanswered before the connection is closed.
    keepalive_timeout_seconds: float = 10.0
    #: The most often a client may ping without the server sending data: the edge client pings every 10 s,
    #: so 5 s leaves it room for timer jitter; pings more frequent than this earn GOAWAY too_many_pings.
    keepalive_min_ping_interval_seconds: float = 5.0
    #: How long an event may stay pending (read, not acknowledged) with a consumer of a group before another
    #: consumer of the group claims it (HAULMESH_EVENTS_CLAIM_IDLE_SECONDS): the time in which the events a
    #: killed consumer held are taken over. Not shorter than a handler may legitimately run, or a slow handler's
    #: event is handled twice at once (the effects stay once: handlers are idempotent).
    events_claim_idle_seconds: float = 30.0
    #: The Ed25519 key (PEM) that signs this process's audit checkpoints (HAULMESH_AUDIT_SIGNING_KEY_FILE; default
    #: ``audit-signing-key.pem`` in the certificate folder when it exists, as ``haulmesh pki dev-bootstrap`` makes
    #: it). None: no checkpoints (logged at start). Set explicitly, a missing or wrong file stops the start.
    audit_signing_key_file: Path | None = None
    #: Where signed audit checkpoints go (HAULMESH_AUDIT_CHECKPOINT_URL): an object store URL (file:///dir, a path,
    #: or s3://bucket/prefix?...); default ``audit-checkpoints/`` in the state directory.
    audit_checkpoint_url: str = ""
    #: How often this process exports its audit chain's signed head (HAULMESH_AUDIT_CHECKPOINT_INTERVAL_SECONDS,
    #: default 300): entries newer than the last checkpoint are anchored by the hash chain alone until then.
    audit_checkpoint_interval_seconds: float = 300.0
    #: How often this process checks the store's certificate deny-list for changes
    #: (HAULMESH_REVOCATION_REFRESH_SECONDS, default 1, at least 0.05): a revocation is enforced here within this
    #: plus one store round trip (docs/security.md, "Revocation").
    revocation_refresh_seconds: float = 1.0

    @classmethod
    def from_env(cls, service_name: str, env: Mapping[str, str] | None = None) -> ServiceConfig:
        env = os.environ if env is None else env
        ports = {**DEFAULT_PORTS, **OPTIONAL_PORTS}
        if service_name not in ports:
            raise ConfigError(f"unknown service {service_name!r}; expected one of {', '.join(ports)}")
        peers = {
            name: _address(env, f"HAULMESH_{name.upper()}_ADDR", f"127.0.0.1:{port}")
            for name, port in DEFAULT_PORTS.items()
        }
        log_level = env.get("HAULMESH_LOG_LEVEL", "INFO").upper()
        if log_level not in {"DEBUG", "INFO", "WARNING", "ERROR"}:
            raise ConfigError(f"HAULMESH_LOG_LEVEL must be DEBUG, INFO, WARNING or ERROR, got {log_level!r}",
                              field="HAULMESH_LOG_LEVEL")
        max_message_bytes = int(_float(env, "HAULMESH_MAX_MESSAGE_BYTES", 4 * 1024 * 1024, minimum=1024))
        return cls(
            service_name=service_name,
            listen_host=env.get("HAULMESH_LISTEN_HOST", "127.0.0.1"),
            port=_port(env, "HAULMESH_PORT", ports[service_name]),
            tls=TlsConfig.for_workload(service_name, env),
            state_dir=default_state_dir(env),
            redis_url=env.get("REDIS_URL") or None,
            peer_addresses=peers,
            grace_period_seconds=_float(env, "HAULMESH_GRACE_PERIOD_SECONDS", 10.0),
            shutdown_drain_seconds=_float(env, "HAULMESH_SHUTDOWN_DRAIN_SECONDS", 0.0),
            call_timeout_seconds=_float(env, "HAULMESH_CALL_TIMEOUT_SECONDS", 5.0, minimum=0.001),
            durable_timeout_seconds=_float(env, "HAULMESH_DURABLE_TIMEOUT_SECONDS", 3.0, minimum=0.001),
            call_max_attempts=_count(env, "HAULMESH_CALL_MAX_ATTEMPTS", 3, maximum=5),
            store_ack_replicas=_whole(env, "HAULMESH_STORE_ACK_REPLICAS", 0, maximum=16),
            store_ack_replica_disk=_whole(env, "HAULMESH_STORE_ACK_REPLICA_DISK", 1, maximum=1) == 1,
            test_faults_file=_test_faults_file(env),
            max_message_bytes=max_message_bytes,
            log_level=log_level,
            http_port=_port(env, "HAULMESH_HTTP_PORT", DEFAULT_GATEWAY_HTTP_PORT),
            metrics_port=_optional_port(env, "HAULMESH_METRICS_PORT"),
            health_port=_optional_port(env, "HAULMESH_HEALTH_PORT"),
            device_port=_port(env, "HAULMESH_GATEWAY_DEVICE_PORT", DEFAULT_GATEWAY_DEVICE_PORT),
            tracing=TracingConfig.from_env(env),
            workers=_count(env, "HAULMESH_WORKERS", 1, maximum=64),
            worker_index=int(env["HAULMESH_WORKER_INDEX"]) if env.get("HAULMESH_WORKER_INDEX", "").isdigit() else None,
            keepalive_time_seconds=_float(env, "HAULMESH_KEEPALIVE_TIME_SECONDS", 20.0, minimum=0.01),
            keepalive_timeout_seconds=_float(env, "HAULMESH_KEEPALIVE_TIMEOUT_SECONDS", 10.0, minimum=0.01),
            keepalive_min_ping_interval_seconds=_float(env, "HAULMESH_KEEPALIVE_MIN_PING_INTERVAL_SECONDS", 5.0,
                                                       minimum=0.01),
            events_claim_idle_seconds=_float(env, "HAULMESH_EVENTS_CLAIM_IDLE_SECONDS", 30.0, minimum=0.1),
            audit_signing_key_file=_audit_signing_key_file(env),
            audit_checkpoint_url=env.get("HAULMESH_AUDIT_CHECKPOINT_URL")
            or str(default_state_dir(env) / "audit-checkpoints"),
            audit_checkpoint_interval_seconds=_float(env, "HAULMESH_AUDIT_CHECKPOINT_INTERVAL_SECONDS", 300.0,
                                                     minimum=0.1),
            revocation_refresh_seconds=_float(env, "HAULMESH_REVOCATION_REFRESH_SECONDS", 1.0, minimum=0.05),
        )

    @property
    def listen_address(self) -> str:
        host = f"[{self.listen_host}]" if ":" in self.listen_host else self.listen_host
        return f"{host}:{self.port}"


def read_json_file(path: Path, variable: str) -> dict[str, Any]:
    """The JSON object in the file ``variable`` names (``path``), or a ConfigError naming both and what is
    wrong: unreadable, not JSON, or not an object. For the policy files services load at start-up."""
    try:
        data = json.loads(path.read_text())
    except OSError as exc:
        raise ConfigError(f"{variable}: cannot read {path}: {exc.strerror}", field=variable) from None
    except ValueError as exc:
        raise ConfigError(f"{variable}: {path} is not JSON: {exc}", field=variable) from None
    if not isinstance(data, dict):
        raise ConfigError(f"{variable}: {path} must hold a JSON object", field=variable)
    return data


#: The audit checkpoint key's file name in the certificate folder (``haulmesh pki dev-bootstrap`` writes it, with
#: its public half ``audit-signing.pub.pem`` for ``haulmesh audit verify``).
AUDIT_SIGNING_KEY_NAME = "audit-signing-key.pem"
AUDIT_VERIFY_KEY_NAME = "audit-signing.pub.pem"


def _audit_signing_key_file(env: Mapping[str, str]) -> Path | None:
    """HAULMESH_AUDIT_SIGNING_KEY_FILE (must exist), else the certificate folder's key if there is one."""
    explicit = env.get("HAULMESH_AUDIT_SIGNING_KEY_FILE", "").strip()
    if explicit:
        path = Path(explicit)
        if not path.is_file():
            raise ConfigError(f"HAULMESH_AUDIT_SIGNING_KEY_FILE: {path} does not exist",
                              field="HAULMESH_AUDIT_SIGNING_KEY_FILE")
        return path
    cert_dir = Path(env.get("HAULMESH_CERT_DIR") or default_state_dir(env) / "certs")
    default = cert_dir / AUDIT_SIGNING_KEY_NAME
    return default if default.is_file() else None


def _test_faults_file(env: Mapping[str, str]) -> Path | None:
    """HAULMESH_TEST_FAULTS_FILE, accepted only beside HAULMESH_TEST_MODE=1: the fault injector fails real calls,
    so a production process must never install it by one variable left set."""
    path = env.get("HAULMESH_TEST_FAULTS_FILE")
    if not path:
        return None
    if env.get("HAULMESH_TEST_MODE") != "1":
        raise ConfigError("HAULMESH_TEST_FAULTS_FILE installs the test fault injector (it fails calls on purpose); "
                          "it is refused unless HAULMESH_TEST_MODE=1 is set too", field="HAULMESH_TEST_FAULTS_FILE")
    return Path(path)
