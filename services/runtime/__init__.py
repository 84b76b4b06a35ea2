"""The runtime every Haulmesh service stands on: config, identity, authorization, TLS, server, store.

Services import from here only; the private modules behind it may change.
"""

from ._audit import AuditLog, AuditReport
from ._audit import verify as verify_audit_log
from ._authz import AuthorizationInterceptor, Policy
from ._client import Channels, DeadlineInterceptor
from ._cluster import wait_durable
from ._config import DEFAULT_PORTS, MESH_SERVICES, ServiceConfig, TlsConfig, TracingConfig, default_state_dir
from ._errors import (
    ERROR_DOMAIN,
    Aborted,
    AlreadyExists,
    ConfigError,
    FailedPrecondition,
    FieldViolation,
    HaulmeshError,
    IdentityError,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    ResourceExhausted,
    Unauthenticated,
    Unavailable,
    check_etag,
)
from ._events import (
    DeadLetter,
    EventConsumer,
    add_event,
    dead_letters,
    event_stream_key,
    new_event,
    replay_dead_letters,
    transact,
)
from ._filters import (
    BOOL_FIELD,
    MAX_FILTER_LENGTH,
    STRING_FIELD,
    TIME_FIELD,
    Filter,
    FilterField,
    enum_field,
    parse_filter,
)
from ._geo import great_circle_m, great_circle_miles
from ._idempotency import Idempotency
from ._identity import (
    TRUST_DOMAIN,
    VEHICLE_CERTIFICATE_METADATA_KEY,
    Identity,
    caller,
    certificate_key_id,
    identity_from_pem,
    signing_key_id,
    verify_relayed_certificate,
)
from ._index import Collection, TimeIndex
from ._keys import FLEET, carrier_metadata, new_id, tenant_key
from ._mesh import Mesh, check_health
from ._metrics import METRICS_REGISTRY, MetricsEndpoint
from ._names import SERVER_ID, parse_name
from ._paging import DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE, Page, decode_page, encode_page_token, list_page, next_page_token
from ._periodic import Periodic
from ._rpcmetrics import RpcMetricsInterceptor
from ._server import Service, run_service
from ._status import abort, error_info, status_of, to_rpc_status
from ._store import EmbeddedStore, cluster_url, connect_async, connect_sync, free_port, redact_url, resolve_redis_url
from ._tenant import CARRIER_METADATA_KEY, carrier
from ._time import from_timestamp, timestamp_ms, to_timestamp
from ._tls import CertificateFiles, client_credentials, reloading_server_credentials
from ._tracing import (
    asgi_middleware,
    configure_tracing,
    current_trace_ids,
    event_span,
    inject_event_context,
    shutdown_tracing,
    tracing_enabled,
)

__all__ = [
    "BOOL_FIELD",
    "CARRIER_METADATA_KEY",
    "DEFAULT_PAGE_SIZE",
    "DEFAULT_PORTS",
    "ERROR_DOMAIN",
    "FLEET",
    "MAX_FILTER_LENGTH",
    "MAX_PAGE_SIZE",
    "MESH_SERVICES",
    "METRICS_REGISTRY",
    "SERVER_ID",
    "STRING_FIELD",
    "TIME_FIELD",
    "TRUST_DOMAIN",
    "VEHICLE_CERTIFICATE_METADATA_KEY",
    "Aborted",
    "AlreadyExists",
    "AuditLog",
    "AuditReport",
    "AuthorizationInterceptor",
    "CertificateFiles",
    "Channels",
    "Collection",
    "ConfigError",
    "DeadLetter",
    "DeadlineInterceptor",
    "EmbeddedStore",
    "EventConsumer",
    "FailedPrecondition",
    "FieldViolation",
    "Filter",
    "FilterField",
    "HaulmeshError",
    "Idempotency",
    "Identity",
    "IdentityError",
    "InvalidArgument",
    "Mesh",
    "MetricsEndpoint",
    "NotFound",
    "Page",
    "Periodic",
    "PermissionDenied",
    "Policy",
    "ResourceExhausted",
    "RpcMetricsInterceptor",
    "Service",
    "ServiceConfig",
    "TimeIndex",
    "TlsConfig",
    "TracingConfig",
    "Unauthenticated",
    "Unavailable",
    "abort",
    "add_event",
    "asgi_middleware",
    "caller",
    "carrier",
    "carrier_metadata",
    "certificate_key_id",
    "check_etag",
    "check_health",
    "client_credentials",
    "cluster_url",
    "configure_tracing",
    "connect_async",
    "connect_sync",
    "current_trace_ids",
    "dead_letters",
    "decode_page",
    "default_state_dir",
    "encode_page_token",
    "enum_field",
    "error_info",
    "event_span",
    "event_stream_key",
    "free_port",
    "from_timestamp",
    "great_circle_m",
    "great_circle_miles",
    "identity_from_pem",
    "inject_event_context",
    "list_page",
    "new_event",
    "new_id",
    "next_page_token",
    "parse_filter",
    "parse_name",
    "redact_url",
    "reloading_server_credentials",
    "replay_dead_letters",
    "resolve_redis_url",
    "run_service",
    "shutdown_tracing",
    "signing_key_id",
    "status_of",
    "tenant_key",
    "timestamp_ms",
    "to_rpc_status",
    "to_timestamp",
    "tracing_enabled",
    "transact",
    "verify_audit_log",
    "verify_relayed_certificate",
    "wait_durable",
]
