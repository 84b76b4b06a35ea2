"""The one exception root of Haulmesh, and the mapping of domain errors to google.rpc.Status."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = [
    "ERROR_DOMAIN",
    "Aborted",
    "AlreadyExists",
    "ConfigError",
    "FailedPrecondition",
    "FieldViolation",
    "HaulmeshError",
    "IdentityError",
    "InvalidArgument",
    "NotFound",
    "PermissionDenied",
    "ResourceExhausted",
    "Unauthenticated",
    "Unavailable",
    "check_etag",
]

#: ErrorInfo.domain of every error Haulmesh raises.
ERROR_DOMAIN = "haulmesh.io"


@dataclass(frozen=True)
class FieldViolation:
    """One invalid field: ``field`` is a path such as ``pickup_window.start_time``."""

    field: str
    description: str


class HaulmeshError(Exception):
    """Root of every error Haulmesh raises on purpose.

    ``reason`` is the stable UPPER_SNAKE ErrorInfo reason a client may branch on; ``code_name`` the
    google.rpc.Code name it travels as; ``metadata`` extra ErrorInfo metadata (never secrets);
    ``retry_after_seconds`` a retry hint (google.rpc.RetryInfo) for limits that clear by themselves.
    """

    code_name = "INTERNAL"
    default_reason = "INTERNAL"

    def __init__(self, message: str, *, reason: str | None = None, metadata: dict[str, str] | None = None,
                 violations: list[FieldViolation] | None = None, retry_after_seconds: float | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.reason = reason or self.default_reason
        self.metadata = dict(metadata or {})
        self.violations = list(violations or [])
        #: When set, the client is told to retry after this long (google.rpc.RetryInfo; Retry-After over REST).
        self.retry_after_seconds = retry_after_seconds


class ConfigError(HaulmeshError):
    """Configuration (environment, files, flags) is missing or wrong; raised at start-up."""

    code_name = "INVALID_ARGUMENT"
    default_reason = "INVALID_CONFIGURATION"

    def __init__(self, message: str, *, field: str | None = None) -> None:
        super().__init__(message, metadata={"field": field} if field else None)
        self.field = field


class InvalidArgument(HaulmeshError):
    code_name = "INVALID_ARGUMENT"
    default_reason = "INVALID_ARGUMENT"


class NotFound(HaulmeshError):
    code_name = "NOT_FOUND"
    default_reason = "NOT_FOUND"


class AlreadyExists(HaulmeshError):
    code_name = "ALREADY_EXISTS"
    default_reason = "ALREADY_EXISTS"


class FailedPrecondition(HaulmeshError):
    code_name = "FAILED_PRECONDITION"
    default_reason = "FAILED_PRECONDITION"


class Aborted(HaulmeshError):
    """A concurrency conflict: the resource changed since it was read (e.g. a stale etag); retry."""

    code_name = "ABORTED"
    default_reason = "ABORTED"


def check_etag(sent: str, current: str, name: str) -> None:
    """AIP-154: when the caller sent an etag it must be the current one, else ABORTED ``ETAG_MISMATCH``."""
    if sent and sent != current:
        raise Aborted(f"{name} changed since it was read (etag {sent!r}); read it again",
                      reason="ETAG_MISMATCH", metadata={"name": name, "etag": current})


class PermissionDenied(HaulmeshError):
    code_name = "PERMISSION_DENIED"
    default_reason = "PERMISSION_DENIED"


class Unauthenticated(HaulmeshError):
    code_name = "UNAUTHENTICATED"
    default_reason = "UNAUTHENTICATED"


class IdentityError(Unauthenticated):
    """A peer certificate does not carry exactly one valid SPIFFE ID of our trust domain."""

    default_reason = "INVALID_PEER_IDENTITY"


class ResourceExhausted(HaulmeshError):
    """A quota or limit is reached (e.g. subscriptions per carrier)."""

    code_name = "RESOURCE_EXHAUSTED"
    default_reason = "RESOURCE_EXHAUSTED"


class Unavailable(HaulmeshError):
    code_name = "UNAVAILABLE"
    default_reason = "UNAVAILABLE"

