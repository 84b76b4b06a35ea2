"""The simulator: the lane, the frames it produces, its scenarios, and the CLI end to end over mTLS."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from pathlib import Path

import pytest

from edge_client.recorder import Recorder
from edge_client.route import Route, haversine_m
from edge_client.simulator import Simulation, parse_scenario
from edge_client.spool import Spool
from haulmesh.telemetry.v1 import frame_pb2, stream_pb2
from haulmesh.type.v1 import location_pb2
from services.runtime import pki
from tests.conftest import wait_for
from tests.faultproxy import FaultProxy

from .cloud import ScriptedCloud, start_cloud
from .conftest import VEHICLE

KIND = frame_pb2.FramePayload
ROOT = Path(__file__).resolve().parents[2]


def test_the_lane_is_houston_to_atlanta() -> None:
    route = Route.houston_to_atlanta()
    miles = route.length_m / 1609.344
    print(f"lane_miles={miles:.0f}")
    assert 750 < miles < 850  # I-10/I-12/I-59/I-20 is about 790 road miles
    start, end = route.at(0), route.at(route.length_m)
    assert haversine_m(start.lat, start.lon, 29.7604, -95.3698) < 1
    assert haversine_m(end.lat, end.lon, 33.7490, -84.3880) < 1
    assert 45 < route.at(1000).heading_deg < 135  # leaving Houston eastbound


def test_scenarios_parse() -> None:
    assert parse_scenario("connectivity-loss:30").minutes == 30
    assert parse_scenario(None).name == "none"
    for bad in ("connectivity-loss:0", "meteor", "edge-crash:3"):
        with pytest.raises(ValueError):
            parse_scenario(bad)


def _kinds(spool: Spool) -> list[int]:
    return [k for _, k in sorted(spool.kinds().items())]


async def test_sensor_fault_produces_health_faults_and_alarm(tmp_path: Path, signer) -> None:
    with Spool(tmp_path / "s.db") as spool:
        simulation = Simulation(Recorder(spool, signer, VEHICLE), None, speedup=1e9,
                                scenario=parse_scenario("sensor-fault"))
        report = await simulation.run()
        kinds = _kinds(spool)
        frames = [frame_pb2.FramePayload.FromString(frame_pb2.SignedFrame.FromString(f.frame).payload)
                  for f in spool.unacked_after(0, 10_000)]
    print(f"frames={report.frames} by_kind={report.by_kind}")
    assert kinds[0] == KIND.KIND_HEALTH and frames[0].health_checks
    faults = [f.alarm.code for f in frames if f.kind == KIND.KIND_FAULT]
    assert faults == ["LIDAR_DEGRADED", "LIDAR_FAILURE"]
    assert [f.alarm.code for f in frames if f.kind == KIND.KIND_ALARM] == ["MRC_ENGAGED"]
    assert frames[-1].vehicle_state == "minimal_risk_stop" and frames[-1].position.speed_kph == 0
    assert report.by_kind["KIND_POSITION"] == report.simulated_seconds  # 1 Hz simulated
    times = [f.device_time.ToNanoseconds() for f in frames]
    assert times == sorted(times)


async def test_road_closure_follows_the_reroute(tmp_path: Path, signer) -> None:
    with Spool(tmp_path / "s.db") as spool:
        simulation = Simulation(Recorder(spool, signer, VEHICLE), None, speedup=1e9,
                                scenario=parse_scenario("road-closure"), max_sim_seconds=1790)
        task = asyncio.create_task(simulation.run())
        await wait_for(lambda: simulation.truck.state == "stopped", timeout_seconds=30, interval_seconds=0.001)
        detour = [(30.9, -93.0), (33.7490, -84.3880)]
        outcome = simulation.on_command(stream_pb2.Command(command_id="c1", reroute=stream_pb2.Reroute(
            waypoints=[location_pb2.Location(lat=a, lon=b) for a, b in detour], reason="closure")))
        report = await task
        events = [frame_pb2.FramePayload.FromString(frame_pb2.SignedFrame.FromString(f.frame).payload).event.code
                  for f in spool.unacked_after(0, 10_000) if spool.kinds()[f.sequence] == KIND.KIND_EVENT]
    print(f"outcome={outcome} events={events} rerouted={report.rerouted}")
    assert outcome[0] == stream_pb2.CommandAck.OUTCOME_COMPLETED
    assert events == ["road_closure_ahead", "reroute_applied"] and report.rerouted


async def test_an_operators_stop_holds_the_truck_until_it_is_told_to_resume(tmp_path: Path, signer) -> None:
    ok, refused = stream_pb2.CommandAck.OUTCOME_COMPLETED, stream_pb2.CommandAck.OUTCOME_REJECTED
    with Spool(tmp_path / "s.db") as spool:
        simulation = Simulation(Recorder(spool, signer, VEHICLE), None, speedup=200, scenario=parse_scenario(None),
                                max_sim_seconds=900, stop_hold_seconds=100_000)
        task = asyncio.create_task(simulation.run())
        await wait_for(lambda: simulation.report.simulated_seconds >= 20, timeout_seconds=30, interval_seconds=0.01)
        assert simulation.on_command(stream_pb2.Command(command_id="r0", resume=stream_pb2.ResumeVehicle()))[0] == \
            refused  # moving: nothing to resume
        assert simulation.on_command(stream_pb2.Command(command_id="s1", stop=stream_pb2.StopVehicle()))[0] == ok
        stopped_at, held = simulation.report.simulated_seconds, simulation.truck.distance_m
        await wait_for(lambda: simulation.report.simulated_seconds >= stopped_at + 60, timeout_seconds=30,
                       interval_seconds=0.01)
        assert simulation.truck.distance_m == held and simulation.truck.state == "stopped"
        assert simulation.on_command(stream_pb2.Command(command_id="r1", resume=stream_pb2.ResumeVehicle()))[0] == ok
        report = await task
    assert report.simulated_seconds == 900  # the stop did not end the run: the resume came within the hold
    assert simulation.truck.distance_m > held and simulation.truck.state == "enroute"
    assert report.commands == ["resume", "stop", "resume"]


async def test_a_stop_without_a_resume_ends_the_run_after_the_hold(tmp_path: Path, signer) -> None:
    with Spool(tmp_path / "s.db") as spool:
        simulation = Simulation(Recorder(spool, signer, VEHICLE), None, speedup=200, scenario=parse_scenario(None),
                                max_sim_seconds=100_000, stop_hold_seconds=30)
        task = asyncio.create_task(simulation.run())
        await wait_for(lambda: simulation.report.simulated_seconds >= 10, timeout_seconds=30, interval_seconds=0.01)
        simulation.on_command(stream_pb2.Command(command_id="s1", stop=stream_pb2.StopVehicle()))
        stopped_at = simulation.report.simulated_seconds
        report = await asyncio.wait_for(task, timeout=30)
    assert stopped_at + 30 <= report.simulated_seconds <= stopped_at + 31
    assert simulation.truck.state == "stopped"


@pytest.fixture
def cert_dir(tmp_path: Path):
    """A cert dir as `haulmesh pki` lays it out, for the CLI; and the CA."""
    ca = pki.create_ca()
    issued = pki.issue(ca, pki.identity_for("vehicle", VEHICLE), valid_days=1)
    pki.write_pem_files(tmp_path / "certs", f"vehicle-{VEHICLE}", issued, ca.certificate_pem)
    return tmp_path / "certs", ca, issued.private_key.public_key()


def _cli(target: str, certs: Path, spool: Path, *args: str) -> list[str]:
    return [sys.executable, "-m", "edge_client", "--cert-dir", str(certs), "--target", target,
            "simulate", "--vehicle", VEHICLE, "--spool", str(spool), "--quiet", "--backoff-cap", "0.5", *args]


def _last_sequence(path: Path) -> int:
    if not path.exists():
        return 0
    with Spool(path) as spool:
        return spool.stats().last_sequence


async def test_cli_outage_and_kill_9_half_way_lose_nothing(cert_dir, tmp_path: Path) -> None:
    """30 simulated minutes offline at 1 Hz, the edge process killed -9 half way: all frames arrive once, in order."""
    certs, ca, public_key = cert_dir
    server = await start_cloud(ca, ScriptedCloud(public_key))
    proxy = await FaultProxy(server.address).start()
    spool_path = tmp_path / "spool.db"
    argv = _cli(proxy.address, certs, spool_path, "--speedup", "600", "--max-sim-minutes", "45")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    processes = []
    try:
        first = await asyncio.create_subprocess_exec(*argv, cwd=tmp_path, env=env, stdout=asyncio.subprocess.PIPE)
        processes.append(first)
        await wait_for(lambda: server.cloud.high_water >= 60, timeout_seconds=60)
        proxy.reset(refuse_new=True)
        cut_at = _last_sequence(spool_path)
        await wait_for(lambda: _last_sequence(spool_path) >= cut_at + 900, timeout_seconds=120)
        first.kill()  # SIGKILL, half way through the outage
        await first.wait()
        killed_at = _last_sequence(spool_path)
        # the restarted edge process resumes the drive from its saved progress (as under the supervisor)
        second = await asyncio.create_subprocess_exec(*argv, cwd=tmp_path, stdout=asyncio.subprocess.PIPE,
                                                      env={**env, "HAULMESH_EDGE_SUPERVISED": "1"})
        processes.append(second)
        await wait_for(lambda: _last_sequence(spool_path) >= cut_at + 1800, timeout_seconds=120)
        proxy.pass_through()
        out, _ = await asyncio.wait_for(second.communicate(), timeout=180)
        assert second.returncode == 0
        report = json.loads(out.decode().strip().splitlines()[-1])
    finally:
        for process in processes:
            if process.returncode is None:
                process.kill()
                await process.wait()
        await proxy.close()
        await server.server.stop(0)
    cloud = server.cloud
    total = report["last_sequence"]
    print(f"frames={total} offline_from={cut_at} killed_at={killed_at} stored={len(cloud.stored)} "
          f"sessions={cloud.sessions} duplicates_received={sum(cloud.received.values()) - len(cloud.received)} "
          f"spool_depth={report['spool_depth']}")
    assert cloud.arrival == list(range(1, total + 1))
    assert report["spool_depth"] == 0 and report["dropped"] == 0
    assert len({h.boot_id for h in cloud.hellos}) == 2  # two boots, one unbroken sequence


async def test_cli_edge_crash_is_restarted_and_resumes(cert_dir, tmp_path: Path) -> None:
    """The edge-crash scenario SIGKILLs the edge process; the supervisor restarts it; the sequence continues."""
    certs, _, _ = cert_dir
    spool_path = tmp_path / "spool.db"
    process = await asyncio.create_subprocess_exec(
        *_cli("127.0.0.1:1", certs, spool_path, "--offline", "--speedup", "1000000", "--max-sim-minutes", "10",
              "--scenario", "edge-crash"),
        cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(ROOT)},
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(process.communicate(), timeout=120)
    report = json.loads(out.decode().strip().splitlines()[-1])
    with Spool(spool_path) as spool:
        sequences, kinds = spool.sequences(), spool.kinds()
        payloads = [frame_pb2.FramePayload.FromString(frame_pb2.SignedFrame.FromString(f.frame).payload)
                    for f in spool.unacked_after(0, 10_000)]
    boots = {p.boot_id for p in payloads}
    print(f"returncode={process.returncode} frames={len(sequences)} boots={len(boots)} report={report}")
    assert process.returncode == 0 and "restart 1" in err.decode()
    assert sequences == list(range(1, len(sequences) + 1))
    assert len(boots) == 2 and list(kinds.values()).count(KIND.KIND_HEALTH) == 1  # pre-trip once, not per boot
    assert report["simulated_minutes"] == 10
