"""The telemetry service's Prometheus metrics and the small functions the ingest path records them with.

Counted in the store's commit path, per batch (never per frame: this is the hot path), and only once the
outcome is final: stored / duplicate frames and sequence gaps after WAITAOF confirmed the batch durable
(a batch that fails is resent by the truck and counted then), rejected frames when they are rejected.

No metric has a vehicle label, on purpose: 100,000 trucks would be 100,000 series per metric (times the
histogram buckets), which no Prometheus holds. Per-vehicle figures live in the store
(``telemetry:{v}:counters`` and ``telemetry:{v}:liveness``); the metrics are the fleet's aggregate.

Packet loss: ``vehicle_telemetry_packet_loss_ratio`` (the seed's name) is a gauge of this process's
lifetime ratio ``gaps / (stored + gaps)``, computed at scrape time. It is for a glance at one replica; the
SLO (< 0.1 %) is computed in PromQL from the counters, over a window and across replicas::

    sum(rate(haulmesh_telemetry_sequence_gaps_total[5m]))
      / (sum(rate(haulmesh_telemetry_frames_total{outcome="stored"}[5m]))
         + sum(rate(haulmesh_telemetry_sequence_gaps_total[5m])))
"""

from __future__ import annotations

from collections.abc import Mapping

from prometheus_client import Counter, Gauge, Histogram

from services.runtime import METRICS_REGISTRY

from .domain import RejectReason

__all__ = [
    "ARCHIVED_BYTES",
    "ARCHIVED_FRAMES",
    "ARCHIVED_PARTS",
    "ARCHIVE_AVAILABLE",
    "ARCHIVE_FAILURES",
    "ARCHIVE_STORE_MISMATCH",
    "EDGE_CPU",
    "FLEET_REPORTS",
    "FRAMES",
    "FRESHNESS",
    "INFLIGHT_FRAMES",
    "INFLIGHT_FRAMES_PEAK",
    "OPEN_STREAMS",
    "OPERATOR_COMMANDS",
    "PACKET_LOSS_RATIO",
    "PAUSED_STREAMS",
    "REFUSED_COMMAND_ACKS",
    "REJECTED_FRAMES",
    "SEQUENCE_GAPS",
    "record_archived",
    "record_durable",
    "record_edge_cpu",
    "record_inflight",
    "record_rejects",
    "stream_closed",
    "stream_opened",
    "stream_paused",
]

#: Fleet-state reports to the mission service (usecases/fleet.py): one per flush, not per frame.
FLEET_REPORTS = Counter("haulmesh_telemetry_fleet_reports_total", "ReportFleetState calls by outcome: sent or "
                        "failed (retried at the next flush).", ["outcome"], registry=METRICS_REGISTRY)
FRAMES = Counter("haulmesh_telemetry_frames_total", "Frames received from trucks by outcome: stored (durable), "
                 "duplicate (acked, not stored again) or rejected (never stored).", ["outcome"],
                 registry=METRICS_REGISTRY)
REJECTED_FRAMES = Counter("haulmesh_telemetry_rejected_frames_total", "Frames rejected, by reason "
                          "(Reject.Reason without its REASON_ prefix).", ["reason"], registry=METRICS_REGISTRY)
SEQUENCE_GAPS = Counter("haulmesh_telemetry_sequence_gaps_total", "Sequences skipped between a vehicle's stored "
                        "frames: lost for good (a late frame at or below the high-water mark is a duplicate).",
                        registry=METRICS_REGISTRY)
#: Device time -> durable, per batch: the age of the batch's newest stored frame when its fsync was
#: confirmed. Per batch, not per frame: a replayed backlog of 500 frames then says how fresh the data is
#: now (one observation), instead of 500 observations of hours-old readings drowning the live ones.
#: Buckets bracket the SLO (< 2 s) and a 10 s page threshold; the long tail is outage replay.
FRESHNESS = Histogram("haulmesh_telemetry_freshness_seconds", "Seconds from a batch's newest stored frame's "
                      "device time until the batch was durable (one observation per batch with stored frames).",
                      buckets=(0.025, 0.05, 0.1, 0.25, 0.5, 1, 1.5, 2, 3, 5, 10, 30, 60, 300, 3600, 86400),
                      registry=METRICS_REGISTRY)
