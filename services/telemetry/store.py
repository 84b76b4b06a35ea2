"""Telemetry persistence in Redis: per-vehicle streams under the vehicle's hash tag (issue 4)."""

from __future__ import annotations

import redis.asyncio

__all__ = ["TelemetryStore"]


class TelemetryStore:
    """Frames and per-vehicle high-water marks of one store."""

    def __init__(self, client: redis.asyncio.Redis) -> None:
        self._redis = client

    @staticmethod
    def frames_key(vehicle_id: str) -> str:
        return f"telemetry:{{{vehicle_id}}}:frames"
