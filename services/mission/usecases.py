"""The mission service's use cases: read, ask :mod:`.domain`, commit with the outbox, call billing.

Every transition reads the mission, asks the domain what the change is, and commits the new mission with
the events announcing it in one transaction (:meth:`MissionStore.update_mission`). Vehicles live in the
fleet's slot, missions in the carrier's: dispatch reserves the vehicle first and gives it back if the
mission cannot be written; terminal states free it after the mission commit (and again, idempotently,
from the event consumer in :mod:`.workers`, so a crash in between cannot strand a vehicle).

Requests arrive decoded and checked (:mod:`.server` runs the domain's field checks), except CreateMission,
whose checks run inside its idempotent dispatch.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta

import grpc
from google.protobuf import duration_pb2
from google.protobuf.timestamp_pb2 import Timestamp

from haulmesh.billing.v1 import billing_service_pb2, billing_service_pb2_grpc
from haulmesh.events.v1 import event_pb2, mission_events_pb2
from haulmesh.mission.v1 import mission_pb2, mission_service_pb2, vehicle_pb2
from haulmesh.telemetry.v1 import telemetry_service_pb2, telemetry_service_pb2_grpc
from haulmesh.type.v1 import health_check_pb2, lane_pb2
from services.runtime import (
    AlreadyExists,
    FailedPrecondition,
    FieldViolation,
    Idempotency,
    InvalidArgument,
    NotFound,
    Unavailable,
    carrier_metadata,
    check_etag,
    decode_page,
    from_timestamp,
    new_event,
    new_id,
    next_page_token,
    parse_filter,
    to_timestamp,
)

from . import convert, domain
from .config import MissionSettings
from .domain import Action, CapacityQuery, CapacityWindow, Load, VehicleView, parse_mission_name, parse_vehicle_name
from .metrics import record_dispatch_ack, record_dispute_escalated, record_finished
from .store import MissionStore

__all__ = ["MissionUseCases"]

Mission = mission_pb2.Mission
MissionException = mission_pb2.MissionException
#: One change of a mission: (the mission as read, the announcer of its events, now) → whether it changed.
Apply = Callable[[Mission, "_Announcer", datetime], bool]
_log = logging.getLogger("haulmesh.mission")


def _now() -> datetime:
    return datetime.now(UTC)


def _mission_not_found(name: str) -> NotFound:
    return NotFound(f"{name} does not exist", reason="MISSION_NOT_FOUND", metadata={"name": name})


class MissionUseCases:
    """Roster and mission use cases, and the billing hand-off and vehicle release that follow delivery."""

    def __init__(self, store: MissionStore, settings: MissionSettings,
                 billing: Callable[[], billing_service_pb2_grpc.BillingServiceStub] | None = None,
                 telemetry: Callable[[], telemetry_service_pb2_grpc.TelemetryServiceStub] | None = None) -> None:
        # ``billing`` and ``telemetry`` give the stub per call: the runtime's channels follow certificate
        # rotation. Without ``telemetry`` (tests of the hand-off alone) usage is the recorded times and planned
        # miles and a proof's telemetry log is not checked (its verification stays RESULT_UNSPECIFIED).
        self._store = store
        self._settings = settings
        self._billing = billing
        self._telemetry = telemetry
        self._idempotency = Idempotency(store.redis)

    # --- vehicles ------------------------------------------------------------------------------------

    async def create_vehicle(self, vehicle_id: str, given: vehicle_pb2.Vehicle) -> vehicle_pb2.Vehicle:
        vehicle = vehicle_pb2.Vehicle(
            name=f"vehicles/{vehicle_id}", display_name=given.display_name, vin=given.vin,
            capabilities=given.capabilities, home_region=given.home_region,
            availability=given.availability or vehicle_pb2.Vehicle.AVAILABILITY_AVAILABLE, etag=new_id())
        vehicle.create_time.GetCurrentTime()
        vehicle.update_time.CopyFrom(vehicle.create_time)
        return await self._store.create_vehicle(vehicle_id, vehicle)

    async def get_vehicle(self, name: str) -> vehicle_pb2.Vehicle:
        vehicle = await self._store.get_vehicle(parse_vehicle_name(name))
        if vehicle is None:
            raise NotFound(f"{name} does not exist", reason="VEHICLE_NOT_FOUND", metadata={"name": name})
        return vehicle

    async def list_vehicles(self, filter_text: str, page_size: int, page_token: str
                            ) -> tuple[list[vehicle_pb2.Vehicle], str]:
        """One page of the roster that ``filter_text`` selects, and the next page's token."""
        selected = parse_filter(filter_text, convert.VEHICLE_FILTER)
        query = f"vehicles|{filter_text}"
        page = decode_page(page_size, page_token, query)
        keep = (lambda v: selected.matches(convert.vehicle_filter_values(v))) if selected else None
        vehicles, cursor = await self._store.list_vehicles(page, keep)
        return vehicles, next_page_token(cursor, query)

    async def update_vehicle(self, vehicle_id: str, given: vehicle_pb2.Vehicle, paths: Sequence[str]
                             ) -> vehicle_pb2.Vehicle:
        def mutate(vehicle: vehicle_pb2.Vehicle) -> bool:
            check_etag(given.etag, vehicle.etag, vehicle.name)
            return domain.update_vehicle(vehicle, given, paths)

        return await self._store.update_vehicle(vehicle_id, mutate)

    async def fleet_capacity(self, query: CapacityQuery) -> tuple[lane_pb2.Lane, list[CapacityWindow], int]:
        """The lane asked about, the windows in which eligible vehicles can be at the origin, and how many
        roster vehicles could take the load at all."""
        vehicles = [self._view(v) for v in await self._store.all_vehicles()]
        lanes = self._settings.lanes
        windows, eligible = domain.capacity_windows(vehicles, query.load, query.origin, query.start, query.end,
                                                    _now(), lanes)
        return domain.lane_between(query.origin, query.destination, lanes), windows, eligible

    # --- fleet state from telemetry ------------------------------------------------------------------

    async def report_fleet_state(self, observations: list[domain.Observation],
                                 rejected: Sequence[domain.Rejected] = ()
                                 ) -> mission_service_pb2.ReportFleetStateResponse:
        """Record telemetry's observations (domain.fleet): the vehicles in one transaction, newest wins; an idle
        vehicle's connectivity change announced on the fleet's stream only (vehicles are not exposed to
        carriers; a vehicle on a mission is its carrier's through telemetry's mission-scoped events); then each
        mission's ETAs, when they moved materially. ``rejected`` entries (invalid fields) are listed back."""
        by_id = {o.vehicle_id: o for o in observations}

        def observe(vehicle: vehicle_pb2.Vehicle) -> list[event_pb2.Event] | None:
            changed, change = domain.apply_observation(vehicle, by_id[vehicle.name.removeprefix("vehicles/")])
            if not changed:
                return None
            if change is None or change.current_mission:
                return []  # a vehicle on a mission: telemetry's connectivity_lost / _restored tell its carrier
            payload = mission_events_pb2.VehicleConnectivityChanged(
                vehicle=vehicle.name, connectivity=change.current, previous_connectivity=change.previous)  # type: ignore[arg-type]
            payload.last_seen_time.CopyFrom(vehicle.last_seen_time)
            if change.location is not None:
                payload.last_location.CopyFrom(change.location)
            return [new_event("mission_vehicle_connectivity_changed", payload, subject=vehicle.name,
                              carrier_id=None, source="mission")]  # the fleet's stream: no carrier

        changed, unknown = await self._store.observe_vehicles(list(by_id), observe) if by_id else (0, [])
        min_change = timedelta(seconds=self._settings.eta_min_change_seconds)
        missions = 0
        for seen in observations:
            if not seen.estimates or seen.vehicle_id in unknown:
                continue

            def estimate(mission: Mission, seen: domain.Observation = seen) -> bool:
                if mission.vehicle != f"vehicles/{seen.vehicle_id}":
                    return False  # only the mission's own vehicle estimates its arrival
                return domain.apply_estimates(mission, seen.estimates, min_change)

            missions += await self._store.observe_mission(seen.mission_id, estimate)
        response = mission_service_pb2.ReportFleetStateResponse(
            vehicles_changed=changed, missions_changed=missions, unknown_vehicles=[f"vehicles/{v}" for v in unknown])
        for entry in rejected:
            response.rejected_vehicles.add(index=entry.index, vehicle=entry.vehicle, field_violations=[
                mission_service_pb2.RejectedField(field=v.field, description=v.description) for v in entry.violations])
        return response

    def _view(self, vehicle: vehicle_pb2.Vehicle) -> VehicleView:
        return convert.vehicle_view(vehicle, now=_now(),
                                    position_max_age=timedelta(seconds=self._settings.position_max_age_seconds))

    # --- dispatch ------------------------------------------------------------------------------------

    async def create_mission(self, carrier_id: str, request: mission_service_pb2.CreateMissionRequest) -> Mission:
        return await self._idempotency.run(f"{carrier_id}:CreateMission", request.request_id, request,
                                           lambda: self._dispatch(carrier_id, request.mission), Mission)

    async def _dispatch(self, carrier_id: str, given: Mission) -> Mission:
        domain.raise_if(domain.mission_violations(given))
        tender_id = given.tender.removeprefix("tenders/")
        existing = await self._store.mission_of_tender(carrier_id, tender_id)
        if existing:
            raise self._already_dispatched(given.tender, existing)
        plan = domain.plan_dispatch(given, _now(), self._settings.lanes)
        candidates = await self._candidates(given.vehicle, plan.load, plan.origin)
        mission_id = new_id()
        name = f"missions/{mission_id}"
        for candidate in candidates:
            ordinal = await self._store.reserve_vehicle(candidate.vehicle_id, name, carrier_id, plan.lane)
            if ordinal is not None:
                break
        else:
            if given.vehicle:
                raise FailedPrecondition(f"{given.vehicle} is not AVAILABLE", reason="VEHICLE_NOT_ELIGIBLE",
                                         metadata={"vehicle": given.vehicle})
            raise FailedPrecondition("no roster vehicle can take the load now", reason="NO_VEHICLE_AVAILABLE")
        settings = self._settings
        mission = domain.new_mission(given, name=name, carrier_id=carrier_id, vehicle_id=candidate.vehicle_id,
                                     plan=plan, lane_ordinal=ordinal, policy=settings.check_in,
                                     geofence_radius_meters=settings.geofence_radius_meters,
                                     now=_now(), etag=new_id())
        event = new_event("mission_dispatched", mission_events_pb2.MissionDispatched(mission=mission),
                          subject=name, carrier_id=carrier_id, source="mission")
        try:
            other = await self._store.create_mission(carrier_id, mission, tender_id, event)
        except BaseException:
            await self._store.release_vehicle(candidate.vehicle_id, name, lane=plan.lane)
            raise
        if other is not None:  # a concurrent dispatch of the same tender won
            await self._store.release_vehicle(candidate.vehicle_id, name, lane=plan.lane)
            raise self._already_dispatched(given.tender, other)
        return mission

    @staticmethod
    def _already_dispatched(tender: str, mission_id: str) -> AlreadyExists:
        return AlreadyExists(f"{tender} already has a mission", reason="MISSION_ALREADY_EXISTS",
                             metadata={"mission": f"missions/{mission_id}"})

    async def _candidates(self, named: str, load: Load, origin: tuple[float, float]) -> list[VehicleView]:
        if not named:
            return domain.choose_vehicle([self._view(v) for v in await self._store.all_vehicles()],
                                         load, origin, self._settings.lanes)
        vehicle = await self._store.get_vehicle(parse_vehicle_name(named, field="mission.vehicle"))
        if vehicle is None:
            raise NotFound(f"{named} does not exist", reason="VEHICLE_NOT_FOUND", metadata={"name": named})
        view = self._view(vehicle)
        domain.check_named_vehicle(view, load, named)
        return [view]

    # --- reads ---------------------------------------------------------------------------------------

    async def get_mission(self, carrier_id: str, name: str) -> Mission:
        mission = await self._store.get_mission(carrier_id, parse_mission_name(name))
        if mission is None:
            raise _mission_not_found(name)
        return mission

    async def list_missions(self, carrier_id: str, filter_text: str, page_size: int, page_token: str
                            ) -> tuple[list[Mission], str]:
        """One page of the carrier's missions that ``filter_text`` selects, and the next page's token."""
        selected = parse_filter(filter_text, convert.MISSION_FILTER)
        query = f"missions:{carrier_id}|{filter_text}"
        page = decode_page(page_size, page_token, query)
        keep = (lambda m: selected.matches(convert.mission_filter_values(m))) if selected else None
        missions, cursor = await self._store.list_missions(carrier_id, page, keep)
        return missions, next_page_token(cursor, query)

    # --- transitions ---------------------------------------------------------------------------------

    async def _change(self, carrier_id: str, name: str, etag: str, apply: Apply) -> tuple[Mission, bool]:
        """Run ``apply`` on the mission in one transaction with its events; (the mission, whether it changed)."""
        mission_id = parse_mission_name(name)

        def mutate(mission: Mission) -> Callable[[Mission], list[event_pb2.Event]] | None:
            check_etag(etag, mission.etag, mission.name)
            announcer = _Announcer(carrier_id)
            before = mission.state
            now = _now()
            if not apply(mission, announcer, now):
                return None
            # Whatever the change, it may have cleared the last obstacle of a departure that waits (a truck's kept
            # pre-trip report: domain/changes.py); it is recorded in the same transaction.
            announcer.moved(domain.depart_when_cleared(mission, now))
            domain.settle(mission, self._settings.check_in, now)
            return lambda final: announcer.build(final, before)

        mission, changed = await self._store.update_mission(carrier_id, mission_id, mutate)
        if changed and mission.state in domain.TERMINAL:
            record_finished(Mission.State.Name(mission.state).removeprefix("STATE_").lower())
            await self.release_vehicle(mission)
        return mission, changed

    async def _advance(self, carrier_id: str, name: str, etag: str,
                       step: Callable[[Mission, datetime], list[MissionException] | None]) -> tuple[Mission, bool]:
        """A plain transition: ``step`` returns None for no change, else the exceptions it resolved."""
        def apply(mission: Mission, announce: _Announcer, now: datetime) -> bool:
            return announce.moved(step(mission, now))

        return await self._change(carrier_id, name, etag, apply)

    async def acknowledge(self, carrier_id: str, name: str, etag: str, ack_time: Timestamp) -> Mission:
        mission, acknowledged = await self._advance(carrier_id, name, etag,
                                                    lambda m, now: domain.acknowledge(m, ack_time, now))
        if acknowledged and mission.HasField("dispatch_time"):  # only on the transition, not on a repeated ack
            record_dispatch_ack(mission.dispatch_time.ToNanoseconds() / 1e9,
                                mission.dispatch_ack_time.ToNanoseconds() / 1e9, time.time())
        return mission

    async def arrive(self, carrier_id: str, name: str, etag: str, arrive_time: Timestamp) -> Mission:
        mission, _ = await self._advance(carrier_id, name, etag, lambda m, now: domain.arrive(m, arrive_time, now))
        return mission

    async def advance(self, carrier_id: str, name: str, etag: str, action: Action, *, reason: str = "") -> Mission:
        """Complete, cancel or abort (``reason``: why, for a cancel or abort)."""
        mission, _ = await self._advance(carrier_id, name, etag,
                                         lambda m, now: domain.advance(m, action, now, reason=reason))
        return mission

    async def start(self, carrier_id: str, name: str, etag: str,
                    checks: Sequence[health_check_pb2.HealthCheckResult], who: str) -> Mission:
        """Depart (domain.start). A refusal still commits what it must keep: passing checks of a mission not ready
        to depart yet wait on it, and the change that clears the way records the departure (see _change); failing
        checks drop such a kept report. The refusal is then returned as it is."""
        refused: list[FailedPrecondition] = []

        def apply(mission: Mission, announce: _Announcer, now: datetime) -> bool:
            try:
                resolved = domain.start(mission, checks, who, now)
            except FailedPrecondition as refusal:
                refused.append(refusal)
                return domain.keep_pre_trip_report(mission, checks)
            return announce.moved(resolved)

        mission, _ = await self._change(carrier_id, name, etag, apply)
        if refused:
            raise refused[-1]
        return mission

    # --- exceptions and check-ins --------------------------------------------------------------------

    def _raise(self, mission: Mission, announce: _Announcer, given: MissionException, who: str, now: datetime
               ) -> MissionException:
        exc, moved = domain.raise_exception(mission, given, who, now, self._settings.lanes)
        announce.exception_raised(exc)
        if moved:
            announce.state_changed()
        return exc

    async def raise_exception(self, carrier_id: str, request: mission_service_pb2.RaiseMissionExceptionRequest,
                              who: str) -> mission_service_pb2.RaiseMissionExceptionResponse:
        async def compute() -> mission_service_pb2.RaiseMissionExceptionResponse:
            raised: list[MissionException] = []

            def apply(mission: Mission, announce: _Announcer, now: datetime) -> bool:
                raised.append(self._raise(mission, announce, request.exception, who, now))
                return True

            mission, _ = await self._change(carrier_id, request.name, "", apply)
            return mission_service_pb2.RaiseMissionExceptionResponse(mission=mission, exception=raised[-1])

        return await self._idempotency.run(f"{carrier_id}:RaiseMissionException", request.request_id, request,
                                           compute, mission_service_pb2.RaiseMissionExceptionResponse)

    async def resolve_exception(self, carrier_id: str, name: str, etag: str, exception_id: str, resolution: str,
                                who: str) -> tuple[Mission, MissionException]:
        def apply(mission: Mission, announce: _Announcer, now: datetime) -> bool:
            outcome = domain.resolve_exception(mission, exception_id, resolution, who, now)
            if outcome is None:
                return False  # resolving a resolved exception succeeds without change
            exc, moved = outcome
            announce.exception_resolved(exc)
            if moved:
                announce.state_changed()
            return True

        mission, _ = await self._change(carrier_id, name, etag, apply)
        return mission, next(e for e in mission.exceptions if e.exception_id == exception_id)

    async def acknowledge_takeover(self, carrier_id: str, name: str, etag: str, exception_id: str,
                                   step: domain.TakeoverStep, ack_time: Timestamp, refusal: str = "") -> Mission:
        """Record the vehicle's confirmation (or refusal) of a takeover step on the exception (domain/takeover.py);
        no event: the mission's state does not move, and the new etag and update time say it changed."""
        def apply(mission: Mission, announce: _Announcer, now: datetime) -> bool:
            return domain.acknowledge_takeover(domain.find_exception(mission, exception_id), step, ack_time, refusal)

        mission, changed = await self._change(carrier_id, name, etag, apply)
        if changed and refusal:
            _log.warning("%s %s: the vehicle refused the %s at %s: %s", name, exception_id,
                         step.name.lower().replace("_", "-"), ack_time.ToJsonString(), refusal)
        elif changed:
            _log.info("%s %s: the vehicle confirmed the %s at %s", name, exception_id,
                      step.name.lower().replace("_", "-"), ack_time.ToJsonString())
        return mission

    async def record_check_in(self, carrier_id: str, request: mission_service_pb2.RecordCheckInRequest, who: str
                              ) -> mission_service_pb2.RecordCheckInResponse:
        async def compute() -> mission_service_pb2.RecordCheckInResponse:
            recorded: list[mission_pb2.CheckIn] = []

            def apply(mission: Mission, announce: _Announcer, now: datetime) -> bool:
                check_in, hold = domain.record_check_in(mission, request.check_in, who, now)
                recorded.append(check_in)
                announce.check_in_recorded(check_in)
                if hold is not None:
                    self._raise(mission, announce, hold, who, now)
                return True

            mission, _ = await self._change(carrier_id, request.name, "", apply)
            check_in = next(c for c in mission.check_ins if c.check_in_id == recorded[-1].check_in_id)
            return mission_service_pb2.RecordCheckInResponse(mission=mission, check_in=check_in)

        return await self._idempotency.run(f"{carrier_id}:RecordCheckIn", request.request_id, request, compute,
                                           mission_service_pb2.RecordCheckInResponse)

    async def escalate_overdue_check_in(self, carrier_id: str, mission_id: str) -> bool:
        """Escalate the mission's pending check-in if it is overdue by more than the grace (the event
        ``check_in_overdue``, once per due time: ``escalate_time`` is recorded in the same transaction); whether
        it was escalated now."""
        grace = timedelta(seconds=self._settings.check_in_overdue_grace_seconds)

        def apply(mission: Mission, announce: _Announcer, now: datetime) -> bool:
            overdue = domain.escalate_overdue(mission, now, grace)
            if overdue is None:
                return False
            announce.check_in_overdue(overdue)
            _log.warning("%s: %s check-in overdue by %s (due %s)", mission.name, overdue.point.name,
                         overdue.overdue, overdue.due.isoformat())
            return True

        try:
            _, changed = await self._change(carrier_id, f"missions/{mission_id}", "", apply)
        except NotFound:
            await self._store.forget_check_in_due(carrier_id, mission_id)
            return False
        return changed

    # --- proof of delivery ---------------------------------------------------------------------------

    async def submit_proof_from_vehicle(self, vehicle_id: str, certificate_pem: bytes,
                                        request: mission_service_pb2.SubmitProofOfDeliveryRequest) -> Mission:
        """The mission's own truck submits: verified with the certificate it presents on this call (pinned
        for later operator relays). Another truck's mission does not exist for this truck."""
        mission_id = parse_mission_name(request.name)
        carrier_id = await self._store.mission_carrier(mission_id)
        mission = None if carrier_id is None else await self._store.get_mission(carrier_id, mission_id)
        if carrier_id is None or mission is None or mission.vehicle != f"vehicles/{vehicle_id}":
            raise _mission_not_found(request.name)
        await self._store.pin_vehicle_certificate(vehicle_id, certificate_pem)
        return await self._deliver(carrier_id, request, certificate_pem)

    async def submit_proof_for_carrier(self, carrier_id: str,
                                       request: mission_service_pb2.SubmitProofOfDeliveryRequest) -> Mission:
        """An operator relays a truck's proof: verified with the certificate the truck last presented."""
        mission = await self._store.get_mission(carrier_id, parse_mission_name(request.name))
        if mission is None:
            raise _mission_not_found(request.name)
        certificate = await self._store.vehicle_certificate(mission.vehicle.removeprefix("vehicles/"))
        if certificate is None:
            raise InvalidArgument(f"no certificate of {mission.vehicle} is on file to verify the manifest with",
                                  reason="POD_SIGNATURE_INVALID",
                                  violations=[FieldViolation("proof_of_delivery.key_id", "vehicle key unknown")])
        return await self._deliver(carrier_id, request, certificate)

    async def _deliver(self, carrier_id: str, request: mission_service_pb2.SubmitProofOfDeliveryRequest,
                       certificate_pem: bytes) -> Mission:
        proof = request.proof_of_delivery
        manifest = domain.read_manifest(proof, certificate_pem)
        verification = None
        if self._telemetry is not None:
            # The truck's digest against the frames telemetry stored for the mission: a mismatch is refused
            # here, missing frames make the proof DISPUTED (domain.verify_telemetry_log).
            domain.raise_if(domain.telemetry_range_violations(domain.manifest_facts(manifest)))
            first, last = manifest.telemetry_first_sequence, manifest.telemetry_last_sequence
            frames = await self._mission_frames(carrier_id, request.name, min_sequence=first, max_sequence=last)
            earlier = await self._has_frames_before(carrier_id, request.name, first)
            verification = await asyncio.to_thread(domain.verify_telemetry_log, manifest,
                                                   [f.payload for f in frames], _now(), earlier_frames=earlier)

        def apply(mission: Mission, announce: _Announcer, now: datetime) -> bool:
            if not domain.deliver(mission, proof, manifest, now, verification):
                return False
            announce.proof_of_delivery_submitted()
            announce.state_changed()
            return True

        mission, _ = await self._change(carrier_id, request.name, request.etag, apply)
        return mission

    # --- after delivery: billing and vehicle release -------------------------------------------------

    async def bill(self, carrier_id: str, mission_id: str) -> Mission | None:
        """Record a DELIVERED mission's usage with billing, then complete it (idempotent both sides).

        A DISPUTED proof is never billed: its log is re-verified first (late frames may have arrived) and billed
        once VERIFIED; until then FAILED_PRECONDITION POD_DISPUTED (the sweeper retries with backoff), and past
        HAULMESH_POD_DISPUTE_SECONDS, or contradicted by the stored frames, POD_DISPUTE_ESCALATED with the
        mission listed for an operator. The usage is measured once: the first attempt's request is kept with
        the mission before RecordUsage and every retry sends exactly it."""
        mission = await self._store.get_mission(carrier_id, mission_id)
        if mission is None or mission.state != Mission.STATE_DELIVERED or self._billing is None:
            return mission
        kept = await self._store.billing_usage(carrier_id, mission_id)
        if kept is not None:
            request = billing_service_pb2.RecordUsageRequest.FromString(kept)
        else:
            if self._telemetry is None:
                usage = domain.usage(mission)
            else:
                mission = await self._settle_dispute(carrier_id, mission)
                # The range the truck's proof of delivery signed: the bill rests on the proven log.
                signed = mission.proof_of_delivery.manifest_details
                frames = await self._mission_frames(carrier_id, mission.name,
                                                    min_sequence=signed.telemetry_first_sequence,
                                                    max_sequence=signed.telemetry_last_sequence)
                # CPU-bound over up to usage_max_frames frames: off the event loop.
                usage = await asyncio.to_thread(domain.measured_usage, mission, frames,
                                                gap_seconds=self._settings.usage_gap_seconds,
                                                circuity_factor=self._settings.lanes.circuity_factor)
            request = billing_service_pb2.RecordUsageRequest(
                mission=mission.name, tender=mission.tender, quote=mission.quote, tms_load_id=mission.load.tms_load_id,
                usage=usage)
            # Kept before billing hears of it: a retry after a timeout (billing may have recorded it) sends the
            # same usage, never a re-measurement billing would refuse or bill differently.
            request = billing_service_pb2.RecordUsageRequest.FromString(await self._store.keep_billing_usage(
                carrier_id, mission_id, request.SerializeToString(deterministic=True)))
        await self._billing().RecordUsage(request, metadata=carrier_metadata(carrier_id))

        def complete(mission: Mission, announce: _Announcer, now: datetime) -> bool:
            if not domain.complete_after_billing(mission):
                return False  # an operator completed it meanwhile
            announce.state_changed()
            return True

        mission, _ = await self._change(carrier_id, mission.name, "", complete)
        return mission

    async def _settle_dispute(self, carrier_id: str, mission: Mission) -> Mission:
        """The mission, once its proof may be billed (domain.billing_gate); a DISPUTED proof's log is verified
        again against the frames stored now and the new verification recorded (an observation: no new etag)."""
        proof = mission.proof_of_delivery
        if proof.telemetry_verification.result != mission_pb2.TelemetryVerification.RESULT_DISPUTED:
            return mission
        manifest = proof.manifest_details
        frames = await self._mission_frames(carrier_id, mission.name, min_sequence=manifest.telemetry_first_sequence,
                                            max_sequence=manifest.telemetry_last_sequence)
        earlier = await self._has_frames_before(carrier_id, mission.name, manifest.telemetry_first_sequence)
        again = await asyncio.to_thread(domain.reverify_telemetry_log, manifest, [f.payload for f in frames], _now(),
                                        earlier_frames=earlier)

        def record(current: Mission) -> bool:
            if current.state != Mission.STATE_DELIVERED:
                return False
            current.proof_of_delivery.telemetry_verification.CopyFrom(again)
            return True

        mission = await self._store.observe_carrier_mission(
            carrier_id, mission.name.removeprefix("missions/"), record) or mission
        verification = mission.proof_of_delivery.telemetry_verification
        gate = domain.billing_gate(verification, from_timestamp(proof.submit_time), _now(),
                                   self._settings.pod_dispute_seconds)
        if gate == domain.BILL:
            return mission
        facts = {"mission": mission.name, "reason": verification.reason,
                 "frames_missing": str(verification.frames_missing)}
        if gate == domain.WAIT:
            raise FailedPrecondition(
                f"{mission.name}'s proof of delivery is DISPUTED ({verification.frames_missing} frames of its "
                "signed range missing); it is billed once they arrive and the log verifies", reason="POD_DISPUTED",
                metadata=facts)
        if await self._store.escalate_dispute(carrier_id, mission.name.removeprefix("missions/")):
            record_dispute_escalated()
            _log.error("%s (carrier %s): proof of delivery still DISPUTED (%s, %d frames missing); not billed, "
                       "an operator decides", mission.name, carrier_id, verification.reason,
                       verification.frames_missing)
        raise FailedPrecondition(
            f"{mission.name}'s proof of delivery is DISPUTED ({verification.reason}) beyond "
            "HAULMESH_POD_DISPUTE_SECONDS: not billed; an operator must decide", reason="POD_DISPUTE_ESCALATED",
            metadata=facts)

    async def _has_frames_before(self, carrier_id: str, name: str, first_sequence: int) -> bool:
        """Whether telemetry stored a frame naming the mission with a sequence before ``first_sequence`` (the
        proof's log would leave part of the mission out). Reads pages only until one is found."""
        assert self._telemetry is not None
        if first_sequence <= 1:
            return False
        mission_id, token = parse_mission_name(name), ""
        while True:
            try:
                page = await self._telemetry().ListTelemetryFrames(
                    telemetry_service_pb2.ListTelemetryFramesRequest(parent=name, page_size=1000, page_token=token,
                                                                     max_sequence=first_sequence - 1),
                    metadata=carrier_metadata(carrier_id))
            except grpc.aio.AioRpcError as exc:
                raise Unavailable(f"the telemetry of {name} could not be read ({exc.code().name}); nothing was "
                                  "recorded; retry", reason="TELEMETRY_UNAVAILABLE",
                                  metadata={"cause": exc.code().name}) from None
            if any(f.payload.mission_id == mission_id for f in page.telemetry_frames):
                return True
            token = page.next_page_token
            if not token:
                return False

    async def _mission_frames(self, carrier_id: str, name: str, *, min_sequence: int = 0,
                              max_sequence: int = 0) -> list[domain.MissionFrame]:
        """The mission's stored frames (those naming it; optionally a sequence range), read from telemetry as
        service/mission a page of 1000 at a time, at most ``usage_max_frames`` (else MISSION_FRAMES_EXCEEDED)."""
        assert self._telemetry is not None
        mission_id = parse_mission_name(name)
        cap, frames, token = self._settings.usage_max_frames, [], ""
        while True:
            try:
                page = await self._telemetry().ListTelemetryFrames(
                    telemetry_service_pb2.ListTelemetryFramesRequest(
                        parent=name, page_size=1000, page_token=token, min_sequence=min_sequence,
                        max_sequence=max_sequence),
                    metadata=carrier_metadata(carrier_id))
            except grpc.aio.AioRpcError as exc:
                # Nothing was recorded: the proof or the bill waits for the evidence, never goes without it.
                raise Unavailable(f"the telemetry of {name} could not be read ({exc.code().name}); nothing was "
                                  "recorded; retry", reason="TELEMETRY_UNAVAILABLE",
                                  metadata={"cause": exc.code().name}) from None
            # The mission's own frames (the proto's log rule): telemetry's mission scope also holds frames of the
            # span that name no mission.
            frames.extend(domain.MissionFrame(f.signed_frame.payload, from_timestamp(f.receive_time))
                          for f in page.telemetry_frames if f.payload.mission_id == mission_id)
            domain.check_frame_budget(len(frames), cap, name)
            token = page.next_page_token
            if not token:
                return frames

    async def record_geofence(self, carrier_id: str, name: str, stop_index: int, *, entered: bool,
                              device_time: Timestamp) -> bool:
        """Record telemetry's geofence entry or exit on the mission's stop (any state, no event: a fact for the
        dwell billed as detention). An observation like an ETA, not an edit: the mission's ``etag`` and
        ``update_time`` stay, so a TMS's conditional update is not refused because the truck moved. False when
        nothing changed or the mission is unknown (or not this carrier's)."""
        mission_id = parse_mission_name(name)
        if await self._store.mission_carrier(mission_id) != carrier_id:
            return False
        return await self._store.observe_mission(mission_id, lambda mission: domain.record_geofence(
            mission, stop_index, entered=entered, device_time=device_time))

    async def release_vehicle(self, mission: Mission) -> None:
        """Free the vehicle of an ended mission if it is still assigned to it (idempotent)."""
        await self._store.release_vehicle(mission.vehicle.removeprefix("vehicles/"), mission.name)


