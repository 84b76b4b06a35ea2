"""A partner's shipment after its 990, on a real Valkey with a clock of the test's own (the desk alone, no mesh:
tests/edi/service/test_trip.py drives a real truck through the mesh): the mission's and telemetry's events become
214s (X3, AF, AG for the ETA, SD with the exception's reason, X1, D1, in order), nothing twice when the events come
again, the partner's 997 accepts a 214, the unacknowledged age is the oldest's; the issued invoice becomes a 210
whose totals and references match, once; an invoice the 210 cannot express is recorded as refused; another
carrier's mission, or a mission of no 204, says nothing."""

from __future__ import annotations

from datetime import datetime, timedelta
from decimal import Decimal
from pathlib import Path

from haulmesh.billing.v1 import invoice_pb2
from haulmesh.events.v1 import event_pb2, telemetry_events_pb2
from haulmesh.mission.v1 import mission_pb2
from haulmesh.type.v1 import charge_line_pb2 as cl
from haulmesh.type.v1 import location_pb2, money_pb2
from services.edi.archive import RawArchive
from services.edi.config import PARTNERS_FILE_ENV, EdiConfig
from services.edi.domain import (
    EXCEPTION_REASONS,
    SCHEMA_210,
    SCHEMA_214,
    Delimiters,
    FunctionalGroup,
    Interchange,
    Segment,
    TransactionSet,
    from_implied,
    read,
    validate,
    write,
)
from services.edi.folders import PartnerFolders
from services.edi.store import EdiStore
from services.edi.usecases import EdiDesk
from services.edi.usecases.shipments import kept_204
from services.runtime import METRICS_REGISTRY, new_id

from .samples import Clock, load_tender_204, nothing

EXAMPLE = Path(__file__).parents[3] / "services" / "edi" / "partners.example.toml"
CARRIER = "carriers/prairie-freight"
PARTNER = "prairie-shipments"
DALLAS = location_pb2.Location(lat=32.7767, lon=-96.797)
HOUSTON = location_pb2.Location(lat=29.7594, lon=-95.3594)


def partners_file(tmp_path: Path) -> Path:
    """The example partners, prairie wanting delays (SD) and ETAs (AG) besides its milestones and positions, named
    :data:`PARTNER` here (the session's store is shared: the chaser of another test reads the partners it knows)."""
    text = EXAMPLE.read_text().replace('id = "prairie"', f'id = "{PARTNER}"')
    text = text.replace('events = ["X3", "AF", "X6", "X1", "D1"]',
                        'events = ["X3", "AF", "X6", "X1", "D1", "SD", "AG"]')
    assert '"SD", "AG"]' in text
    path = tmp_path / "partners.toml"
    path.write_text(text)
    return path


def desk_for(store: EdiStore, tmp_path: Path, clock: Clock) -> EdiDesk:
    config = EdiConfig.from_env({PARTNERS_FILE_ENV: str(partners_file(tmp_path))})
    folders = PartnerFolders(tmp_path / "edi")
    folders.ensure(p.id for p in config.partners)
    return EdiDesk(partners=config.partners, store=store, archive=RawArchive(str(tmp_path / "archive")),
                   folders=folders, tenders=None, lanes=config.lanes, durable=nothing, duplicate_window_seconds=60,
                   clock=clock)


async def tendered(desk: EdiDesk) -> tuple[str, str]:
    """A prairie shipment whose 204 made a tender (as inbound does): (B2-04, tender name)."""
    shipment, tender = f"PF-{new_id()[-8:].upper()}", f"tenders/{new_id()}"
    partner = desk.partners.get(PARTNER)
    (reading,) = read(load_tender_204(shipment))
    await desk.store.link_tender(PARTNER, shipment, tender)
    await desk.store.keep_load_tender(PARTNER, shipment, kept_204(partner, reading.groups[0].sets[0].transaction))
    return shipment, tender


def event(field: str, carrier: str = CARRIER) -> event_pb2.Event:
    out = event_pb2.Event(id=new_id(), type=f"haulmesh.{field.replace('_', '.v1.', 1)}", carrier=carrier)
    getattr(out, field).SetInParent()
    return out


