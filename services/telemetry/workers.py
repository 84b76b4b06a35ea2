"""The telemetry service's event consumers and background loops, each started through the runtime.

* consumer ``telemetry-missions``: the mission service's events → commands queued for trucks
  (usecases/commands.py) and the vehicle → mission directory (usecases/tracking.py);
* consumer ``telemetry-actions``: telemetry's own events → mission transitions (usecases/missions.py), with a
  short reclaim time, since a truck waits on them;
* periodic: the archive job (every HAULMESH_ARCHIVE_AFTER_SECONDS, at most hourly: frames older than that go
  to Parquet parts, so a part holds about that long of a vehicle's frames), the retention sweep (hourly; it
  trims only archived frames) and the liveness sweep (a tenth of the liveness timeout, so a loss is
  reported at most 10 % late);
* companion: the archive worker (usecases/archive.py ``Archiver.serve``): opens the archive (capped backoff, so
  an object store that is down never stops telemetry), then archives the vehicles the ``telemetry-missions``
  consumer marked due (a COMPLETED mission), woken by the mark: that consumer also relays commands to trucks,
  so it only marks and never waits on the object store;
* companions (not simply periodic): the command deliverer, woken by the doorbell and sweeping every open stream
  every ``COMMAND_SWEEP_SECONDS``, the doorbell listener (Pub/Sub), and the fleet-state reporter
  (usecases/fleet.py: a batch to the roster every flush interval, at once on a connectivity change).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from haulmesh.events.v1 import event_pb2
from services.runtime import Service

from .domain import COMMAND_EVENT_TYPES
from .domain.actions import ACTION_EVENT_TYPES
from .store import DOORBELL, TelemetryStore
from .usecases import (
    COMMAND_SWEEP_SECONDS,
    MISSION_EVENT_TYPES,
    Archiver,
    CommandRelay,
    MissionActions,
    MissionTracking,
    Streams,
)
from .usecases.fleet import FleetReporter

__all__ = ["start"]

_log = logging.getLogger("haulmesh.telemetry")

#: How often expired frames are trimmed (retention is HAULMESH_TELEMETRY_RETENTION_DAYS).
RETENTION_SWEEP_SECONDS = 3600.0
#: How often silent vehicles are looked for: a tenth of the timeout, so a loss is reported at most 10 % late.
_LIVENESS_SWEEPS_PER_TIMEOUT = 10
#: How long a doorbell read waits before it looks again (a cancellation point, nothing more).
_DOORBELL_IDLE_SECONDS = 30.0


class _Companion:
    """A loop with no natural end, run by the runtime as a companion; stopping it cancels it."""

    def __init__(self, loop: Callable[[], Awaitable[None]]) -> None:
        self._loop = loop
        self._task: asyncio.Task[None] | None = None

    async def run(self) -> None:
        self._task = asyncio.current_task()  # type: ignore[assignment]
        await self._loop()

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()


async def deliver_commands(streams: Streams) -> None:
    """The one task that sends queued commands to this process's streams (so never twice).

    Woken by the doorbell; every ``COMMAND_SWEEP_SECONDS`` it also looks at every open stream, the safety net
    for a doorbell message lost with a dropped connection. One pipelined poll per round, whatever the number
    of streams: thousands of idle trucks cost nothing between rounds.
    """
    loop = asyncio.get_running_loop()
    swept = loop.time()
    while True:
        try:
            await asyncio.wait_for(streams.wake.wait(), max(0.0, swept + COMMAND_SWEEP_SECONDS - loop.time()))
        except TimeoutError:
            pass
        sweep = loop.time() - swept >= COMMAND_SWEEP_SECONDS
        if sweep:
            swept = loop.time()
        await streams.deliver_commands(streams.take_due(everyone=sweep))


async def listen_doorbell(streams: Streams, store: TelemetryStore) -> None:
    """Vehicles named on the doorbell (a command queued, a newer session claimed) are due at once."""
    while True:
        try:
            pubsub = store.doorbell()
            try:
                await pubsub.subscribe(DOORBELL)
                streams.commands_due(*streams.sessions)  # anything rung while (re)subscribing
                while True:
                    message = await pubsub.get_message(timeout=_DOORBELL_IDLE_SECONDS)
                    if message is not None and (vehicle_id := message["data"].decode()) in streams.sessions:
                        streams.commands_due(vehicle_id)
            finally:
                await pubsub.aclose()
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # the store restarting: the sweep covers the gap, then resubscribe
            _log.warning("command doorbell lost (%s); resubscribing", exc)
            await asyncio.sleep(1)


def start(service: Service, *, store: TelemetryStore, streams: Streams, tracking: MissionTracking,
          relay: CommandRelay, actions: MissionActions, liveness_timeout_seconds: float,
          fleet: FleetReporter | None = None, archiver: Archiver | None = None,
          archive_after_seconds: float = 3600.0) -> None:
    """Register the consumers and loops with the runtime (they run while the service runs)."""

    async def trim() -> None:
        if archiver is not None and not await archiver.may_trim():
            return  # this process's archive is unavailable or not the store's: the replicas whose is trim
        dropped = await store.sweep_retention()
        if dropped:
            _log.info("retention: dropped %d expired frames", dropped)

    async def liveness() -> None:
        await tracking.sweep()  # returns how many were announced: not a delay for the loop

    async def on_mission_event(event: event_pb2.Event) -> None:
        await relay(event)
        await tracking.on_mission_event(event)
        if archiver is not None:
            await archiver.on_mission_event(event)

    async def archive() -> None:
        assert archiver is not None
        run = await archiver.run()
        if run.frames_archived:
            _log.info("archive: %d frames in %d parts from %d vehicles", run.frames_archived, run.parts_written,
                      run.vehicles)

    if archiver is not None:
        service.add_periodic("archive", archive, interval_seconds=min(max(archive_after_seconds, 1.0), 3600.0))
        worker = _Companion(archiver.serve)
        service.add_companion(worker.run, worker.stop)
    service.add_periodic("retention sweep", trim, interval_seconds=RETENTION_SWEEP_SECONDS)
    service.add_periodic("liveness sweep", liveness,
                         interval_seconds=liveness_timeout_seconds / _LIVENESS_SWEEPS_PER_TIMEOUT)
    for loop in (lambda: deliver_commands(streams), lambda: listen_doorbell(streams, store)):
        companion = _Companion(loop)
        service.add_companion(companion.run, companion.stop)
    if fleet is not None:
        service.add_companion(fleet.run, fleet.stop)
    service.add_consumer("telemetry-missions", on_mission_event, types=set(COMMAND_EVENT_TYPES | MISSION_EVENT_TYPES))
    service.add_consumer("telemetry-actions", actions, types=set(ACTION_EVENT_TYPES), claim_idle_ms=3000)
