"""The fleet's lane facts, in one place: markets, time zones, road circuity, planning speed, night hours and
known routes with their mileage.

Every service reads these from the one policy file (``HAULMESH_LANES_FILE``, by default ``lanes.json`` beside
this module), so a quote, a mission's plan, an eligibility decision and an ETA measure the same road with the
same numbers: the tender's offer miles and the mission's planned miles are one computation
(:meth:`LaneFacts.plan`). Plain Python: no gRPC, no Redis; the file is read once at start-up and a bad one
stops the service with a ConfigError naming the variable and the entry.

File format (see docs/decisions.md, "Lane facts")::

    {"planning": {"circuity_factor": 1.13, "planning_speed_mph": 55, "night_hours": {"start": 22, "end": 5},
                  "route_match_miles": 25},
     "markets": [{"code": "US-TX-HOU", "name": "Houston", "lat": 29.7604, "lon": -95.3698,
                  "timezone": "America/Chicago", "service_radius_miles": 75, "urban_core_radius_miles": 8,
                  "urban_core_approved": true}, ...],
     "routes": [{"name": "...", "miles": 789,
                 "waypoints": [{"name": "Houston, TX", "lat": 29.7604, "lon": -95.3698}, ...]}],
     "roads": {"places": [...], "segments": [{"from": "Houston, TX", "to": "Baytown, TX", "road": "I-10",
                                              "miles": 25}, ...]}}       (roads.py: detours around a closure)

A route's ``miles`` is its road mileage end to end as the fleet's mileage guide gives it; a sparse waypoint
polyline cuts the road's curves and under-measures it (the seed route's 14 waypoints measure 779 of 789 miles),
so the polyline is its geometry (for deviation and the simulator) and ``miles`` its length. Without ``miles``
the polyline's length is used.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from datetime import time as dt_time
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from ._config import read_json_file
from ._errors import ConfigError
from ._geo import METERS_PER_MILE, great_circle_miles
from .limits import MARKET_CODE
from .roads import Detour, RoadNetwork, empty_network, parse_roads

__all__ = [
    "DEFAULT_LANES_FILE",
    "LANES_FILE_ENV",
    "Detour",
    "KnownRoute",
    "LaneFacts",
    "Market",
    "PlannedRoute",
    "Point",
    "load_lane_facts",
]

#: Environment variable naming the lane facts file.
LANES_FILE_ENV = "HAULMESH_LANES_FILE"
#: The shipped facts: the fleet's Sun Belt markets and the seed's Houston → Atlanta route.
DEFAULT_LANES_FILE = Path(__file__).with_name("lanes.json")

#: (lat, lon) in degrees.
Point = tuple[float, float]

_MAX_MARKETS, _MAX_ROUTES, _MAX_WAYPOINTS = 1_000, 10_000, 10_000


@dataclass(frozen=True)
class Market:
    """A fleet market: its code (``US-TX-HOU``, lane.proto), terminal position, service radius, time zone."""

    code: str
    name: str
    lat: float
    lon: float
    timezone: str
    service_radius_miles: float = 75.0
    #: Radius around the terminal counted as the dense urban core.
    urban_core_radius_miles: float = 8.0
    #: Whether autonomous operation is approved in the urban core (pickups and deliveries inside it).
    urban_core_approved: bool = True

    def miles_to(self, lat: float, lon: float) -> float:
        """Great-circle miles from the terminal."""
        return great_circle_miles(self.lat, self.lon, lat, lon)


@dataclass(frozen=True)
class KnownRoute:
    """A road route the fleet has mapped, as the waypoints it follows (directional)."""

    name: str
    waypoints: tuple[Point, ...]
    #: Road miles from the first waypoint to the last (the mileage guide's figure, else the polyline's length).
    miles: float
    #: Waypoint names, parallel to ``waypoints`` ("Houston, TX"), for people and the simulator.
    waypoint_names: tuple[str, ...] = ()


@dataclass(frozen=True)
class PlannedRoute:
    """How a move between stops is planned: its road miles and, on a known route, the road's geometry."""

    #: Road miles, rounded to 0.1: along the known route, else great circle times the circuity factor.
    miles: float
    #: The points the road follows (first stop, the known route's inner waypoints, last stop); empty when no
    #: known route fits (a straight line between stops is no road).
    points: tuple[Point, ...]
    #: The known route's name, or "" when the miles are a circuity estimate.
    route_name: str = ""


