"""Gateway rules that are the gateway's own: webhook subscriptions and their deliveries. Plain Python: no
gRPC, no Redis.

What lives here: the subscription rules (URL, event types, secret, display name), the destination guard
against server-side request forgery (no private, loopback, link-local, multicast, reserved or unspecified
address unless explicitly allowed), Standard Webhooks signing, the retry schedule and the classification
of an attempt's outcome. The spec is protos/haulmesh/gateway/v1/webhook.proto.
"""

from __future__ import annotations

import base64
import binascii
import ipaddress
import operator
import random
import re
import secrets
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import Enum
from urllib.parse import SplitResult, urlsplit

from standardwebhooks import Webhook

from services.runtime import ConfigError, FieldViolation, InvalidArgument, ResourceExhausted, parse_name

__all__ = [
    "DEFAULT_RETRY_DELAYS_SECONDS",
    "INTERNAL_EVENT_TYPES",
    "MAX_SUBSCRIPTIONS",
    "SECRET_PREFIX",
    "DeliveryFilter",
    "Destination",
    "DestinationGuard",
    "Outcome",
    "RetryPolicy",
    "SubscriptionLimitReached",
    "classify_attempt",
    "event_type_for_field",
    "generate_secret",
    "parse_allowed_cidrs",
    "parse_delivery_filter",
    "parse_delivery_name",
    "parse_destination",
    "parse_secret",
    "parse_subscription_name",
    "public_event_types",
    "replayable",
    "sign",
    "validate_subscription",
]

#: At most this many subscriptions per carrier (webhook_service.proto).
MAX_SUBSCRIPTIONS = 20
MAX_URL_LENGTH = 2048
MAX_DISPLAY_NAME = 100
MAX_EVENT_TYPES = 100
SECRET_PREFIX = "whsec_"  # noqa: S105 - the Standard Webhooks prefix, not a secret
SECRET_BYTES = (24, 64)

#: Event types event.proto marks "(internal)": consumed by Haulmesh services, never delivered to webhooks.
INTERNAL_EVENT_TYPES = frozenset({
    "haulmesh.telemetry.v1.health_reported",
    "haulmesh.telemetry.v1.fault_reported",
    "haulmesh.telemetry.v1.command_acknowledged",
})

_AREAS = ("tender", "mission", "telemetry", "billing")
_DELIVERY_NAME = re.compile(r"^webhookSubscriptions/([a-z0-9][a-z0-9-]{0,62})/deliveries/([a-z0-9][a-z0-9-]{0,62})$")


class SubscriptionLimitReached(ResourceExhausted):
    """The carrier already has :data:`MAX_SUBSCRIPTIONS` subscriptions."""

    default_reason = "SUBSCRIPTION_LIMIT_REACHED"


def parse_subscription_name(name: str, *, field: str = "name") -> str:
    """The subscription id in ``webhookSubscriptions/{id}``."""
    return parse_name(name, "webhookSubscriptions", field=field)


def parse_delivery_name(name: str, *, field: str = "name") -> tuple[str, str]:
    """(subscription id, delivery id) of ``webhookSubscriptions/{s}/deliveries/{d}``."""
    match = _DELIVERY_NAME.fullmatch(name)
    if match is None:
        raise InvalidArgument(f"{field} must be webhookSubscriptions/{{id}}/deliveries/{{id}}, got {name[:120]!r}",
                              reason="INVALID_RESOURCE_NAME",
                              violations=[FieldViolation(field, "must be webhookSubscriptions/{id}/deliveries/{id}")])
    return match.group(1), match.group(2)


# --- event types -------------------------------------------------------------------------------------


def event_type_for_field(field: str) -> str:
    """event.proto's naming rule: the ``data`` field ``tender_offered`` is ``haulmesh.tender.v1.offered``."""
    area, _, name = field.partition("_")
    if area not in _AREAS or not name:
        raise ValueError(f"{field!r} does not start with an area prefix")
    return f"haulmesh.{area}.v1.{name}"


def public_event_types(data_fields: Iterable[str]) -> frozenset[str]:
    """The public event types among the ``Event.data`` oneof fields (internal ones removed)."""
    return frozenset(event_type_for_field(f) for f in data_fields) - INTERNAL_EVENT_TYPES


def _event_type_error(pattern: str, public: frozenset[str]) -> str | None:
    if pattern == "*":
        return None
    if pattern.endswith(".*"):
        area = pattern[:-2]
        return None if any(t.startswith(area + ".") for t in public) else "unknown area wildcard"
    if pattern in INTERNAL_EVENT_TYPES:
        return "internal event type: never delivered to webhooks"
    return None if pattern in public else "unknown event type"


