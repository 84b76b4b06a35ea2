"""Webhook rules: the destination guard, Standard Webhooks signing, secrets, the retry schedule, validation."""

from __future__ import annotations

import base64
import hashlib
import hmac
import ipaddress
import random
import time
from datetime import UTC, datetime

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from standardwebhooks import Webhook, WebhookVerificationError

from services.gateway.webhooks import domain
from services.gateway.webhooks.domain import PUBLIC_EVENT_TYPES
from services.gateway.webhooks.workers import WebhookSettings
from services.runtime import ConfigError, InvalidArgument

# --- the destination guard ---------------------------------------------------------------------------

_REFUSED_V4 = [ipaddress.ip_network(n) for n in (
    "0.0.0.0/8", "10.0.0.0/8", "100.64.0.0/10", "127.0.0.0/8", "169.254.0.0/16", "172.16.0.0/12",
    "192.0.0.0/24", "192.168.0.0/16", "198.18.0.0/15", "224.0.0.0/4", "240.0.0.0/4")]
_REFUSED_V6 = [ipaddress.ip_network(n) for n in ("::1/128", "::/128", "fc00::/7", "fe80::/10", "ff00::/8",
                                                  "fec0::/10", "2001:db8::/32")]
_PUBLIC = ["8.8.8.8", "1.1.1.1", "93.184.215.14", "2606:4700:4700::1111", "2a00:1450:4001:80b::200e"]


def _in(networks: list[ipaddress.IPv4Network | ipaddress.IPv6Network]) -> st.SearchStrategy[str]:
    def pick(network: ipaddress.IPv4Network | ipaddress.IPv6Network, offset: int) -> str:
        return str(network[offset % network.num_addresses])

    return st.builds(pick, st.sampled_from(networks), st.integers(min_value=0, max_value=2**128))


def _mapped(v4: str) -> str:
    return f"::ffff:{v4}"


def _nat64(v4: str) -> str:
    return str(ipaddress.IPv6Address(int(ipaddress.IPv6Address("64:ff9b::")) | int(ipaddress.IPv4Address(v4))))


def _sixtofour(v4: str) -> str:
    return str(ipaddress.IPv6Address((0x2002 << 112) | (int(ipaddress.IPv4Address(v4)) << 80) | 1))


@settings(deadline=None)  # timings vary on a shared machine; correctness is the point
@given(_in(_REFUSED_V4))
def test_non_public_ipv4_is_refused_in_every_disguise(address: str) -> None:
    guard = domain.DestinationGuard()
    for form in (address, _mapped(address), _nat64(address), _sixtofour(address)):
        assert not guard.permits(form), form


@settings(deadline=None)  # timings vary on a shared machine; correctness is the point
@given(_in(_REFUSED_V6))
def test_non_public_ipv6_is_refused(address: str) -> None:
    assert not domain.DestinationGuard().permits(address)


@settings(deadline=None)  # timings vary on a shared machine; correctness is the point
@given(st.ip_addresses(v=4))
def test_an_ipv4_address_and_its_mapped_form_are_judged_alike(address: ipaddress.IPv4Address) -> None:
    guard = domain.DestinationGuard()
    assert guard.permits(address) == guard.permits(_mapped(str(address))) == guard.permits(_nat64(str(address)))


