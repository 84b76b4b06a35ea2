"""``make bench``'s yardsticks (issue 13): floors measured in the same run, and the targets as ratios to them.

Absolute figures do not travel between machines (the same commit measured 176 µs and 408-502 µs of server CPU per
frame on two 2-core machines); a ratio to a floor measured in the same run, on the same machine, does. The floors:

* ``ecdsa_verify_us``: one ECDSA P-256 / SHA-256 verify of a frame-sized payload (a bench truck's signed position
  frame) with ``cryptography`` on one thread: the median, over :data:`VERIFY_SAMPLES` samples, of the mean of
  :data:`VERIFY_PER_SAMPLE` verifies;
* ``ecdsa_verify_parallel_cores``: the same verify on one thread per core at once (``cryptography`` releases the GIL),
  as cores' worth of one-thread verifying: what this machine's cores give in parallel with nothing else to do. The
  ceiling of ``telemetry_replay_verify_cores`` here (1.45-1.93 from run to run on a 2-vCPU VM where two threads
  are not twice one);
  ``telemetry_replay_over_verify_ceiling`` is the replay's share of it;
* ``reference_tender_cpu_ms``: the REST create done the simplest honest way (bench_reference.py);
* ``grpc_floor_cpu_us_per_frame`` / ``grpc_floor_1hz_cpu_us_per_frame``: a bare grpc.aio server of the same stream
  contract driven by the same phases (bench_grpc_floor.py): what the transport alone costs per frame. Not in the
  Targets table; :func:`ratios` writes the telemetry figures over it, and it over verify, beside the targets.

:data:`TARGETS` lists every key of issue 13's Targets table; :func:`ratios` computes the ratio keys from the
absolute figures, :func:`report_lines` prints each key with its figure, yardstick and target. docs/capacity.md,
"Yardsticks", defines each key.
"""

from __future__ import annotations

import math
import os
import statistics
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec

from haulmesh.telemetry.v1 import frame_pb2

__all__ = ["TARGETS", "Target", "ecdsa_verify_parallel_cores", "ecdsa_verify_us", "frame_payload", "ratios",
           "report_lines"]

#: 101 x 100 verifies: about half a second at 50 µs; the median of the means shrugs off another process's burst.
VERIFY_SAMPLES = 101
VERIFY_PER_SAMPLE = 100


@dataclass(frozen=True)
class Target:
    """One key of the Targets table: the figure must be ``op`` (``<=`` or ``>=``) ``bound``."""

    key: str
    op: str
    bound: float
    what: str

    def met(self, value: float | None) -> bool | None:
        """Whether ``value`` meets the target; None when it was not measured."""
        if value is None or (isinstance(value, float) and math.isnan(value)):
            return None
        return value <= self.bound if self.op == "<=" else value >= self.bound


TARGETS = (
    Target("telemetry_cpu_per_frame_over_verify", "<=", 2.0,
           "telemetry server CPU per frame ÷ verify, 100 trucks x 10 Hz"),
    Target("telemetry_1hz_cpu_per_frame_over_verify", "<=", 2.5,
           "telemetry server CPU per frame ÷ verify, 1,000 trucks x 1 Hz, an ack per frame"),
    Target("telemetry_replay_verify_cores", ">=", 1.6, "replay frames/s x verify (cores' worth of verifying)"),
    Target("tender_cpu_over_reference", "<=", 4.0, "mesh CPU per REST create → offer ÷ the reference's"),
    Target("tender_create_p99_ms_at_half_saturation", "<=", 25.0, "REST create p99 at half the saturation rate, ms"),
    Target("telemetry_subscriber_p99_ms", "<=", 50.0, "frame → watcher p99 at 2,000 frames/s, ms"),
    Target("telemetry_open_streams", ">=", 10_000, "truck streams held open by one process"),
    Target("telemetry_server_rss_mib", "<=", 2048.0, "telemetry RSS with those streams open, MiB"),
)


def frame_payload(vehicle_id: str = "BENCH-TRK-00000", sequence: int = 1) -> bytes:
    """A bench truck's position frame payload, serialized: what each frame's signature covers."""
    payload = frame_pb2.FramePayload(vehicle_id=vehicle_id, sequence=sequence, boot_id="bench",
                                     kind=frame_pb2.FramePayload.KIND_POSITION,
                                     position=frame_pb2.Position(lat=30.2, lon=-97.7, speed_kph=88.5))
    payload.device_time.GetCurrentTime()
    return payload.SerializeToString()