@dataclass(frozen=True)
class LaneFacts:
    """The fleet's geography and planning numbers. Construct with :func:`load_lane_facts` or :meth:`from_dict`."""

    markets: tuple[Market, ...]
    routes: tuple[KnownRoute, ...] = ()
    #: Road miles ≈ great-circle miles x this, where no known route applies.
    circuity_factor: float = 1.13
    #: Average speed of a driverless truck including stops, for transit times, deadhead and ETAs.
    planning_speed_mph: float = 55.0
    #: Local night hours [start, end) in the time zone of the market a trip starts from.
    night_start_hour: int = 22
    night_end_hour: int = 5
    #: A known route serves a move whose first and last stops lie within this of the route's ends.
    route_match_miles: float = 25.0
    #: The mapped road network, for detours around a closure (roads.py); empty: no detour is ever known.
    roads: RoadNetwork = field(default_factory=empty_network)

    @property
    def planning_speed_kph(self) -> float:
        return self.planning_speed_mph * METERS_PER_MILE / 1000

    def market(self, code: str) -> Market | None:
        """The market with ``code``, or None."""
        return next((m for m in self.markets if m.code == code), None)

    def market_for(self, lat: float, lon: float) -> Market | None:
        """The nearest market whose service radius covers the point, or None (outside the service area)."""
        best: tuple[float, Market] | None = None
        for market in self.markets:
            miles = market.miles_to(lat, lon)
            if miles <= market.service_radius_miles and (best is None or miles < best[0]):
                best = (miles, market)
        return None if best is None else best[1]

    def nearest_market(self, lat: float, lon: float) -> Market:
        """The market whose terminal is nearest, however far (labels a lane even outside the service area)."""
        return min(self.markets, key=lambda m: (m.miles_to(lat, lon), m.code))

    def timezone_at(self, lat: float, lon: float) -> str:
        """The time zone of the point's market (the nearest one outside every service area)."""
        return (self.market_for(lat, lon) or self.nearest_market(lat, lon)).timezone

    def known_route(self, stops: Sequence[Point]) -> KnownRoute | None:
        """The first known route whose ends lie near the first and last stops (a route has a direction)."""
        if len(stops) < 2:
            return None
        first, last = stops[0], stops[-1]
        for route in self.routes:
            if (great_circle_miles(*first, *route.waypoints[0]) <= self.route_match_miles
                    and great_circle_miles(*last, *route.waypoints[-1]) <= self.route_match_miles):
                return route
        return None

    def plan(self, stops: Sequence[Point]) -> PlannedRoute:
        """The road miles (and geometry, on a known route) of a move through ``stops`` in order.

        On a known route: the route's road miles, plus the estimated road miles between each end stop and the
        route's end near it; the geometry runs from the first stop through the route's inner waypoints to the
        last stop. Otherwise great circle through the stops times the circuity factor. One function, so the
        quote, the offer and the mission plan carry the same miles. A move with stops between its ends keeps
        the route's geometry but is measured through its stops (the route's mileage does not visit them).
        """
        route = self.known_route(stops)
        if route is not None and len(stops) == 2:
            miles = (route.miles + self.road_miles(stops[0], route.waypoints[0])
                     + self.road_miles(route.waypoints[-1], stops[-1]))
        else:
            miles = _polyline_miles(stops) * self.circuity_factor
        points = () if route is None else (stops[0], *route.waypoints[1:-1], stops[-1])
        return PlannedRoute(round(miles, 1), points, route.name if route else "")

    def detour(self, position: Point, destination: Point) -> Detour | None:
        """The way around the road segment a truck at ``position`` reported closed ahead, to ``destination``
        (roads.py); None when no mapped segment lies within ``route_match_miles`` or nothing leads around it."""
        return self.roads.detour(position, destination, near_miles=self.route_match_miles)

    def road_miles(self, a: Point, b: Point) -> float:
        """Estimated road miles between two points off any known route (great circle x circuity)."""
        return great_circle_miles(*a, *b) * self.circuity_factor

    def transit(self, miles: float) -> timedelta:
        """Driving time for ``miles`` at the planning speed, to the whole minute."""
        return timedelta(minutes=round(miles / self.planning_speed_mph * 60))

    def night_minutes(self, start: datetime, duration: timedelta, timezone: str) -> int:
        """Whole minutes of [start, start + duration) in local night hours in ``timezone``.

        Interval arithmetic over the few local nights a trip touches, not a walk through the trip: offers are
        priced on the request path.
        """
        tz = ZoneInfo(timezone)
        end = start + duration
        night_start, night_end = self.night_start_hour, self.night_end_hour
        crosses_midnight = night_start > night_end
        day = start.astimezone(tz).date() - timedelta(days=1)
        total = timedelta()
        while True:
            # In UTC: arithmetic between two datetimes of one zone is wall-clock arithmetic, which miscounts the
            # nights the clocks change on.
            night_from = datetime.combine(day, dt_time(night_start), tz).astimezone(UTC)
            night_to = datetime.combine(day + timedelta(days=1) if crosses_midnight else day, dt_time(night_end),
                                        tz).astimezone(UTC)
            if night_from >= end:
                return int(total.total_seconds() // 60)
            overlap = min(end, night_to) - max(start, night_from)
            if overlap > timedelta():
                total += overlap
            day += timedelta(days=1)

    def touches_night(self, start: datetime, end: datetime, timezone: str) -> bool:
        """Whether [start, end] (the end's minute included: a delivery due at 22:00 is a night delivery) overlaps
        local night hours in ``timezone``."""
        if end < start:
            return False
        return self.night_minutes(start, end - start + timedelta(minutes=1), timezone) > 0

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], *, source: str = "lane facts") -> LaneFacts:
        """Parse and check a lane facts document; ConfigError naming ``source`` and the bad entry."""
        try:
            return _parse(data)
        except (KeyError, TypeError, ValueError) as exc:
            raise ConfigError(f"{LANES_FILE_ENV}: {source}: {exc}", field=LANES_FILE_ENV) from None


