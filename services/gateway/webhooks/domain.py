"""The webhook service's rules: subscriptions and their deliveries. Plain Python: no gRPC, no Redis, no I/O.

What lives here: the subscription rules (URL, event types, secret, display name, what an update may change,
secret rotation), Standard Webhooks signing, the retry schedule, the classification of an attempt's outcome
and the delivery-log filter. The destination guard against server-side request forgery is in
destinations.py (re-exported here). Subscriptions and deliveries are the generated messages of
protos/haulmesh/gateway/v1/webhook.proto, which is also the spec.
"""

from __future__ import annotations

import base64
import binascii
import random
import re
import secrets
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from enum import Enum

from standardwebhooks import Webhook

from haulmesh.events.v1 import event_pb2
from haulmesh.gateway.v1 import webhook_pb2
from services.runtime import ConfigError, FieldViolation, InvalidArgument, ResourceExhausted, new_id, parse_name

from .destinations import (
    Destination,
    DestinationGuard,
    check_addresses,
    check_scheme,
    parse_allowed_cidrs,
    parse_destination,
)

__all__ = [
    "DEFAULT_ETA_POLICY",
    "DEFAULT_OVERLAP_SECONDS",
    "DEFAULT_RETRY_DELAYS_SECONDS",
    "ETA_EVENT_TYPE",
    "INTERNAL_EVENT_TYPES",
    "MAX_SUBSCRIPTIONS",
    "PUBLIC_EVENT_TYPES",
    "SECRET_PREFIX",
    "Destination",
    "DestinationGuard",
    "EtaPolicy",
    "EtaSent",
    "Outcome",
    "RetryPolicy",
    "SigningKey",
    "SubscriptionLimitReached",
    "apply_update",
    "check_addresses",
    "check_new_state",
    "check_overlap",
    "check_scheme",
    "classify_attempt",
    "eta_policy_of",
    "eta_policy_violations",
    "eta_to_send",
    "event_type_for_field",
    "generate_secret",
    "parse_allowed_cidrs",
    "parse_delivery_name",
    "parse_destination",
    "parse_secret",
    "parse_subscription_name",
    "public_event_types",
    "replayable",
    "rotate_keys",
    "sign",
    "suspend",
    "touch",
    "update_paths",
    "validate_subscription",
]

Subscription = webhook_pb2.WebhookSubscription
#: At most this many subscriptions per carrier (webhook_service.proto).
MAX_SUBSCRIPTIONS = 20
MAX_DISPLAY_NAME = 100
MAX_EVENT_TYPES = 100
SECRET_PREFIX = "whsec_"  # noqa: S105 - the Standard Webhooks prefix, not a secret
SECRET_BYTES = (24, 64)

