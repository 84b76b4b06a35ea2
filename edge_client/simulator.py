"""A simulated driverless truck at accelerated time: on the seed's lane (Houston → Atlanta), or, with
``route_from_assignment``, on the route its mission's assignment carries (the way the cloud planned).

The truck produces one POSITION frame per simulated second (1 Hz), a signed HEALTH frame with its pre-trip
self-checks before departing, and FAULT / ALARM / EVENT frames when a scenario says so:

* ``sensor-fault``: the front lidar degrades (FAULT, warning), then fails (FAULT, critical); the truck
  engages its minimal-risk condition (ALARM MRC_ENGAGED) and stops on the shoulder, where it waits for the
  command centre (a stop, then a resume) as long as a commanded stop would.
* ``connectivity-loss:MINUTES``: the link drops for MINUTES simulated minutes; frames keep spooling and
  are replayed when it returns.
* ``edge-crash``: the edge process is killed (SIGKILL) mid-route; the CLI's supervisor restarts it, and it
  resumes from its spool and its saved progress.
* ``road-closure``: the truck reports a road closure ahead (EVENT), holds, and follows the Reroute
  command the cloud sends (or, without one, the original route after a while). Where the cloud knows no way
  around the closure it sends a stop instead: the truck then stays stopped until an operator's resume (the road
  reopened) or the end of its hold, as after any stop.
* ``takeover``: a patrol car signals the truck to pull over; it reports a law-enforcement stop (EVENT
  ``law_enforcement_stop``) and stops on the shoulder. The cloud hands it to a remote human operator (``hand_over``:
  state ``remote-control``, speed 0, positions still streaming) and, once the operator resolves the exception, back
  (``hand_back``: it drives on). Without a hand-over the run ends after ``stop_hold_seconds``; under remote control
  the truck waits for the hand-back as long as the run may last (the human drives until the cloud hands it back).
* ``pre-trip-failure``: the front lidar fails the pre-trip self-checks (a blocking FAIL in the first HEALTH frame);
  the truck stays at the pickup while a technician fixes it, then checks again, passes and departs.

Under remote control the autonomy stack does not drive: the truck answers ``hand_over`` ACCEPTED once the human has
control and ``hand_back`` COMPLETED once it drives itself again (EVENT frames ``takeover_started`` and
``takeover_ended`` mark both in its telemetry); a reroute received meanwhile waits for the hand-back; a stop is
refused (the remote operator stops the truck), and a sensor failure engages no minimal-risk condition of its own.

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

Where the truck is between runs (``position_path``, beside the spool): a run that waits for its mission reports the
truck idle where the last run ended (its delivery, or the shoulder where it was left), not back at Houston, so the
fleet measures deadhead from there; the run saves where it ends. Once assigned, the truck starts at the mission's
first stop (the deadhead itself is not driven).

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
from .route import Point, Route, haversine_m

__all__ = ["Link", "Scenario", "SimulationReport", "Truck", "lane_between", "parse_scenario", "planned_between",
           "simulate"]

KIND = frame_pb2.FramePayload
SEVERITY = frame_pb2.Alarm
#: How long (simulated) a truck stopped by a command waits for a resume before its run ends.
STOP_HOLD_SECONDS = 60
CRUISE_KPH = 105.0  # 65 mph, a typical autonomous-truck cruise on interstates
# When a scenario fires, in simulated seconds after departure (``scenario_at`` moves the whole scenario).
FAULT_DEGRADE_AT, FAULT_FAIL_AT = 600, 900
OUTAGE_AT, CRASH_AT, CLOSURE_AT, CLOSURE_MAX_HOLD, TAKEOVER_AT = 300, 300, 1200, 600, 900
#: How long (simulated) the technician takes to fix the pre-trip-failure scenario's lidar at the pickup.
PRE_TRIP_REPAIR_SECONDS = 300
_SCENARIO_START = {"sensor-fault": FAULT_DEGRADE_AT, "connectivity-loss": OUTAGE_AT, "edge-crash": CRASH_AT,
                   "road-closure": CLOSURE_AT, "takeover": TAKEOVER_AT}
#: Scenarios that take no argument.
_PLAIN_SCENARIOS = ("sensor-fault", "edge-crash", "road-closure", "takeover", "pre-trip-failure")
#: The truck's state while a remote human operator has control.
REMOTE_CONTROL = "remote-control"


class Link(Protocol):
    """What the simulation needs from the stream client."""

    def notify(self) -> None:
        """New frames are spooled."""

    def cut_link(self, seconds: float) -> None:
        """Drop the connection for ``seconds`` real seconds."""


#: A planned route's segments longer than this are driven along their great circle in pieces of this length.
MAX_SEGMENT_M = 30_000.0


def planned_between(start: tuple[float, float], end: tuple[float, float],
                    planned: list[tuple[float, float]]) -> Route:
    """The cloud's planned route (2+ points, first stop to last) from ``start`` through its inner points to ``end``
    (a mission's first and last stop), its long straight segments densified along the great circle."""
    if len(planned) < 2:
        raise ValueError("a planned route needs at least two points")
    return Route([start, *planned[1:-1], end]).densified(MAX_SEGMENT_M)


def lane_between(start: tuple[float, float], end: tuple[float, float]) -> Route:
    """The lane with its end points replaced by ``start`` and ``end`` (a mission's first and last stop), driven
    backwards (Atlanta → Houston) when ``start`` lies nearer the lane's far end: a truck's way home. For an
    assignment without a planned route (an older server's)."""
    lane = Route.houston_to_atlanta().waypoints
    interior = lane[1:-1]
    if haversine_m(*start, *lane[-1]) < haversine_m(*start, *lane[0]):
        interior = interior[::-1]
    return Route([start, *interior, end])


@dataclass(frozen=True)
class Scenario:
    """A parsed ``--scenario`` value."""

    name: str = "none"
    minutes: float = 0.0


def parse_scenario(text: str | None) -> Scenario:
    """``sensor-fault``, ``connectivity-loss:MINUTES``, ``edge-crash``, ``road-closure``, ``takeover`` or
    ``pre-trip-failure`` (None: no scenario)."""
    if not text:
        return Scenario()
    name, _, arg = text.partition(":")
    if name == "connectivity-loss":
        minutes = float(arg or 30)
        if minutes <= 0:
            raise ValueError("connectivity-loss needs a positive number of minutes")
        return Scenario(name, minutes)
    if name in _PLAIN_SCENARIOS and not arg:
        return Scenario(name)
    raise ValueError(f"unknown scenario {text!r}: sensor-fault, connectivity-loss:MINUTES, edge-crash, road-closure, "
                     "takeover, pre-trip-failure")


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
    #: Where the truck stands waiting for a mission, when not at the start of its route (where the last run ended);
    #: None once assigned.
    parked_at: tuple[float, float] | None = None

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
        point = self.route.at(self.distance_m) if self.parked_at is None else Point(*self.parked_at, 0.0)
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
                 stop_hold_seconds: int = STOP_HOLD_SECONDS, position_path: Path | None = None) -> None:
        """``frame_every``: one POSITION frame every N simulated seconds. ``scenario_at``: the simulated second
        the scenario starts (default: its own, see the module docstring); later steps of the scenario keep
        their spacing. ``route_from_assignment``: start at the assigned mission's first stop and end at its
        last, through the inner points of the assignment's planned route (the way the cloud planned; through the
        seed lane's inner waypoints when an older server sends none) (the truck is at the shipper's dock, not at
        the route's nominal end points, so it is inside the pickup geofence when it departs).
        ``stop_hold_seconds``: how long (simulated) the truck stays stopped after a stop command before the run
        ends, unless a resume comes. ``position_path``: where the truck keeps its position between runs (see the
        module docstring); None: each run waiting for a mission starts at Houston."""
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
        #: The simulated second a hold ends the run (None: not holding): after a stop command (unless resumed), after a
        #: law-enforcement stop (unless handed over).
        self._stop_deadline: int | None = None
        #: Whether the truck left the pickup (what a hand-back returns it to).
        self._departed = False
        #: Device events a command calls for, recorded by the run (a command's answer cannot wait for the spool).
        self._events: list[tuple[str, str]] = []
        self._position_path = position_path
        if self.wait_for_mission and not self._progress.departed:
            self.truck.parked_at = self._load_position()
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
            self.truck.parked_at = None  # at the pickup now (the deadhead is not simulated)
            stops, planned = command.assign_mission.stops, command.assign_mission.planned_route
            if self.route_from_assignment and len(stops) >= 2 and not self._progress.departed:
                first = (stops[0].location.lat, stops[0].location.lon)
                last = (stops[-1].location.lat, stops[-1].location.lon)
                self.truck.route = (planned_between(first, last, [(p.lat, p.lon) for p in planned])
                                    if len(planned) >= 2 else lane_between(first, last))
            self._mission_assigned.set()
            return outcome.OUTCOME_ACCEPTED, ""
        if which == "reroute":
            self._reroute = [(w.lat, w.lon) for w in command.reroute.waypoints if w.lat or w.lon]
            if not self._reroute:
                return outcome.OUTCOME_REJECTED, "the reroute has no usable waypoints"
            return outcome.OUTCOME_COMPLETED, f"following {len(self._reroute)} new waypoints"
        if which == "stop":
            if self.truck.state == REMOTE_CONTROL:  # the human drives until the hand-back; a stop is theirs to make
                return outcome.OUTCOME_REJECTED, "under remote control: the remote operator stops the truck"
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
        if which in ("hand_over", "hand_back"):
            return self._takeover(which, getattr(command, which))
        return outcome.OUTCOME_REJECTED, f"unsupported command {which!r}"

    def _takeover(self, which: str, payload: stream_pb2.HandOver | stream_pb2.HandBack) -> tuple[int, str]:
        """``hand_over``: hold where it is and let the remote operator drive (ACCEPTED once the human has control);
        ``hand_back``: the autonomy stack drives on (COMPLETED once it has control)."""
        outcome, truck = stream_pb2.CommandAck, self.truck
        if payload.mission_id != truck.mission_id:
            return outcome.OUTCOME_REJECTED, f"not on mission {payload.mission_id!r}"
        if which == "hand_over":
            truck.state, truck.speed_kph = REMOTE_CONTROL, 0.0
            self._stop_deadline = None  # the human has control until the hand-back, however long that takes
            self._events.append(("takeover_started", f"remote operator in control ({payload.exception_id})"))
            return outcome.OUTCOME_ACCEPTED, "remote operator in control"
        if truck.state != REMOTE_CONTROL:
            return outcome.OUTCOME_REJECTED, f"not under remote control (state {truck.state})"
        truck.state, truck.speed_kph = ("enroute", CRUISE_KPH) if self._departed else ("pre_trip", 0.0)
        self._stop_deadline = None
        self._events.append(("takeover_ended", f"autonomy stack in control ({payload.exception_id})"))
        return outcome.OUTCOME_COMPLETED, "autonomy stack in control"

    # -- the run --------------------------------------------------------------------------------------------

    async def run(self) -> SimulationReport:
        """Drives to Atlanta (or until ``max_sim_seconds``), recording frames at the simulated rate."""
        truck, loop = self.truck, asyncio.get_running_loop()
        if self.wait_for_mission and not self._progress.departed:
            truck.state = "idle"
            await self._record(KIND.KIND_POSITION)
            await self._mission_assigned.wait()
        if self.pickup_dwell_seconds and not self._progress.departed:
            truck.state, truck.speed_kph = "loading", 0.0
            await self._stand_at_pickup(self.pickup_dwell_seconds, self.dwell_speedup)
        if not self._progress.departed:
            await self._pre_trip()
        if truck.state != REMOTE_CONTROL:
            truck.state, truck.speed_kph = "enroute", CRUISE_KPH
        self._departed = True
        second = self._progress.sim_seconds
        started, first_second = loop.time(), second
        hold_until = None
        while not truck.arrived and (self.max_sim_seconds is None or second < self.max_sim_seconds) and \
                (self._stop_deadline is None or second < self._stop_deadline):
            second += 1
            self.report.simulated_seconds = second
            await self._scenario(second)
            for code, detail in self._take_events():
                await self._record(KIND.KIND_EVENT, event=(code, detail))
            if self._reroute and truck.state != REMOTE_CONTROL:  # the autonomy stack follows it once it drives
                truck.route, truck.distance_m = truck.route.rest_from(truck.distance_m, self._reroute), 0.0
                self._reroute, hold_until, self._stop_deadline = None, None, None
                self.report.rerouted = True
                truck.state, truck.speed_kph = "enroute", CRUISE_KPH
                await self._record(KIND.KIND_EVENT, event=("reroute_applied", "following the cloud's reroute"))
            if hold_until is None and truck.state == "stopped" and self.scenario.name == "road-closure":
                hold_until = second + CLOSURE_MAX_HOLD
            if hold_until is not None and second >= hold_until and truck.state == "stopped" and \
                    self._stop_deadline is None:  # a commanded stop waits for its resume instead
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
        self._save_position()
        return self.report

    async def _stand_at_pickup(self, seconds: int, speedup: float) -> None:
        """Parked at the pickup for ``seconds`` simulated seconds (loading, or waiting for a repair): a position every
        ``frame_every`` simulated seconds (and one at the end), paced at ``speedup``."""
        loop = asyncio.get_running_loop()
        started = loop.time()
        for mark in [*range(0, seconds, self.frame_every), seconds]:
            delay = started + mark / speedup - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            for code, detail in self._take_events():
                await self._record(KIND.KIND_EVENT, event=(code, detail))
            await self._record(KIND.KIND_POSITION)

    async def _pre_trip(self) -> None:
        """The pre-trip self-checks, as a HEALTH frame. In ``pre-trip-failure`` the front lidar fails them first
        (blocking): the truck stays at the pickup while a technician fixes it (the cloud's hold, if one comes, is
        answered and kept), then a passing check, which the mission service takes as the departure (resolving the
        failure), lifts that hold."""
        truck = self.truck
        truck.state, truck.speed_kph = "pre_trip", 0.0
        if self.scenario.name == "pre-trip-failure":
            truck.sensors["lidar_status"] = "fault"
            await self._health()
            await self._stand_at_pickup(PRE_TRIP_REPAIR_SECONDS, self.speedup)
            truck.sensors["lidar_status"] = "ok"
            if truck.state == "stopped":
                truck.state, self._stop_deadline = "pre_trip", None
        await self._health()

    async def _health(self) -> None:
        health = self.truck.payload(KIND.KIND_HEALTH)
        health.health_checks.extend(pre_trip_checks(health.sensors))
        await self._record(KIND.KIND_HEALTH, health)

    def _take_events(self) -> list[tuple[str, str]]:
        events, self._events = self._events, []
        return events

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
                if truck.state != REMOTE_CONTROL:  # a remote operator at the wheel handles it: no MRC of its own
                    truck.state, truck.speed_kph = "minimal_risk_stop", 0.0
                    await self._alarm(KIND.KIND_ALARM, "MRC_ENGAGED", SEVERITY.SEVERITY_CRITICAL, "",
                                      "minimal-risk condition: stopped on the shoulder")
                    # On the shoulder until the command centre's stop confirms it and an operator's resume (the
                    # console's rescue action) sends it on, or the hold runs out and the run ends there.
                    self._stop_deadline = second + self.stop_hold_seconds
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
        elif name == "takeover" and at == TAKEOVER_AT and truck.state != REMOTE_CONTROL:
            truck.state, truck.speed_kph = "pulled_over", 0.0
            self._stop_deadline = second + self.stop_hold_seconds  # waiting for the hand-over
            await self._record(KIND.KIND_EVENT, event=("law_enforcement_stop",
                                                       "patrol car signalling to pull over; stopped on the shoulder"))

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

    # -- where the truck is between runs ------------------------------------------------------------------------

    def _load_position(self) -> tuple[float, float] | None:
        if not self._position_path or not self._position_path.exists():
            return None
        try:
            saved = json.loads(self._position_path.read_text())
            lat, lon = float(saved["lat"]), float(saved["lon"])
        except (OSError, ValueError, KeyError, TypeError):
            return None  # unreadable: the truck starts at its route's start, as a new one would
        return (lat, lon) if -90 <= lat <= 90 and -180 <= lon <= 180 else None

    def _save_position(self) -> None:
        if not self._position_path:
            return
        point = self.truck.payload(KIND.KIND_POSITION).position
        tmp = self._position_path.with_suffix(".tmp")
        tmp.write_text(json.dumps({"lat": point.lat, "lon": point.lon}))
        os.replace(tmp, self._position_path)

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
