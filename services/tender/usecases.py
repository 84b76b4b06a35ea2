"""The tender use cases: each reads the book, asks the rules (domain.py), asks its peers (billing prices,
mission has capacity and dispatches), and commits the tender with its event in one transaction.

:class:`Fleet` is the tender service's client of its peers; :class:`TenderBook` the tender use cases;
:class:`FacilityRegistry` the carrier's facility registry, where a tender's stops are placed from (with
:func:`zip_centroid`, the ZIP codes' centroids, as the last resort).
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import grpc
import zipcodes

from haulmesh.billing.v1 import billing_service_pb2, billing_service_pb2_grpc, quote_pb2
from haulmesh.events.v1 import tender_events_pb2
from haulmesh.mission.v1 import mission_pb2, mission_service_pb2, mission_service_pb2_grpc
from haulmesh.tender.v1 import facility_pb2, facility_service_pb2, tender_pb2, tender_service_pb2
from services.runtime import (
    FailedPrecondition,
    FieldViolation,
    Idempotency,
    InvalidArgument,
    Unavailable,
    carrier_metadata,
    decode_page,
    error_info,
    new_event,
    new_id,
    next_page_token,
    parse_filter,
    to_timestamp,
)

from . import convert, domain
from .convert import capacity_from_pb, price_from_pb
from .domain import Action, State
from .eligibility import EligibilityPolicy
from .store import UNCHANGED, FacilityStore, TenderStore, already_exists

__all__ = ["FacilityRegistry", "Fleet", "TenderBook", "zip_centroid"]

_log = logging.getLogger("haulmesh.tender")

_EVENT_FIELD = {action: f"tender_{action.value}" for action in Action}
_EVENT_TYPE = {
    Action.OFFER: tender_events_pb2.TenderOffered, Action.REJECT: tender_events_pb2.TenderRejected,
    Action.ACCEPT: tender_events_pb2.TenderAccepted, Action.DECLINE: tender_events_pb2.TenderDeclined,
    Action.LAPSE: tender_events_pb2.TenderLapsed, Action.CANCEL: tender_events_pb2.TenderCancelled,
    Action.DISPATCH_FAIL: tender_events_pb2.TenderDispatchFailed,
}


def _event(action: Action, tender_id: str, tenant: str):
    # The payload's tender is filled in by the store with the committed tender.
    return new_event(_EVENT_FIELD[action], _EVENT_TYPE[action](), subject=domain.tender_name(tender_id),
                     carrier_id=tenant, source="tender")


def _now() -> datetime:
    now = datetime.now(UTC)
    return now.replace(microsecond=now.microsecond // 1000 * 1000)


@functools.cache
def _zip_table() -> dict[str, domain.Centroid]:
    """Every US ZIP code's centroid, from the data the ``zipcodes`` package ships (offline, read once: about
    0.4 s and 42,000 codes; a lookup in the package itself scans its list, about 0.14 ms)."""
    table = {}
    for row in zipcodes.list_all():
        try:
            lat, lon = float(row["lat"]), float(row["long"])
        except (KeyError, TypeError, ValueError):
            continue  # a code without a centroid places nothing
        table[row["zip_code"]] = domain.Centroid(lat, lon, row.get("city") or "", row.get("state") or "",
                                                 row["zip_code"])
    return table


def zip_centroid(zip_code: str) -> domain.Centroid | None:
    """The centroid of a five-digit US ZIP code, None for a code the data does not know."""
    return _zip_table().get(zip_code)


def _reason_of(error: grpc.aio.AioRpcError) -> tuple[str, dict[str, str]]:
    """The ErrorInfo reason and metadata of a failed call to a peer ("" and {} when it sent none)."""
    info = error_info(error)
    return (info.reason, dict(info.metadata)) if info is not None else ("", {})


# --- the peers ------------------------------------------------------------------------------------------


class Fleet:
    """The tender service's view of its peers: prices from billing, capacity and dispatch from mission."""

    def __init__(self, billing: Callable[[], billing_service_pb2_grpc.BillingServiceStub],
                 mission: Callable[[], mission_service_pb2_grpc.MissionServiceStub]) -> None:
        self._billing = billing
        self._mission = mission

    async def quote(self, tenant: str, quote: quote_pb2.Quote, request_id: str) -> quote_pb2.Quote:
        return await self._billing().CreateQuote(
            billing_service_pb2.CreateQuoteRequest(quote=quote, request_id=request_id),
            metadata=carrier_metadata(tenant))

    async def capacity(self, tenant: str, request: mission_service_pb2.GetFleetCapacityRequest
                       ) -> mission_service_pb2.GetFleetCapacityResponse:
        return await self._mission().GetFleetCapacity(request, metadata=carrier_metadata(tenant))

    async def dispatch(self, tenant: str, mission: mission_pb2.Mission, request_id: str) -> mission_pb2.Mission:
        return await self._mission().CreateMission(
            mission_service_pb2.CreateMissionRequest(mission=mission, request_id=request_id),
            metadata=carrier_metadata(tenant))

    async def cancel_mission(self, tenant: str, name: str, reason: str) -> mission_pb2.Mission:
        return await self._mission().CancelMission(
            mission_service_pb2.CancelMissionRequest(name=name, reason=reason), metadata=carrier_metadata(tenant))

    async def get_mission(self, tenant: str, name: str) -> mission_pb2.Mission:
        return await self._mission().GetMission(mission_service_pb2.GetMissionRequest(name=name),
                                                metadata=carrier_metadata(tenant))


