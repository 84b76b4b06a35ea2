"""Liveness: connectivity of many vehicles from the times they were last heard from. Plain Python.

One :class:`Liveness` for all vehicles of a process::

    liveness = Liveness(timeout=timedelta(seconds=3 * heartbeat_interval_s))
    restored = liveness.heard(vehicle_id, at=now, sequence=..., location=..., mission_id=...)  # frame or heartbeat
    lost = liveness.sweep(now)                                     # call periodically -> [ConnectivityLost]

Exactly one ConnectivityLost per outage and exactly one ConnectivityRestored when the vehicle is heard again.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from .events import ConnectivityLost, ConnectivityRestored
from .geometry import LatLon

__all__ = ["Liveness"]


@dataclass(slots=True)
class _Seen:
    last_seen: datetime
    last_sequence: int
    last_location: LatLon | None
    mission_id: str
    lost: bool = False


class Liveness:
    """Connectivity of many vehicles from the times they were last heard from (frames or heartbeats).

    ``sweep(now)`` reports each vehicle silent for longer than ``timeout`` once; ``heard`` reports the
    vehicle restored once when it comes back. No duplicates, whatever the call pattern.
    """

    def __init__(self, timeout: timedelta) -> None:
        if timeout <= timedelta(0):
            raise ValueError("timeout must be positive")
        self.timeout = timeout
        self._seen: dict[str, _Seen] = {}

    def heard(self, vehicle_id: str, at: datetime, *, sequence: int = 0, location: LatLon | None = None,
              mission_id: str = "", vehicle_last_sequence: int | None = None) -> ConnectivityRestored | None:
        """Something arrived from the vehicle at ``at`` (server time); the restoration if it was lost."""
        seen = self._seen.get(vehicle_id)
        if seen is None:
            self._seen[vehicle_id] = _Seen(at, sequence, location, mission_id)
            return None
        restored = None
        if seen.lost:
            high_water = max(seen.last_sequence, sequence)
            restored = ConnectivityRestored(
                vehicle_id=vehicle_id, mission_id=mission_id or seen.mission_id,
                outage=max(timedelta(0), at - seen.last_seen), restored_time=at,
                high_water_sequence=high_water,
                vehicle_last_sequence=vehicle_last_sequence if vehicle_last_sequence is not None else high_water)
        seen.last_seen = max(seen.last_seen, at)
        seen.last_sequence = max(seen.last_sequence, sequence)
        seen.last_location = location or seen.last_location
        seen.mission_id = mission_id or seen.mission_id
        seen.lost = False
        return restored

    def sweep(self, now: datetime) -> list[ConnectivityLost]:
        """Vehicles newly silent for longer than the timeout (each reported once per outage)."""
        lost = []
        for vehicle_id, seen in self._seen.items():
            if not seen.lost and now - seen.last_seen > self.timeout:
                seen.lost = True
                lost.append(ConnectivityLost(vehicle_id=vehicle_id, mission_id=seen.mission_id,
                                             last_seen_time=seen.last_seen, last_sequence=seen.last_sequence,
                                             last_location=seen.last_location, detected_time=now))
        return lost

    def forget(self, vehicle_id: str) -> None:
        """Stop watching a vehicle (deregistered, or its mission ended and it is parked)."""
        self._seen.pop(vehicle_id, None)

    def report_again(self, vehicle_id: str) -> None:
        """The loss reported by ``sweep`` could not be announced: report it again at the next sweep."""
        seen = self._seen.get(vehicle_id)
        if seen is not None:
            seen.lost = False

    def watches(self, vehicle_id: str) -> bool:
        """Whether the vehicle was heard here and not forgotten since."""
        return vehicle_id in self._seen
