"""ETA webhooks follow the subscription's ETA policy: the pure rule (hypothesis over ETA sequences), its
validation, and the dispatcher on a real Valkey (one delivery per update the policy lets through, per
(subscription, mission, stop), judged in event time)."""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import httpx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from haulmesh.events.v1 import telemetry_events_pb2 as tev
from haulmesh.gateway.v1 import webhook_pb2
from services.gateway.webhooks import domain
from services.gateway.webhooks.store import WebhookStore
from services.gateway.webhooks.workers import Dispatcher, WebhookSettings
from services.runtime import METRICS_REGISTRY, InvalidArgument, Mesh, connect_async, new_event, new_id, to_timestamp
from services.runtime.tokens import mint
from tests.conftest import wait_for

from .receiver import Receiver
from .test_webhooks_mesh import _emit

Sub = webhook_pb2.WebhookSubscription
T0 = datetime(2026, 12, 2, 6, 0, tzinfo=UTC)

# --- the rule ------------------------------------------------------------------------------------------

policies = st.builds(domain.EtaPolicy, min_change=st.integers(0, 120).map(lambda m: timedelta(minutes=m)),
                     cadence=st.integers(0, 120).map(lambda m: timedelta(minutes=m)))


@st.composite
def updates(draw: st.DrawFn) -> list[domain.EtaSent]:
    """A trip's ETA updates in event-time order: time steps of 0 s to 2 h, ETA jumps of up to ±3 h, late flips."""
    count = draw(st.integers(1, 60))
    at, eta, out = T0, T0 + timedelta(hours=12), []
    for _ in range(count):
        at += timedelta(seconds=draw(st.integers(0, 7200)))
        eta += timedelta(seconds=draw(st.integers(-3 * 3600, 3 * 3600)))
        out.append(domain.EtaSent(eta, at, draw(st.booleans())))
    return out


def _sent(policy: domain.EtaPolicy, sequence: list[domain.EtaSent]) -> list[domain.EtaSent]:
    last, sent = None, []
    for update in sequence:
        if domain.eta_to_send(policy, last, update):
            sent.append(update)
            last = update
    return sent


@given(policies, updates())
@settings(max_examples=300, deadline=None)
def test_first_always_sent_and_no_two_sends_closer_than_cadence_unless_material(policy, sequence) -> None:
    sent = _sent(policy, sequence)
    assert sent[0] is sequence[0]
    for previous, current in itertools.pairwise(sent):
        moved = abs(current.eta - previous.eta)
        material = moved >= policy.min_change or (current.late != previous.late and moved >= policy.min_change / 2)
        due = bool(policy.cadence) and current.event_time - previous.event_time >= policy.cadence
        assert material or due, (previous, current)


@given(policies, updates())
@settings(max_examples=300, deadline=None)
def test_nothing_material_or_due_is_held_back(policy, sequence) -> None:
    """The converse: an update that moved materially from the last one sent (or is due) is sent."""
    last = None
    for update in sequence:
        decision = domain.eta_to_send(policy, last, update)
        moved = None if last is None else abs(update.eta - last.eta)
        if last is None or moved >= policy.min_change or (update.late != last.late and moved >= policy.min_change / 2) \
                or (policy.cadence and update.event_time - last.event_time >= policy.cadence):
            assert decision
        if decision:
            last = update


def test_a_stale_update_is_never_sent() -> None:
    last = domain.EtaSent(T0 + timedelta(hours=5), T0 + timedelta(hours=1), False)
    older = domain.EtaSent(T0 + timedelta(hours=9), T0, True)
    assert not domain.eta_to_send(domain.DEFAULT_ETA_POLICY, last, older)


def test_an_eta_hovering_at_the_appointment_does_not_flip_past_min_change() -> None:
    """Late/on time flips every update while the ETA wobbles ±1 minute around the appointment: without
    hysteresis each flip was sent (60 webhooks); a flip counts only with half of min_change (5 min) moved."""
    policy = domain.EtaPolicy(min_change=timedelta(minutes=10), cadence=timedelta(0))
    appointment = T0 + timedelta(hours=6)
    wobble = [domain.EtaSent(appointment + timedelta(minutes=1 if i % 2 else -1), T0 + timedelta(minutes=2 * i),
                             bool(i % 2)) for i in range(60)]
    assert len(_sent(policy, wobble)) == 1
    last = domain.EtaSent(appointment - timedelta(minutes=1), T0, False)
    assert domain.eta_to_send(policy, last, domain.EtaSent(appointment + timedelta(minutes=4), T0, True))  # 5 min
    assert not domain.eta_to_send(policy, last, domain.EtaSent(appointment + timedelta(minutes=3), T0, True))


