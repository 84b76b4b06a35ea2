"""``make bench``'s yardsticks (issue 13): the reference tender server and the ratio computation, at small counts.

The reference server runs as its own process on the session's real Valkey, driven by the bench's own load
generator (bench.fixed_rate); what it committed is read back from the store. No timing is asserted: the figures
are the bench's job, these tests check that they are computed from the right things.
"""

from __future__ import annotations

import sys
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest

from services.runtime import tokens

# The bench's modules live in scripts/ (run as scripts, not installed): import them as bench.py does.
sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "scripts"))

import bench
from bench_grpc_floor import grpc_floor
from bench_reference import start_reference, validate_tender
from bench_yardsticks import TARGETS, ecdsa_verify_parallel_cores, ecdsa_verify_us, ratios, report_lines

pytestmark = pytest.mark.timeout(60)


def _start() -> datetime:
    return (datetime.now(UTC) + timedelta(days=1)).replace(hour=8, minute=0, second=0, microsecond=0)


async def test_the_reference_commits_each_tender_with_its_outbox_event(tmp_path, store_url, store_client) -> None:
    carrier = f"ref-{uuid.uuid4().hex[:8]}"
    token = tokens.mint(carrier=carrier, scopes="tender:create", state_dir=tmp_path)
    async with start_reference(tmp_path, redis_url=store_url) as server, httpx.AsyncClient(
            base_url=server.url, headers={"Authorization": f"Bearer {token}"}, timeout=30) as http:
        phase = await bench.fixed_rate(http, 20, 0.5, _start(), expect=bench.REFERENCE_STATE)
    assert phase["requests"] == 10
    assert phase["failures"] == 0, phase["first_failure"]
    tender_keys = [key async for key in store_client.scan_iter(match=f"ref:tender:{{{carrier}}}:*")]
    events = await store_client.xrange(f"ref:events:{{{carrier}}}")
    assert len(tender_keys) == 10
    assert sorted(fields[b"tender"] for _, fields in events) == sorted(
        key.rsplit(b":", 1)[1] for key in tender_keys)


async def test_the_reference_refuses_what_the_gateway_refuses(tmp_path, store_url, store_client) -> None:
    carrier = f"ref-{uuid.uuid4().hex[:8]}"
    good = tokens.mint(carrier=carrier, scopes="tender:create", state_dir=tmp_path)
    read_only = tokens.mint(carrier=carrier, scopes="tender:read", state_dir=tmp_path)
    stranger = tokens.mint(carrier=carrier, scopes="tender:create", state_dir=tmp_path / "other-issuer")
    tender = bench._tender(_start())
    async with start_reference(tmp_path, redis_url=store_url) as server, httpx.AsyncClient(
            base_url=server.url, timeout=30) as http:
        def auth(token: str) -> dict:
            return {"Authorization": f"Bearer {token}"}

        assert (await http.post("/api/v1/tenders", json=tender)).status_code == 401
        assert (await http.post("/api/v1/tenders", json=tender, headers=auth(stranger))).status_code == 401
        assert (await http.post("/api/v1/tenders", json=tender, headers=auth(read_only))).status_code == 403
        assert (await http.post("/api/v1/tenders", content=b"{", headers=auth(good))).status_code == 400
        bad = await http.post("/api/v1/tenders", headers=auth(good), json={
            **tender, "weightLb": 0, "equipment": "SPACESHIP",
            "pickupWindow": "2026-01-01T18:00:00Z/2026-01-01T08:00:00Z"})
    assert bad.status_code == 400
    assert {d["field"] for d in bad.json()["error"]["details"]} == {"weightLb", "equipment", "pickupWindow"}
    assert [key async for key in store_client.scan_iter(match=f"ref:tender:{{{carrier}}}:*")] == []


def test_the_reference_validates_the_seed_tender_by_the_mesh_rules() -> None:
    now = datetime.now(UTC)
    assert validate_tender(bench._tender(_start()), now) == []
    late = {**bench._tender(_start()), "pickupWindow": "2020-01-01T08:00:00Z/2020-01-01T18:00:00Z"}
    assert [v["field"] for v in validate_tender(late, now)] == ["pickupWindow"]
    nowhere = {**bench._tender(_start()), "origin": {"lat": 0, "lon": 0}, "tenderId": ""}
    assert {v["field"] for v in validate_tender(nowhere, now)} == {"origin", "tenderId"}
    assert validate_tender([], now)[0]["field"] == ""


