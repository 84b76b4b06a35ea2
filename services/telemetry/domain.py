"""Telemetry rules. Plain Python: no gRPC, no Redis.

Frame verification (signature, vehicle, sequence, clock skew) and the derived events (geofence, ETA,
liveness) grow here (issue 4).
"""

from __future__ import annotations

__all__: list[str] = []
