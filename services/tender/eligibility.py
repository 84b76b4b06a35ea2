"""Lane eligibility policy: which moves the autonomous fleet may haul, as a typed, configurable policy.

Plain Python: no gRPC, no Redis. The policy is a JSON file (``HAULMESH_TENDER_ELIGIBILITY_FILE``, by
default ``services/tender/eligibility.json`` beside this module; format in docs/tender.md): the approved lanes
and their limits, equipment, weight, hazmat classes and weather advisories. The geography it stands on (markets
and their time zones, circuity, planning speed, night hours, known routes) is the lane facts every service
shares (``services.runtime.lanes``, ``HAULMESH_LANES_FILE``): a lane's markets must be markets there.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from services.runtime import ConfigError, read_json_file
from services.runtime.lanes import LANES_FILE_ENV, LaneFacts, Market, load_lane_facts

__all__ = [
    "DEFAULT_POLICY_FILE",
    "POLICY_ENV",
    "EligibilityPolicy",
    "LanePolicy",
    "Market",
    "WeatherAdvisory",
    "load_policy",
]

#: Environment variable naming the policy file.
POLICY_ENV = "HAULMESH_TENDER_ELIGIBILITY_FILE"
#: The shipped default policy (allows the seed's Houston -> Atlanta lane).
DEFAULT_POLICY_FILE = Path(__file__).with_name("eligibility.json")

_EQUIPMENT_NAMES = {
    "EQUIPMENT_DRY_VAN_53FT", "EQUIPMENT_DRY_VAN_48FT", "EQUIPMENT_REEFER_53FT", "EQUIPMENT_FLATBED_48FT",
    "EQUIPMENT_STEP_DECK_48FT", "EQUIPMENT_TANKER", "EQUIPMENT_CONTAINER_CHASSIS", "EQUIPMENT_POWER_ONLY",
}


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

    lanes: tuple[LanePolicy, ...]
    equipment: frozenset[str]
    #: The lane facts the lanes stand on (markets, distances, night hours).
    facts: LaneFacts = field(default_factory=lambda: load_lane_facts({}))
    max_weight_lb: int = 45_000
    hazmat_classes_carried: frozenset[str] = frozenset()
    weather: tuple[WeatherAdvisory, ...] = ()
    _lane_index: dict[tuple[str, str], LanePolicy] = field(default_factory=dict, compare=False, repr=False)

    def __post_init__(self) -> None:
        self._lane_index.update({lane.key: lane for lane in self.lanes})

    def lane(self, origin: str, destination: str) -> LanePolicy | None:
        return self._lane_index.get((origin, destination))

    def advisories(self, regions: set[str], start: datetime, end: datetime) -> list[WeatherAdvisory]:
        return [w for w in self.weather if w.region in regions and w.overlaps(start, end)]

    @classmethod
    def from_dict(cls, data: dict[str, Any], *, facts: LaneFacts | None = None,
                  source: str = "policy") -> EligibilityPolicy:
        """Parse a policy document against ``facts`` (default: the shipped lane facts)."""
        try:
            return _parse(data, load_lane_facts({}) if facts is None else facts)
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


#: Keys an older policy file had, now lane facts (HAULMESH_LANES_FILE): refused with a pointer, never ignored.
_MOVED_TO_LANE_FACTS = {"markets", "night_hours", "circuity_factor", "average_speed_mph"}


def _parse(data: dict[str, Any], facts: LaneFacts) -> EligibilityPolicy:
    if not isinstance(data, dict):
        raise TypeError("the policy must be a JSON object")
    moved = sorted(_MOVED_TO_LANE_FACTS & set(data))
    if moved:
        raise ValueError(f"{', '.join(moved)} moved to the lane facts file ({LANES_FILE_ENV}, "
                         "services/runtime/lanes.json): one set of lane facts for every service")
    unknown = sorted(set(data) - {"lanes", "equipment", "max_weight_lb", "hazmat_classes_carried", "weather"})
    if unknown:
        raise ValueError(f"unknown keys {unknown}")
    codes = {m.code for m in facts.markets}
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
                raise ValueError(f"lane {entry.origin} > {entry.destination}: unknown market {code} "
                                 f"(markets are the lane facts' own, {LANES_FILE_ENV})")
        lanes.append(entry)
    equipment = frozenset(str(e) for e in _req(data, "equipment"))
    unknown_equipment = equipment - _EQUIPMENT_NAMES
    if unknown_equipment:
        raise ValueError(f"unknown equipment {sorted(unknown_equipment)}")
    weather = tuple(
        WeatherAdvisory(region=str(_req(w, "region")), start=_time(_req(w, "start")), end=_time(_req(w, "end")),
                        restricted=bool(w.get("restricted", False)), description=str(w.get("description", "")))
        for w in data.get("weather", [])
    )
    policy = EligibilityPolicy(
        lanes=tuple(lanes), equipment=equipment, facts=facts,
        max_weight_lb=int(data.get("max_weight_lb", 45_000)),
        hazmat_classes_carried=frozenset(str(c) for c in data.get("hazmat_classes_carried", [])),
        weather=weather,
    )
    if not 0 < policy.max_weight_lb <= 80_000:
        raise ValueError("max_weight_lb must be in 1..80000")
    return policy


def load_policy(env: Mapping[str, str] | None = None, *, facts: LaneFacts | None = None) -> EligibilityPolicy:
    """The policy from ``HAULMESH_TENDER_ELIGIBILITY_FILE``, else the shipped default, on ``facts`` (default:
    the lane facts of ``env``); ConfigError if bad."""
    env = os.environ if env is None else env
    facts = load_lane_facts(env) if facts is None else facts
    path = Path(env.get(POLICY_ENV) or DEFAULT_POLICY_FILE)
    return EligibilityPolicy.from_dict(read_json_file(path, POLICY_ENV), facts=facts, source=str(path))