def matches(patterns: Iterable[str], event_type: str) -> bool:
    """Whether a subscription's event-type filter selects ``event_type`` (internal types never match)."""
    if event_type in INTERNAL_EVENT_TYPES:
        return False
    for pattern in patterns:
        if pattern == "*" or pattern == event_type:
            return True
        if pattern.endswith(".*") and event_type.startswith(pattern[:-1]):
            return True
    return False


# --- secrets and signing -----------------------------------------------------------------------------


def generate_secret(length: int = 32) -> str:
    """A new Standard Webhooks secret: ``whsec_`` + base64 of ``length`` (24-64) random bytes."""
    if not SECRET_BYTES[0] <= length <= SECRET_BYTES[1]:
        raise ValueError("a secret has 24 to 64 bytes")
    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(length)).decode()


def parse_secret(secret: str, *, field: str) -> bytes:
    """The HMAC key of a ``whsec_<base64>`` secret; INVALID_ARGUMENT (never echoing the secret) otherwise."""
    def bad(description: str) -> InvalidArgument:
        return InvalidArgument(f"{field} is malformed: {description}", reason="INVALID_ARGUMENT",
                               violations=[FieldViolation(field, description)])

    if not secret:
        raise bad("required: whsec_ followed by the base64 of 24 to 64 random bytes")
    if not secret.startswith(SECRET_PREFIX):
        raise bad("must start with whsec_")
    try:
        key = base64.b64decode(secret[len(SECRET_PREFIX):], validate=True)
    except (binascii.Error, ValueError):
        raise bad("not standard base64 after whsec_") from None
    if not SECRET_BYTES[0] <= len(key) <= SECRET_BYTES[1]:
        raise bad(f"decodes to {len(key)} bytes; 24 to 64 required")
    return key


def sign(keys: Sequence[bytes], message_id: str, timestamp: int, body: bytes) -> str:
    """The ``webhook-signature`` header: ``v1,<base64 HMAC-SHA256>`` per key, space-separated.

    Signed content is ``{message_id}.{timestamp}.{body}`` (Standard Webhooks); several keys during a
    secret rotation's overlap. Uses the Standard Webhooks reference library.
    """
    when = datetime.fromtimestamp(timestamp, UTC)
    text = body.decode()
    return " ".join(Webhook(key).sign(message_id, when, text) for key in keys)


# --- destinations (SSRF guard) -----------------------------------------------------------------------

IpNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
IpAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

# IPv6 ranges that carry an IPv4 address inside (NAT64, 6to4): judged by the embedded IPv4 address.
_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")
_NAT64_LOCAL = ipaddress.IPv6Network("64:ff9b:1::/48")
_SIX_TO_FOUR = ipaddress.IPv6Network("2002::/16")


def parse_allowed_cidrs(text: str) -> tuple[IpNetwork, ...]:
    """``HAULMESH_WEBHOOK_ALLOWED_CIDRS``: a comma-separated list of networks (empty: none allowed)."""
    networks = []
    for part in (p.strip() for p in text.split(",")):
        if not part:
            continue
        try:
            networks.append(ipaddress.ip_network(part, strict=False))
        except ValueError:
            raise ConfigError(f"HAULMESH_WEBHOOK_ALLOWED_CIDRS: {part!r} is not a network",
                              field="HAULMESH_WEBHOOK_ALLOWED_CIDRS") from None
    return tuple(networks)


