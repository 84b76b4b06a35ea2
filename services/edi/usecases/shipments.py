"""A partner's shipment after its 990: 214s as the truck drives, the 210 once the invoice is issued.

:meth:`Shipments.follow` is the handler of the carrier event streams (consumer group ``edi-shipments``,
workers.py) for the partners' carriers:

* a mission is a partner's shipment when its tender is one a 204 of the partner created (mission → tender → the
  store's tender ↔ B2-04 link). ``mission.dispatched`` (and ``state_changed``) carry the mission; telemetry's
  events name it only, and a mission first heard of that way is read once (GetMission as service ``edi``). The
  answer is kept either way (``edi:{p}:mission:<id>``: the shipment, or none), so other missions of the carrier
  cost one lookup each;
* the shipment's 214 state (domain/_milestones.py's :class:`MilestoneState`, from the kept 204's stops: their S5
  sequence, pickup or delivery, the time zone of their ZIP, their N4 city and state) is in the store per shipment.
  Each event goes through :func:`milestones` with the partner's preferences (its ``status.events`` and X6
  cadence); what it says is one 214 (one LX per status) sent through the desk's one outbound path (control
  numbers, raw archive, record, ``out/``, tracked for the partner's 997), then the new state is saved. A
  redelivered or replayed event says nothing new: the state remembers every milestone reached, each exception id,
  the last X6's and each ETA's frame time. A crash between the send and the save re-sends that 214 on redelivery
  (at least once: a partner's 214 is a status, and a repeat of one is harmless where a lost one is not);
* positions (X6): no event carries the frames, and ``eta_updated`` (at least every 15 minutes of device time while
  the truck drives, and whenever the estimate moves) carries none either. So each ETA update of a shipment whose
  partner wants X6 reads the vehicle's last position from the roster (GetVehicle: ``last_location`` and its
  device time ``last_location_time``, which telemetry reports to it within seconds) and offers it to the rules
  as a position frame: an X6 goes when the cadence has passed in device time since the last one. A cadence
  shorter than the ETA updates' is therefore met at the ETA updates' pace;
* ``billing.invoice_issued`` for a partner's shipment → the 210 (domain/_invoicing.py's :func:`freight_invoice`
  over the event's invoice, the one issued, and the kept 204: its parties and references echoed), once per
  invoice. An invoice the 210 cannot express (:class:`InvoiceError`, naming the line) is recorded as a ``refused``
  210 and logged as an error: never dropped silently, never retried (it would fail the same way).

A 214 or 210 the writer refuses is recorded as ``refused`` before any control number is used.
"""

from __future__ import annotations

import json
import logging
from datetime import UTC, timedelta

import grpc

from haulmesh.billing.v1 import invoice_pb2
from haulmesh.events.v1 import event_pb2
from haulmesh.mission.v1 import mission_pb2
from haulmesh.telemetry.v1 import frame_pb2

from ..convert import stop_time_zone
from ..domain import (
    Delimiters,
    FunctionalGroup,
    Interchange,
    InvoiceError,
    LoadTender,
    MilestoneState,
    Partner,
    PositionFormat,
    Purpose,
    ShipmentReference,
    StatusError,
    StatusEvent,
    StatusPreferences,
    StopPlan,
    TransactionSet,
    WriteRefused,
    X12Error,
    equipment_for,
    freight_invoice,
    invoice_210,
    milestones,
    read,
    read_load_tender,
    shipment_status,
    start_milestones,
    status_214,
    stop_plans,
    write,
)
from ..store import DocumentState, detail_json
from .clients import is_transient
from .outbound import DeskBase

__all__ = ["SHIPMENT_EVENT_TYPES", "Shipments", "kept_204", "preferences_for"]

_log = logging.getLogger("haulmesh.edi")

#: The events the shipments' consumer reads.
SHIPMENT_EVENT_TYPES = frozenset({
    "haulmesh.mission.v1.dispatched", "haulmesh.mission.v1.state_changed", "haulmesh.mission.v1.exception_raised",
    "haulmesh.telemetry.v1.geofence_entered", "haulmesh.telemetry.v1.geofence_exited",
    "haulmesh.telemetry.v1.eta_updated", "haulmesh.billing.v1.invoice_issued"})
