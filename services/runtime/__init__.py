"""The runtime every Haulmesh service stands on: config, identity, authorization, TLS, server, store, events,
paging and filters, time and distance.

Services, scripts and tests import from here, or from the runtime's public modules (``lanes``: the fleet's lane
facts; ``metering``: miles and hours measured from signed telemetry, the telemetry log digest; ``money``: minor
units and formatting; ``objectstore``: create-only, checksummed object storage, a local directory or S3 with Object
Lock; ``evidence``: sealed evidence packs and their offline verifier; ``pki``: the dev certificate authority;
``tokens``: the dev OAuth2 issuer; ``enrolment``: trucks' one-time enrolment tokens and the vehicle certificate
signer; ``cli``: the ``haulmesh`` command); the private modules behind them may change.
``__all__`` is what is used outside the runtime, pinned by
tests/runtime/test_public_api.py.
"""

from ._audit import AuditEntry, AuditLog, TooManyAuditEntries, actor_metadata
from ._audit import entries_touching as audit_entries_touching
from ._audit import trim as trim_audit_log
from ._audit import verify as verify_audit_log
from ._authz import BILLING_ADMINS, FLEET_OPERATORS, PLATFORM_ADMINS, Policy, caller_may, requester
from ._client import Channels
from ._cluster import ClusterClient, confirmed_durable, queue_durable_wait, wait_durable
from ._config import (
    DEFAULT_PORTS,
    MESH_SERVICES,
    ServiceConfig,
    TlsConfig,
    TracingConfig,
    default_state_dir,
    read_json_file,
)
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
    Unavailable,
    check_etag,
)
from ._events import (
    EventConsumer,
    add_event,
    dead_letters,
    event_stream_key,
    new_event,
    replay_dead_letters,
    transact,
    trim_event_stream,
)
from ._filters import BOOL_FIELD, STRING_FIELD, TIME_FIELD, Filter, FilterField, enum_field, parse_filter
from ._geo import EARTH_RADIUS_M, METERS_PER_MILE, great_circle_m, great_circle_miles
from ._idempotency import Idempotency
from ._identity import (
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
from ._names import VEHICLE_ID, parse_name, resource_id_pattern
from ._paging import DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE, Page, decode_page, next_page_token
from ._periodic import Periodic, poll_until
from ._revocation import (
    Credential,
    RevocationList,
    Revoked,
    certificate_serial,
    credential_of,
    revocation_cutoff,
    revoke_certificate,
    revoke_identity,
    revoked_certificates,
)
from ._server import LIVENESS_SERVICE, Service, run_service
from ._status import abort, describe_rpc_error, error_info, retry_delay_seconds, status_of, to_rpc_status
from ._store import EmbeddedStore, cluster_url, connect_async, connect_sync, free_port, resolve_redis_url
from ._store_acl import STORE_USERS, StoreUser, render_acl_file
from ._tenant import CARRIER_METADATA_KEY, carrier, check_operator_serves
from ._time import from_timestamp, timestamp_ms, to_timestamp
from ._tls import CertificateFiles
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
    "BILLING_ADMINS",
    "BOOL_FIELD",
    "CARRIER_METADATA_KEY",
    "DEFAULT_PAGE_SIZE",
    "DEFAULT_PORTS",
    "EARTH_RADIUS_M",
    "ERROR_DOMAIN",
    "FLEET",
    "FLEET_OPERATORS",
    "LIVENESS_SERVICE",
    "MAX_PAGE_SIZE",
    "MESH_SERVICES",
    "METERS_PER_MILE",
    "METRICS_REGISTRY",
    "PLATFORM_ADMINS",
    "STORE_USERS",
    "STRING_FIELD",
    "TIME_FIELD",
    "VEHICLE_CERTIFICATE_METADATA_KEY",
    "VEHICLE_ID",
    "Aborted",
    "AlreadyExists",
    "AuditEntry",
    "AuditLog",
    "CertificateFiles",
    "Channels",
    "ClusterClient",
    "Collection",
    "ConfigError",
    "Credential",
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
    "RevocationList",
    "Revoked",
    "Service",
    "ServiceConfig",
    "StoreUser",
    "TimeIndex",
    "TlsConfig",
    "TooManyAuditEntries",
    "TracingConfig",
    "Unavailable",
    "abort",
    "actor_metadata",
    "add_event",
    "asgi_middleware",
    "audit_entries_touching",
    "caller",
    "caller_may",
    "carrier",
    "carrier_metadata",
    "certificate_key_id",
    "certificate_serial",
    "check_etag",
    "check_health",
    "check_operator_serves",
    "cluster_url",
    "configure_tracing",
    "confirmed_durable",
    "connect_async",
    "connect_sync",
    "credential_of",
    "current_trace_ids",
    "dead_letters",
    "decode_page",
    "default_state_dir",
    "describe_rpc_error",
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
    "new_event",
    "new_id",
    "next_page_token",
    "parse_filter",
    "parse_name",
    "poll_until",
    "queue_durable_wait",
    "read_json_file",
    "render_acl_file",
    "replay_dead_letters",
    "requester",
    "resolve_redis_url",
    "resource_id_pattern",
    "retry_delay_seconds",
    "revocation_cutoff",
    "revoke_certificate",
    "revoke_identity",
    "revoked_certificates",
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
    "trim_audit_log",
    "trim_event_stream",
    "verify_audit_log",
    "verify_relayed_certificate",
    "wait_durable",
]