#: Event types event.proto marks "(internal)": consumed by Haulmesh services, never delivered to webhooks.
INTERNAL_EVENT_TYPES = frozenset({
    "haulmesh.telemetry.v1.health_reported",
    "haulmesh.telemetry.v1.fault_reported",
    "haulmesh.telemetry.v1.command_acknowledged",
    "haulmesh.telemetry.v1.road_closure_reported",
    "haulmesh.telemetry.v1.law_enforcement_stop_reported",
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


#: Public event types: every ``Event.data`` field but those event.proto marks internal.
PUBLIC_EVENT_TYPES = public_event_types(f.name for f in event_pb2.Event.DESCRIPTOR.oneofs_by_name["data"].fields)


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


# --- subscriptions -----------------------------------------------------------------------------------


def validate_subscription(*, display_name: str, url: str, event_types: Sequence[str], public: frozenset[str],
                          prefix: str = "webhook_subscription.", check: Iterable[str] = ("display_name", "url",
                                                                                           "event_types",
                                                                                           "eta_policy"),
                          eta_policy: webhook_pb2.EtaPolicy | None = None) -> Destination | None:
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
    if "eta_policy" in wanted and eta_policy is not None:
        violations.extend(eta_policy_violations(eta_policy, prefix=f"{prefix}eta_policy."))
    if violations:
        raise InvalidArgument("the webhook subscription is invalid: "
                              + "; ".join(f"{v.field}: {v.description}" for v in violations),
                              reason="INVALID_ARGUMENT", violations=violations)
    return destination


_PREFIX = "webhook_subscription."
#: The fields UpdateWebhookSubscription may change (the secret only through RotateWebhookSecret).
UPDATABLE = ("display_name", "url", "event_types", "state", "eta_policy")
#: The states a carrier may set; SUSPENDED is the service's own.
SETTABLE_STATES = (Subscription.STATE_ACTIVE, Subscription.STATE_PAUSED)
DEFAULT_OVERLAP_SECONDS = 86400
MAX_OVERLAP_SECONDS = 7 * 86400


def check_new_state(state: int) -> None:
    """A new subscription is created ACTIVE (unspecified) or PAUSED."""
    if state not in (Subscription.STATE_UNSPECIFIED, *SETTABLE_STATES):
        raise InvalidArgument("a new subscription is ACTIVE or PAUSED", reason="INVALID_ARGUMENT",
                              violations=[FieldViolation(f"{_PREFIX}state", "ACTIVE or PAUSED")])


def update_paths(mask_paths: Sequence[str], state: int) -> list[str]:
    """The fields an update changes (an empty mask or ``*``: every updatable one); INVALID_ARGUMENT for a
    field that cannot be updated, or a ``state`` other than ACTIVE or PAUSED."""
    paths = list(mask_paths)
    if not paths or paths == ["*"]:
        paths = list(UPDATABLE)
    wrong = [p for p in paths if p not in UPDATABLE]
    if wrong:
        raise InvalidArgument(f"update_mask may name {', '.join(UPDATABLE)} only (secret: use "
                              "RotateWebhookSecret)", reason="INVALID_ARGUMENT",
                              violations=[FieldViolation("update_mask.paths", f"{p!r} is not updatable")
                                          for p in wrong])
    explicit_state = "state" in mask_paths
    if "state" in paths and not (state in SETTABLE_STATES
                                 or (state == Subscription.STATE_UNSPECIFIED and not explicit_state)):
        raise InvalidArgument("state may be set to ACTIVE or PAUSED only", reason="INVALID_ARGUMENT",
                              violations=[FieldViolation(f"{_PREFIX}state", "ACTIVE or PAUSED")])
    return paths


def apply_update(current: webhook_pb2.WebhookSubscription, given: webhook_pb2.WebhookSubscription,
                 paths: Iterable[str], *, now_ns: int) -> None:
    """Copy the ``paths`` of ``given`` onto ``current`` (an unspecified state leaves the state as it is)."""
    for path in paths:
        if path == "event_types":
            del current.event_types[:]
            current.event_types.extend(given.event_types)
        elif path == "eta_policy":
            # An unset policy in the request goes back to the default (an unset field).
            current.ClearField("eta_policy")
            if given.HasField("eta_policy"):
                current.eta_policy.CopyFrom(given.eta_policy)
        elif path != "state" or given.state != Subscription.STATE_UNSPECIFIED:
            setattr(current, path, getattr(given, path))
    touch(current, now_ns=now_ns)


def touch(subscription: webhook_pb2.WebhookSubscription, *, now_ns: int) -> None:
    """Mark a subscription changed: new update time and etag."""
    subscription.update_time.FromNanoseconds(now_ns)
    subscription.etag = new_id()


def suspend(subscription: webhook_pb2.WebhookSubscription, *, now_ns: int) -> bool:
    """SUSPENDED after a whole window of failures; never overrides the carrier's PAUSED. Whether it changed."""
    if subscription.state != Subscription.STATE_ACTIVE:
        return False
    subscription.state = Subscription.STATE_SUSPENDED
    touch(subscription, now_ns=now_ns)
    return True


@dataclass(frozen=True)
class SigningKey:
    """A subscription's secret (``whsec_...``); ``until_ms`` is 0 for the current one, else its expiry."""

    secret: str
    until_ms: int = 0


def check_overlap(seconds: int) -> None:
    """A rotation keeps the previous secret valid for 0 to 7 days."""
    if not 0 <= seconds <= MAX_OVERLAP_SECONDS:
        raise InvalidArgument("overlap must be 0 to 7 days", reason="INVALID_ARGUMENT",
                              violations=[FieldViolation("overlap", "0 to 7 days")])


def rotate_keys(keys: Sequence[SigningKey], new_secret: str, *, overlap_seconds: int,
                now_ms: int) -> list[SigningKey]:
    """The keys after a rotation: ``new_secret``, and the current one until the overlap ends (if any)."""
    rotated = [SigningKey(new_secret)]
    previous = next((k for k in keys if k.until_ms == 0), None)
    if previous is not None and overlap_seconds > 0:
        rotated.append(SigningKey(previous.secret, now_ms + overlap_seconds * 1000))
    return rotated


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


# --- ETA webhooks: the per-subscription policy -----------------------------------------------------------

#: The event type the ETA policy applies to (every other type is delivered as it comes).
ETA_EVENT_TYPE = "haulmesh.telemetry.v1.eta_updated"
#: Bounds of both policy fields, in minutes (a day).
MAX_ETA_POLICY_MINUTES = 1440


@dataclass(frozen=True, slots=True)
class EtaPolicy:
    """When an ETA update for a (mission, stop) is worth a webhook (webhook.proto's EtaPolicy).

    ``min_change`` zero: every change is material; ``cadence`` zero: no cadence.
    """

    min_change: timedelta
    cadence: timedelta


#: The policy of a subscription that sets none: a material change is 10 minutes, and a TMS hears at least
#: every 30 minutes of the trip while the estimate drifts less than that (a TMS's usual check-call rhythm,
#: instead of one update per 2-minute move: 410 webhooks for the demo's 778-mile trip before this policy).
DEFAULT_ETA_POLICY = EtaPolicy(min_change=timedelta(minutes=10), cadence=timedelta(minutes=30))


def eta_policy_violations(policy: webhook_pb2.EtaPolicy, *, prefix: str = "webhook_subscription.eta_policy."
                          ) -> list[FieldViolation]:
    """Field violations of an EtaPolicy (empty when valid): both fields 0 to 1440 minutes."""
    problems = []
    for name in ("min_change_minutes", "cadence_minutes"):
        value = getattr(policy, name)
        if not 0 <= value <= MAX_ETA_POLICY_MINUTES:
            problems.append(FieldViolation(f"{prefix}{name}", f"must be 0 to {MAX_ETA_POLICY_MINUTES} minutes, "
                                                              f"got {value}"))
    return problems


def eta_policy_of(subscription: webhook_pb2.WebhookSubscription) -> EtaPolicy:
    """The subscription's policy (the default when it sets none)."""
    if not subscription.HasField("eta_policy"):
        return DEFAULT_ETA_POLICY
    given = subscription.eta_policy
    return EtaPolicy(min_change=timedelta(minutes=given.min_change_minutes),
                     cadence=timedelta(minutes=given.cadence_minutes))


@dataclass(frozen=True, slots=True)
class EtaSent:
    """The last ETA sent to a subscription for one (mission, stop): the estimate, its event time, late or not."""

    eta: datetime
    event_time: datetime
    late: bool


def eta_to_send(policy: EtaPolicy, last: EtaSent | None, update: EtaSent) -> bool:
    """Whether ``update`` is sent, given the ``last`` one sent for its (subscription, mission, stop).

    The first is always sent; one older (in event time) than the last sent never is; otherwise it is sent
    when the estimate moved by at least ``min_change`` (zero: any move), when it turns late or on time
    again and also moved by at least half of ``min_change`` (hysteresis: an ETA hovering at the
    appointment would otherwise flip late/on time on every small move and bypass ``min_change``), or when
    ``cadence`` (if not zero) of event time passed since the last one sent. Event time is the device time
    of the frame behind the estimate, so a replayed backlog or a sped-up simulation is judged like the trip
    itself.
    """
    if last is None:
        return True
    if update.event_time < last.event_time:
        return False  # a stale update (redelivered or reordered): the TMS has a newer one
    moved = abs(update.eta - last.eta)
    if update.late != last.late and moved >= policy.min_change / 2:
        return True
    if moved >= policy.min_change:
        return True
    return bool(policy.cadence) and update.event_time - last.event_time >= policy.cadence