#: A histogram rather than a gauge: with no vehicle label (see the module docstring) a gauge would only
#: hold whichever truck reported last; the distribution says how many edge computers run hot.
EDGE_CPU = Histogram("edge_cpu_utilization_percent", "Edge computer CPU utilization reported in heartbeats, "
                     "percent (fleet distribution; 0 = not reported is not observed).",
                     buckets=(10, 25, 50, 60, 70, 80, 90, 95, 100), registry=METRICS_REGISTRY)
OPEN_STREAMS = Gauge("haulmesh_telemetry_open_streams", "Truck streams open on this process (past Welcome).",
                     registry=METRICS_REGISTRY)
PACKET_LOSS_RATIO = Gauge("vehicle_telemetry_packet_loss_ratio", "Lifetime ratio of this process: sequence gaps "
                          "/ (stored frames + gaps). For the SLO use the PromQL ratio of the counters over a "
                          "window (docs/telemetry.md).", registry=METRICS_REGISTRY)
#: Flow control (docs/telemetry.md "Flow control"): frames read and not yet through their commit, in this process.
INFLIGHT_FRAMES = Gauge("haulmesh_telemetry_inflight_frames", "Frames read from trucks (streams and "
                        "IngestTelemetry) whose commit has not completed, in this process; bounded by "
                        "HAULMESH_TELEMETRY_MAX_INFLIGHT_FRAMES_PER_PROCESS.", registry=METRICS_REGISTRY)
INFLIGHT_FRAMES_PEAK = Gauge("haulmesh_telemetry_inflight_frames_peak", "The most frames ever in flight at once "
                             "in this process since it started (never above the bound).", registry=METRICS_REGISTRY)
#: Streams not being read because their stream, or the process, is at its bound, or their truck does not read its
#: responses: a lasting non-zero value means the store is slower than the trucks (or a truck ignores its acks).
PAUSED_STREAMS = Gauge("haulmesh_telemetry_paused_streams", "Truck streams of this process not being read "
                       "(flow control: in-flight or outbound bound reached).", registry=METRICS_REGISTRY)
#: Stored frames waiting for mission tracking (derived events); the streams stop reading while it is at
#: HAULMESH_TELEMETRY_MAX_TRACKING_FRAMES. Lasting at the bound: tracking is slower than the trucks.
TRACKING_BACKLOG_FRAMES = Gauge("haulmesh_telemetry_tracking_backlog_frames", "Stored frames of this process "
                                "waiting for their derived events (bounded by "
                                "HAULMESH_TELEMETRY_MAX_TRACKING_FRAMES, passed by at most what was in flight).",
                                registry=METRICS_REGISTRY)
TRACKING_BACKLOG_PEAK = Gauge("haulmesh_telemetry_tracking_backlog_frames_peak", "The most stored frames ever "
                              "waiting for their derived events at once in this process since it started.",
                              registry=METRICS_REGISTRY)
REFUSED_COMMAND_ACKS = Counter("haulmesh_telemetry_refused_command_acks_total", "CommandAcks not stored, by reason:"
                               " unknown (no such command was sent to the truck), too_large, or malformed (an"
                               " outcome outside the enum's known values).", ["reason"],
                               registry=METRICS_REGISTRY)
OPERATOR_COMMANDS = Counter("haulmesh_telemetry_operator_commands_total", "Operators' commands queued for trucks "
                            "(CreateVehicleCommand), by action: stop, reroute, resume, cancel_assignment.", ["action"],
                            registry=METRICS_REGISTRY)
ARCHIVED_FRAMES = Counter("haulmesh_telemetry_archived_frames_total", "Frames committed to archive parts "
                          "(object written, read back, manifest written, index committed).", registry=METRICS_REGISTRY)
ARCHIVED_PARTS = Counter("haulmesh_telemetry_archived_parts_total", "Archive parts committed.",
                         registry=METRICS_REGISTRY)
ARCHIVED_BYTES = Counter("haulmesh_telemetry_archived_bytes_total", "Bytes of archive parts committed (Parquet).",
                         registry=METRICS_REGISTRY)
#: Any increase means a vehicle's archiving (and so its hot-stream trim) is stalled: alert on it.
ARCHIVE_FAILURES = Counter("haulmesh_telemetry_archive_failures_total", "Archive runs of a vehicle stopped by an "
                           "object store failure or a conflicting part.", registry=METRICS_REGISTRY)
