"""A simulated driverless truck on the seed's lane (Houston → Atlanta), at accelerated time.

The truck produces one POSITION frame per simulated second (1 Hz), a signed HEALTH frame with its pre-trip
self-checks before departing, and FAULT / ALARM / EVENT frames when a scenario says so:

* ``sensor-fault``: the front lidar degrades (FAULT, warning), then fails (FAULT, critical); the truck
  engages its minimal-risk condition (ALARM MRC_ENGAGED) and stops on the shoulder.
* ``connectivity-loss:MINUTES``: the link drops for MINUTES simulated minutes; frames keep spooling and
  are replayed when it returns.
* ``edge-crash``: the edge process is killed (SIGKILL) mid-route; the CLI's supervisor restarts it, and it
  resumes from its spool and its saved progress.
* ``road-closure``: the truck reports a road closure ahead (EVENT), holds, and follows the Reroute
  command the cloud sends (or, without one, the original route after a while).

Device time is the real clock, not the simulated one: frames from the future would be rejected for clock
skew. Simulated seconds only decide where the truck is; at ``--speedup 60`` it sends 60 frames per real
second with device times 1/60 s apart. ``frame_every`` (``--frame-every-sim-seconds``) thins the POSITION
frames to one every N simulated seconds, so that a high speed-up (a whole lane in under a minute) stays
within what one edge process and one telemetry process do comfortably on a small machine; scenario frames
(health, faults, alarms, events) are recorded when they happen regardless.

``pickup_dwell_seconds`` (``--pickup-dwell-minutes``): once assigned, the truck first sits at the pickup
("loading", speed 0) for that many simulated seconds, recording positions inside the pickup geofence, before its
pre-trip check and departure; telemetry derives the geofence entry and exit, and the invoice bills the dwell
beyond the rate card's free time as detention. Device time being real, the dwell lasts
pickup_dwell_seconds / speedup real seconds of device time; ``dwell_speedup`` (``--dwell-speedup``) paces the dwell
alone more slowly, so that a fast demo still measures minutes of dwell.

The simulation itself is plain Python; it reaches the network only through the ``Link`` it is given.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Protocol

from haulmesh.telemetry.v1 import frame_pb2, stream_pb2

from .recorder import Recorder, pre_trip_checks
from .route import Route

__all__ = ["Link", "Scenario", "SimulationReport", "Truck", "lane_between", "parse_scenario", "simulate"]

KIND = frame_pb2.FramePayload
SEVERITY = frame_pb2.Alarm
#: How long (simulated) a truck stopped by a command waits for a resume before its run ends.
STOP_HOLD_SECONDS = 60
CRUISE_KPH = 105.0  # 65 mph, a typical autonomous-truck cruise on interstates
# When a scenario fires, in simulated seconds after departure (``scenario_at`` moves the whole scenario).
FAULT_DEGRADE_AT, FAULT_FAIL_AT, MRC_HOLD_SECONDS = 600, 900, 120
OUTAGE_AT, CRASH_AT, CLOSURE_AT, CLOSURE_MAX_HOLD = 300, 300, 1200, 600
_SCENARIO_START = {"sensor-fault": FAULT_DEGRADE_AT, "connectivity-loss": OUTAGE_AT, "edge-crash": CRASH_AT,
                   "road-closure": CLOSURE_AT}


class Link(Protocol):
    """What the simulation needs from the stream client."""

    def notify(self) -> None:
        """New frames are spooled."""

    def cut_link(self, seconds: float) -> None:
        """Drop the connection for ``seconds`` real seconds."""


def lane_between(start: tuple[float, float], end: tuple[float, float]) -> Route:
    """The lane with its end points replaced by ``start`` and ``end`` (a mission's first and last stop)."""
    return Route([start, *Route.houston_to_atlanta().waypoints[1:-1], end])


@dataclass(frozen=True)
class Scenario:
    """A parsed ``--scenario`` value."""

    name: str = "none"
    minutes: float = 0.0


def parse_scenario(text: str | None) -> Scenario:
    """``sensor-fault``, ``connectivity-loss:MINUTES``, ``edge-crash`` or ``road-closure`` (None: no scenario)."""
    if not text:
        return Scenario()
    name, _, arg = text.partition(":")
    if name == "connectivity-loss":
        minutes = float(arg or 30)
        if minutes <= 0:
            raise ValueError("connectivity-loss needs a positive number of minutes")
        return Scenario(name, minutes)
    if name in ("sensor-fault", "edge-crash", "road-closure") and not arg:
        return Scenario(name)
    raise ValueError(f"unknown scenario {text!r}: sensor-fault, connectivity-loss:MINUTES, edge-crash, road-closure")


@dataclass
class Truck:
    """The simulated vehicle's state. ``step`` advances it by one simulated second."""

    route: Route = field(default_factory=Route.houston_to_atlanta)
    distance_m: float = 0.0
    speed_kph: float = 0.0
    state: str = "idle"
    odometer_miles: float = 0.0
    mission_id: str = ""
    sensors: dict[str, str] = field(default_factory=lambda: {"lidar_status": "ok", "camera_health": "ok",
                                                              "radar_status": "ok"})

    @property
    def arrived(self) -> bool:
        """At the end of the route."""
        return self.distance_m >= self.route.length_m

    def step(self) -> None:
        """One simulated second of driving at the current speed."""
        advance = self.speed_kph / 3.6
        if advance:
            advance = min(advance, self.route.length_m - self.distance_m)
            self.distance_m += advance
            self.odometer_miles += advance / 1609.344

    def payload(self, kind: int) -> frame_pb2.FramePayload:
        """A frame payload describing the truck now."""
        point = self.route.at(self.distance_m)
        return frame_pb2.FramePayload(
            kind=kind, vehicle_state=self.state, mission_id=self.mission_id, odometer_miles=self.odometer_miles,
            position=frame_pb2.Position(lat=point.lat, lon=point.lon, speed_kph=self.speed_kph,
                                        heading_deg=point.heading_deg, accuracy_meters=1.5),
            sensors=frame_pb2.SensorStatus(**self.sensors))


@dataclass
class SimulationReport:
    """What a simulation run produced."""

    frames: int = 0
    by_kind: dict[str, int] = field(default_factory=dict)
    simulated_seconds: int = 0
    arrived: bool = False
    rerouted: bool = False
    commands: list[str] = field(default_factory=list)


@dataclass
class _Progress:
    """Saved across an edge crash so the restarted process resumes where the truck was."""

    sim_seconds: int = 0
    distance_m: float = 0.0
    odometer_miles: float = 0.0
    mission_id: str = ""
    crashed: bool = False
    departed: bool = False


class Simulation:
    """Drives a Truck, records its frames, fires the scenario and answers commands."""

    def __init__(self, recorder: Recorder, link: Link | None, *, speedup: float, scenario: Scenario,
                 mission_id: str = "", wait_for_mission: bool = False, max_sim_seconds: int | None = None,
                 progress_path: Path | None = None, crash: Callable[[], None] | None = None,
                 frame_every: int = 1, scenario_at: int | None = None, route_from_assignment: bool = False,
                 pickup_dwell_seconds: int = 0, dwell_speedup: float | None = None,
                 stop_hold_seconds: int = STOP_HOLD_SECONDS) -> None:
        """``frame_every``: one POSITION frame every N simulated seconds. ``scenario_at``: the simulated second
        the scenario starts (default: its own, see the module docstring); later steps of the scenario keep
        their spacing. ``route_from_assignment``: start at the assigned mission's first stop and end at its
        last, through the lane's inner waypoints (the truck is at the shipper's dock, not at the lane's
        nominal end points, so it is inside the pickup geofence when it departs). ``stop_hold_seconds``: how long
        (simulated) the truck stays stopped after a stop command before the run ends, unless a resume comes."""
        if frame_every < 1:
            raise ValueError("frame_every must be at least 1 simulated second")
        if pickup_dwell_seconds < 0 or (dwell_speedup is not None and dwell_speedup <= 0):
            raise ValueError("pickup_dwell_seconds must be >= 0 and dwell_speedup > 0")
        self.pickup_dwell_seconds = pickup_dwell_seconds
        self.dwell_speedup = dwell_speedup or speedup
        self.recorder = recorder
        self.link = link
        self.speedup = speedup
        self.scenario = scenario
        self.frame_every = frame_every
        self.route_from_assignment = route_from_assignment
        default_start = _SCENARIO_START.get(scenario.name, 0)
        self._scenario_shift = 0 if scenario_at is None else scenario_at - default_start
        self.truck = Truck(mission_id=mission_id)
        self.wait_for_mission = wait_for_mission and not mission_id
        self.max_sim_seconds = max_sim_seconds
        self.report = SimulationReport()
        self._progress_path = progress_path
        self._progress = self._load_progress()
        self._crash = crash or (lambda: os.kill(os.getpid(), signal.SIGKILL))
        self._mission_assigned = asyncio.Event()
        self._reroute: list[tuple[float, float]] | None = None
        self.stop_hold_seconds = stop_hold_seconds
        #: The simulated second a stop command's hold ends the run (None: not stopped by a command).
        self._stop_deadline: int | None = None
        if self._progress.sim_seconds:
            self.truck.distance_m = self._progress.distance_m
            self.truck.odometer_miles = self._progress.odometer_miles
            self.truck.mission_id = self._progress.mission_id or mission_id

    # -- commands from the cloud ----------------------------------------------------------------------------

    def on_command(self, command: stream_pb2.Command) -> tuple[int, str]:
        """The command handler given to the StreamClient."""
        outcome = stream_pb2.CommandAck
        which = command.WhichOneof("payload")
        self.report.commands.append(which or "unknown")
        if which == "assign_mission":
            self.truck.mission_id = command.assign_mission.mission_id
            stops = command.assign_mission.stops
            if self.route_from_assignment and len(stops) >= 2 and not self._progress.departed:
                self.truck.route = lane_between((stops[0].location.lat, stops[0].location.lon),
                                                (stops[-1].location.lat, stops[-1].location.lon))
            self._mission_assigned.set()
            return outcome.OUTCOME_ACCEPTED, ""
        if which == "reroute":
            self._reroute = [(w.lat, w.lon) for w in command.reroute.waypoints if w.lat or w.lon]
            if not self._reroute:
                return outcome.OUTCOME_REJECTED, "the reroute has no usable waypoints"
            return outcome.OUTCOME_COMPLETED, f"following {len(self._reroute)} new waypoints"
        if which == "stop":
            self.truck.speed_kph, self.truck.state = 0.0, "stopped"
            self._stop_deadline = self.report.simulated_seconds + self.stop_hold_seconds
            return outcome.OUTCOME_COMPLETED, "stopped"
        if which == "resume":
            if self._stop_deadline is None or self.truck.state != "stopped":
                return outcome.OUTCOME_REJECTED, f"not stopped by a command (state {self.truck.state})"
            self.truck.speed_kph, self.truck.state, self._stop_deadline = CRUISE_KPH, "enroute", None
            return outcome.OUTCOME_COMPLETED, "resumed"
        if which == "cancel_assignment":
            self.truck.mission_id = ""
            return outcome.OUTCOME_COMPLETED, "assignment dropped"
        return outcome.OUTCOME_REJECTED, f"unsupported command {which!r}"

    # -- the run --------------------------------------------------------------------------------------------

    async def run(self) -> SimulationReport:
        """Drives to Atlanta (or until ``max_sim_seconds``), recording frames at the simulated rate."""
        truck, loop = self.truck, asyncio.get_running_loop()
        if self.wait_for_mission and not self._progress.departed:
            truck.state = "idle"
            await self._record(KIND.KIND_POSITION)
            await self._mission_assigned.wait()
        if self.pickup_dwell_seconds and not self._progress.departed:
            await self._dwell_at_pickup()
        if not self._progress.departed:
            truck.state = "pre_trip"
            health = truck.payload(KIND.KIND_HEALTH)
            health.health_checks.extend(pre_trip_checks(health.sensors))
            await self._record(KIND.KIND_HEALTH, health)
        truck.state, truck.speed_kph = "enroute", CRUISE_KPH
        second = self._progress.sim_seconds
        started, first_second = loop.time(), second
        hold_until = None
        while not truck.arrived and (self.max_sim_seconds is None or second < self.max_sim_seconds) and \
                (self._stop_deadline is None or second < self._stop_deadline):
            second += 1
            self.report.simulated_seconds = second
            await self._scenario(second)
            if self._reroute:
                truck.route, truck.distance_m = truck.route.rest_from(truck.distance_m, self._reroute), 0.0
                self._reroute, hold_until, self._stop_deadline = None, None, None
                self.report.rerouted = True
                truck.state, truck.speed_kph = "enroute", CRUISE_KPH
                await self._record(KIND.KIND_EVENT, event=("reroute_applied", "following the cloud's reroute"))
            if hold_until is None and truck.state == "stopped" and self.scenario.name == "road-closure":
                hold_until = second + CLOSURE_MAX_HOLD
            if hold_until is not None and second >= hold_until and truck.state == "stopped":
                truck.state, truck.speed_kph, hold_until = "enroute", CRUISE_KPH, None  # no reroute came
            truck.step()
            if second % 10 == 0:
                self._save_progress(second)
            if second % self.frame_every and not truck.arrived:
                continue  # no frame this simulated second: nothing to pace either
            await self._record(KIND.KIND_POSITION)
            # Pace: simulated second N is due at real time started + (N - first) / speedup; behind, catch up.
            delay = started + (second - first_second) / self.speedup - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
        if truck.arrived:
            truck.state, truck.speed_kph = "arrived", 0.0
            self.report.arrived = True
            await self._record(KIND.KIND_POSITION)
        self._save_progress(second)
        return self.report

    async def _dwell_at_pickup(self) -> None:
        """Parked at the pickup, loading: a position every ``frame_every`` simulated seconds (and one at the
        end), paced at ``dwell_speedup``."""
        truck, loop = self.truck, asyncio.get_running_loop()
        truck.state, truck.speed_kph = "loading", 0.0
        started = loop.time()
        marks = [*range(0, self.pickup_dwell_seconds, self.frame_every), self.pickup_dwell_seconds]
        for mark in marks:
            delay = started + mark / self.dwell_speedup - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            await self._record(KIND.KIND_POSITION)

    async def _scenario(self, second: int) -> None:
        name, truck = self.scenario.name, self.truck
        at = second - self._scenario_shift  # the scenario's own clock
        if name == "sensor-fault":
            if at == FAULT_DEGRADE_AT:
                truck.sensors["lidar_status"] = "degraded"
                await self._alarm(KIND.KIND_FAULT, "LIDAR_DEGRADED", SEVERITY.SEVERITY_WARNING, "lidar_front_left",
                                  "front-left lidar returns degraded")
            elif at == FAULT_FAIL_AT:
                truck.sensors["lidar_status"] = "fault"
                await self._alarm(KIND.KIND_FAULT, "LIDAR_FAILURE", SEVERITY.SEVERITY_CRITICAL, "lidar_front_left",
                                  "front-left lidar failed")
                truck.state, truck.speed_kph = "minimal_risk_stop", 0.0
                await self._alarm(KIND.KIND_ALARM, "MRC_ENGAGED", SEVERITY.SEVERITY_CRITICAL, "",
                                  "minimal-risk condition: stopped on the shoulder")
                self.max_sim_seconds = second + MRC_HOLD_SECONDS
        elif name == "connectivity-loss" and at == OUTAGE_AT and self.link:
            self.link.cut_link(self.scenario.minutes * 60 / self.speedup)
        elif name == "edge-crash" and at == CRASH_AT and not self._progress.crashed:
            self._progress.crashed = True
            self._save_progress(second)
            self._crash()
        elif name == "road-closure" and at == CLOSURE_AT:
            truck.state, truck.speed_kph = "stopped", 0.0
            await self._record(KIND.KIND_EVENT,
                               event=("road_closure_ahead", "I-10 closed ahead; holding for a reroute"))

    async def _alarm(self, kind: int, code: str, severity: int, component: str, description: str) -> None:
        payload = self.truck.payload(kind)
        payload.alarm.CopyFrom(frame_pb2.Alarm(code=code, severity=severity, component=component,
                                               description=description))
        await self._record(kind, payload)

    async def _record(self, kind: int, payload: frame_pb2.FramePayload | None = None, *,
                      event: tuple[str, str] | None = None) -> None:
        payload = payload or self.truck.payload(kind)
        if event:
            payload.event.CopyFrom(frame_pb2.DeviceEvent(code=event[0], detail=event[1]))
        await asyncio.to_thread(self.recorder.record, payload)
        if self.link:
            self.link.notify()
        name = KIND.Kind.Name(kind)
        self.report.frames += 1
        self.report.by_kind[name] = self.report.by_kind.get(name, 0) + 1

    # -- progress across crashes ----------------------------------------------------------------------------

    def _load_progress(self) -> _Progress:
        if self._progress_path and self._progress_path.exists():
            return _Progress(**json.loads(self._progress_path.read_text()))
        return _Progress()

    def _save_progress(self, second: int) -> None:
        if not self._progress_path:
            return
        self._progress.sim_seconds, self._progress.distance_m = second, self.truck.distance_m
        self._progress.odometer_miles, self._progress.mission_id = self.truck.odometer_miles, self.truck.mission_id
        self._progress.departed = True
        tmp = self._progress_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(asdict(self._progress)))
        os.replace(tmp, self._progress_path)  # atomic: a crash leaves the old or the new progress


async def simulate(recorder: Recorder, link: Link | None, **options) -> SimulationReport:
    """Runs one Simulation (see :class:`Simulation` for the options)."""
    return await Simulation(recorder, link, **options).run()
