"""The mission service's own settings, read from the environment once at start-up."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path

from services.runtime import ConfigError

from .domain import CheckInPolicy

__all__ = ["DEFAULT_ROUTES_FILE", "MissionSettings", "load_routes"]

#: The fleet's known lane routes shipped with the service (the seed's Houston → Atlanta lane).
DEFAULT_ROUTES_FILE = Path(__file__).with_name("routes.json")
_MAX_ROUTES, _MAX_WAYPOINTS = 10_000, 10_000


def load_routes(path: Path) -> tuple[tuple[tuple[float, float], ...], ...]:
    """The routes of a routes file: ``{"routes": [{"name": "...", "waypoints": [[lat, lon], ...]}, ...]}``.

    Raises ConfigError naming the file and the first bad entry.
    """
    key = "HAULMESH_MISSION_ROUTES_FILE"
    try:
        document = json.loads(path.read_text())
    except OSError as exc:
        raise ConfigError(f"{key}: cannot read {path}: {exc.strerror}", field=key) from None
    except ValueError as exc:
        raise ConfigError(f"{key}: {path} is not JSON: {exc}", field=key) from None
    routes = document.get("routes") if isinstance(document, dict) else None
    if not isinstance(routes, list) or len(routes) > _MAX_ROUTES:
        raise ConfigError(f"{key}: {path} needs a \"routes\" list of at most {_MAX_ROUTES}", field=key)
    loaded = []
    for i, route in enumerate(routes):
        points = route.get("waypoints") if isinstance(route, dict) else None
        valid = isinstance(points, list) and 2 <= len(points) <= _MAX_WAYPOINTS and all(
            isinstance(p, list) and len(p) == 2 and all(isinstance(c, int | float) and not isinstance(c, bool)
                                                        for c in p)
            and -90 <= p[0] <= 90 and -180 <= p[1] <= 180 for p in points)
        if not valid:
            raise ConfigError(f"{key}: {path} routes[{i}].waypoints must be 2 to {_MAX_WAYPOINTS} [lat, lon] pairs "
                              "in degrees", field=key)
        loaded.append(tuple((float(p[0]), float(p[1])) for p in points))
    return tuple(loaded)


def _number(env: Mapping[str, str], key: str, default: float, *, minimum: float, maximum: float) -> float:
    raw = env.get(key, "")
    if raw == "":
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ConfigError(f"{key} must be a number, got {raw!r}", field=key) from None
    if not minimum <= value <= maximum:
        raise ConfigError(f"{key} must be between {minimum:g} and {maximum:g}, got {value:g}", field=key)
    return value


@dataclass(frozen=True)
class MissionSettings:
    """Human-in-the-loop policy, geofence default and billing retry pacing."""

    check_in: CheckInPolicy = field(default_factory=CheckInPolicy)
    #: Radius of the circle geofence given to a stop that comes without one.
    geofence_radius_meters: float = 500.0
    #: How long a delivered mission waits for the event consumer before the sweeper bills it.
    billing_grace_seconds: float = 30.0
    #: How often the sweeper looks for delivered missions whose billing is due.
    billing_sweep_seconds: float = 5.0
    #: Longest pause between two billing attempts of one mission (exponential backoff up to this).
    billing_max_backoff_seconds: float = 3600.0
    #: The fleet's known lane routes (each a polyline of (lat, lon)); a mission on one gets it as its plan.
    routes: tuple[tuple[tuple[float, float], ...], ...] = ()

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> MissionSettings:
        env = os.environ if env is None else env
        threshold = _number(env, "HAULMESH_CHECK_IN_FIRST_MISSIONS", 30, minimum=0, maximum=1_000_000)
        if threshold != int(threshold):
            raise ConfigError("HAULMESH_CHECK_IN_FIRST_MISSIONS must be a whole number",
                              field="HAULMESH_CHECK_IN_FIRST_MISSIONS")
        interval = _number(env, "HAULMESH_CHECK_IN_ENROUTE_INTERVAL_MINUTES", 60, minimum=1, maximum=24 * 60)
        return cls(
            check_in=CheckInPolicy(threshold=int(threshold), enroute_interval=timedelta(minutes=interval)),
            geofence_radius_meters=_number(env, "HAULMESH_GEOFENCE_RADIUS_METERS", 500, minimum=10,
                                           maximum=50_000),
            billing_grace_seconds=_number(env, "HAULMESH_BILLING_GRACE_SECONDS", 30, minimum=0, maximum=3600),
            billing_sweep_seconds=_number(env, "HAULMESH_BILLING_SWEEP_SECONDS", 5, minimum=0.1, maximum=3600),
            billing_max_backoff_seconds=_number(env, "HAULMESH_BILLING_MAX_BACKOFF_SECONDS", 3600, minimum=1,
                                                maximum=86400),
            routes=load_routes(Path(env.get("HAULMESH_MISSION_ROUTES_FILE") or DEFAULT_ROUTES_FILE)),
        )