def mission(name: str, tender: str, state: int, *, t0: datetime, arrived: bool = False, departed: bool = False,
            delivered: bool = False) -> mission_pb2.Mission:
    out = mission_pb2.Mission(name=name, tender=tender, state=state, vehicle="vehicles/AU-TRK-1001", stops=[
        mission_pb2.Stop(type=mission_pb2.Stop.TYPE_PICKUP, location=DALLAS),
        mission_pb2.Stop(type=mission_pb2.Stop.TYPE_DELIVERY, location=HOUSTON)])
    if arrived:
        out.stops[0].arrive_time.FromDatetime(t0)
    if departed:
        out.stops[0].depart_time.FromDatetime(t0 + timedelta(minutes=40))
    if delivered:
        out.stops[1].arrive_time.FromDatetime(t0 + timedelta(hours=4))
        out.stops[1].depart_time.FromDatetime(t0 + timedelta(hours=4, minutes=30))
        out.proof_of_delivery.manifest_details.deliver_time.FromDatetime(t0 + timedelta(hours=4, minutes=30))
    return out


def changed(m: mission_pb2.Mission) -> event_pb2.Event:
    out = event("mission_state_changed")
    out.mission_state_changed.mission.CopyFrom(m)
    return out


def dispatched(m: mission_pb2.Mission) -> event_pb2.Event:
    out = event("mission_dispatched")
    out.mission_dispatched.mission.CopyFrom(m)
    return out


def entered(name: str, stop: int, when: datetime) -> event_pb2.Event:
    out = event("telemetry_geofence_entered")
    context = out.telemetry_geofence_entered.context
    context.CopyFrom(telemetry_events_pb2.GeofenceContext(mission=name, vehicle="vehicles/AU-TRK-1001",
                                                          stop_index=stop, location=HOUSTON))
    context.device_time.FromDatetime(when)
    return out


def eta(name: str, estimate: datetime, device: datetime) -> event_pb2.Event:
    out = event("telemetry_eta_updated")
    update = out.telemetry_eta_updated
    update.mission, update.vehicle, update.stop_index = name, "vehicles/AU-TRK-1001", 1
    update.estimated_arrive_time.FromDatetime(estimate)
    update.device_time.FromDatetime(device)
    return out


def sensor_fault(name: str, tender: str, when: datetime) -> event_pb2.Event:
    out = event("mission_exception_raised")
    raised = out.mission_exception_raised
    raised.mission, raised.tender = name, tender
    raised.exception.CopyFrom(mission_pb2.MissionException(
        exception_id=new_id(), kind=mission_pb2.MissionException.KIND_SENSOR_FAULT,
        severity=mission_pb2.MissionException.SEVERITY_CRITICAL, description="LIDAR_DEGRADED"))
    raised.exception.raise_time.FromDatetime(when)
    raised.exception.location.lat, raised.exception.location.lon = 31.2, -96.1
    return out


def usd(minor: int) -> money_pb2.Money:
    return money_pb2.Money(currency_code="USD", amount_minor=minor)


def issued(name: str, tender: str, *lines: cl.ChargeLine) -> event_pb2.Event:
    out = event("billing_invoice_issued")
    invoice = out.billing_invoice_issued.invoice
    invoice.CopyFrom(invoice_pb2.Invoice(name=f"invoices/{new_id()}", invoice_number=f"HM-{new_id()[-6:]}",
                                         mission=name, tender=tender, lines=lines,
                                         total=usd(sum(x.amount.amount_minor for x in lines))))
    invoice.issue_time.GetCurrentTime()
    return out


LINEHAUL = cl.ChargeLine(type=cl.CHARGE_TYPE_LINEHAUL, code="LINEHAUL", description="Line-haul 239.1 mi",
                         quantity=239.1, unit=cl.CHARGE_UNIT_MILE, amount=usd(68144), unit_price=usd(285))