#: 0 while this process's archive is unreachable or not the Redis store's archive: nothing is archived or trimmed
#: (the hot stream grows); alert when it stays 0.
ARCHIVE_AVAILABLE = Gauge("haulmesh_telemetry_archive_available", "1 while this process's archive object store "
                          "is open and is the one this Redis store archives to, else 0.", registry=METRICS_REGISTRY)
#: 1: this process's archive holds another STORE-ID than the Redis store recorded (e.g. a pod's own emptyDir).
ARCHIVE_STORE_MISMATCH = Gauge("haulmesh_telemetry_archive_store_mismatch", "1 while this process refuses to archive "
                               "because its archive is another object store than the Redis store's archive.",
                               registry=METRICS_REGISTRY)

# Children created up front: every outcome and reason is exported from the start (at 0), so rate() and
# absent-series alerts work before the first rejection, and recording is a plain attribute call.
_STORED, _DUPLICATE, _REJECTED = (FRAMES.labels(outcome) for outcome in ("stored", "duplicate", "rejected"))
_BY_REASON = {reason.value: REJECTED_FRAMES.labels(reason.value) for reason in RejectReason}
# Lifetime totals behind the ratio gauge (read at scrape time, so recording costs two additions).
_lifetime = {"stored": 0, "gaps": 0}


def _loss_ratio() -> float:
    seen = _lifetime["stored"] + _lifetime["gaps"]
    return _lifetime["gaps"] / seen if seen else 0.0


PACKET_LOSS_RATIO.set_function(_loss_ratio)


def record_rejects(rejects: Mapping[str, int]) -> None:
    """Count one batch's rejected frames (``reason value -> count``)."""
    total = 0
    for reason, count in rejects.items():
        child = _BY_REASON.get(reason) or REJECTED_FRAMES.labels(reason)
        child.inc(count)
        total += count
    if total:
        _REJECTED.inc(total)


def record_durable(stored: int, duplicates: int, gaps: int, ages_seconds: list[float]) -> None:
    """Count one durable commit group: its stored and duplicate frames, its gaps, and each of its batches'
    freshness (seconds from the newest stored frame's device time to now; negative = truck clock ahead)."""
    if stored:
        _STORED.inc(stored)
    if duplicates:
        _DUPLICATE.inc(duplicates)
    if gaps:
        SEQUENCE_GAPS.inc(gaps)
    _lifetime["stored"] += stored
    _lifetime["gaps"] += gaps
    for age in ages_seconds:
        # A truck clock slightly ahead (within the accepted skew) is not "fresher than instant".
        FRESHNESS.observe(age if age > 0.0 else 0.0)


_peak = {"inflight": 0}


def record_inflight(inflight: int) -> None:
    """The process's frames in flight changed (flow control's count)."""
    INFLIGHT_FRAMES.set(inflight)
    if inflight > _peak["inflight"]:
        _peak["inflight"] = inflight
        INFLIGHT_FRAMES_PEAK.set(inflight)


def record_tracking_backlog(frames: int) -> None:
    """The frames waiting for mission tracking changed (its bounded queue)."""
    TRACKING_BACKLOG_FRAMES.set(frames)
    if frames > _peak.get("tracking", 0):
        _peak["tracking"] = frames
        TRACKING_BACKLOG_PEAK.set(frames)


def stream_paused(paused: bool) -> None:
    """A stream stopped (True) or resumed (False) reading because of a flow-control bound."""
    if paused:
        PAUSED_STREAMS.inc()
    else:
        PAUSED_STREAMS.dec()


def record_archived(frames: int, size: int) -> None:
    """Count one committed archive part of ``frames`` frames and ``size`` bytes."""
    ARCHIVED_FRAMES.inc(frames)
    ARCHIVED_PARTS.inc()
    ARCHIVED_BYTES.inc(size)


def record_edge_cpu(percent: float) -> None:
    """Observe a heartbeat's edge CPU. 0 is proto3's "not set" and a running autonomy computer never idles
    at exactly 0 %; values outside (0, 100] (and NaN, which would poison the sum) are not observed."""
    if 0.0 < percent <= 100.0:
        EDGE_CPU.observe(percent)


def stream_opened() -> None:
    """A truck stream passed Hello/Welcome (pair with :func:`stream_closed` in the stream's ``finally``)."""
    OPEN_STREAMS.inc()


def stream_closed() -> None:
    OPEN_STREAMS.dec()
