"""The mission service's own settings, read from the environment once at start-up."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import timedelta

from services.runtime import ConfigError
from services.runtime.evidence import MAX_PACK_FRAMES
from services.runtime.lanes import LaneFacts, load_lane_facts

from .domain import CheckInPolicy

__all__ = ["MissionSettings"]

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
    #: A vehicle's reported position counts for dispatch (nearest vehicle, deadhead, capacity) while it was
    #: heard within this long; older, its home terminal counts (a truck parked off-line for days may have
    #: been moved on a trailer or to a shop).
    position_max_age_seconds: float = 6 * 3600.0
    #: An ETA reported by telemetry is recorded on the mission only when it moved by at least this much since
    #: the one recorded (or is the first for its stop): a poller sees material moves, the store sees few writes.
    eta_min_change_seconds: float = 300.0
    #: A required check-in this long past its due time is escalated: the event ``check_in_overdue`` (a webhook, the
    #: console's alert), once per due time (HAULMESH_CHECK_IN_OVERDUE_GRACE_SECONDS).
    check_in_overdue_grace_seconds: float = 600.0
    #: How often the overdue check-in sweep runs (HAULMESH_CHECK_IN_SWEEP_SECONDS).
    check_in_sweep_seconds: float = 30.0
    #: How often the fleet gauge (vehicles by connectivity and availability) is recomputed from the roster.
    fleet_gauge_seconds: float = 15.0
    #: Two consecutive position fixes further apart than this (device time) are a gap in the usage measured
    #: from telemetry, bridged along the planned route and listed on the invoice (HAULMESH_USAGE_GAP_SECONDS).
    usage_gap_seconds: float = 120.0
    #: Most frames read to measure one mission's usage or check one proof of delivery; more is a clear
    #: FAILED_PRECONDITION MISSION_FRAMES_EXCEEDED, never a truncated bill (HAULMESH_USAGE_MAX_FRAMES). At most
    #: the evidence pack's frame cap (runtime.evidence.MAX_PACK_FRAMES), so every invoice can be exported.
    usage_max_frames: int = MAX_PACK_FRAMES
    #: How long a DISPUTED proof of delivery (frames of its signed range missing) waits for late frames before
    #: billing escalates it to an operator (HAULMESH_POD_DISPUTE_SECONDS); meanwhile the billing sweeper
    #: re-verifies the log on every attempt and bills once it VERIFIES. A disputed proof is never billed.
    pod_dispute_seconds: float = 86400.0
    #: The lane facts (HAULMESH_LANES_FILE): markets, planning numbers, known routes (a mission on one gets it
    #: as its planned route).
    lanes: LaneFacts = field(default_factory=load_lane_facts)

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
            position_max_age_seconds=_number(env, "HAULMESH_DISPATCH_POSITION_MAX_AGE_SECONDS", 6 * 3600,
                                             minimum=0, maximum=30 * 86400),
            eta_min_change_seconds=_number(env, "HAULMESH_MISSION_ETA_MIN_CHANGE_SECONDS", 300, minimum=0,
                                           maximum=86400),
            fleet_gauge_seconds=_number(env, "HAULMESH_FLEET_GAUGE_SECONDS", 15, minimum=0.1, maximum=3600),
            check_in_overdue_grace_seconds=_number(env, "HAULMESH_CHECK_IN_OVERDUE_GRACE_SECONDS", 600, minimum=0,
                                                   maximum=86400),
            check_in_sweep_seconds=_number(env, "HAULMESH_CHECK_IN_SWEEP_SECONDS", 30, minimum=0.1, maximum=3600),
            usage_gap_seconds=_number(env, "HAULMESH_USAGE_GAP_SECONDS", 120, minimum=1, maximum=86400),
            usage_max_frames=int(_number(env, "HAULMESH_USAGE_MAX_FRAMES", MAX_PACK_FRAMES, minimum=1,
                                         maximum=MAX_PACK_FRAMES)),
            pod_dispute_seconds=_number(env, "HAULMESH_POD_DISPUTE_SECONDS", 86400, minimum=0,
                                        maximum=30 * 86400),
            lanes=load_lane_facts(env),
        )
