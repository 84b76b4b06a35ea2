"""The runtime's public names are a contract with every service, script and test: this list changes on purpose.

A name joins ``services.runtime.__all__`` when something outside the runtime uses it, and leaves when nothing
does (tests/test_layout.py checks nothing outside the runtime reaches past it into a private module).
"""

from __future__ import annotations

import services.runtime as runtime

PUBLIC = {
    "EARTH_RADIUS_M", "METERS_PER_MILE",
    "abort", "Aborted", "actor_metadata", "add_event", "AlreadyExists", "asgi_middleware", "audit_entries_touching",
    "AuditEntry", "AuditLog", "BILLING_ADMINS", "BOOL_FIELD", "caller", "caller_may",
    "carrier", "carrier_metadata", "CARRIER_METADATA_KEY", "certificate_key_id", "CertificateFiles", "Channels",
    "check_etag", "check_health", "check_operator_serves", "cluster_url", "Collection", "ConfigError",
    "configure_tracing", "connect_async",
    "connect_sync", "current_trace_ids", "dead_letters", "decode_page", "describe_rpc_error", "DEFAULT_PORTS",
    "default_state_dir",
    "EmbeddedStore", "enum_field", "ERROR_DOMAIN", "error_info", "event_span", "event_stream_key", "EventConsumer",
    "FailedPrecondition", "FieldViolation", "Filter", "FilterField", "FLEET", "FLEET_OPERATORS", "free_port",
    "from_timestamp",
    "great_circle_m", "great_circle_miles", "HaulmeshError", "Idempotency", "Identity", "identity_from_pem",
    "IdentityError", "inject_event_context", "InvalidArgument", "Mesh", "MESH_SERVICES", "METRICS_REGISTRY",
    "MetricsEndpoint", "new_event", "new_id", "next_page_token", "NotFound", "Page", "parse_filter", "parse_name",
    "poll_until", "resource_id_pattern", "DEFAULT_PAGE_SIZE", "MAX_PAGE_SIZE", "VEHICLE_ID",
    "Periodic", "PermissionDenied", "PLATFORM_ADMINS", "Policy", "read_json_file", "render_acl_file",
    "replay_dead_letters", "requester", "resolve_redis_url",
    "ResourceExhausted", "retry_delay_seconds", "RevocationList", "Revoked", "revoke_certificate",
    "revoked_certificates", "certificate_serial", "Credential", "credential_of", "revocation_cutoff", "revoke_identity",
    "run_service", "Service", "ServiceConfig", "STORE_USERS", "StoreUser", "shutdown_tracing", "signing_key_id",
    "status_of", "STRING_FIELD",
    "tenant_key", "TIME_FIELD", "TimeIndex", "timestamp_ms", "TlsConfig", "TooManyAuditEntries",
    "to_rpc_status", "to_timestamp", "tracing_enabled", "TracingConfig", "transact", "trim_audit_log",
    "trim_event_stream", "Unavailable", "VEHICLE_CERTIFICATE_METADATA_KEY",
    "verify_audit_log", "verify_relayed_certificate", "wait_durable",
    # The one-store durable wait in a caller's own pipeline (the telemetry commit), and the cluster client.
    "ClusterClient", "confirmed_durable", "queue_durable_wait",
    # The health name liveness probes ask (alive and answering, whatever the store does).
    "LIVENESS_SERVICE",
}


def test_the_public_names_are_pinned() -> None:
    assert set(runtime.__all__) == PUBLIC
    assert len(runtime.__all__) == len(PUBLIC)  # no name twice


def test_every_public_name_exists() -> None:
    missing = [name for name in runtime.__all__ if not hasattr(runtime, name)]
    assert missing == []