def _signed_frame() -> tuple[ec.EllipticCurvePublicKey, bytes, bytes]:
    """A fresh P-256 key's public half, a bench frame's payload and its signature: what each verify checks."""
    key = ec.generate_private_key(ec.SECP256R1())
    payload = frame_payload()
    return key.public_key(), payload, key.sign(payload, ec.ECDSA(hashes.SHA256()))


def ecdsa_verify_us(*, samples: int = VERIFY_SAMPLES, per_sample: int = VERIFY_PER_SAMPLE) -> float:
    """Microseconds for one frame-sized ECDSA P-256 verify on this thread (median of ``samples`` means)."""
    public, payload, signature = _signed_frame()
    algorithm = ec.ECDSA(hashes.SHA256())
    public.verify(signature, payload, algorithm)  # warm: the first call pays for lazy set-up
    means = []
    for _ in range(samples):
        began = time.perf_counter()
        for _ in range(per_sample):
            public.verify(signature, payload, algorithm)
        means.append((time.perf_counter() - began) / per_sample)
    return statistics.median(means) * 1e6


def ecdsa_verify_parallel_cores(*, threads: int | None = None, per_thread: int = 4000, samples: int = 5) -> float:
    """How many one-thread verifiers ``threads`` threads (one per core) are worth at once: their verifies per second
    over one thread's, each the median of ``samples`` runs, the runs interleaved so that a burst of another process
    weighs on both. 2.0 on two cores that scale perfectly."""
    threads = threads or os.cpu_count() or 1
    public, payload, signature = _signed_frame()

    def verify_many(_: int) -> None:
        algorithm = ec.ECDSA(hashes.SHA256())
        for _ in range(per_thread):
            public.verify(signature, payload, algorithm)

    one, many = [], []
    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(verify_many, range(threads)))  # warm: every thread started once
        for _ in range(samples):
            began = time.perf_counter()
            verify_many(0)
            one.append(per_thread / (time.perf_counter() - began))
            began = time.perf_counter()
            list(pool.map(verify_many, range(threads)))
            many.append(threads * per_thread / (time.perf_counter() - began))
    return statistics.median(many) / statistics.median(one)


def _get(figures: dict, key: str) -> float | None:
    value = figures.get(key)
    if value is None or isinstance(value, bool) or not isinstance(value, int | float) or math.isnan(value):
        return None
    return float(value)


def _ratio(numerator: float | None, denominator: float | None) -> float | None:
    if numerator is None or denominator is None or denominator <= 0:
        return None
    return numerator / denominator


def ratios(figures: dict) -> dict:
    """The ratio keys of the Targets table from the absolute figures (None for any whose inputs are missing)."""
    verify = _get(figures, "ecdsa_verify_us")
    replay = _get(figures, "telemetry_replay_frames_per_s")
    computed = {
        "telemetry_cpu_per_frame_over_verify": _ratio(_get(figures, "telemetry_server_cpu_us_per_frame"), verify),
        "telemetry_1hz_cpu_per_frame_over_verify": _ratio(_get(figures, "telemetry_1hz_server_cpu_us_per_frame"),
                                                          verify),
        "telemetry_replay_verify_cores": None if replay is None or verify is None else replay * verify / 1e6,
        "tender_cpu_over_reference": _ratio(_get(figures, "tender_cpu_ms"), _get(figures, "reference_tender_cpu_ms")),
        # Not targets: how much of this machine's parallel verifying the replay gets, and how the telemetry
        # figures split into the transport's floor and the service's own work.
        "telemetry_replay_over_verify_ceiling": _ratio(None if replay is None or verify is None
                                                       else replay * verify / 1e6,
                                                       _get(figures, "ecdsa_verify_parallel_cores")),
        "grpc_floor_over_verify": _ratio(_get(figures, "grpc_floor_cpu_us_per_frame"), verify),
        "grpc_floor_1hz_over_verify": _ratio(_get(figures, "grpc_floor_1hz_cpu_us_per_frame"), verify),
        "telemetry_cpu_per_frame_over_grpc_floor": _ratio(_get(figures, "telemetry_server_cpu_us_per_frame"),
                                                          _get(figures, "grpc_floor_cpu_us_per_frame")),
        "telemetry_1hz_cpu_per_frame_over_grpc_floor": _ratio(
            _get(figures, "telemetry_1hz_server_cpu_us_per_frame"), _get(figures, "grpc_floor_1hz_cpu_us_per_frame")),
    }
    return {key: None if value is None else round(value, 2) for key, value in computed.items()}


