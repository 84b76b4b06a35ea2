"""Lane eligibility policy: which moves the autonomous fleet may haul, as a typed, configurable policy.

Plain Python: no gRPC, no Redis. The policy is a JSON file (``HAULMESH_TENDER_ELIGIBILITY_FILE``, by
default ``services/tender/eligibility.json`` beside this module); its format is documented in
docs/tender.md. Markets (regions) are resolved from coordinates with the small metro table of the policy:
a point belongs to the nearest market whose terminal lies within the market's service radius.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from services.runtime import ConfigError

__all__ = [
    "DEFAULT_POLICY_FILE",
    "POLICY_ENV",
    "EligibilityPolicy",
    "LanePolicy",
    "Market",
    "WeatherAdvisory",
    "great_circle_miles",
    "load_policy",
]

#: Environment variable naming the policy file.
POLICY_ENV = "HAULMESH_TENDER_ELIGIBILITY_FILE"
#: The shipped default policy (allows the seed's Houston -> Atlanta lane).
DEFAULT_POLICY_FILE = Path(__file__).with_name("eligibility.json")

_EARTH_RADIUS_MILES = 3958.7613
_EQUIPMENT_NAMES = {
    "EQUIPMENT_DRY_VAN_53FT", "EQUIPMENT_DRY_VAN_48FT", "EQUIPMENT_REEFER_53FT", "EQUIPMENT_FLATBED_48FT",
    "EQUIPMENT_STEP_DECK_48FT", "EQUIPMENT_TANKER", "EQUIPMENT_CONTAINER_CHASSIS", "EQUIPMENT_POWER_ONLY",
}


def great_circle_miles(lat1: float, lon1: float, lat2: float, lon2: float) -> float:
    """Haversine distance in statute miles."""
    p1, p2 = math.radians(lat1), math.radians(lat2)
    dp, dl = p2 - p1, math.radians(lon2 - lon1)
    a = math.sin(dp / 2) ** 2 + math.cos(p1) * math.cos(p2) * math.sin(dl / 2) ** 2
    return 2 * _EARTH_RADIUS_MILES * math.asin(min(1.0, math.sqrt(a)))


@dataclass(frozen=True)
class Market:
    """A fleet market: its code (``US-TX-HOU``), terminal position, service radius, time zone, urban core."""

    code: str
    name: str
    lat: float
    lon: float
    timezone: str
    service_radius_miles: float = 75.0
    #: Radius around the terminal/city centre counted as a dense urban zone.
    urban_core_radius_miles: float = 8.0
    #: Whether autonomous operation is approved in the urban core (pickups/deliveries inside it).
    urban_core_approved: bool = True

    def miles_to(self, lat: float, lon: float) -> float:
        return great_circle_miles(self.lat, self.lon, lat, lon)


@dataclass(frozen=True)
class LanePolicy:
    """What the fleet allows on one approved lane (directional: origin market -> destination market)."""

    origin: str
    destination: str
    hazmat_classes: frozenset[str] = frozenset()
    night_operation: bool = True
    #: Lane in its pilot phase (among its first missions): human check-ins apply, risk FACTOR_NEW_LANE.
    pilot: bool = False
    #: Miles of the route with known cellular coverage gaps (risk FACTOR_CONNECTIVITY_GAP when > 0).
    connectivity_gap_miles: float = 0.0
    #: Overrides the fleet-wide maximum cargo weight on this lane (0: use the fleet's).
    max_weight_lb: int = 0

    @property
    def key(self) -> tuple[str, str]:
        return (self.origin, self.destination)


@dataclass(frozen=True)
class WeatherAdvisory:
    """Forecast weather on a market in a time range: ``restricted`` is outside the operating limits."""

    region: str
    start: datetime
    end: datetime
    restricted: bool
    description: str

    def overlaps(self, start: datetime, end: datetime) -> bool:
        return self.start < end and start < self.end


@dataclass(frozen=True)
class EligibilityPolicy:
    """The fleet's guardrails. Construct with :func:`load_policy` or :meth:`from_dict`."""

    markets: tuple[Market, ...]
    lanes: tuple[LanePolicy, ...]
    equipment: frozenset[str]
    max_weight_lb: int = 45_000
    hazmat_classes_carried: frozenset[str] = frozenset()
    #: Local night hours [start, end) in the origin market's time zone.
    night_start_hour: int = 22
    night_end_hour: int = 5
    #: Route miles = great-circle miles x this circuity factor.
    circuity_factor: float = 1.13
    average_speed_mph: float = 55.0
    weather: tuple[WeatherAdvisory, ...] = ()
    _lane_index: dict[tuple[str, str], LanePolicy] = field(default_factory=dict, compare=False, repr=False)

    def __post_init__(self) -> None:
        self._lane_index.update({lane.key: lane for lane in self.lanes})

    def market_for(self, lat: float, lon: float) -> Market | None:
        """The nearest market whose service radius covers the point, or None."""
        best: tuple[float, Market] | None = None
        for market in self.markets:
            miles = market.miles_to(lat, lon)
            if miles <= market.service_radius_miles and (best is None or miles < best[0]):
                best = (miles, market)
        return None if best is None else best[1]

    def market(self, code: str) -> Market | None:
        return next((m for m in self.markets if m.code == code), None)

    def lane(self, origin: str, destination: str) -> LanePolicy | None:
        return self._lane_index.get((origin, destination))

    def route_miles(self, lat1: float, lon1: float, lat2: float, lon2: float) -> float:
        return round(great_circle_miles(lat1, lon1, lat2, lon2) * self.circuity_factor, 1)

    def transit_hours(self, route_miles: float) -> float:
        return route_miles / self.average_speed_mph

    def advisories(self, regions: set[str], start: datetime, end: datetime) -> list[WeatherAdvisory]:
        return [w for w in self.weather if w.region in regions and w.overlaps(start, end)]

    @classmethod
    def from_dict(cls, data: dict[str, Any], *, source: str = "policy") -> EligibilityPolicy:
        try:
            return _parse(data)
        except (KeyError, TypeError, ValueError) as exc:
            raise ConfigError(f"{source}: invalid eligibility policy: {exc}", field=POLICY_ENV) from None