@settings(deadline=None)  # timings vary on a shared machine; correctness is the point
@given(st.one_of(st.ip_addresses(v=4), st.ip_addresses(v=6)))
def test_a_permitted_address_is_a_global_unicast_one(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> None:
    if domain.DestinationGuard().permits(address):
        judged = address.ipv4_mapped or address if isinstance(address, ipaddress.IPv6Address) else address
        if isinstance(judged, ipaddress.IPv6Address) and judged in ipaddress.ip_network("64:ff9b::/96"):
            judged = ipaddress.IPv4Address(int(judged) & 0xFFFFFFFF)
        assert judged.is_global and not judged.is_multicast and not judged.is_private


def test_public_addresses_are_permitted() -> None:
    guard = domain.DestinationGuard()
    assert guard.refused(_PUBLIC) == []
    assert guard.refused([_mapped("8.8.8.8"), _nat64("8.8.8.8")]) == []


@settings(deadline=None)  # timings vary on a shared machine; correctness is the point
@given(st.integers(min_value=0, max_value=2**24 - 1))
def test_the_allow_list_admits_its_networks_only(offset: int) -> None:
    guard = domain.DestinationGuard(domain.parse_allowed_cidrs("127.0.0.0/8"))
    loopback = str(ipaddress.IPv4Address(int(ipaddress.IPv4Address("127.0.0.0")) + offset))
    assert guard.permits(loopback) and guard.permits(_mapped(loopback))
    assert not guard.permits("10.0.0.1") and not guard.permits("::1") and not guard.permits("169.254.169.254")


def test_allowed_cidrs_are_parsed_and_checked() -> None:
    assert domain.parse_allowed_cidrs(" 127.0.0.0/8, ::1/128 ,") == (ipaddress.ip_network("127.0.0.0/8"),
                                                                    ipaddress.ip_network("::1/128"))
    assert domain.parse_allowed_cidrs("") == ()
    with pytest.raises(ConfigError):
        domain.parse_allowed_cidrs("localhost")


def test_urls_are_checked_for_form_scheme_and_addresses() -> None:
    guard = domain.DestinationGuard()
    allow_local = domain.DestinationGuard(domain.parse_allowed_cidrs("127.0.0.0/8"))
    for url in ("", "ftp://example.com/", "https://", "https://user:pw@example.com/", "https://a.com/#x",
                "https://a.com/\n", "https://a.com:99999/", "https://" + "a" * 2048 + ".com/"):
        with pytest.raises(InvalidArgument):
            domain.parse_destination(url)
    destination = domain.parse_destination("https://hooks.example.com:8443/in?x=1")
    assert (destination.host, destination.port, destination.target) == ("hooks.example.com", 8443, "/in?x=1")
    domain.check_addresses(destination, ["8.8.8.8"], guard)
    with pytest.raises(InvalidArgument) as refused:
        domain.check_addresses(destination, ["8.8.8.8", "10.1.2.3"], guard)  # one bad answer is enough
    assert refused.value.violations[0].field == "url"
    with pytest.raises(InvalidArgument):
        domain.check_addresses(destination, [], guard)  # does not resolve
    plain = domain.parse_destination("http://127.0.0.1:9000/hook")
    domain.check_addresses(plain, ["127.0.0.1"], allow_local)  # http only for an allowed destination
    with pytest.raises(InvalidArgument):
        domain.check_addresses(domain.parse_destination("http://example.com/"), ["8.8.8.8"], guard)


# --- signing and secrets -----------------------------------------------------------------------------


def _independent_signature(key: bytes, message_id: str, timestamp: int, body: bytes) -> str:
    """The Standard Webhooks signature, written from the spec without the library."""
    digest = hmac.new(key, message_id.encode() + b"." + str(timestamp).encode() + b"." + body, hashlib.sha256)
    return "v1," + base64.b64encode(digest.digest()).decode()


_ids = st.text(alphabet="0123456789abcdefghjkmnpqrstvwxyz", min_size=1, max_size=26)
_keys = st.binary(min_size=24, max_size=64)
_bodies = st.text(max_size=500).map(str.encode)


@settings(deadline=None)  # timings vary on a shared machine; correctness is the point
@given(_keys, _ids, st.integers(min_value=0, max_value=2**33), _bodies)
def test_signature_matches_an_independent_implementation(key: bytes, message_id: str, timestamp: int,
                                                         body: bytes) -> None:
    assert domain.sign([key], message_id, timestamp, body) == _independent_signature(key, message_id, timestamp, body)


@settings(deadline=None)  # timings vary on a shared machine; correctness is the point
@given(st.lists(_keys, min_size=1, max_size=3), _ids, _bodies, _bodies)
def test_receivers_verify_each_key_and_reject_a_changed_body(keys: list[bytes], message_id: str, body: bytes,
                                                             other: bytes) -> None:
    timestamp = int(time.time())
    header = domain.sign(keys, message_id, timestamp, body)
    headers = {"webhook-id": message_id, "webhook-timestamp": str(timestamp), "webhook-signature": header}
    assert len(header.split(" ")) == len(keys)
    for key in keys:  # during a rotation the receiver may hold either secret
        Webhook(key).verify(body, headers, json_parse=False)
        if other != body:
            with pytest.raises(WebhookVerificationError):
                Webhook(key).verify(other, headers, json_parse=False)


@settings(deadline=None)  # timings vary on a shared machine; correctness is the point
@given(st.integers(min_value=24, max_value=64))
def test_generated_secrets_round_trip(length: int) -> None:
    secret = domain.generate_secret(length)
    assert secret.startswith("whsec_") and len(domain.parse_secret(secret, field="secret")) == length


@settings(deadline=None)  # timings vary on a shared machine; correctness is the point
@given(st.binary(max_size=100))
def test_secret_length_and_form_are_enforced(key: bytes) -> None:
    secret = "whsec_" + base64.b64encode(key).decode()
    if 24 <= len(key) <= 64:
        assert domain.parse_secret(secret, field="s") == key
    else:
        with pytest.raises(InvalidArgument):
            domain.parse_secret(secret, field="s")


def test_malformed_secrets_are_refused_without_echo() -> None:
    for secret in ("", "whsec_", "sk_" + "A" * 40, "whsec_!!!!" + "A" * 40, "whsec_" + "A" * 41):
        with pytest.raises(InvalidArgument) as caught:
            domain.parse_secret(secret, field="secret")
        assert not secret[6:] or secret[6:] not in caught.value.message


# --- event types and validation ----------------------------------------------------------------------


def test_public_event_types_follow_event_proto() -> None:
    assert "haulmesh.tender.v1.offered" in PUBLIC_EVENT_TYPES
    assert "haulmesh.mission.v1.check_in_recorded" in PUBLIC_EVENT_TYPES
    assert "haulmesh.billing.v1.invoice_reconciled" in PUBLIC_EVENT_TYPES
    assert "haulmesh.telemetry.v1.route_deviated" in PUBLIC_EVENT_TYPES
    assert not PUBLIC_EVENT_TYPES & domain.INTERNAL_EVENT_TYPES
    assert "haulmesh.mission.v1.vehicle_connectivity_changed" in PUBLIC_EVENT_TYPES
    assert "haulmesh.mission.v1.check_in_overdue" in PUBLIC_EVENT_TYPES  # the TMS hears of a missing check-in
    assert "haulmesh.telemetry.v1.road_closure_reported" not in PUBLIC_EVENT_TYPES  # the exception it raises is public
    assert len(PUBLIC_EVENT_TYPES) == 24


def test_subscription_validation_lists_every_bad_field() -> None:
    with pytest.raises(InvalidArgument) as caught:
        domain.validate_subscription(display_name="x" * 101, url="ftp://a", public=PUBLIC_EVENT_TYPES,
                                     event_types=["haulmesh.tender.v1.offered", "haulmesh.telemetry.v1.health_reported",
                                                  "nope", "haulmesh.nothing.v1.*"])
    fields = [v.field for v in caught.value.violations]
    assert fields == ["webhook_subscription.display_name", "webhook_subscription.url",
                      "webhook_subscription.event_types[1]", "webhook_subscription.event_types[2]",
                      "webhook_subscription.event_types[3]"]
    with pytest.raises(InvalidArgument):
        domain.validate_subscription(display_name="", url="https://a.com/", event_types=[], public=PUBLIC_EVENT_TYPES)
    domain.validate_subscription(display_name="ok", url="https://a.com/", public=PUBLIC_EVENT_TYPES,
                                 event_types=["*", "haulmesh.mission.v1.*", "haulmesh.tender.v1.offered"])


def test_filters_match_types_wildcards_and_never_internal_types() -> None:
    assert domain.matches(["*"], "haulmesh.tender.v1.offered")
    assert domain.matches(["haulmesh.tender.v1.*"], "haulmesh.tender.v1.offered")
    assert not domain.matches(["haulmesh.tender.v1.*"], "haulmesh.mission.v1.dispatched")
    assert not domain.matches(["haulmesh.tender.v1.accepted"], "haulmesh.tender.v1.offered")
    assert not domain.matches(["*"], "haulmesh.telemetry.v1.health_reported")


# --- outcomes and retries ----------------------------------------------------------------------------


@settings(deadline=None)  # timings vary on a shared machine; correctness is the point
@given(st.one_of(st.none(), st.integers(min_value=100, max_value=599)))
def test_attempt_outcomes(status: int | None) -> None:
    outcome = domain.classify_attempt(status)
    if status is None or status in (408, 429) or status >= 500:
        assert outcome is domain.Outcome.RETRY
    elif 200 <= status < 300:
        assert outcome is domain.Outcome.SUCCEEDED
    else:
        assert outcome is domain.Outcome.FAILED  # including 3xx: redirects are never followed


@settings(deadline=None)  # timings vary on a shared machine; correctness is the point
@given(st.integers(min_value=0, max_value=2**32))
def test_default_schedule_spans_about_a_day_within_the_proto_bounds(seed: int) -> None:
    policy = domain.RetryPolicy()
    rng = random.Random(seed)
    delays = [policy.delay_after(n, rng) for n in range(1, policy.max_attempts)]
    assert policy.delay_after(policy.max_attempts, rng) is None and policy.max_attempts <= 10
    assert all(d is not None for d in delays)
    assert 0.8 * 84965 <= sum(delays) <= 24 * 3600  # type: ignore[arg-type]
    for n, delay in enumerate(delays, start=1):
        assert 0.8 * policy.delays[n - 1] <= delay <= policy.delays[n - 1]  # type: ignore[operator]


def test_schedule_and_settings_from_environment() -> None:
    settings = WebhookSettings.from_env({"HAULMESH_WEBHOOK_RETRY_SCHEDULE_SECONDS": "0.2,0.4,0.8",
                                         "HAULMESH_WEBHOOK_RETRY_JITTER": "0",
                                         "HAULMESH_WEBHOOK_ALLOWED_CIDRS": "127.0.0.0/8"})
    assert settings.retry.delays == (0.2, 0.4, 0.8) and settings.retry.delay_after(2) == 0.4
    assert settings.guard.permits("127.0.0.1") and settings.poll_seconds == pytest.approx(0.1)
    assert WebhookSettings.from_env({}).retry == domain.RetryPolicy()
    for bad in ({"HAULMESH_WEBHOOK_RETRY_SCHEDULE_SECONDS": "a,b"},
                {"HAULMESH_WEBHOOK_RETRY_SCHEDULE_SECONDS": ",".join(["1"] * 10)},
                {"HAULMESH_WEBHOOK_TIMEOUT_SECONDS": "0"}):
        with pytest.raises(ConfigError):
            WebhookSettings.from_env(bad)


def test_only_terminal_deliveries_are_replayable() -> None:
    assert [s for s in ("PENDING", "RETRYING", "SUCCEEDED", "FAILED", "SKIPPED") if domain.replayable(s)] == [
        "SUCCEEDED", "FAILED", "SKIPPED"]


# --- the delivery-log filter (the runtime's grammar: tests/runtime/test_filters.py) --------------------

_AT = datetime(2026, 11, 24, 12, 0, tzinfo=UTC)


def _match(text: str, **values: object) -> bool:
    from services.gateway.webhooks.convert import DELIVERY_FILTER
    from services.runtime import parse_filter

    fields = {"state": "FAILED", "event.type": "haulmesh.tender.v1.offered", "event.id": "01abc", "create_time": _AT}
    fields.update({k.replace("event_", "event."): v for k, v in values.items()})
    return parse_filter(text, DELIVERY_FILTER).matches(fields)


def test_delivery_filter_supports_the_documented_subset() -> None:
    assert _match("")
    assert _match("state = FAILED") and _match("state = STATE_FAILED") and not _match("state = SUCCEEDED")
    assert _match('state != SUCCEEDED AND event.type = "haulmesh.tender.v1.offered"')
    assert not _match('event.id = "other"') and _match('event.id = "01abc"')
    assert _match('create_time >= "2026-11-24T12:00:00Z" AND create_time < "2026-11-24T12:00:01+00:00"')
    assert not _match('create_time > "2026-11-24T12:00:00Z"')
    assert _match('create_time = "2026-11-24T12:00:00Z"')  # one grammar for every list: = on times too


@pytest.mark.parametrize("text", [
    "state = BROKEN", "state < FAILED", "event.type = unquoted", 'event.type > "a"',
    'create_time > "yesterday"', 'create_time > "2026-11-24T00:00:00"',
    "url = x", "state = FAILED OR state = SKIPPED",
    "state = FAILED AND", "(state = FAILED)",
])
def test_delivery_filter_refuses_what_it_does_not_support(text: str) -> None:
    from services.gateway.webhooks.convert import DELIVERY_FILTER
    from services.runtime import parse_filter

    with pytest.raises(InvalidArgument) as caught:
        parse_filter(text, DELIVERY_FILTER)
    assert caught.value.reason == "INVALID_FILTER" and caught.value.violations[0].field == "filter"


@settings(deadline=None)  # timings vary on a shared machine; correctness is the point
@given(st.one_of(st.text(max_size=80), st.builds(lambda s, h: f"{s}://{h}/x", st.sampled_from(["https", "http"]),
                                                  st.text(max_size=40))))
def test_any_url_is_either_parsed_or_refused_as_invalid_argument(url: str) -> None:
    try:
        destination = domain.parse_destination(url)
    except InvalidArgument as exc:
        assert exc.violations[0].field == "url"
        return
    assert destination.scheme in ("https", "http") and destination.host and 0 <= destination.port <= 65535
    assert not any(c.isspace() for c in url)


@settings(deadline=None)  # timings vary on a shared machine; correctness is the point
@given(st.text(max_size=60))
def test_delivery_filter_never_crashes(text: str) -> None:
    from services.gateway.webhooks.convert import DELIVERY_FILTER
    from services.runtime import parse_filter

    try:
        parse_filter(text, DELIVERY_FILTER)
    except InvalidArgument as exc:
        assert exc.reason == "INVALID_FILTER"


async def test_a_silent_resolver_is_does_not_resolve_within_the_callers_deadline(monkeypatch) -> None:
    """A lookup that never answers ends as "does not resolve" (400) well before the 5 s default call deadline of
    the REST call that asked for it, which would otherwise expire first (504)."""
    import asyncio

    from services.gateway.webhooks.usecases import resolve

    async def silent(*_args, **_kwargs):
        await asyncio.Event().wait()

    monkeypatch.setattr(asyncio.get_running_loop(), "getaddrinfo", silent)
    assert await asyncio.wait_for(resolve("receiver.example", 443), timeout=3) == []