FUEL = cl.ChargeLine(type=cl.CHARGE_TYPE_FUEL_SURCHARGE, code="FUEL", description="Fuel surcharge", rate_bps=2850,
                     amount=usd(19421))


def out_files(desk: EdiDesk, kind: str) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in desk.folders.folder(PARTNER, "out").iterdir()
            if p.name.startswith(f"{kind}_")}


def only(data: bytes) -> TransactionSet:
    (reading,) = read(data)
    (group,) = reading.groups
    (set_reading,) = group.sets
    return set_reading.transaction


def statuses(transaction: TransactionSet) -> list[tuple[str, str]]:
    """(AT7-01, AT7-02) of each status, in order."""
    return [(s.get(1), s.get(2)) for s in transaction.segments if s.id == "AT7"]


async def test_a_trip_becomes_its_214s_once_and_the_invoice_its_210(store_client, tmp_path: Path) -> None:
    clock = Clock()
    desk = desk_for(EdiStore(store_client), tmp_path, clock)
    shipment, tender = await tendered(desk)
    name = f"missions/{new_id()}"
    t0 = clock.now - timedelta(hours=6)
    trip = [dispatched(mission(name, tender, mission_pb2.Mission.STATE_DISPATCHED, t0=t0)),
            changed(mission(name, tender, mission_pb2.Mission.STATE_PRE_TRIP, t0=t0, arrived=True)),
            changed(mission(name, tender, mission_pb2.Mission.STATE_ENROUTE, t0=t0, arrived=True, departed=True)),
            eta(name, t0 + timedelta(hours=4), t0 + timedelta(hours=1)),
            sensor_fault(name, tender, t0 + timedelta(hours=2)),
            entered(name, 1, t0 + timedelta(hours=4)),
            changed(mission(name, tender, mission_pb2.Mission.STATE_DELIVERED, t0=t0, arrived=True, departed=True,
                            delivered=True))]
    for e in trip:
        await desk.follow(e)
    sent = out_files(desk, "214")
    said = []
    for data in (sent[n] for n in sorted(sent)):
        transaction = only(data)
        assert validate(SCHEMA_214, transaction.segments, Delimiters()) == ()
        b10 = transaction.segments[0]
        assert (b10.id, b10.get(1), b10.get(2), b10.get(3)) == ("B10", name.removeprefix("missions/"), shipment,
                                                                "HMSH")
        assert ("BM", f"BOL-{shipment}") in [(s.get(2), s.get(1)) for s in transaction.segments if s.id == "L11"]
        said += statuses(transaction)
    # A sensor fault is a delay with its reason (EXCEPTION_REASONS: a breakdown of the vehicle's equipment).
    # The ETA the partner wants is an AG (domain/_milestones.py: the estimate as its date and time).
    assert said == [("X3", "NS"), ("AF", "NS"), ("AG", "NS"), ("SD", EXCEPTION_REASONS["SENSOR_FAULT"]),
                    ("X1", "NS"), ("D1", "NS")]
    records = [d for d in await desk.store.documents(PARTNER, limit=50)
               if d["set"] == "214" and d["shipment"] == shipment]
    assert {d["state"] for d in records} == {"awaiting_997"} and {d["tender"] for d in records} == {tender}

    counted = METRICS_REGISTRY.get_sample_value("haulmesh_edi_documents_total",
                                                {"direction": "out", "set": "214", "state": "awaiting_997"})
    assert counted is not None and counted >= len(sent)

    # The same events again (a redelivery, a replay of the stream): nothing more is sent.
    for e in trip:
        await desk.follow(e)
    assert out_files(desk, "214") == sent

    # The partner's 997 for one 214 marks it accepted.
    (record,) = [d for d in records if d["file"] == sorted(sent)[0]]
    group = FunctionalGroup("FA", "PRAIRIEFRT", "HAULMESH", "20261204", "1200", "77", "004010", (TransactionSet(
        "997", "0001", (Segment.of("AK1", "QM", record["gs06"]), Segment.of("AK2", "214", record["st02"]),
                        Segment.of("AK5", "A"), Segment.of("AK9", "A", "1", "1", "1"))),))
    answer = write(Interchange("ZZ", "PRAIRIEFRT", "ZZ", "HAULMESH", "261204", "1200", "000000077", groups=(group,),
                               delimiters=Delimiters(line_end="\n")))
    await desk.receive(desk.partners.get(PARTNER), "997.x12", answer)
    assert (await desk.store.document(PARTNER, record["id"]))["state"] == "accepted"

    # The invoice: a 210 whose totals are the lines' and whose references are the 204's; once.
    bill = issued(name, tender, LINEHAUL, FUEL)
    await desk.follow(bill)
    await desk.follow(bill)
    (data,) = out_files(desk, "210").values()
    transaction = only(data)
    assert validate(SCHEMA_210, transaction.segments, Delimiters()) == ()
    segments = {s.id: s for s in transaction.segments}
    invoice = bill.billing_invoice_issued.invoice
    assert segments["B3"].get(2) == invoice.invoice_number and segments["B3"].get(3) == shipment
    assert from_implied(segments["B3"].get(7)) == from_implied(segments["L3"].get(5)) == Decimal("875.65")
    assert sum(from_implied(s.get(4)) for s in transaction.segments if s.id == "L1") == Decimal("875.65")
    assert {(s.get(1), s.get(2)) for s in transaction.segments if s.id == "N9"} >= {
        ("BM", f"BOL-{shipment}"), ("PO", "PO-55120")}
    (record,) = [d for d in await desk.store.documents(PARTNER, limit=50)
                 if d["set"] == "210" and d["shipment"] == shipment]
    assert record["state"] == "awaiting_997" and record["shipment"] == shipment

    # 45 minutes without the other 997s: the chaser says how old the oldest unacknowledged document is (the
    # alert's metric, by its exported name), and the unanswered 214s are overdue.
    clock.advance(45)
    await desk.chase_acknowledgements()
    age = METRICS_REGISTRY.get_sample_value("haulmesh_edi_unacknowledged_oldest_age_seconds")
    assert age is not None and age >= 45 * 60
    states = {d["file"]: d["state"] for d in await desk.store.documents(PARTNER, limit=50)
              if d.get("shipment") == shipment and d["set"] in ("214", "210")}
    assert sorted(states.values()) == ["accepted", *["overdue"] * (len(states) - 1)]


