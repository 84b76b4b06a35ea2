"""``make bench``: measured figures, printed and written as JSON (build/bench.json), never asserted.

Telemetry figures: see bench_telemetry.py. Audit figures (verifying 1,000,000 entries against a signed checkpoint,
on a store of their own): see bench_audit.py; ``--only audit`` measures just those.

REST tender create → offer, through the gateway with a real token, over a fresh local mesh:
  * latency p50 / p99 at a fixed offered load (open loop: requests start on schedule whether or not
    earlier ones finished, and latency counts from the scheduled start, so a stall is not hidden), and
  * the throughput at saturation (closed loop, N requests in flight), then the latency at half of it, and
  * the CPU per create across the mesh's processes (and the store), from their own /proc counters.

Yardsticks (issue 13; bench_yardsticks.py, docs/capacity.md "Yardsticks"): in the same run, one frame-sized
ECDSA verify (``ecdsa_verify_us``) and the same create done the simplest honest way by bench_reference.py,
driven by the same load generator (``reference_tender_cpu_ms``); the targets are written as ratios to them.

The load generator runs on the same 2-core machine as the mesh, so the figures are a floor for what the
mesh does on its own cores. Each tender has its own TMS load number (the natural key), so no request is
answered from the idempotency cache.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import grpc
import httpx
from bench_audit import run_audit_bench
from bench_grpc_floor import grpc_floor
from bench_reference import start_reference
from bench_telemetry import cpu_seconds, run_telemetry_bench
from bench_yardsticks import ecdsa_verify_parallel_cores, ecdsa_verify_us, ratios, report_lines
from localmesh import fresh_mesh, register_truck

from haulmesh.mission.v1 import mission_service_pb2_grpc
from services.runtime import pki, tokens

ROOT = Path(__file__).resolve().parents[1]
STATE = ROOT / ".haulmesh" / "bench"
OUT = ROOT / "build" / "bench.json"


def _tender(window_start: datetime) -> dict:
    return {
        "tenderId": f"BENCH-{uuid.uuid4().hex[:12].upper()}",
        "origin": {"lat": 29.749907, "lon": -95.358421, "address": "Houston, TX"},
        "destination": {"lat": 33.7490, "lon": -84.3880, "address": "Atlanta, GA"},
        "pickupWindow": f"{window_start:%Y-%m-%dT%H:%M:%SZ}/{window_start + timedelta(hours=10):%Y-%m-%dT%H:%M:%SZ}",
        "equipment": "53FT_DRYVAN",
        "weightLb": 42000,
    }


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


#: What a create answers when it did its job: the mesh offers the seed tender; the reference (bench_reference.py)
#: commits it and computes no offer.
MESH_STATE = "STATE_OFFERED"
REFERENCE_STATE = "STATE_PENDING"


async def _create(http: httpx.AsyncClient, start: datetime) -> tuple[int, str]:
    try:
        reply = await http.post("/api/v1/tenders", json=_tender(start))
    except httpx.HTTPError as exc:  # a timeout on an overloaded box is a failed request, not the end of the bench
        return 0, f"{type(exc).__name__}: {exc}"[:200]
    return reply.status_code, reply.json().get("state", "") if reply.status_code == 200 else reply.text[:200]


async def fixed_rate(http: httpx.AsyncClient, rate: float, seconds: float, start: datetime, *,
                     expect: str = MESH_STATE) -> dict:
    latencies: list[float] = []
    failures: list[str] = []
    begin = time.perf_counter() + 0.05

    async def one(scheduled: float) -> None:
        await asyncio.sleep(max(0.0, scheduled - time.perf_counter()))
        status, state = await _create(http, start)
        latencies.append(time.perf_counter() - scheduled)
        if status != 200 or state != expect:
            failures.append(f"{status} {state}")

    count = int(rate * seconds)
    await asyncio.gather(*(one(begin + i / rate) for i in range(count)))
    return {"requests": count, "failures": len(failures), "first_failure": failures[:1],
            "p50_ms": _percentile(latencies, 0.50) * 1000, "p99_ms": _percentile(latencies, 0.99) * 1000,
            "mean_ms": statistics.fmean(latencies) * 1000}


async def saturation(http: httpx.AsyncClient, concurrency: int, seconds: float, start: datetime, *,
                     expect: str = MESH_STATE) -> dict:
    done = 0
    failures = 0
    stop_at = time.perf_counter() + seconds

    async def worker() -> None:
        nonlocal done, failures
        while time.perf_counter() < stop_at:
            status, state = await _create(http, start)
            done += 1
            failures += status != 200 or state != expect

    began = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return {"requests": done, "failures": failures, "rps": done / (time.perf_counter() - began)}


def _mesh_pids(mesh) -> dict[str, int]:
    pids = {name: child.process.pid for name, child in mesh.children.items()}
    if mesh.store is not None:
        pids["store"] = mesh.store.pid
    return pids


async def settle(pids: list[int], *, idle_cpu_fraction: float = 0.1, limit_seconds: float = 180.0) -> float:
    """Waits until the processes are idle (the REST phases leave event work behind: webhooks, billing,
    consumers), so that the next figures are not measured against it; returns the seconds waited."""
    began = time.perf_counter()
    while time.perf_counter() - began < limit_seconds:
        before = sum(cpu_seconds(pid) for pid in pids)
        await asyncio.sleep(1.0)
        if sum(cpu_seconds(pid) for pid in pids) - before < idle_cpu_fraction:
            break
    return time.perf_counter() - began


async def cpu_per_create(http: httpx.AsyncClient, pids: dict[str, int], rate: float, seconds: float,
                         start: datetime, *, expect: str) -> dict:
    """A fixed-rate phase and the CPU it cost the processes ``pids`` per request, from their /proc counters: from
    the phase's start until they are idle again (what a create sets off after its answer counts too), less
    what they use idle (measured over 2 s just before). The load generator's own CPU is not counted."""
    await settle(list(pids.values()), limit_seconds=30)
    idle_before = {name: cpu_seconds(pid) for name, pid in pids.items()}
    await asyncio.sleep(2.0)
    idle = {name: (cpu_seconds(pid) - idle_before[name]) / 2.0 for name, pid in pids.items()}
    before = {name: cpu_seconds(pid) for name, pid in pids.items()}
    began = time.perf_counter()
    phase = await fixed_rate(http, rate, seconds, start, expect=expect)
    await settle(list(pids.values()), limit_seconds=30)
    window = time.perf_counter() - began
    used = {name: max(0.0, cpu_seconds(pid) - before[name] - idle[name] * window) for name, pid in pids.items()}
    return {**phase, "cpu_ms": sum(used.values()) / phase["requests"] * 1000,
            "cpu_ms_by_process": {name: round(u / phase["requests"] * 1000, 3) for name, u in used.items()},
            "window_seconds": window, "idle_cores": sum(idle.values())}