def _fmt(value: float | None, unit: str = "") -> str:
    if value is None:
        return "not measured"
    text = f"{value:,.0f}" if abs(value) >= 1000 else f"{value:.3g}" if abs(value) < 10 else f"{value:.1f}"
    return text + unit


def _yardstick(key: str, f: dict) -> str:
    verify = _fmt(_get(f, "ecdsa_verify_us"), " µs")
    return {
        "telemetry_cpu_per_frame_over_verify":
            f"{_fmt(_get(f, 'telemetry_server_cpu_us_per_frame'), ' µs')} per frame ÷ verify {verify}",
        "telemetry_1hz_cpu_per_frame_over_verify":
            f"{_fmt(_get(f, 'telemetry_1hz_server_cpu_us_per_frame'), ' µs')} per frame "
            f"({_fmt(_get(f, 'telemetry_1hz_acks_per_frame'))} acks a frame) ÷ verify {verify}",
        "telemetry_replay_verify_cores":
            f"{_fmt(_get(f, 'telemetry_replay_frames_per_s'))} frames/s x verify {verify}; this machine's ceiling "
            f"{_fmt(_get(f, 'ecdsa_verify_parallel_cores'))} (every core verifying, nothing else), the replay "
            f"{_fmt(_get(f, 'telemetry_replay_over_verify_ceiling'))} of it",
        "tender_cpu_over_reference":
            f"{_fmt(_get(f, 'tender_cpu_ms'), ' ms')} mesh CPU per create ÷ reference "
            f"{_fmt(_get(f, 'reference_tender_cpu_ms'), ' ms')}",
        "tender_create_p99_ms_at_half_saturation":
            f"at {_fmt(_get(f, 'tender_create_half_saturation_rps'))} req/s = half of the measured "
            f"{_fmt(_get(f, 'tender_create_max_rps'))} req/s",
        "telemetry_subscriber_p99_ms": f"p50 {_fmt(_get(f, 'telemetry_subscriber_p50_ms'), ' ms')}",
        "telemetry_open_streams":
            f"of {_fmt(_get(f, 'telemetry_open_streams_target'))} tried, in "
            f"{_fmt(_get(f, 'telemetry_open_streams_seconds'), ' s')} (bound "
            f"{_fmt(_get(f, 'telemetry_open_streams_limit_seconds'), ' s')})",
        "telemetry_server_rss_mib": f"with {_fmt(_get(f, 'telemetry_open_streams'))} streams open",
    }[key]


def report_lines(figures: dict) -> list[str]:
    """One line per key of the Targets table: figure, its yardstick, and the target (met / MISSED); then the
    gRPC floor's split of the telemetry figures."""
    lines = []
    for target in TARGETS:
        value = _get(figures, target.key)
        met = target.met(value)
        verdict = "not measured" if met is None else "met" if met else "MISSED"
        lines.append(f"{target.key} = {_fmt(value)}  [{_yardstick(target.key, figures)}]  "
                     f"target {target.op.replace('<=', '≤').replace('>=', '≥')} {_fmt(target.bound)}: {verdict}")
    for phase, figure, floor in (("10 Hz", "telemetry_server_cpu_us_per_frame", "grpc_floor_cpu_us_per_frame"),
                                 ("1 Hz", "telemetry_1hz_server_cpu_us_per_frame", "grpc_floor_1hz_cpu_us_per_frame")):
        service, bare = _get(figures, figure), _get(figures, floor)
        lines.append(f"gRPC floor at {phase}: bare server {_fmt(bare, ' µs')} per frame = "
                     f"{_fmt(_ratio(bare, _get(figures, 'ecdsa_verify_us')))} x verify; the service "
                     f"{_fmt(service, ' µs')} = {_fmt(_ratio(service, bare))} x the floor")
    return lines