async def test_an_invoice_the_210_cannot_express_is_recorded_refused(store_client, tmp_path: Path) -> None:
    desk = desk_for(EdiStore(store_client), tmp_path, Clock())
    shipment, tender = await tendered(desk)
    untyped = cl.ChargeLine(code="MYSTERY", amount=usd(1000))
    await desk.follow(issued(f"missions/{new_id()}", tender, LINEHAUL, untyped))
    assert out_files(desk, "210") == {}
    (record,) = [d for d in await desk.store.documents(PARTNER, limit=50)
                 if d["set"] == "210" and d["shipment"] == shipment]
    assert record["state"] == "refused" and record["shipment"] == shipment
    assert "line 2 MYSTERY" in record["detail"]


async def test_missions_of_no_partner_shipment_saynothing(store_client, tmp_path: Path) -> None:
    clock = Clock()
    desk = desk_for(EdiStore(store_client), tmp_path, clock)
    _, tender = await tendered(desk)
    t0 = clock.now - timedelta(hours=1)
    other = f"missions/{new_id()}"
    # A mission of a tender no 204 made (the carrier's REST tenders), and the 204's mission on another carrier's
    # stream (never: a tender is its carrier's): no 214.
    await desk.follow(dispatched(mission(other, f"tenders/{new_id()}", 1, t0=t0)))
    await desk.follow(changed(mission(other, f"tenders/{new_id()}", 3, t0=t0, arrived=True, departed=True)))
    mine = f"missions/{new_id()}"
    foreign = dispatched(mission(mine, tender, 1, t0=t0))
    foreign.carrier = "carriers/someone-else"
    await desk.follow(foreign)
    assert out_files(desk, "214") == {}
    assert await desk.store.followed(PARTNER, other.removeprefix("missions/")) == ""