# --- the use cases --------------------------------------------------------------------------------------


@dataclass
class TenderBook:
    """The tender use cases: each validates, evaluates, and commits state and event together."""

    store: TenderStore
    policy: EligibilityPolicy
    fleet: Fleet
    idempotency: Idempotency
    offer_ttl: timedelta = domain.DEFAULT_OFFER_TTL
    clock: Callable[[], datetime] = _now
    #: The carrier's facility registry (placement rule 1); None: no stop is placed from a facility.
    facilities: FacilityStore | None = None
    #: ZIP code → centroid (placement rule 3).
    postal_codes: Callable[[str], domain.Centroid | None] = zip_centroid

    # --- stops ------------------------------------------------------------------------------------

    async def _place(self, tenant: str, tender: tender_pb2.Tender) -> None:
        """Place every stop not placed yet (Stop's rules), or INVALID_ARGUMENT STOP_NOT_PLACEABLE naming each
        stop that cannot be."""
        problems: list[FieldViolation] = []
        for i, stop in enumerate(tender.stops):
            if stop.location_source:
                continue  # placed before (an update that did not touch it): the place stays as it was
            path = f"tender.stops[{i}]"
            facility = None
            if stop.facility and self.facilities is not None:
                facility = await self.facilities.get(tenant, domain.parse_facility_name(stop.facility))
                if facility is None:
                    problems.append(FieldViolation(f"{path}.facility", "no facility of the carrier has this name"))
                    continue
            elif stop.facility:
                problems.append(FieldViolation(f"{path}.facility", "no facility registry here"))
                continue
            elif stop.HasField("facility_code") and self.facilities is not None:
                facility = await self.facilities.by_code(tenant, stop.facility_code)
            code = domain.zip5(stop.address)
            centroid = self.postal_codes(code) if code else None
            if not domain.place_stop(stop, facility, centroid):
                tried = [f"facility code {domain.facility_code_key(stop.facility_code)} is not registered"
                         if stop.HasField("facility_code") else "no facility",
                         "no coordinates",
                         f"ZIP code {code} is unknown" if code else
                         f"postal code {stop.address.postal_code!r} is not a US ZIP code" if stop.address.postal_code
                         else "no postal code"]
                problems.append(FieldViolation(path, "cannot be placed: " + ", ".join(tried)))
        domain.raise_not_placeable(problems)

    async def _settle_stops(self, tenant: str, tender: tender_pb2.Tender, sent: tender_pb2.Tender,
                            check: set[str]) -> None:
        """Place the stops and make the lane fields theirs (or derive the stops from the lane fields)."""
        if not tender.stops:
            if tender.HasField("origin") and tender.HasField("destination"):
                domain.derive_stops(tender)
            return
        await self._place(tenant, tender)
        domain.raise_if_invalid(domain.derive_lane_fields(tender, sent, check))

    # --- create -----------------------------------------------------------------------------------

    async def create(self, tenant: str, request: tender_service_pb2.CreateTenderRequest) -> tender_pb2.Tender:
        now = self.clock()
        domain.validate_request_id(request.request_id)
        inputs = domain.input_fields(request.tender)
        domain.raise_if_invalid(domain.validate_tender(inputs, now))
        normalised = tender_service_pb2.CreateTenderRequest(tender=inputs)
        created = False

        async def create() -> tender_pb2.Tender:
            nonlocal created
            tender = await self._create(tenant, inputs, now)
            created = True
            return tender

        result = await self.idempotency.run(f"{tenant}:CreateTender", request.request_id, normalised, create,
                                            tender_pb2.Tender)
        if request.request_id and not created:  # a retry returns the tender as it is now, not as it was created
            current = await self.store.get(tenant, result.name.removeprefix("tenders/"))
            return current or result
        return result

    async def _create(self, tenant: str, inputs: tender_pb2.Tender, now: datetime) -> tender_pb2.Tender:
        await self._refuse_open_duplicate(tenant, inputs.tms_load_id)
        tender_id = new_id()
        tender = tender_pb2.Tender()
        tender.CopyFrom(inputs)
        await self._settle_stops(tenant, tender, inputs, set(domain.LANE_FIELDS))
        tender.name = domain.tender_name(tender_id)
        tender.carrier = f"carriers/{tenant}"
        tender.state = State.STATE_PENDING
        tender.create_time.CopyFrom(to_timestamp(now))
        tender.update_time.CopyFrom(to_timestamp(now))
        evaluated = await self._evaluate(tenant, tender, now)
        action = Action.OFFER if evaluated.state == State.STATE_OFFERED else Action.REJECT
        return await self.store.create(tenant, evaluated, _event(action, tender_id, tenant))

    async def _refuse_open_duplicate(self, tenant: str, tms_load_id: str) -> None:
        open_id = await self.store.open_tender_for_load(tenant, tms_load_id)
        if open_id is not None:
            other = await self.store.get(tenant, open_id)
            if other is not None and other.state not in domain.TERMINAL_STATES:
                raise already_exists(tms_load_id, open_id)

    async def _evaluate(self, tenant: str, tender: tender_pb2.Tender, now: datetime) -> tender_pb2.Tender:
        """Eligibility, then capacity and price (concurrently), then risk: OFFERED or REJECTED."""
        a = domain.assess(tender, self.policy, now)
        if a.violations:
            return domain.evaluate(tender, a, self.policy, None, None, now, self.offer_ttl)
        window = tender.pickup_window
        capacity_request = mission_service_pb2.GetFleetCapacityRequest(
            origin=tender.origin, destination=tender.destination, equipment=tender.equipment,
            weight_lb=tender.weight_lb, night_operation=a.needs_night)
        capacity_request.pickup_window.start_time.CopyFrom(to_timestamp(a.earliest_pickup))
        capacity_request.pickup_window.end_time.CopyFrom(window.end_time)
        if tender.HasField("hazmat"):
            capacity_request.hazmat.CopyFrom(tender.hazmat)
        quote = quote_pb2.Quote(tender=tender.name, lane=a.lane, route_miles=a.route_miles,
                                equipment=tender.equipment, hazmat=tender.HasField("hazmat"))
        try:
            capacity, priced = await asyncio.gather(self.fleet.capacity(tenant, capacity_request),
                                                    self.fleet.quote(tenant, quote, new_id()))
        except grpc.aio.AioRpcError as exc:
            reason, _ = _reason_of(exc)
            _log.warning("evaluation of %s failed: %s %s %s", tender.name, exc.code().name, reason, exc.details())
            raise Unavailable(f"pricing or capacity could not be obtained ({exc.code().name}"
                              f"{' ' + reason if reason else ''}); nothing was recorded; retry with the same "
                              "request_id", reason="EVALUATION_UNAVAILABLE",
                              metadata={"cause": reason or exc.code().name}) from None
        return domain.evaluate(tender, a, self.policy, capacity_from_pb(capacity), price_from_pb(priced), now,
                               self.offer_ttl)

    # --- read -------------------------------------------------------------------------------------

    async def get(self, tenant: str, name: str) -> tender_pb2.Tender:
        return await self.store.require(tenant, domain.parse_tender_name(name))

    async def list(self, tenant: str, request: tender_service_pb2.ListTendersRequest
                   ) -> tender_service_pb2.ListTendersResponse:
        selected = parse_filter(request.filter, convert.TENDER_FILTER)
        query = f"tenders of {tenant} where {request.filter.strip()}"
        page = decode_page(request.page_size, request.page_token, query)
        since_ms, before_ms = selected.time_range_ms("create_time")
        upper = f"{before_ms:015d}" if before_ms is not None else ""
        lower = f"{since_ms:015d}" if since_ms is not None else ""
        tenders, cursor = await self.store.scan(
            tenant, page.after, page.size, lambda t: selected.matches(convert.tender_filter_values(t)),
            upper=upper, lower=lower)
        return tender_service_pb2.ListTendersResponse(tenders=tenders,
                                                      next_page_token=next_page_token(cursor, query))

    # --- update -----------------------------------------------------------------------------------

    async def update(self, tenant: str, request: tender_service_pb2.UpdateTenderRequest) -> tender_pb2.Tender:
        tender_id = domain.parse_tender_name(request.tender.name, field="tender.name")
        sent_etag = request.tender.etag
        for attempt in range(3):
            now = self.clock()
            current = await self.store.require(tenant, tender_id)
            if sent_etag and sent_etag != current.etag:
                raise domain.EtagMismatch(current.name)
            mask = list(request.update_mask.paths)
            updated, reevaluate = domain.apply_update(current, request.tender, mask, now)
            await self._settle_stops(tenant, updated, request.tender, domain.lane_fields_sent_with_stops(
                request.tender, mask))
            if current.state == State.STATE_ACCEPTED and current.mission:
                await self._refuse_if_departed(tenant, current.mission)
            action: Action | None = None
            if reevaluate:
                updated.state = State.STATE_PENDING
                updated = await self._evaluate(tenant, updated, now)
                action = Action.OFFER if updated.state == State.STATE_OFFERED else Action.REJECT
                domain.transition(current.state, action)

            def mutate(t: tender_pb2.Tender, new: tender_pb2.Tender = updated, action: Action | None = action):
                keep = (t.name, t.carrier, t.create_time, t.tms_load_id)
                t.CopyFrom(new)
                t.name, t.carrier, t.tms_load_id = keep[0], keep[1], keep[3]
                t.create_time.CopyFrom(keep[2])
                return _event(action, tender_id, tenant) if action else None

            try:
                tender, _ = await self.store.update(tenant, tender_id, mutate, etag=current.etag)
                return tender
            except domain.EtagMismatch:
                if sent_etag or attempt == 2:
                    raise
        raise AssertionError("unreachable")

    # --- transitions ------------------------------------------------------------------------------

    async def _transition(self, tenant: str, tender_id: str, action: Action, etag: str,
                          change: Callable[[tender_pb2.Tender], None] = lambda t: None
                          ) -> tuple[tender_pb2.Tender, bool]:
        target = domain.target_state(action)

        def mutate(t: tender_pb2.Tender):
            new_state, changed = domain.transition(t.state, action)
            if not changed:
                return UNCHANGED
            change(t)
            t.state = new_state
            return _event(action, tender_id, tenant)

        return await self.store.update(tenant, tender_id, mutate, etag=etag,
                                       respect_etag=lambda t: t.state != target)

    async def _lapse_if_expired(self, tenant: str, tender: tender_pb2.Tender, now: datetime) -> None:
        """If the offer has expired: LAPSED (with its event) and FAILED_PRECONDITION, OFFER_EXPIRED."""
        if not domain.offer_expired(tender, now):
            return
        tender_id = tender.name.removeprefix("tenders/")
        await self.lapse(tenant, tender_id, now)
        raise FailedPrecondition(f"the offer expired at {tender.offer.expire_time.ToJsonString()}",
                                 reason="OFFER_EXPIRED", metadata={"name": tender.name})

    async def lapse(self, tenant: str, tender_id: str, now: datetime) -> bool:
        """LAPSED if the tender is still OFFERED and its offer has expired; whether it lapsed now."""

        def mutate(t: tender_pb2.Tender):
            if not domain.offer_expired(t, now):
                return UNCHANGED
            t.state, _ = domain.transition(t.state, Action.LAPSE)
            t.state_reason = f"the offer expired at {t.offer.expire_time.ToJsonString()} without an answer"
            return _event(Action.LAPSE, tender_id, tenant)

        _, changed = await self.store.update(tenant, tender_id, mutate)
        return changed

    async def accept(self, tenant: str, request: tender_service_pb2.AcceptTenderRequest) -> tender_pb2.Tender:
        tender_id = domain.parse_tender_name(request.name)
        now = self.clock()
        current = await self.store.require(tenant, tender_id)
        await self._lapse_if_expired(tenant, current, now)
        requested = request.pickup_window if request.HasField("pickup_window") else None

        def change(t: tender_pb2.Tender) -> None:
            if domain.offer_expired(t, self.clock()):
                raise FailedPrecondition("the offer expired", reason="OFFER_EXPIRED", metadata={"name": t.name})
            t.accepted_pickup_window.CopyFrom(domain.choose_pickup_window(t, requested))
            t.accept_time.CopyFrom(to_timestamp(now))
            t.state_reason = ""

        tender, _ = await self._transition(tenant, tender_id, Action.ACCEPT, request.etag, change)
        if tender.state == State.STATE_ACCEPTED and not tender.mission:
            tender = await self._dispatch(tenant, tender)
        return tender

    async def _dispatch(self, tenant: str, tender: tender_pb2.Tender) -> tender_pb2.Tender:
        """CreateMission for an ACCEPTED tender (idempotent on the tender id); records the mission or
        DISPATCH_FAILED. A transient failure leaves the tender ACCEPTED without a mission: AcceptTender
        again re-drives the dispatch."""
        tender_id = tender.name.removeprefix("tenders/")
        try:
            created = await self.fleet.dispatch(tenant, domain.mission_for(tender), tender_id)
            mission_name = created.name
        except grpc.aio.AioRpcError as exc:
            reason, metadata = _reason_of(exc)
            if exc.code() == grpc.StatusCode.ALREADY_EXISTS and metadata.get("mission"):
                mission_name = metadata["mission"]
            elif exc.code() in {grpc.StatusCode.FAILED_PRECONDITION, grpc.StatusCode.INVALID_ARGUMENT}:
                why = f"dispatch failed: {exc.details() or reason} ({reason or exc.code().name})"

                def fail(t: tender_pb2.Tender) -> None:
                    t.state_reason = why[:500]

                result, _ = await self._transition(tenant, tender_id, Action.DISPATCH_FAIL, "", fail)
                return result
            else:
                _log.warning("dispatch of %s failed (%s %s); the tender stays ACCEPTED", tender.name,
                             exc.code().name, reason)
                return tender

        def record(t: tender_pb2.Tender):
            if t.mission == mission_name:
                return UNCHANGED
            t.mission = mission_name
            return None

        result, _ = await self.store.update(tenant, tender_id, record)
        if result.state == State.STATE_CANCELLED:  # cancelled while the dispatch was in flight
            await self._cancel_mission(tenant, result, result.state_reason or "tender cancelled")
        return result

    async def _refuse_if_departed(self, tenant: str, mission_name: str) -> None:
        """FAILED_PRECONDITION, MISSION_IN_PROGRESS, once the mission's vehicle has left the origin."""
        try:
            mission = await self.fleet.get_mission(tenant, mission_name)
        except grpc.aio.AioRpcError as exc:
            if exc.code() == grpc.StatusCode.NOT_FOUND:
                return
            raise Unavailable(f"the mission could not be read ({exc.code().name}); retry",
                              reason="EVALUATION_UNAVAILABLE") from None
        domain.refuse_if_departed(mission_name, mission)

    async def _cancel_mission(self, tenant: str, tender: tender_pb2.Tender, reason: str) -> None:
        try:
            await self.fleet.cancel_mission(tenant, tender.mission, reason)
        except grpc.aio.AioRpcError as exc:
            if exc.code() == grpc.StatusCode.NOT_FOUND:
                return
            if exc.code() == grpc.StatusCode.FAILED_PRECONDITION:
                raise FailedPrecondition(f"{tender.mission} has departed; the tender can no longer be cancelled",
                                         reason="MISSION_IN_PROGRESS", metadata={"mission": tender.mission}) from None
            raise Unavailable(f"the mission could not be cancelled ({exc.code().name}); retry",
                              reason="MISSION_UNAVAILABLE") from None

    async def cancel(self, tenant: str, request: tender_service_pb2.CancelTenderRequest) -> tender_pb2.Tender:
        tender_id = domain.parse_tender_name(request.name)
        domain.check_reason_length(request.reason, "reason")
        current = await self.store.require(tenant, tender_id)
        if current.state == State.STATE_ACCEPTED and current.mission:
            if request.etag and request.etag != current.etag:
                raise domain.EtagMismatch(current.name)
            await self._cancel_mission(tenant, current, request.reason or "tender cancelled")

        def change(t: tender_pb2.Tender) -> None:
            t.state_reason = request.reason

        tender, _ = await self._transition(tenant, tender_id, Action.CANCEL, request.etag, change)
        return tender

    async def decline(self, tenant: str, request: tender_service_pb2.DeclineTenderRequest) -> tender_pb2.Tender:
        tender_id = domain.parse_tender_name(request.name)
        domain.check_reason_length(request.comment, "comment")
        state_reason = domain.decline_state_reason(request.reason, request.comment)
        current = await self.store.require(tenant, tender_id)
        await self._lapse_if_expired(tenant, current, self.clock())

        def change(t: tender_pb2.Tender) -> None:
            t.state_reason = state_reason

        tender, _ = await self._transition(tenant, tender_id, Action.DECLINE, request.etag, change)
        return tender