def _embedded_ipv4(address: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    if address.ipv4_mapped is not None:
        return address.ipv4_mapped
    if address in _NAT64:
        return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    if address.sixtofour is not None:
        return address.sixtofour
    if address.teredo is not None:
        return address.teredo[1]
    return None


# IANA special-purpose ranges refused whatever the Python version's ``ipaddress`` flags say (they have
# changed between releases, e.g. for 192.0.0.0/24).
_SPECIAL = tuple(ipaddress.ip_network(n) for n in (
    "0.0.0.0/8", "10.0.0.0/8", "100.64.0.0/10", "127.0.0.0/8", "169.254.0.0/16", "172.16.0.0/12",
    "192.0.0.0/24", "192.0.2.0/24", "192.88.99.0/24", "192.168.0.0/16", "198.18.0.0/15", "198.51.100.0/24",
    "203.0.113.0/24", "224.0.0.0/4", "240.0.0.0/4",
    "::/128", "::1/128", "100::/64", "2001::/23", "2001:db8::/32", "3fff::/20", "5f00::/16", "fc00::/7",
    "fe80::/10", "fec0::/10", "ff00::/8"))


def _flags_public(address: IpAddress) -> bool:
    if any(address.version == n.version and address in n for n in _SPECIAL):
        return False
    return not (address.is_private or address.is_loopback or address.is_link_local or address.is_multicast
                or address.is_reserved or address.is_unspecified or not address.is_global)


def _is_public(address: IpAddress) -> bool:
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None or address in _NAT64:
            # Reaches (or is translated to) the IPv4 address inside: only that address counts.
            return _flags_public(_embedded_ipv4(address))  # type: ignore[arg-type]
        if address in _NAT64_LOCAL:
            return False
        embedded = _embedded_ipv4(address)
        if embedded is not None:  # 6to4, Teredo: both the tunnel address and the IPv4 inside must be public
            return _flags_public(address) and _flags_public(embedded)
    return _flags_public(address)


@dataclass(frozen=True)
class DestinationGuard:
    """Decides which resolved addresses a webhook may be sent to.

    Public unicast addresses are allowed; private, loopback, link-local, multicast, reserved and
    unspecified ones (IPv4 and IPv6, including IPv4 inside IPv4-mapped, NAT64, 6to4 and Teredo IPv6
    addresses) only when inside ``allowed`` (``HAULMESH_WEBHOOK_ALLOWED_CIDRS``).
    """

    allowed: tuple[IpNetwork, ...] = ()

    def _normalise(self, address: IpAddress) -> IpAddress:
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
            return address.ipv4_mapped
        return address

    def explicitly_allowed(self, address: str | IpAddress) -> bool:
        """Whether ``address`` is inside the allow-list."""
        ip = self._normalise(ipaddress.ip_address(address))
        return any(ip.version == n.version and ip in n for n in self.allowed)

    def permits(self, address: str | IpAddress) -> bool:
        """Whether a connection to ``address`` is allowed."""
        ip = self._normalise(ipaddress.ip_address(address))
        return self.explicitly_allowed(ip) or _is_public(ip)

    def refused(self, addresses: Iterable[str]) -> list[str]:
        """The addresses among ``addresses`` that are refused (an empty list: all allowed)."""
        return [a for a in addresses if not self.permits(a)]


@dataclass(frozen=True)
class Destination:
    """A parsed webhook URL: what to connect to and what to send as Host / TLS server name."""

    url: str
    scheme: str
    host: str
    port: int
    target: str  # path and query, what goes on the request line


def parse_destination(url: str, *, field: str = "url") -> Destination:
    """Parse and check a webhook URL's form (not its addresses: see :class:`DestinationGuard`)."""
    def bad(description: str) -> InvalidArgument:
        return InvalidArgument(f"{field}: {description}", reason="INVALID_ARGUMENT",
                               violations=[FieldViolation(field, description)])

    if not url:
        raise bad("required: an absolute https:// URL")
    if len(url) > MAX_URL_LENGTH:
        raise bad(f"at most {MAX_URL_LENGTH} characters")
    if any(c.isspace() or ord(c) < 0x20 or ord(c) == 0x7F for c in url):
        raise bad("must not contain whitespace or control characters")
    try:
        parts: SplitResult = urlsplit(url)
        port = parts.port
    except ValueError:
        raise bad("not a valid URL") from None
    if parts.scheme not in ("https", "http"):
        raise bad("must be an https:// URL")
    if not parts.hostname:
        raise bad("must name a host")
    if parts.username is not None or parts.password is not None:
        raise bad("must not carry credentials (user:password@)")
    if parts.fragment:
        raise bad("must not have a #fragment")
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    return Destination(url, parts.scheme, parts.hostname, port or (443 if parts.scheme == "https" else 80), target)


def check_scheme(destination: Destination, addresses: Sequence[str], guard: DestinationGuard,
                 *, field: str = "url") -> None:
    """``http://`` is accepted only when every address is explicitly allowed (development, tests)."""
    if destination.scheme == "http" and not (addresses and all(guard.explicitly_allowed(a) for a in addresses)):
        raise InvalidArgument(f"{field}: must be an https:// URL", reason="INVALID_ARGUMENT",
                              violations=[FieldViolation(field, "must be an https:// URL (http only for "
                                                                "explicitly allowed development destinations)")])


def check_addresses(destination: Destination, addresses: Sequence[str], guard: DestinationGuard,
                    *, field: str = "url") -> None:
    """INVALID_ARGUMENT unless the host resolved and every address it resolved to is permitted."""
    if not addresses:
        raise InvalidArgument(f"{field}: host {destination.host!r} does not resolve", reason="INVALID_ARGUMENT",
                              violations=[FieldViolation(field, "host does not resolve")])
    refused = guard.refused(addresses)
    if refused:
        raise InvalidArgument(f"{field}: host {destination.host!r} resolves to a non-public address",
                              reason="INVALID_ARGUMENT",
                              violations=[FieldViolation(field, "must resolve to public addresses only "
                                                                "(private, loopback, link-local, multicast, "
                                                                "reserved and unspecified are refused)")])
    check_scheme(destination, addresses, guard, field=field)


# --- subscriptions -----------------------------------------------------------------------------------


def validate_subscription(*, display_name: str, url: str, event_types: Sequence[str], public: frozenset[str],
                          prefix: str = "webhook_subscription.", check: Iterable[str] = ("display_name", "url",
                                                                                           "event_types")
                          ) -> Destination | None:
    """Check the fields named in ``check``; raise one INVALID_ARGUMENT listing every bad field.

    Returns the parsed destination when ``url`` was checked.
    """
    violations: list[FieldViolation] = []
    destination = None
    wanted = set(check)
    if "display_name" in wanted and len(display_name) > MAX_DISPLAY_NAME:
        violations.append(FieldViolation(f"{prefix}display_name", f"at most {MAX_DISPLAY_NAME} characters"))
    if "url" in wanted:
        try:
            destination = parse_destination(url, field=f"{prefix}url")
        except InvalidArgument as exc:
            violations.extend(exc.violations)
    if "event_types" in wanted:
        if not 1 <= len(event_types) <= MAX_EVENT_TYPES:
            violations.append(FieldViolation(f"{prefix}event_types", f"1 to {MAX_EVENT_TYPES} entries"))
        for i, pattern in enumerate(event_types):
            error = _event_type_error(pattern, public)
            if error:
                violations.append(FieldViolation(f"{prefix}event_types[{i}]", error))
    if violations:
        raise InvalidArgument("the webhook subscription is invalid: "
                              + "; ".join(f"{v.field}: {v.description}" for v in violations),
                              reason="INVALID_ARGUMENT", violations=violations)
    return destination


# --- deliveries --------------------------------------------------------------------------------------


class Outcome(Enum):
    """What an attempt's result means for the delivery."""

    SUCCEEDED = "succeeded"
    RETRY = "retry"
    FAILED = "failed"


def classify_attempt(status_code: int | None) -> Outcome:
    """2xx succeeds; no response (network error, timeout), 408, 429 and 5xx are retried; anything else
    (including a redirect, which is never followed) fails at once (webhook.proto)."""
    if status_code is None:
        return Outcome.RETRY
    if 200 <= status_code < 300:
        return Outcome.SUCCEEDED
    if status_code in (408, 429) or status_code >= 500:
        return Outcome.RETRY
    return Outcome.FAILED


def replayable(state: str) -> bool:
    """Only terminal deliveries (FAILED, SKIPPED, SUCCEEDED) can be replayed."""
    return state in ("FAILED", "SKIPPED", "SUCCEEDED")


#: Delays before retry 1, 2, ... in seconds: 5 s, 1 min, 5 min, 30 min, 2 h, 5 h, 8 h, 8 h. Nine attempts
#: over at most 23.6 h, within the proto's "up to 24 hours, at most 10 attempts".
DEFAULT_RETRY_DELAYS_SECONDS: tuple[float, ...] = (5, 60, 300, 1800, 7200, 18000, 28800, 28800)


@dataclass(frozen=True)
class RetryPolicy:
    """Exponential backoff with jitter: retry ``n`` waits ``delays[n-1]`` scaled by a random factor in
    ``[1 - jitter, 1]`` (jitter only shortens, so the schedule's total stays a bound)."""

    delays: tuple[float, ...] = DEFAULT_RETRY_DELAYS_SECONDS
    jitter: float = 0.2

    def __post_init__(self) -> None:
        if len(self.delays) > 9:
            raise ConfigError("at most 9 retries (10 attempts)", field="HAULMESH_WEBHOOK_RETRY_SCHEDULE_SECONDS")
        if any(d < 0 for d in self.delays):
            raise ConfigError("retry delays must not be negative", field="HAULMESH_WEBHOOK_RETRY_SCHEDULE_SECONDS")
        if not 0 <= self.jitter < 1:
            raise ConfigError("jitter must be in [0, 1)", field="HAULMESH_WEBHOOK_RETRY_JITTER")

    @classmethod
    def from_text(cls, schedule: str, jitter: str = "") -> RetryPolicy:
        """From ``HAULMESH_WEBHOOK_RETRY_SCHEDULE_SECONDS`` ("5,60,300") and ``HAULMESH_WEBHOOK_RETRY_JITTER``."""
        try:
            delays = tuple(float(p) for p in schedule.split(",") if p.strip()) if schedule.strip() else \
                DEFAULT_RETRY_DELAYS_SECONDS
            factor = float(jitter) if jitter.strip() else 0.2
        except ValueError:
            raise ConfigError("retry schedule must be comma-separated seconds",
                              field="HAULMESH_WEBHOOK_RETRY_SCHEDULE_SECONDS") from None
        return cls(delays, factor)

    @property
    def max_attempts(self) -> int:
        return len(self.delays) + 1

    def delay_after(self, attempts: int, rng: random.Random | None = None) -> float | None:
        """Seconds to wait after the ``attempts``-th failed attempt, or None when retries are exhausted."""
        if attempts < 1 or attempts > len(self.delays):
            return None
        factor = 1 - self.jitter * (rng or random).random()
        return self.delays[attempts - 1] * factor


# --- the delivery-log filter (AIP-160 subset) --------------------------------------------------------

_FILTER_TERM = re.compile(
    r'\s*(?P<field>state|event\.type|event\.id|create_time)\s*(?P<op><=|>=|!=|=|<|>)\s*'
    r'(?P<value>"[^"]*"|[A-Za-z_]+)\s*')
_DELIVERY_STATES = ("PENDING", "RETRYING", "SUCCEEDED", "FAILED", "SKIPPED")


@dataclass(frozen=True)
class DeliveryFilter:
    """A parsed ``filter`` of ListWebhookDeliveries: comparisons that must all hold."""

    terms: tuple[tuple[str, str, str | datetime], ...] = ()

    def matches(self, *, state: str, event_type: str, event_id: str, create_time: datetime) -> bool:
        values = {"state": state, "event.type": event_type, "event.id": event_id, "create_time": create_time}
        return all(_OPERATORS[op](values[name], expected) for name, op, expected in self.terms)


_OPERATORS = {"=": operator.eq, "!=": operator.ne, "<": operator.lt, "<=": operator.le, ">": operator.gt,
              ">=": operator.ge}


def parse_delivery_filter(text: str) -> DeliveryFilter:
    """``state = FAILED AND event.type = "haulmesh.tender.v1.offered" AND create_time >= "2026-11-24T00:00:00Z"``.

    INVALID_ARGUMENT (reason INVALID_FILTER) naming what does not parse.
    """
    def bad(description: str) -> InvalidArgument:
        return InvalidArgument(f"filter: {description}", reason="INVALID_FILTER",
                               violations=[FieldViolation("filter", description)])

    if not text.strip():
        return DeliveryFilter()
    terms: list[tuple[str, str, str | datetime]] = []
    for part in re.split(r"\s+AND\s+", text.strip()):
        match = _FILTER_TERM.fullmatch(part)
        if match is None:
            raise bad(f"cannot parse {part[:60]!r}; supported: state, event.type, event.id, create_time joined "
                      "by AND")
        field_name, op, raw = match["field"], match["op"], match["value"]
        quoted = raw.startswith('"')
        value = raw[1:-1] if quoted else raw
        if field_name == "create_time":
            if op in ("=", "!=") or not quoted:
                raise bad('create_time is compared with <, <=, >, >= against a quoted RFC 3339 time')
            try:
                when = datetime.fromisoformat(value.replace("Z", "+00:00"))
            except ValueError:
                raise bad(f"{value[:40]!r} is not an RFC 3339 time") from None
            if when.tzinfo is None:
                raise bad("the time needs a zone (Z or +hh:mm)")
            terms.append((field_name, op, when))
            continue
        if op not in ("=", "!="):
            raise bad(f"{field_name} is compared with = or != only")
        if field_name == "state":
            value = value.removeprefix("STATE_")
            if value not in _DELIVERY_STATES:
                raise bad(f"state is one of {', '.join(_DELIVERY_STATES)}")
        elif not quoted:
            raise bad(f"{field_name} is compared with a quoted string")
        terms.append((field_name, op, value))
    return DeliveryFilter(tuple(terms))