#: Calls that say the mission is not the partner's to follow (gone, or not its carrier's): remembered as such.
_NOT_OURS = frozenset({grpc.StatusCode.NOT_FOUND, grpc.StatusCode.PERMISSION_DENIED, grpc.StatusCode.INVALID_ARGUMENT})


def preferences_for(partner: Partner) -> StatusPreferences:
    """The partner's 214 habits as the milestone rules take them: its events and X6 cadence; MS1 the 204's city and
    state at a stop (what a TMS shows for its stops; lat/lon where the 204's N4 cannot be an MS1), the vehicle's
    latitude and longitude en route (no reverse geocoding here); ETAs at the rules' default threshold (the partner
    file says neither yet)."""
    return StatusPreferences(events=frozenset(partner.status_events),
                             position_minutes=partner.status_cadence_minutes, position=PositionFormat.CITYSTATE)


def kept_204(partner: Partner, transaction: TransactionSet) -> bytes | None:
    """A received 204 set as the store keeps it: alone in an interchange of its own (None when its content holds
    the default delimiters, which the partner's own may not have excluded: then nothing is kept, and the 214s and
    210 fall back on the mission and the tender)."""
    group = FunctionalGroup("SM", partner.gs_id, partner.our_gs_id, "20000101", "0000", "1", partner.version,
                            (transaction,))
    try:
        return write(Interchange(partner.isa_qualifier, partner.isa_id, partner.our_isa_qualifier,
                                 partner.our_isa_id, "000101", "0000", "000000001", groups=(group,),
                                 delimiters=Delimiters(line_end="\n")))
    except WriteRefused as exc:
        _log.warning("partner %s: 204 %s not kept for its 214s and 210 (%s)", partner.id, transaction.control, exc)
        return None


def _mission_named(event: event_pb2.Event) -> tuple[mission_pb2.Mission | None, str]:
    """The mission an event carries (or None) and its name."""
    kind = event.WhichOneof("data")
    if kind == "mission_dispatched":
        return event.mission_dispatched.mission, event.mission_dispatched.mission.name
    if kind == "mission_state_changed":
        return event.mission_state_changed.mission, event.mission_state_changed.mission.name
    if kind == "mission_exception_raised":
        return None, event.mission_exception_raised.mission
    if kind == "telemetry_geofence_entered":
        return None, event.telemetry_geofence_entered.context.mission
    if kind == "telemetry_geofence_exited":
        return None, event.telemetry_geofence_exited.context.mission
    if kind == "telemetry_eta_updated":
        return None, event.telemetry_eta_updated.mission
    return None, ""


def _position_due(state: MilestoneState, prefs: StatusPreferences, update) -> bool:
    """Whether an X6 may be due at this ETA update (its frame's device time a cadence after the last X6's): the
    roster is asked for the position only then; the rules decide the rest."""
    if not prefs.positions_wanted:
        return False
    if state.position_time is None or not update.HasField("device_time"):
        return True
    return update.device_time.ToDatetime(tzinfo=UTC) - state.position_time >= timedelta(
        minutes=prefs.position_minutes)


