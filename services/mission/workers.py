"""The mission service's background work, each piece started through the runtime (see ``__main__``).

* :meth:`MissionWorkers.handle_event`: the consumer of the service's own events. A delivered mission is
  billed at once; a mission that reached a terminal state frees its vehicle (again, idempotently: the
  transition already did, but a crash in between must not strand a vehicle).
* :meth:`MissionWorkers.sweep_billing`: one pass of the billing sweeper, which retries the delivered
  missions the consumer could not bill, each with its own backoff, so no mission is ever dropped;
* :meth:`MissionWorkers.count_fleet`: the fleet gauge (vehicles by connectivity and availability), from the
  roster.
"""

from __future__ import annotations

import logging

import grpc

from haulmesh.events.v1 import event_pb2
from haulmesh.mission.v1 import vehicle_pb2
from services.runtime import HaulmeshError

from . import domain
from .config import MissionSettings
from .metrics import record_check_in_overdue, record_fleet
from .store import MissionStore
from .usecases import MissionUseCases

__all__ = ["CONSUMED_TYPES", "MissionWorkers"]

_log = logging.getLogger("haulmesh.mission")

#: Event types the mission service consumes (billing hand-off, vehicle release, and telemetry's geofence
#: crossings, recorded on the stops for the dwell billed as detention).
CONSUMED_TYPES = {"haulmesh.mission.v1.proof_of_delivery_submitted", "haulmesh.mission.v1.state_changed",
                  "haulmesh.telemetry.v1.geofence_entered", "haulmesh.telemetry.v1.geofence_exited"}


class MissionWorkers:
    """The event consumer and the billing sweeper of one mission service."""

    def __init__(self, missions: MissionUseCases, store: MissionStore, settings: MissionSettings) -> None:
        self._missions = missions
        self._store = store
        self._settings = settings

    async def handle_event(self, event: event_pb2.Event) -> None:
        """Bill delivered missions, free vehicles at terminal states, record geofence crossings on stops."""
        carrier_id = event.carrier.removeprefix("carriers/")
        kind = event.WhichOneof("data")
        if kind == "mission_proof_of_delivery_submitted":
            try:
                await self._missions.bill(carrier_id, event.subject.removeprefix("missions/"))
            except grpc.aio.AioRpcError as exc:
                # Billing is down or refused: the sweeper retries with backoff; the event is done.
                _log.warning("billing %s failed (%s); the sweeper will retry", event.subject, exc.code().name)
            except HaulmeshError as exc:
                # Not billable yet (a DISPUTED proof waiting for late frames, telemetry unreadable): the sweeper
                # re-checks with backoff; retrying the event would only repeat the refusal.
                _log.info("billing %s deferred (%s); the sweeper will retry", event.subject, exc.reason)
        elif kind == "mission_state_changed" and event.mission_state_changed.mission.state in domain.TERMINAL:
            await self._missions.release_vehicle(event.mission_state_changed.mission)
        elif kind in ("telemetry_geofence_entered", "telemetry_geofence_exited") and carrier_id:
            ctx = getattr(event, kind).context
            if ctx.mission:
                await self._missions.record_geofence(carrier_id, ctx.mission, ctx.stop_index,
                                                     entered=kind == "telemetry_geofence_entered",
                                                     device_time=ctx.device_time)

    async def count_fleet(self) -> None:
        """Recompute the fleet gauge from the roster (one read of every vehicle: a fleet is thousands)."""
        counts: dict[tuple[str, str], int] = {}
        for vehicle in await self._store.all_vehicles():
            connectivity = {vehicle_pb2.Vehicle.CONNECTIVITY_ONLINE: "online",
                            vehicle_pb2.Vehicle.CONNECTIVITY_OFFLINE: "offline"}.get(vehicle.connectivity, "unknown")
            availability = domain.Availability(vehicle.availability or domain.Availability.AVAILABLE).name.lower()
            counts[connectivity, availability] = counts.get((connectivity, availability), 0) + 1
        record_fleet(counts)

    async def sweep_check_ins(self) -> None:
        """One pass: escalate every required check-in overdue by more than the grace (each once per due time)."""
        for carrier_id, mission_id in await self._store.overdue_check_ins(
                self._settings.check_in_overdue_grace_seconds):
            if await self._missions.escalate_overdue_check_in(carrier_id, mission_id):
                record_check_in_overdue()

    async def sweep_billing(self) -> None:
        """One pass: bill every delivered mission whose next attempt is due; a failure postpones that one."""
        settings = self._settings
        for carrier_id, mission_id in await self._store.due_for_billing():
            try:
                await self._missions.bill(carrier_id, mission_id)
            except Exception as exc:  # any failure: try again later, never drop the mission
                attempts = await self._store.billing_attempts(carrier_id, mission_id)
                delay = domain.billing_retry_delay(attempts, settings.billing_sweep_seconds,
                                                   settings.billing_max_backoff_seconds)
                _log.warning("billing %s/%s failed (attempt %d, next in %.0fs): %s", carrier_id, mission_id,
                             attempts, delay, exc)
                await self._store.postpone_billing(carrier_id, mission_id, delay)