def test_default_policy_and_a_twelve_hour_trip_sends_tens_not_hundreds() -> None:
    """The demo's shape: an ETA update every 2 minutes of event time for 12 hours, drifting 2 minutes each
    (the tracker's own threshold): 360 updates, of which the default policy sends one per 10 minutes moved."""
    sequence = [domain.EtaSent(T0 + timedelta(hours=12) - timedelta(minutes=2 * i), T0 + timedelta(minutes=2 * i),
                               False) for i in range(360)]
    sent = _sent(domain.DEFAULT_ETA_POLICY, sequence)
    assert 10 <= len(sent) <= 80
    steady = [domain.EtaSent(T0 + timedelta(hours=12, minutes=i % 3), T0 + timedelta(minutes=2 * i), False)
              for i in range(360)]  # an ETA that hardly moves: the 30-minute cadence
    assert len(_sent(domain.DEFAULT_ETA_POLICY, steady)) == 24


def test_policy_of_a_subscription() -> None:
    assert domain.eta_policy_of(Sub()) == domain.DEFAULT_ETA_POLICY
    assert domain.DEFAULT_ETA_POLICY == domain.EtaPolicy(timedelta(minutes=10), timedelta(minutes=30))
    custom = Sub(eta_policy=webhook_pb2.EtaPolicy(min_change_minutes=0, cadence_minutes=0))
    assert domain.eta_policy_of(custom) == domain.EtaPolicy(timedelta(0), timedelta(0))


@pytest.mark.parametrize(("min_change", "cadence", "bad"), [
    (-1, 30, ["webhook_subscription.eta_policy.min_change_minutes"]),
    (10, 1441, ["webhook_subscription.eta_policy.cadence_minutes"]),
    (-5, -5, ["webhook_subscription.eta_policy.min_change_minutes", "webhook_subscription.eta_policy.cadence_minutes"]),
])
def test_an_invalid_policy_names_each_bad_field(min_change: int, cadence: int, bad: list[str]) -> None:
    with pytest.raises(InvalidArgument) as raised:
        domain.validate_subscription(display_name="", url="https://tms.example/hooks", event_types=["*"],
                                     public=domain.PUBLIC_EVENT_TYPES,
                                     eta_policy=webhook_pb2.EtaPolicy(min_change_minutes=min_change,
                                                                      cadence_minutes=cadence))
    assert [v.field for v in raised.value.violations] == bad


def test_an_update_may_set_or_clear_the_policy() -> None:
    current = Sub(name="webhookSubscriptions/s1", eta_policy=webhook_pb2.EtaPolicy(min_change_minutes=5))
    assert "eta_policy" in domain.update_paths(["eta_policy"], 0)
    domain.apply_update(current, Sub(eta_policy=webhook_pb2.EtaPolicy(cadence_minutes=60)), ["eta_policy"], now_ns=1)
    assert current.eta_policy.cadence_minutes == 60 and current.eta_policy.min_change_minutes == 0
    domain.apply_update(current, Sub(), ["eta_policy"], now_ns=2)
    assert not current.HasField("eta_policy")


# --- the dispatcher on a real store ----------------------------------------------------------------------


@pytest.fixture
async def store(store_url: str) -> AsyncIterator[WebhookStore]:
    client = connect_async(store_url)
    yield WebhookStore(client)
    await client.aclose()


async def _subscribe(store: WebhookStore, carrier: str, policy: webhook_pb2.EtaPolicy | None = None) -> Sub:
    subscription_id = new_id()
    subscription = Sub(name=f"webhookSubscriptions/{subscription_id}", carrier=f"carriers/{carrier}",
                       url="https://tms.example/hooks", event_types=["haulmesh.telemetry.v1.*"],
                       state=Sub.STATE_ACTIVE)
    if policy is not None:
        subscription.eta_policy.CopyFrom(policy)
    subscription.create_time.GetCurrentTime()
    return await store.create(carrier, subscription, subscription_id, domain.generate_secret())


def _eta_event(carrier: str, mission: str, minute: int, eta: datetime, *, stop: int = 1):
    data = tev.EtaUpdated(mission=mission, vehicle="vehicles/AU-TRK-1", stop_index=stop,
                          estimated_arrive_time=to_timestamp(eta),
                          device_time=to_timestamp(T0 + timedelta(minutes=minute)))
    return new_event("telemetry_eta_updated", data, subject=mission, carrier_id=carrier, source="telemetry")


def _counter(name: str) -> float:
    return METRICS_REGISTRY.get_sample_value(name) or 0.0


async def _deliveries(store: WebhookStore, carrier: str, sub: Sub) -> list[webhook_pb2.WebhookDelivery]:
    from services.runtime import Page

    found, _ = await store.list_deliveries(carrier, domain.parse_subscription_name(sub.name), Page("", 1000))
    return found


