"""Every environment variable of the telemetry service, read once into one typed dataclass.

``HAULMESH_TELEMETRY_*``; unset ones keep the defaults below. The runtime's own variables (ports, TLS,
``REDIS_URL``, workers...) are read by ``services.runtime.ServiceConfig``.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field

from services.runtime.lanes import LaneFacts, load_lane_facts

__all__ = ["TelemetryConfig"]


def _env_float(env: Mapping[str, str], key: str, default: float) -> float:
    raw = env.get(key)
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ValueError(f"{key} must be a number, got {raw!r}") from None
    if value <= 0:
        raise ValueError(f"{key} must be positive, got {raw!r}")
    return value


@dataclass(frozen=True)
class TelemetryConfig:
    """Session parameters announced in Welcome and enforced on every frame (see ``from_env``)."""

    clock_skew_seconds: float = 300.0
    max_frame_age_seconds: float = 7 * 86400.0
    max_batch_frames: int = 500
    heartbeat_interval_seconds: float = 5.0
    retention_seconds: float = 30 * 86400.0
    #: How long a commit group waits for more batches before it is written (group commit window).
    commit_window_seconds: float = 0.001
    #: How long WAITAOF may wait for the fsync before the batch counts as not durable.
    durable_timeout_seconds: float = 3.0
    #: Least time between two Acks on one stream. A truck's first durable frame after a pause is acked at
    #: once; what becomes durable sooner after an Ack waits and rides the next one, so a truck sending
    #: several frames a second gets a few Acks a second, not one per frame (each is a message both ends pay).
    ack_interval_seconds: float = 0.25
    #: Silence (no frame, no heartbeat) after which a vehicle on a mission is reported lost; 0 means three
    #: heartbeat intervals (the design brief).
    liveness_timeout_seconds: float = 0.0
    #: How often what telemetry saw of each vehicle (position, last heard, ETAs) is reported to the roster in
    #: one batch (a connectivity change is reported at once): the roster's cost is one write per vehicle per
    #: flush, whatever the frame rate.
    fleet_flush_seconds: float = 10.0
    #: The lane facts (HAULMESH_LANES_FILE): the planning speed and circuity an ETA uses off the known routes.
    lanes: LaneFacts = field(default_factory=lambda: load_lane_facts({}), compare=False)

    @property
    def effective_liveness_timeout_seconds(self) -> float:
        """The liveness timeout in force (``liveness_timeout_seconds``, else three heartbeat intervals)."""
        return self.liveness_timeout_seconds or 3 * self.heartbeat_interval_seconds

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> TelemetryConfig:
        """``HAULMESH_TELEMETRY_*`` variables; unset ones keep the defaults above."""
        env = os.environ if env is None else env
        p = "HAULMESH_TELEMETRY_"
        return cls(
            clock_skew_seconds=_env_float(env, p + "CLOCK_SKEW_SECONDS", cls.clock_skew_seconds),
            max_frame_age_seconds=_env_float(env, p + "MAX_FRAME_AGE_SECONDS", cls.max_frame_age_seconds),
            max_batch_frames=int(_env_float(env, p + "MAX_BATCH_FRAMES", cls.max_batch_frames)),
            heartbeat_interval_seconds=_env_float(env, p + "HEARTBEAT_INTERVAL_SECONDS",
                                                  cls.heartbeat_interval_seconds),
            retention_seconds=_env_float(env, p + "RETENTION_DAYS", cls.retention_seconds / 86400) * 86400,
            commit_window_seconds=_env_float(env, p + "COMMIT_WINDOW_SECONDS", cls.commit_window_seconds),
            durable_timeout_seconds=_env_float(env, p + "DURABLE_TIMEOUT_SECONDS", cls.durable_timeout_seconds),
            ack_interval_seconds=_env_float(env, p + "ACK_INTERVAL_SECONDS", cls.ack_interval_seconds),
            liveness_timeout_seconds=_env_float(env, p + "LIVENESS_TIMEOUT_SECONDS", cls.liveness_timeout_seconds),
            fleet_flush_seconds=_env_float(env, p + "FLEET_FLUSH_SECONDS", cls.fleet_flush_seconds),
            lanes=load_lane_facts(env),
        )
