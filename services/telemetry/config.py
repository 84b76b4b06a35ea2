"""Every environment variable of the telemetry service, read once into one typed dataclass.

``HAULMESH_TELEMETRY_*`` and the archive's ``HAULMESH_ARCHIVE_*``; unset ones keep the defaults below. The
runtime's own variables (ports, TLS, ``REDIS_URL``, workers...) are read by ``services.runtime.ServiceConfig``.

The archive (warm/cold tier, docs/telemetry.md "Data tiers"):

* ``HAULMESH_ARCHIVE_URL``: the object store of archived parts: a directory (``file:///abs/dir`` or a path) or
  ``s3://bucket/prefix?endpoint_url=...`` (see services.runtime.objectstore). Default: ``archive/`` under the
  state directory (``HAULMESH_STATE_DIR``), so a dev mesh needs nothing installed.
* ``HAULMESH_ARCHIVE_RETENTION_DAYS``: the cold tier's retention (S3 Object Lock retain-until, counted from the
  end of the part's day), whole days, default 2557 (seven years: invoices and the evidence behind them are
  kept as long as the tax and audit records they support; one year of warm reads sits inside it).
* ``HAULMESH_ARCHIVE_AFTER_SECONDS``: how old (since received) a frame is before the periodic job archives it,
  default 3600. It also sets the job's cadence, so a part holds about that long of a vehicle's frames.
* ``HAULMESH_ARCHIVE_TEST_KILL_AFTER_WRITE``: tests only; ``1`` makes the archiver SIGKILL its own process right
  after a part's object is written and before the index records it (the crash the resume logic covers).


Watches (docs/telemetry.md "Fair reads"): each live watch holds one blocking XREAD on a pool of its own, never
the commit path's. ``HAULMESH_TELEMETRY_WATCH_POOL_CONNECTIONS`` (default 256) sizes that pool;
``HAULMESH_TELEMETRY_MAX_WATCHES_PER_PROCESS`` (default 256, at most the pool's size) and
``HAULMESH_TELEMETRY_MAX_WATCHES_PER_TENANT`` (default 32; a tenant is a carrier, or the calling operator or
service for vehicle watches) cap concurrent watches; one beyond is refused RESOURCE_EXHAUSTED with
google.rpc.RetryInfo of ``HAULMESH_TELEMETRY_WATCH_RETRY_AFTER_SECONDS`` (default 5).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field

from services.runtime import default_state_dir
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


def _env_days(env: Mapping[str, str], key: str, default: int) -> int:
    raw = env.get(key)
    if not raw:
        return default
    if not raw.strip().isdigit() or not 1 <= int(raw) <= 36_500:
        raise ValueError(f"{key} must be a whole number of days from 1 to 36500, got {raw!r}")
    return int(raw)


def _env_int(env: Mapping[str, str], key: str, default: int, minimum: int = 1) -> int:
    raw = env.get(key)
    if not raw:
        return default
    if not raw.strip().isdigit() or int(raw) < minimum:
        raise ValueError(f"{key} must be a whole number >= {minimum}, got {raw!r}")
    return int(raw)


def _env_flag(env: Mapping[str, str], key: str) -> bool:
    raw = env.get(key, "")
    if raw not in ("", "0", "1"):
        raise ValueError(f"{key} must be 0 or 1, got {raw!r}")
    return raw == "1"


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
    #: Store connections of the watches' own pool (blocking XREAD), apart from the commit path's.
    watch_pool_connections: int = 256
    #: Concurrent watches in this process; never more than the pool's connections (each holds one).
    max_watches_per_process: int = 256
    #: Concurrent watches of one tenant (a carrier; for vehicle watches, the calling operator or service).
    max_watches_per_tenant: int = 32
    #: The retry hint (google.rpc.RetryInfo) of a watch refused over a cap.
    watch_retry_after_seconds: float = 5.0
    #: Where archived parts go (HAULMESH_ARCHIVE_URL); "" means ``archive/`` under the state directory.
    archive_url: str = ""
    #: Cold-tier retention in days (HAULMESH_ARCHIVE_RETENTION_DAYS).
    archive_retention_days: int = 2557
    #: Age (since received) at which the periodic job archives a frame (HAULMESH_ARCHIVE_AFTER_SECONDS).
    archive_after_seconds: float = 3600.0
    #: Tests only (HAULMESH_ARCHIVE_TEST_KILL_AFTER_WRITE): SIGKILL self between object write and index commit.
    archive_test_kill_after_write: bool = False
    #: Flow control (docs/telemetry.md "Flow control"): frames read from a truck stream and not yet through
    #: their commit (verified, queued, written, awaiting WAITAOF). A stream at its bound, or any stream while the
    #: process is at its bound, is not read until commits complete: HTTP/2 flow control then holds the truck's
    #: next messages in its own spool. Per stream at least one batch (``max_batch_frames``).
    max_inflight_frames_per_stream: int = 2000
    #: The process's bound on the same count, over every stream and IngestTelemetry (the memory bound).
    max_inflight_frames_per_process: int = 50_000
    #: Stored frames waiting for mission tracking (derived events: geofences, ETAs, liveness), which runs after
    #: the ack: while this many wait, no stream is read (docs/capacity.md, "Memory bound per telemetry process").
    max_tracking_frames: int = 10_000
    #: Responses (acks, rejects, commands) queued for one stream and not yet taken by gRPC: a truck that does not
    #: read them (ignores its acks) stops being read once this many wait.
    max_outbound_messages_per_stream: int = 64
    #: Largest CommandAck accepted (serialized bytes); a larger one is refused (the stream ends).
    max_command_ack_bytes: int = 4096
    #: CommandAcks kept per vehicle (``command_acks`` stream, MAXLEN ~): what the tests and an operator read.
    command_acks_kept: int = 1000
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
        pool = int(_env_float(env, p + "WATCH_POOL_CONNECTIONS", cls.watch_pool_connections))
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
            watch_pool_connections=pool,
            # More watches than connections would queue on the pool and fail after its timeout: capped here.
            max_watches_per_process=min(pool, int(_env_float(env, p + "MAX_WATCHES_PER_PROCESS",
                                                             cls.max_watches_per_process))),
            max_watches_per_tenant=int(_env_float(env, p + "MAX_WATCHES_PER_TENANT", cls.max_watches_per_tenant)),
            watch_retry_after_seconds=_env_float(env, p + "WATCH_RETRY_AFTER_SECONDS", cls.watch_retry_after_seconds),
            archive_url=env.get("HAULMESH_ARCHIVE_URL") or str(default_state_dir(env) / "archive"),
            archive_retention_days=_env_days(env, "HAULMESH_ARCHIVE_RETENTION_DAYS", cls.archive_retention_days),
            archive_after_seconds=_env_float(env, "HAULMESH_ARCHIVE_AFTER_SECONDS", cls.archive_after_seconds),
            archive_test_kill_after_write=_env_flag(env, "HAULMESH_ARCHIVE_TEST_KILL_AFTER_WRITE"),
            max_inflight_frames_per_stream=_env_int(env, p + "MAX_INFLIGHT_FRAMES_PER_STREAM",
                                                    cls.max_inflight_frames_per_stream),
            max_inflight_frames_per_process=_env_int(env, p + "MAX_INFLIGHT_FRAMES_PER_PROCESS",
                                                     cls.max_inflight_frames_per_process),
            max_tracking_frames=_env_int(env, p + "MAX_TRACKING_FRAMES", cls.max_tracking_frames),
            max_outbound_messages_per_stream=_env_int(env, p + "MAX_OUTBOUND_MESSAGES_PER_STREAM",
                                                      cls.max_outbound_messages_per_stream),
            max_command_ack_bytes=_env_int(env, p + "MAX_COMMAND_ACK_BYTES", cls.max_command_ack_bytes, 64),
            command_acks_kept=_env_int(env, p + "COMMAND_ACKS_KEPT", cls.command_acks_kept),
            lanes=load_lane_facts(env),
        )

    def __post_init__(self) -> None:
        # A stream must be able to hold one whole batch, and the process one whole stream, or a batch could
        # never be admitted (the stream would wait forever).
        if self.max_inflight_frames_per_stream < self.max_batch_frames:
            raise ValueError(f"HAULMESH_TELEMETRY_MAX_INFLIGHT_FRAMES_PER_STREAM "
                             f"({self.max_inflight_frames_per_stream}) must be at least "
                             f"HAULMESH_TELEMETRY_MAX_BATCH_FRAMES ({self.max_batch_frames})")
        if self.max_tracking_frames < 1:
            raise ValueError(f"HAULMESH_TELEMETRY_MAX_TRACKING_FRAMES ({self.max_tracking_frames}) must be at least 1")
        if self.max_inflight_frames_per_process < self.max_inflight_frames_per_stream:
            raise ValueError(f"HAULMESH_TELEMETRY_MAX_INFLIGHT_FRAMES_PER_PROCESS "
                             f"({self.max_inflight_frames_per_process}) must be at least "
                             f"HAULMESH_TELEMETRY_MAX_INFLIGHT_FRAMES_PER_STREAM "
                             f"({self.max_inflight_frames_per_stream})")