def _polyline_miles(points: Sequence[Point]) -> float:
    return sum(great_circle_miles(*a, *b) for a, b in itertools.pairwise(points))


def _req(d: Mapping[str, Any], key: str, where: str) -> Any:
    if not isinstance(d, Mapping):
        raise TypeError(f"{where} must be an object")
    if key not in d:
        raise KeyError(f"{where}: missing {key!r}")
    return d[key]


def _point(lat: Any, lon: Any, where: str) -> Point:
    if not all(isinstance(v, int | float) and not isinstance(v, bool) for v in (lat, lon)):
        raise TypeError(f"{where}: lat and lon must be numbers")
    point = (float(lat), float(lon))
    if not (-90 <= point[0] <= 90 and -180 <= point[1] <= 180):
        raise ValueError(f"{where}: coordinates out of range")
    return point


def _parse(data: Mapping[str, Any]) -> LaneFacts:
    if not isinstance(data, Mapping):
        raise TypeError("the document must be a JSON object")
    unknown = set(data) - {"planning", "markets", "routes", "roads"}
    if unknown:
        raise ValueError(f"unknown keys {sorted(unknown)} (expected planning, markets, routes, roads)")
    raw_markets = _req(data, "markets", "document")
    if not isinstance(raw_markets, list) or not 0 < len(raw_markets) <= _MAX_MARKETS:
        raise ValueError(f"markets must be a list of 1 to {_MAX_MARKETS}")
    markets = []
    for i, m in enumerate(raw_markets):
        where = f"markets[{i}]"
        code = str(_req(m, "code", where))
        if not MARKET_CODE.fullmatch(code):
            raise ValueError(f"{where}: code {code!r} is not like US-TX-HOU")
        lat, lon = _point(_req(m, "lat", where), _req(m, "lon", where), where)
        market = Market(code=code, name=str(m.get("name", code)), lat=lat, lon=lon,
                        timezone=str(_req(m, "timezone", where)),
                        service_radius_miles=float(m.get("service_radius_miles", 75.0)),
                        urban_core_radius_miles=float(m.get("urban_core_radius_miles", 8.0)),
                        urban_core_approved=bool(m.get("urban_core_approved", True)))
        try:
            ZoneInfo(market.timezone)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"{where}: unknown time zone {market.timezone!r}") from None
        if market.service_radius_miles <= 0 or market.urban_core_radius_miles < 0:
            raise ValueError(f"{where}: radii must be positive")
        markets.append(market)
    if len({m.code for m in markets}) != len(markets):
        raise ValueError("duplicate market code")
    raw_routes = data.get("routes", [])
    if not isinstance(raw_routes, list) or len(raw_routes) > _MAX_ROUTES:
        raise ValueError(f"routes must be a list of at most {_MAX_ROUTES}")
    routes = []
    for i, r in enumerate(raw_routes):
        where = f"routes[{i}]"
        raw_points = _req(r, "waypoints", where)
        if not isinstance(raw_points, list) or not 2 <= len(raw_points) <= _MAX_WAYPOINTS:
            raise ValueError(f"{where}: waypoints must be a list of 2 to {_MAX_WAYPOINTS}")
        points = tuple(_point(_req(p, "lat", f"{where}.waypoints[{j}]"), _req(p, "lon", f"{where}.waypoints[{j}]"),
                              f"{where}.waypoints[{j}]") for j, p in enumerate(raw_points))
        straight = _polyline_miles(points)
        miles = float(r.get("miles", straight))
        if not straight * 0.95 <= miles <= straight * 3:
            raise ValueError(f"{where}: miles {miles:g} cannot be the length of a road through its waypoints "
                             f"({straight:.0f} mi in straight lines)")
        routes.append(KnownRoute(name=str(r.get("name", f"route {i}")), waypoints=points, miles=miles,
                                 waypoint_names=tuple(str(p.get("name", "")) for p in raw_points)))
    planning = data.get("planning", {})
    night = planning.get("night_hours", {})
    facts = LaneFacts(markets=tuple(markets), routes=tuple(routes),
                      circuity_factor=float(planning.get("circuity_factor", 1.13)),
                      planning_speed_mph=float(planning.get("planning_speed_mph", 55.0)),
                      night_start_hour=int(night.get("start", 22)), night_end_hour=int(night.get("end", 5)),
                      route_match_miles=float(planning.get("route_match_miles", 25.0)),
                      roads=parse_roads(data["roads"], _point) if "roads" in data else empty_network())
    if not 1 <= facts.circuity_factor <= 3:
        raise ValueError("planning.circuity_factor must be in 1..3")
    if not 0 < facts.planning_speed_mph <= 85:
        raise ValueError("planning.planning_speed_mph must be in (0, 85]")
    if not (0 <= facts.night_start_hour < 24 and 0 <= facts.night_end_hour < 24):
        raise ValueError("planning.night_hours must be hours 0..23")
    if not 0 < facts.route_match_miles <= 100:
        raise ValueError("planning.route_match_miles must be in (0, 100]")
    return facts


def load_lane_facts(env: Mapping[str, str] | None = None) -> LaneFacts:
    """The facts of ``HAULMESH_LANES_FILE``, else the shipped default; ConfigError naming the file if bad."""
    env = os.environ if env is None else env
    path = Path(env.get(LANES_FILE_ENV) or DEFAULT_LANES_FILE)
    return LaneFacts.from_dict(read_json_file(path, LANES_FILE_ENV), source=str(path))