class _Announcer:
    """Collects the events of one change; they are built from the committed (stamped) mission."""

    def __init__(self, carrier_id: str) -> None:
        self._carrier = carrier_id
        self._pending: list[Callable[[Mission, int], event_pb2.Event]] = []
        self._state_announced = False

    def _add(self, field: str, payload: Callable[[Mission, int], object]) -> None:
        self._pending.append(lambda m, before: new_event(field, payload(m, before), subject=m.name,
                                                         carrier_id=self._carrier, source="mission"))

    def moved(self, resolved: Sequence[MissionException] | None) -> bool:
        """A transition's events: the exceptions it resolved and the state change; False when there was none
        (``resolved`` None)."""
        if resolved is None:
            return False
        for exc in resolved:
            self.exception_resolved(exc)
        self.state_changed()
        return True

    def state_changed(self) -> None:
        """Once per change: the event carries the committed mission and the state before the change."""
        if self._state_announced:
            return
        self._state_announced = True
        self._add("mission_state_changed",
                  lambda m, before: mission_events_pb2.MissionStateChanged(mission=m, previous_state=before))

    def exception_raised(self, exc: MissionException) -> None:
        snapshot = MissionException()
        snapshot.CopyFrom(exc)
        self._add("mission_exception_raised", lambda m, _: mission_events_pb2.MissionExceptionRaised(
            mission=m.name, tender=m.tender, exception=snapshot))

    def exception_resolved(self, exc: MissionException) -> None:
        snapshot = MissionException()
        snapshot.CopyFrom(exc)
        self._add("mission_exception_resolved", lambda m, _: mission_events_pb2.MissionExceptionResolved(
            mission=m.name, tender=m.tender, exception=snapshot))

    def check_in_recorded(self, check_in: mission_pb2.CheckIn) -> None:
        snapshot = mission_pb2.CheckIn()
        snapshot.CopyFrom(check_in)
        self._add("mission_check_in_recorded",
                  lambda m, _: mission_events_pb2.CheckInRecorded(mission=m.name, check_in=snapshot))

    def check_in_overdue(self, overdue: domain.OverdueCheckIn) -> None:
        self._add("mission_check_in_overdue", lambda m, _: mission_events_pb2.CheckInOverdue(
            mission=m.name, tender=m.tender, point=int(overdue.point), due_time=to_timestamp(overdue.due),
            overdue=duration_pb2.Duration(seconds=int(overdue.overdue.total_seconds())), state=m.state))

    def proof_of_delivery_submitted(self) -> None:
        self._add("mission_proof_of_delivery_submitted", lambda m, _: mission_events_pb2.ProofOfDeliverySubmitted(
            mission=m.name, tender=m.tender, tms_load_id=m.load.tms_load_id, proof_of_delivery=m.proof_of_delivery))

    def build(self, mission: Mission, before: int) -> list[event_pb2.Event]:
        return [make(mission, before) for make in self._pending]
