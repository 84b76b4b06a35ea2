"""Events → the facts' hash fields → domain facts: what a snapshot says survives the store, in any order."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from google.protobuf import timestamp_pb2
from hypothesis import given
from hypothesis import strategies as st

from haulmesh.billing.v1 import invoice_pb2
from haulmesh.mission.v1 import mission_pb2
from haulmesh.tender.v1 import tender_pb2
from haulmesh.type.v1 import lane_pb2, money_pb2, time_window_pb2
from services.billing.domain import Lane, Money
from services.billing.reports import convert
from services.billing.reports.domain import Invoiced, Telemetry

Mission = mission_pb2.Mission
Exc = mission_pb2.MissionException
LANE = lane_pb2.Lane(origin_region="US-TX-HOU", destination_region="US-GA-ATL")


def ts(ms: int) -> timestamp_pb2.Timestamp:
    stamp = timestamp_pb2.Timestamp()
    stamp.FromMilliseconds(ms)
    return stamp


times = st.integers(-10**12, 4 * 10**12)  # before 1970 too: the fields must not depend on a sign
states = st.sampled_from(list(Mission.State.values()))


@given(times, st.none() | times, times, times, st.none() | times, states,
       st.lists(st.tuples(st.sampled_from(list(Exc.Kind.values())), st.sampled_from(list(Exc.Contingency.values()))),
                max_size=4))
def test_a_mission_snapshot_round_trips(dispatch, ack, start, end, arrive, state, exceptions) -> None:
    mission = Mission(name="missions/m", lane=LANE, state=state, dispatch_time=ts(dispatch), stops=[
        mission_pb2.Stop(type=mission_pb2.Stop.TYPE_PICKUP, arrive_time=ts(dispatch + 1)),
        mission_pb2.Stop(type=mission_pb2.Stop.TYPE_DELIVERY, planned_window=time_window_pb2.TimeWindow(
            start_time=ts(start), end_time=ts(end)))],
        exceptions=[Exc(exception_id=f"exc-{i}", kind=k, contingency=c) for i, (k, c) in enumerate(exceptions)])
    if ack is not None:
        mission.dispatch_ack_time.CopyFrom(ts(ack))
    if arrive is not None:
        mission.stops[1].arrive_time.CopyFrom(ts(arrive))
    fields, index = convert.mission_fields(mission)
    assert index == dispatch
    facts = convert.mission_facts("m", {k: str(v) for k, v in fields.items()})
    assert (facts.lane, facts.dispatch_ms, facts.ack_ms) == (Lane("US-TX-HOU", "US-GA-ATL"), dispatch, ack)
    assert facts.delivery_window_ms == (start, end) and facts.delivery_arrive_ms == arrive  # not the pickup's
    terminal = {Mission.STATE_COMPLETED: "COMPLETED", Mission.STATE_ABORTED: "ABORTED",
                Mission.STATE_CANCELLED: "CANCELLED"}
    assert facts.outcome == terminal.get(state)
    assert facts.exceptions == {f"exc-{i}": (Exc.Kind.Name(k).removeprefix("KIND_"),
                                             Exc.Contingency.Name(c).removeprefix("CONTINGENCY_"))
                                for i, (k, c) in enumerate(exceptions)}


def test_events_merge_in_any_order() -> None:
    dispatched = Mission(name="missions/m", lane=LANE, state=Mission.STATE_DISPATCHED, dispatch_time=ts(1000))
    done = Mission(name="missions/m", lane=LANE, state=Mission.STATE_COMPLETED, dispatch_time=ts(1000),
                   dispatch_ack_time=ts(6000))
    takeover = Exc(exception_id="exc-1", kind=Exc.KIND_CARGO, contingency=Exc.CONTINGENCY_HUMAN_TAKEOVER)
    invoice = invoice_pb2.Invoice(mission="missions/m", total=money_pb2.Money(currency_code="USD", amount_minor=900),
                                  usage=invoice_pb2.Usage(miles=3.5, provenance=invoice_pb2.UsageProvenance(
                                      frame_count=10, frames_missing=1, freshness_p95_seconds=0.8)))
    parts = [convert.mission_fields(dispatched)[0], convert.mission_fields(done)[0],
             convert.exception_fields(takeover), convert.invoice_fields(invoice)]
    merged_forward: dict[str, str] = {}
    merged_backward: dict[str, str] = {}
    for part in parts:
        merged_forward.update(part)
    for part in reversed(parts):
        merged_backward.update(part)
    assert merged_forward == merged_backward  # every field means one thing: order does not matter
    facts = convert.mission_facts("m", merged_forward)
    assert (facts.outcome, facts.ack_ms) == ("COMPLETED", 6000)
    assert facts.exceptions == {"exc-1": ("CARGO", "HUMAN_TAKEOVER")}
    assert facts.invoice == Invoiced(3.5, Money("USD", 900))
    assert facts.telemetry == Telemetry(10, 1, 800)


def test_an_invoice_without_provenance_or_freshness_says_so() -> None:
    invoice = invoice_pb2.Invoice(total=money_pb2.Money(currency_code="USD", amount_minor=1), usage=invoice_pb2.Usage(
        miles=1.0))
    assert "tel_frames" not in convert.invoice_fields(invoice)
    invoice.usage.provenance.frame_count = 5
    fields = convert.invoice_fields(invoice)
    assert fields["tel_frames"] == "5" and "tel_fresh_p95_ms" not in fields  # 0 s: not measured


def test_a_tender_keeps_its_first_offer() -> None:
    created = datetime(2026, 11, 1, tzinfo=UTC)
    tender = tender_pb2.Tender(name="tenders/t", lane=LANE, create_time=ts(int(created.timestamp() * 1000)),
                               offer=tender_pb2.Offer(create_time=ts(int((created + timedelta(
                                   milliseconds=250)).timestamp() * 1000))))
    fields, once, create_ms = convert.tender_fields(tender)
    facts = convert.tender_facts("t", {**fields, **once})
    assert facts.offer_ms - facts.create_ms == 250 and create_ms == facts.create_ms
    assert set(once) == {"offer"}  # written only if absent (store.record_tender): a re-offer keeps the first
    assert convert.tender_facts("t", {"lane": "US-TX-HOU>US-GA-ATL"}) is None  # no creation time: not countable
