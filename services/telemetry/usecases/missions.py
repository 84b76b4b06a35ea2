"""Mission transitions from telemetry: the telemetry service's own events become mission service calls.

The consumer group ``telemetry-actions`` (workers.py) reads the telemetry events that move a mission, so every
call is retried by the consumer (redelivery, then the group's dead-letter stream) instead of being lost with a
failed RPC. Which call each event calls for is domain/actions.py; a call refused because the mission is not
(yet) in the state it needs is retried only where the mission gets there by itself, else logged and dropped.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import grpc

from haulmesh.events.v1 import event_pb2
from haulmesh.mission.v1 import mission_service_pb2
from services.runtime import carrier_metadata, error_info

from ..domain import actions

__all__ = ["MissionActions", "MissionNotReady"]

_log = logging.getLogger("haulmesh.telemetry.actions")


class MissionNotReady(Exception):
    """The mission is not yet where this event needs it; the consumer retries the event later."""


class MissionActions:
    """The consumer handler (see the module docstring). ``mission_stub()`` gives the MissionService stub."""

    def __init__(self, mission_stub: Callable[[], Any]) -> None:
        self._stub = mission_stub

    async def __call__(self, event: event_pb2.Event) -> None:
        which = event.WhichOneof("data")
        handler = getattr(self, f"_{which}", None)
        if handler is None or not event.carrier:
            return
        try:
            await handler(getattr(event, which), carrier_metadata(event.carrier.removeprefix("carriers/")))
        except grpc.aio.AioRpcError as exc:
            if exc.code() != grpc.StatusCode.FAILED_PRECONDITION:
                raise  # unavailable, deadline...: the consumer delivers the event again
            info = error_info(exc)
            reason, state = (info.reason, info.metadata.get("state", "")) if info is not None else ("", "")
            if actions.retry_later(which, reason, state):
                raise MissionNotReady(f"pre-trip report not applicable yet: {reason}") from None
            if which == "telemetry_health_reported" and reason in ("CHECK_IN_REQUIRED", "MISSION_HELD"):
                _log.info("%s for %s kept by the mission service until cleared: %s %s", event.type, event.subject,
                          reason, exc.details())
                return
            _log.info("%s for %s not applied: %s %s", event.type, event.subject, reason or exc.code().name,
                      exc.details())

    async def _telemetry_command_acknowledged(self, data: Any, metadata: Any) -> None:
        request = actions.dispatch_acknowledgement(data)
        if request is not None:
            await self._stub().AcknowledgeMissionDispatch(request, metadata=metadata)
            return
        takeover = actions.takeover_acknowledgement(data)
        if takeover is None:
            return
        try:
            await self._stub().AcknowledgeMissionTakeover(takeover, metadata=metadata)
        except grpc.aio.AioRpcError as exc:
            if exc.code() != grpc.StatusCode.NOT_FOUND:
                raise  # FAILED_PRECONDITION (a step not asked for) is logged by __call__; the rest retried
            _log.info("%s of %s %s not recorded: %s", takeover.command_id, takeover.name, takeover.exception_id,
                      exc.details())

    async def _telemetry_health_reported(self, data: Any, metadata: Any) -> None:
        request = actions.pre_trip(data)
        if isinstance(request, mission_service_pb2.RaiseMissionExceptionRequest):
            await self._stub().RaiseMissionException(request, metadata=metadata)
        elif request is not None:
            await self._stub().StartMission(request, metadata=metadata)

    async def _telemetry_geofence_entered(self, data: Any, metadata: Any) -> None:
        ctx = data.context
        if not actions.may_arrive(ctx):
            return
        mission = await self._stub().GetMission(mission_service_pb2.GetMissionRequest(name=ctx.mission),
                                                metadata=metadata)
        request = actions.arrival(ctx, mission)
        if request is not None:
            await self._stub().ArriveMission(request, metadata=metadata)

    async def _telemetry_connectivity_lost(self, data: Any, metadata: Any) -> None:
        await self._raise(actions.connectivity_lost(data), metadata)

    async def _telemetry_connectivity_restored(self, data: Any, metadata: Any) -> None:
        if not data.mission:
            return
        mission = await self._stub().GetMission(mission_service_pb2.GetMissionRequest(name=data.mission),
                                                metadata=metadata)
        for request in actions.connectivity_resolutions(data, mission):
            await self._stub().ResolveMissionException(request, metadata=metadata)

    async def _telemetry_fault_reported(self, data: Any, metadata: Any) -> None:
        await self._raise(actions.fault_raised(data), metadata)

    async def _telemetry_route_deviated(self, data: Any, metadata: Any) -> None:
        await self._raise(actions.route_deviated(data), metadata)

    async def _telemetry_road_closure_reported(self, data: Any, metadata: Any) -> None:
        await self._raise_for_report(actions.road_closure, data, metadata)

    async def _telemetry_law_enforcement_stop_reported(self, data: Any, metadata: Any) -> None:
        await self._raise_for_report(actions.law_enforcement_stop, data, metadata)

    async def _raise_for_report(self, rule: Callable[[Any, Any], Any], data: Any, metadata: Any) -> None:
        """A truck's device-event report: the rule reads the mission (none raised while one of its kind is open)."""
        if not data.mission:
            return
        mission = await self._stub().GetMission(mission_service_pb2.GetMissionRequest(name=data.mission),
                                                metadata=metadata)
        await self._raise(rule(data, mission), metadata)

    async def _raise(self, request: mission_service_pb2.RaiseMissionExceptionRequest | None, metadata: Any) -> None:
        if request is not None:
            await self._stub().RaiseMissionException(request, metadata=metadata)