def _client(base_url: str, token: str, concurrency: int) -> httpx.AsyncClient:
    # Close idle connections before the server does (uvicorn: 5 s) so a reused one is never half-closed.
    limits = httpx.Limits(max_connections=concurrency * 2, max_keepalive_connections=concurrency * 2,
                          keepalive_expiry=2)
    return httpx.AsyncClient(base_url=base_url, limits=limits, timeout=30,
                             headers={"Authorization": f"Bearer {token}"})


def _pickup_start() -> datetime:
    return (datetime.now(UTC) + timedelta(days=1)).replace(hour=8, minute=0, second=0, microsecond=0)


async def run_reference(args: argparse.Namespace) -> dict:
    """``reference_tender_cpu_ms``: the same load generator, rate and length against bench_reference.py."""
    state = STATE / "reference"
    state.mkdir(parents=True, exist_ok=True)
    token = tokens.mint(carrier="bench-carrier", scopes="tender:create tender:read", state_dir=state,
                        ttl_seconds=3600)
    async with start_reference(state) as server:
        pids = {"server": server.process.pid, **({"store": server.store_pid} if server.store_pid else {})}
        async with _client(server.url, token, args.concurrency) as http:
            start = _pickup_start()
            await fixed_rate(http, 50, 2, start, expect=REFERENCE_STATE)  # warm-up, as for the mesh
            steady = await cpu_per_create(http, pids, args.rate, args.seconds, start, expect=REFERENCE_STATE)
            saturated = await saturation(http, args.concurrency, args.seconds, start, expect=REFERENCE_STATE)
    return {
        "reference_tender_cpu_ms": round(steady["cpu_ms"], 3),
        "reference_tender_cpu_ms_by_process": steady["cpu_ms_by_process"],
        "reference_tender_p50_ms": round(steady["p50_ms"], 2),
        "reference_tender_p99_ms": round(steady["p99_ms"], 2),
        "reference_tender_max_rps": round(saturated["rps"], 1),
        "reference_tender_failures": steady["failures"] + saturated["failures"],
    }