async def test_dispatcher_sends_what_each_subscriptions_policy_lets_through(store: WebhookStore) -> None:
    carrier = f"eta-{new_id()[:8]}"
    default = await _subscribe(store, carrier)
    every = await _subscribe(store, carrier, webhook_pb2.EtaPolicy(min_change_minutes=0, cadence_minutes=0))
    dispatcher = Dispatcher(store, WebhookSettings())  # not run: only its consumer side is exercised
    mission = f"missions/{new_id()}"
    # 60 updates, one per 2 minutes of event time, each 2 minutes earlier: 120 minutes of ETA movement.
    events = [_eta_event(carrier, mission, 2 * i, T0 + timedelta(hours=12, minutes=-2 * i)) for i in range(60)]
    for event in events:
        await dispatcher.handle(event)
    held_back = _counter("haulmesh_webhook_eta_held_back_total")
    duplicates = _counter("haulmesh_webhook_eta_duplicates_total")
    # A redelivery changes nothing, and counts as a duplicate for both subscriptions (`every` sent it, `default`
    # held it back): not as held back again.
    await dispatcher.handle(events[7])
    assert _counter("haulmesh_webhook_eta_held_back_total") == held_back
    assert _counter("haulmesh_webhook_eta_duplicates_total") == duplicates + 2
    other_stop = _eta_event(carrier, mission, 119, T0 + timedelta(hours=2), stop=0)
    await dispatcher.handle(other_stop)  # another stop: its own first update
    sent = await _deliveries(store, carrier, default)
    assert len(every_sent := await _deliveries(store, carrier, every)) == 61, len(every_sent)
    # The first, then every 5th (10 minutes moved), then the other stop's first.
    assert len(sent) == 1 + 59 // 5 + 1, len(sent)
    ids = {d.event.id for d in sent}
    assert events[0].id in ids and events[5].id in ids and events[4].id not in ids and other_stop.id in ids


# --- over REST, end to end -------------------------------------------------------------------------------


async def test_the_tms_sets_its_eta_policy_over_rest_and_receives_what_it_lets_through(webhook_mesh: Mesh,
                                                                                       receiver: Receiver) -> None:
    carrier = f"eta-rest-{new_id()[:6]}"
    token = mint(carrier=carrier, scopes="webhook:read webhook:write", state_dir=webhook_mesh.state_dir)
    auth = {"Authorization": f"Bearer {token}"}
    body = {"url": receiver.url(), "eventTypes": ["haulmesh.telemetry.v1.eta_updated"], "secret": receiver.secrets[0]}
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{webhook_mesh.http_port}", timeout=15) as http:
        refused = await http.post("/api/v1/webhookSubscriptions", headers=auth,
                                  json={**body, "etaPolicy": {"minChangeMinutes": -1, "cadenceMinutes": 2000}})
        assert refused.status_code == 400, refused.text
        fields = [v["field"] for d in refused.json()["details"] for v in d.get("fieldViolations", [])]
        assert fields == ["webhook_subscription.eta_policy.min_change_minutes",
                          "webhook_subscription.eta_policy.cadence_minutes"]
        created = await http.post("/api/v1/webhookSubscriptions", headers=auth,
                                  json={**body, "etaPolicy": {"minChangeMinutes": 30, "cadenceMinutes": 0}})
        assert created.status_code == 200, created.text
        assert created.json()["etaPolicy"] == {"minChangeMinutes": 30, "cadenceMinutes": 0}
    mission = f"missions/{new_id()}"
    # 20 updates, 5 minutes apart in event time, the ETA 4 minutes earlier each: sent at 0, 8, 16 (32 min moved).
    for i in range(20):
        await _emit(webhook_mesh, "telemetry_eta_updated",
                    tev.EtaUpdated(mission=mission, stop_index=1, estimated_arrive_time=to_timestamp(
                        T0 + timedelta(hours=12, minutes=-4 * i)),
                        device_time=to_timestamp(T0 + timedelta(minutes=5 * i))),
                    carrier=carrier, subject=mission)
    # A last update that moved 2 hours: once it is received, every update before it was judged (stream order).
    last = await _emit(webhook_mesh, "telemetry_eta_updated",
                       tev.EtaUpdated(mission=mission, stop_index=1, estimated_arrive_time=to_timestamp(T0),
                                      device_time=to_timestamp(T0 + timedelta(minutes=100))),
                       carrier=carrier, subject=mission)
    received = await wait_for(lambda: receiver.received if any(last.id in r.body.decode() for r in receiver.received)
                              else None, timeout_seconds=15)
    assert len(received) == 4, [r.body for r in received]