async def test_cpu_per_create_counts_the_servers_own_cpu(tmp_path, store_url) -> None:
    token = tokens.mint(carrier="ref-cpu", scopes="tender:create", state_dir=tmp_path)
    async with start_reference(tmp_path, redis_url=store_url) as server, httpx.AsyncClient(
            base_url=server.url, headers={"Authorization": f"Bearer {token}"}, timeout=30) as http:
        phase = await bench.cpu_per_create(http, {"server": server.process.pid}, 50, 1.0, _start(),
                                           expect=bench.REFERENCE_STATE)
    assert phase["failures"] == 0, phase["first_failure"]
    assert phase["requests"] == 50
    assert phase["cpu_ms"] > 0
    assert set(phase["cpu_ms_by_process"]) == {"server"}


def test_ratios_are_the_figures_over_their_yardsticks() -> None:
    figures = {"ecdsa_verify_us": 50.0, "telemetry_server_cpu_us_per_frame": 250.0,
               "telemetry_1hz_server_cpu_us_per_frame": 300.0, "telemetry_replay_frames_per_s": 24_000,
               "tender_cpu_ms": 13.0, "reference_tender_cpu_ms": 2.0, "grpc_floor_cpu_us_per_frame": 125.0,
               "grpc_floor_1hz_cpu_us_per_frame": 200.0, "ecdsa_verify_parallel_cores": 1.6}
    assert ratios(figures) == {"telemetry_cpu_per_frame_over_verify": 5.0,
                               "telemetry_1hz_cpu_per_frame_over_verify": 6.0,
                               "telemetry_replay_verify_cores": 1.2, "tender_cpu_over_reference": 6.5,
                               "telemetry_replay_over_verify_ceiling": 0.75,
                               "grpc_floor_over_verify": 2.5, "grpc_floor_1hz_over_verify": 4.0,
                               "telemetry_cpu_per_frame_over_grpc_floor": 2.0,
                               "telemetry_1hz_cpu_per_frame_over_grpc_floor": 1.5}
    assert ratios({"telemetry_server_cpu_us_per_frame": 250.0}) == dict.fromkeys(ratios(figures))


def test_every_target_key_gets_a_line_with_its_verdict() -> None:
    figures = {"ecdsa_verify_us": 50.0, "telemetry_server_cpu_us_per_frame": 90.0,
               "tender_create_p99_ms_at_half_saturation": 30.0, "telemetry_open_streams": 10_000}
    lines = report_lines({**figures, **ratios(figures), "grpc_floor_cpu_us_per_frame": 60.0})
    targets, floor = lines[:len(TARGETS)], lines[len(TARGETS):]
    assert [line.split(" = ")[0] for line in targets] == [t.key for t in TARGETS]
    assert floor == ["gRPC floor at 10 Hz: bare server 60.0 µs per frame = 1.2 x verify; the service 90.0 µs = "
                     "1.5 x the floor",
                     "gRPC floor at 1 Hz: bare server not measured per frame = not measured x verify; the service "
                     "not measured = not measured x the floor"]
    by_key = dict(zip((t.key for t in TARGETS), targets, strict=True))
    assert by_key["telemetry_cpu_per_frame_over_verify"].endswith(": met")  # 1.8 ≤ 2.0
    assert "90.0 µs per frame ÷ verify 50.0 µs" in by_key["telemetry_cpu_per_frame_over_verify"]
    assert by_key["tender_create_p99_ms_at_half_saturation"].endswith(": MISSED")
    assert by_key["telemetry_open_streams"].endswith(": met")
    assert by_key["tender_cpu_over_reference"].endswith(": not measured")


def test_the_verify_yardstick_is_measured() -> None:
    assert 1 < ecdsa_verify_us(samples=3, per_sample=10) < 100_000


def test_the_parallel_verify_ceiling_counts_one_thread_verifiers() -> None:
    # One thread is one one-thread verifier, give or take the machine's noise between two runs; one per core, some
    # positive number of them. How far threads scale is what the bench measures, not a test.
    assert 0.5 < ecdsa_verify_parallel_cores(threads=1, per_thread=200, samples=3) < 2
    assert ecdsa_verify_parallel_cores(per_thread=200, samples=1) > 0


async def test_the_grpc_floor_server_acks_the_bench_phases_over_mtls() -> None:
    """The bare server (its own process, client certificates required) at a few trucks: every frame of both
    phases acknowledged (the drivers wait for it, and fail past their timeout), and an Ack per frame at 1 Hz, as
    the service sends them (so the two phases cost the floor what they cost the service)."""
    floor = await grpc_floor(trucks=2, rate=20, seconds=0.5, slow_trucks=2, slow_seconds=2)
    assert floor["grpc_floor_1hz_acks_per_frame"] == 1.0