# --- the facility registry ------------------------------------------------------------------------------


@dataclass
class FacilityRegistry:
    """The carrier's facilities: create (idempotent on request_id), read, list, update and delete (etags)."""

    store: FacilityStore
    idempotency: Idempotency
    clock: Callable[[], datetime] = _now

    async def create(self, tenant: str, request: facility_service_pb2.CreateFacilityRequest
                     ) -> facility_pb2.Facility:
        domain.validate_request_id(request.request_id)
        inputs = domain.facility_input(request.facility)
        violations = domain.validate_facility(inputs)
        if violations:
            raise InvalidArgument(f"invalid facility: {', '.join(v.field for v in violations[:5])}",
                                  violations=violations)
        created = False

        async def create() -> facility_pb2.Facility:
            nonlocal created
            now = to_timestamp(self.clock())
            facility = facility_pb2.Facility()
            facility.CopyFrom(inputs)
            facility.name = domain.facility_name(new_id())
            facility.carrier = f"carriers/{tenant}"
            facility.create_time.CopyFrom(now)
            facility.update_time.CopyFrom(now)
            result = await self.store.create(tenant, facility)
            created = True
            return result

        result = await self.idempotency.run(f"{tenant}:CreateFacility", request.request_id,
                                            facility_service_pb2.CreateFacilityRequest(facility=inputs), create,
                                            facility_pb2.Facility)
        if request.request_id and not created:  # a retry: the facility as it is now (if it still is)
            return await self.store.get(tenant, result.name.removeprefix("facilities/")) or result
        return result

    async def get(self, tenant: str, name: str) -> facility_pb2.Facility:
        return await self.store.require(tenant, domain.parse_facility_name(name))

    async def list(self, tenant: str, request: facility_service_pb2.ListFacilitiesRequest
                   ) -> facility_service_pb2.ListFacilitiesResponse:
        query = f"facilities of {tenant}"
        facilities, cursor = await self.store.page(tenant, decode_page(request.page_size, request.page_token, query))
        return facility_service_pb2.ListFacilitiesResponse(facilities=facilities,
                                                           next_page_token=next_page_token(cursor, query))

    async def update(self, tenant: str, request: facility_service_pb2.UpdateFacilityRequest) -> facility_pb2.Facility:
        facility_id = domain.parse_facility_name(request.facility.name, field="facility.name")
        mask = list(request.update_mask.paths)
        return await self.store.update(tenant, facility_id, request.facility.etag,
                                       lambda current: domain.apply_facility_update(current, request.facility, mask))

    async def delete(self, tenant: str, request: facility_service_pb2.DeleteFacilityRequest) -> None:
        await self.store.delete(tenant, domain.parse_facility_name(request.name), request.etag)