class Shipments(DeskBase):
    """214s from the mission's and telemetry's events, the 210 from billing's."""

    async def follow(self, event: event_pb2.Event) -> list[str]:
        """Whatever ``event`` makes due for a partner's shipment; the files sent."""
        carrier = event.carrier.removeprefix("carriers/")
        if not carrier or not any(p.carrier == carrier for p in self.partners):
            return []
        if event.WhichOneof("data") == "billing_invoice_issued":
            return await self.invoice_issued(carrier, event.billing_invoice_issued.invoice)
        mission, name = _mission_named(event)
        if not name.startswith("missions/"):
            return []
        sent: list[str] = []
        for partner in self.partners:
            if partner.carrier != carrier:
                continue
            shipment = await self._shipment_of(partner, name, mission)
            if shipment is not None:
                sent += await self._statuses(partner, shipment, event)
        return sent

    # --- which shipment --------------------------------------------------------------------------------------

    async def _shipment_of(self, partner: Partner, name: str, mission: mission_pb2.Mission | None) -> str | None:
        """The partner's B2-04 the mission ``name`` hauls, its 214 state started on first sight; None when it is
        not one of the partner's."""
        mission_id = name.removeprefix("missions/")
        known = await self.store.followed(partner.id, mission_id)
        if known is not None:
            return known or None
        if mission is None:
            if self.missions is None:
                return None
            try:
                mission = await self.missions.get(partner.carrier, name)
            except grpc.aio.AioRpcError as exc:
                if exc.code() not in _NOT_OURS:
                    raise
                await self.store.follow(partner.id, mission_id, "")
                return None
        shipment = await self.store.shipment_for(partner.id, mission.tender) if mission.tender else None
        if shipment is None:
            await self.store.follow(partner.id, mission_id, "")
            return None
        try:
            state = await self._start(partner, shipment, mission)
        except StatusError as exc:
            _log.error("partner %s: shipment %s (%s) gets no 214s: %s", partner.id, shipment, name, exc)
            await self.store.follow(partner.id, mission_id, "")
            return None
        await self.store.follow(partner.id, mission_id, shipment, json.dumps(state.to_dict()))
        _log.info("partner %s: shipment %s is %s: its 214s follow", partner.id, shipment, name)
        return shipment

    async def _start(self, partner: Partner, shipment: str, mission: mission_pb2.Mission) -> MilestoneState:
        """The shipment's 214 state before anything was said: the kept 204's stops, in the mission's order."""
        load = await self._load_tender(partner, shipment)
        stops = list(mission.stops)
        if load is not None and len(load.stops) == len(stops):
            zones = [self._zone(s.place.postal_code if s.place else "", m) for s, m in zip(load.stops, stops,
                                                                                            strict=True)]
            plans = stop_plans(load, zones)
        else:
            plans = tuple(StopPlan(i + 1, s.type == mission_pb2.Stop.TYPE_PICKUP, self._zone("", s))
                          for i, s in enumerate(stops))
        equipment = equipment_for(mission.vehicle, partner.scac) if mission.vehicle else None
        return start_milestones(mission.name, shipment, plans, equipment=equipment)

    def _zone(self, postal_code: str, stop: mission_pb2.Stop | None) -> str:
        """A stop's IANA zone: its ZIP's, else its place's market's (the lane facts), else UTC."""
        zone = stop_time_zone(postal_code, self.lanes) if postal_code else None
        if zone is None and stop is not None and stop.HasField("location"):
            zone = self.lanes.timezone_at(stop.location.lat, stop.location.lon)
        return zone or "UTC"

    async def _load_tender(self, partner: Partner, shipment: str) -> LoadTender | None:
        """The shipment's 204 as kept when its tender was created or changed (None: kept none)."""
        data = await self.store.load_tender(partner.id, shipment)
        if data is None:
            return None
        try:
            kept = read(data)[0].groups[0]
            result = read_load_tender(kept.sets[0].transaction, version=kept.group.version)
        except (IndexError, X12Error) as exc:
            _log.warning("partner %s: the kept 204 of %s does not read back: %s", partner.id, shipment, exc)
            return None
        return result if isinstance(result, LoadTender) else None

    # --- 214s ------------------------------------------------------------------------------------------------

    async def _statuses(self, partner: Partner, shipment: str, event: event_pb2.Event) -> list[str]:
        raw = await self.store.shipment_state(partner.id, shipment)
        if raw is None:
            return []
        state = MilestoneState.from_dict(json.loads(raw))
        prefs = preferences_for(partner)
        now = self.clock()
        said, state = milestones(state, event, prefs, now, zone_at=self.lanes.timezone_at)
        statuses = list(said)
        if event.WhichOneof("data") == "telemetry_eta_updated" and _position_due(state, prefs,
                                                                                  event.telemetry_eta_updated):
            frame = await self._position(partner, event.telemetry_eta_updated)
            if frame is not None:
                said, state = milestones(state, frame, prefs, now, zone_at=self.lanes.timezone_at)
                statuses += said
        sent = []
        if statuses:
            name = await self._send_214(partner, shipment, state, tuple(statuses), event.id)
            if name is not None:
                sent.append(name)
        await self.store.save_shipment_state(partner.id, shipment, json.dumps(state.to_dict()))
        return sent

    async def _position(self, partner: Partner, update) -> frame_pb2.FramePayload | None:
        """The vehicle's last reported position as a position frame of the mission (None: none known)."""
        if not update.vehicle or self.missions is None:
            return None
        try:
            vehicle = await self.missions.vehicle(update.vehicle)
        except grpc.aio.AioRpcError as exc:
            if is_transient(exc):
                raise
            _log.warning("partner %s: no position of %s for an X6: %s", partner.id, update.vehicle, exc.details())
            return None
        if not vehicle.HasField("last_location") or not vehicle.HasField("last_location_time"):
            return None
        frame = frame_pb2.FramePayload(vehicle_id=update.vehicle.removeprefix("vehicles/"),
                                       mission_id=update.mission.removeprefix("missions/"),
                                       kind=frame_pb2.FramePayload.KIND_POSITION)
        frame.position.lat, frame.position.lon = vehicle.last_location.lat, vehicle.last_location.lon
        frame.device_time.CopyFrom(vehicle.last_location_time)
        return frame

    async def _send_214(self, partner: Partner, shipment: str, state: MilestoneState,
                        statuses: tuple[StatusEvent, ...], event_id: str) -> str | None:
        load = await self._load_tender(partner, shipment)
        references = tuple(dict.fromkeys(ShipmentReference(r.qualifier, r.value) for r in load.references)) \
            if load is not None else ()
        status = shipment_status(state, statuses, scac=partner.scac, references=references)
        codes = [s.status for s in statuses]
        try:
            # refused here, before a control number is spent
            status_214(status, control="0001", version=partner.version)
        except StatusError as exc:
            _log.error("partner %s: 214 %s for %s refused by the writer: %s", partner.id, codes, shipment, exc)
            await self._refused(partner, "214", shipment, event=event_id, statuses=codes, problem=str(exc))
            return None
        return await self._send(partner, "214", shipment=shipment,
                                build=lambda st02, _now: status_214(status, control=st02,
                                                                    version=partner.version),
                                detail={"statuses": codes, "event": event_id})

    async def _refused(self, partner: Partner, kind: str, shipment: str, **detail: object) -> None:
        tender = await self.store.tender_for(partner.id, shipment) or ""
        await self._record(partner.id, {"direction": "out", "set": kind, "shipment": shipment, "tender": tender,
                                        "state": DocumentState.REFUSED.value, "detail": detail_json(**detail)})

    # --- 210 -------------------------------------------------------------------------------------------------

    async def invoice_issued(self, carrier: str, invoice: invoice_pb2.Invoice) -> list[str]:
        """The 210 of an issued invoice of a partner's shipment, once per invoice; the files sent."""
        sent = []
        invoice_id = invoice.name.rsplit("/", 1)[-1]
        for partner in self.partners:
            if partner.carrier != carrier or not invoice.tender:
                continue
            shipment = await self.store.shipment_for(partner.id, invoice.tender)
            if shipment is None or not invoice_id or await self.store.invoiced(partner.id, invoice_id):
                continue
            load = await self._load_tender(partner, shipment) or LoadTender(shipment, Purpose.ORIGINAL, ())
            last = load.deliveries[-1].place if load.deliveries else None
            zone = self._zone(last.postal_code if last else "", None)
            try:
                content = freight_invoice(invoice, load, scac=partner.scac, zone=zone)
                # refused here, before a control number is spent
                invoice_210(content, control="0001", version=partner.version)
            except InvoiceError as exc:
                _log.error("partner %s: invoice %s (%s) of shipment %s cannot be sent as a 210: %s", partner.id,
                           invoice.invoice_number, invoice.name, shipment, exc)
                await self._refused(partner, "210", shipment, invoice=invoice.name, number=invoice.invoice_number,
                                    problem=str(exc))
                await self.store.mark_invoiced(partner.id, invoice_id)
                continue
            sent.append(await self._send(partner, "210", shipment=shipment,
                                         build=lambda st02, _now, c=content, v=partner.version: invoice_210(
                                             c, control=st02, version=v),
                                         detail={"invoice": invoice.name, "number": invoice.invoice_number,
                                                 "total": str(content.total)}))
            await self.store.mark_invoiced(partner.id, invoice_id)
        return sent