def _req(d: dict[str, Any], key: str) -> Any:
    if key not in d:
        raise KeyError(f"missing {key!r}")
    return d[key]


def _time(raw: str) -> datetime:
    value = datetime.fromisoformat(raw.replace("Z", "+00:00"))
    if value.tzinfo is None:
        raise ValueError(f"timestamp {raw!r} needs an offset")
    return value


def _parse(data: dict[str, Any]) -> EligibilityPolicy:
    from zoneinfo import ZoneInfo

    markets = []
    for m in _req(data, "markets"):
        market = Market(code=str(_req(m, "code")), name=str(m.get("name", m["code"])), lat=float(_req(m, "lat")),
                        lon=float(_req(m, "lon")), timezone=str(_req(m, "timezone")),
                        service_radius_miles=float(m.get("service_radius_miles", 75.0)),
                        urban_core_radius_miles=float(m.get("urban_core_radius_miles", 8.0)),
                        urban_core_approved=bool(m.get("urban_core_approved", True)))
        ZoneInfo(market.timezone)  # raises for an unknown zone
        if not -90 <= market.lat <= 90 or not -180 <= market.lon <= 180:
            raise ValueError(f"market {market.code}: coordinates out of range")
        markets.append(market)
    codes = {m.code for m in markets}
    if len(codes) != len(markets):
        raise ValueError("duplicate market code")
    lanes = []
    for lane in _req(data, "lanes"):
        entry = LanePolicy(origin=str(_req(lane, "origin")), destination=str(_req(lane, "destination")),
                           hazmat_classes=frozenset(str(c) for c in lane.get("hazmat_classes", [])),
                           night_operation=bool(lane.get("night_operation", True)),
                           pilot=bool(lane.get("pilot", False)),
                           connectivity_gap_miles=float(lane.get("connectivity_gap_miles", 0.0)),
                           max_weight_lb=int(lane.get("max_weight_lb", 0)))
        for code in entry.key:
            if code not in codes:
                raise ValueError(f"lane {entry.origin} > {entry.destination}: unknown market {code}")
        lanes.append(entry)
    equipment = frozenset(str(e) for e in _req(data, "equipment"))
    unknown = equipment - _EQUIPMENT_NAMES
    if unknown:
        raise ValueError(f"unknown equipment {sorted(unknown)}")
    weather = tuple(
        WeatherAdvisory(region=str(_req(w, "region")), start=_time(_req(w, "start")), end=_time(_req(w, "end")),
                        restricted=bool(w.get("restricted", False)), description=str(w.get("description", "")))
        for w in data.get("weather", [])
    )
    night = data.get("night_hours", {})
    policy = EligibilityPolicy(
        markets=tuple(markets), lanes=tuple(lanes), equipment=equipment,
        max_weight_lb=int(data.get("max_weight_lb", 45_000)),
        hazmat_classes_carried=frozenset(str(c) for c in data.get("hazmat_classes_carried", [])),
        night_start_hour=int(night.get("start", 22)), night_end_hour=int(night.get("end", 5)),
        circuity_factor=float(data.get("circuity_factor", 1.13)),
        average_speed_mph=float(data.get("average_speed_mph", 55.0)),
        weather=weather,
    )
    if not 0 < policy.max_weight_lb <= 80_000:
        raise ValueError("max_weight_lb must be in 1..80000")
    if not (0 <= policy.night_start_hour < 24 and 0 <= policy.night_end_hour < 24):
        raise ValueError("night_hours must be hours 0..23")
    if policy.circuity_factor < 1 or policy.average_speed_mph <= 0:
        raise ValueError("circuity_factor must be >= 1 and average_speed_mph > 0")
    return policy


def load_policy(env: dict[str, str] | os._Environ[str] | None = None) -> EligibilityPolicy:
    """The policy from ``HAULMESH_TENDER_ELIGIBILITY_FILE``, else the shipped default; ConfigError if bad."""
    env = os.environ if env is None else env
    path = Path(env.get(POLICY_ENV) or DEFAULT_POLICY_FILE)
    try:
        data = json.loads(path.read_text())
    except OSError as exc:
        raise ConfigError(f"{POLICY_ENV}: cannot read {path}: {exc.strerror}", field=POLICY_ENV) from None
    except ValueError as exc:
        raise ConfigError(f"{POLICY_ENV}: {path} is not JSON: {exc}", field=POLICY_ENV) from None
    if not isinstance(data, dict):
        raise ConfigError(f"{POLICY_ENV}: {path} must hold a JSON object", field=POLICY_ENV)
    return EligibilityPolicy.from_dict(data, source=str(path))