async def run(args: argparse.Namespace) -> dict:
    # The floor of this machine now, before anything of ours runs; again just before and after the telemetry
    # phases (the machine's load may change meanwhile): the median of the three is the yardstick.
    verify_samples = [ecdsa_verify_us()]
    mesh = fresh_mesh(STATE, HAULMESH_RATE_LIMIT="off", HAULMESH_LOG_LEVEL="WARNING")
    await mesh.start(timeout_seconds=90)
    try:
        async with grpc.aio.secure_channel(mesh.address("mission"), mesh.operator_credentials()) as channel:
            ops = mission_service_pb2_grpc.MissionServiceStub(channel)
            for i in range(20):
                await register_truck(ops, f"BENCH-TRK-{i:03d}")
        token = tokens.mint(carrier="bench-carrier", scopes="tender:create tender:read", state_dir=mesh.state_dir,
                            ttl_seconds=3600)
        pids = _mesh_pids(mesh)
        async with _client(f"http://127.0.0.1:{mesh.http_port}", token, args.concurrency) as http:
            start = _pickup_start()
            await fixed_rate(http, 50, 2, start)  # warm-up: connections, caches, the JIT-less interpreter
            steady = await cpu_per_create(http, pids, args.rate, args.seconds, start, expect=MESH_STATE)
            saturated = await saturation(http, args.concurrency, args.seconds, start)
            await settle(list(pids.values()), limit_seconds=30)
            half_rate = max(1.0, round(saturated["rps"] / 2, 1))
            half = await fixed_rate(http, half_rate, args.seconds, start)
        settled = await settle(list(pids.values()))
        verify_samples.append(ecdsa_verify_us())
        telemetry = await run_telemetry_bench(mesh, pki.load_ca(mesh.cert_dir), open_target=args.open_streams,
                                              open_limit_seconds=args.open_seconds)
        verify_samples.append(ecdsa_verify_us())
        telemetry["settle_seconds_before_telemetry"] = round(settled, 1)
    finally:
        await mesh.stop(stop_store=True)
    floor = await grpc_floor()  # the mesh stopped: its cores free
    verify_us = statistics.median(verify_samples)
    parallel_cores = ecdsa_verify_parallel_cores()
    reference = await run_reference(args)
    audit = await run_audit_bench(STATE / "audit", entries=args.audit_entries)
    figures = {**telemetry, **floor, **audit, **reference,
        "ecdsa_verify_us": round(verify_us, 2),
        "ecdsa_verify_parallel_cores": round(parallel_cores, 2),
        "ecdsa_verify_us_samples": [round(v, 2) for v in verify_samples],
        "tender_create_p50_ms": round(steady["p50_ms"], 2),
        "tender_create_p99_ms": round(steady["p99_ms"], 2),
        "tender_create_mean_ms": round(steady["mean_ms"], 2),
        "tender_create_offered_rps": args.rate,
        "tender_create_failures": steady["failures"] + saturated["failures"] + half["failures"],
        "tender_create_max_rps": round(saturated["rps"], 1),
        "tender_create_saturation_concurrency": args.concurrency,
        "tender_create_half_saturation_rps": half_rate,
        "tender_create_p50_ms_at_half_saturation": round(half["p50_ms"], 2),
        "tender_create_p99_ms_at_half_saturation": round(half["p99_ms"], 2),
        "tender_cpu_ms": round(steady["cpu_ms"], 3),
        "tender_cpu_ms_by_process": steady["cpu_ms_by_process"],
        "tender_cpu_window_seconds": round(steady["window_seconds"], 1),
        "tender_cpu_idle_cores": round(steady["idle_cores"], 3),
        "first_failure": steady["first_failure"] or half["first_failure"],
    }
    return {**figures, **ratios(figures)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rate", type=float, default=200, help="offered load in requests/s (default 200)")
    parser.add_argument("--seconds", type=float, default=10, help="length of each phase (default 10)")
    parser.add_argument("--concurrency", type=int, default=32, help="requests in flight at saturation")
    parser.add_argument("--open-streams", type=int, default=10_000, help="truck streams to try to hold open")
    parser.add_argument("--open-seconds", type=float, default=120.0,
                        help="no new batch of streams is opened after this many seconds (default 120)")
    parser.add_argument("--audit-entries", type=int, default=1_000_000, help="audit entries verified (default 1e6)")
    parser.add_argument("--only", choices=["all", "audit"], default="all",
                        help="audit: only the audit verification figures (no mesh); written to build/bench.json "
                        "beside the figures already there")
    args = parser.parse_args()
    if args.only == "audit":
        figures = asyncio.run(run_audit_bench(STATE / "audit", entries=args.audit_entries))
        _print_audit(figures)
        previous = json.loads(OUT.read_text()) if OUT.is_file() else {}
        OUT.parent.mkdir(parents=True, exist_ok=True)
        OUT.write_text(json.dumps({**previous, **figures}, indent=2) + "\n")
        print(json.dumps(figures, separators=(",", ":")))
        return 0
    figures = asyncio.run(run(args))
    print(f"REST tender create → offer at {args.rate:g} req/s for {args.seconds:g}s: "
          f"p50 {figures['tender_create_p50_ms']} ms, p99 {figures['tender_create_p99_ms']} ms; mesh CPU "
          f"{figures['tender_cpu_ms']} ms per create {figures['tender_cpu_ms_by_process']}")
    print(f"saturation ({args.concurrency} in flight): {figures['tender_create_max_rps']} req/s; at half of it "
          f"({figures['tender_create_half_saturation_rps']} req/s) p50 "
          f"{figures['tender_create_p50_ms_at_half_saturation']} ms, p99 "
          f"{figures['tender_create_p99_ms_at_half_saturation']} ms; failures: {figures['tender_create_failures']}")
    print(f"reference create (bench_reference.py) at {args.rate:g} req/s: {figures['reference_tender_cpu_ms']} ms CPU "
          f"per create {figures['reference_tender_cpu_ms_by_process']}, p99 {figures['reference_tender_p99_ms']} ms, "
          f"saturation {figures['reference_tender_max_rps']} req/s; failures: {figures['reference_tender_failures']}")
    print(f"telemetry: {figures['telemetry_server_cpu_us_per_frame']} µs server CPU per live frame "
          f"(100 trucks x 10 Hz), {figures['telemetry_1hz_server_cpu_us_per_frame']} µs at "
          f"{figures['telemetry_1hz_trucks']:,} trucks x 1 Hz; replay {figures['telemetry_replay_frames_per_s']} "
          f"frames/s; the store: {figures['telemetry_store_cpu_us_per_frame']} µs CPU and "
          f"{figures['telemetry_store_bytes_per_frame']} bytes per stored frame (docs/capacity.md)")
    print(f"archive: {figures['archive_frames_per_s']} frames/s archived to Parquet; bytes per frame "
          f"{figures['archive_parquet_bytes_per_frame']} in Parquet vs {figures['archive_redis_bytes_per_frame']} "
          f"in Redis (docs/capacity.md, Data tiers)")
    print(f"yardsticks (docs/capacity.md, Yardsticks): ecdsa_verify_us {figures['ecdsa_verify_us']}, "
          f"reference_tender_cpu_ms {figures['reference_tender_cpu_ms']}")
    for line in report_lines(figures):
        print(f"  {line}")
    _print_audit(figures)
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(figures, indent=2) + "\n")
    print(json.dumps(figures, separators=(",", ":")))
    return 0


def _print_audit(figures: dict) -> None:
    print(f"audit verify: {figures['audit_verify_entries']:,} entries against a signed checkpoint in "
          f"{figures['audit_verify_seconds']} s ({figures['audit_verify_seconds_per_million']} s per million, target "
          f"< {figures['audit_verify_target_seconds_per_million']:g}); {figures['audit_verify_cpu_us_per_entry']} µs "
          f"verifier CPU + {figures['audit_verify_store_cpu_us_per_entry']} µs store CPU per entry "
          f"(yardstick: one entry's hash {figures['audit_hash_us']} µs)")


if __name__ == "__main__":
    sys.exit(main())
