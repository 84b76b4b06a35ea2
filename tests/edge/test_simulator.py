"""The simulator: the lane, the frames it produces, its scenarios, and the CLI end to end over mTLS."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import sys
from pathlib import Path

import pytest

from edge_client.recorder import Recorder
from edge_client.route import Route, haversine_m
from edge_client.simulator import CLOSURE_MAX_HOLD, Simulation, parse_scenario
from edge_client.spool import Spool
from haulmesh.mission.v1 import mission_pb2
from haulmesh.telemetry.v1 import frame_pb2, stream_pb2
from haulmesh.type.v1 import health_check_pb2, location_pb2
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
    assert [parse_scenario(n).name for n in ("takeover", "pre-trip-failure")] == ["takeover", "pre-trip-failure"]
    for bad in ("connectivity-loss:0", "meteor", "edge-crash:3", "takeover:5"):
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


async def test_a_closure_answered_with_a_stop_waits_for_the_resume_not_its_own_hold(tmp_path: Path, signer) -> None:
    # No known road around the closure: the cloud stops the truck; it must not drive on after its own closure hold
    # (CLOSURE_MAX_HOLD), only once an operator resumes it (the road reopened).
    ok = stream_pb2.CommandAck.OUTCOME_COMPLETED
    with Spool(tmp_path / "s.db") as spool:
        simulation = Simulation(Recorder(spool, signer, VEHICLE), None, speedup=20_000,
                                scenario=parse_scenario("road-closure"), scenario_at=60, max_sim_seconds=3_000,
                                stop_hold_seconds=100_000)
        task = asyncio.create_task(simulation.run())
        await wait_for(lambda: simulation.truck.state == "stopped", timeout_seconds=30, interval_seconds=0.001)
        assert simulation.on_command(stream_pb2.Command(command_id="s1", stop=stream_pb2.StopVehicle()))[0] == ok
        stopped_at, held = simulation.report.simulated_seconds, simulation.truck.distance_m
        await wait_for(lambda: simulation.report.simulated_seconds >= stopped_at + CLOSURE_MAX_HOLD + 100,
                       timeout_seconds=30, interval_seconds=0.001)
        assert simulation.truck.state == "stopped" and simulation.truck.distance_m == held
        assert simulation.on_command(stream_pb2.Command(command_id="r1", resume=stream_pb2.ResumeVehicle()))[0] == ok
        report = await task
    assert report.simulated_seconds == 3_000 and simulation.truck.distance_m > held and not report.rerouted
    assert report.commands == ["stop", "resume"]


HOUSTON, DALLAS, ATLANTA = (29.7604, -95.3698), (32.7767, -96.797), (33.7490, -84.3880)


def _assignment(stops: list[tuple[float, float]], planned: list[tuple[float, float]]) -> stream_pb2.Command:
    where = [location_pb2.Location(lat=lat, lon=lon) for lat, lon in stops]
    return stream_pb2.Command(command_id="assign-m-1", assign_mission=stream_pb2.MissionAssignment(
        mission_id="m-1", stops=[mission_pb2.Stop(location=loc) for loc in where],
        planned_route=[location_pb2.Location(lat=lat, lon=lon) for lat, lon in planned]))


async def _drive_assignment(spool: Spool, signer, command: stream_pb2.Command) -> list[frame_pb2.FramePayload]:
    simulation = Simulation(Recorder(spool, signer, VEHICLE), None, speedup=1e9, scenario=parse_scenario(None),
                            wait_for_mission=True, route_from_assignment=True, frame_every=10)
    assert simulation.on_command(command)[0] == stream_pb2.CommandAck.OUTCOME_ACCEPTED
    report = await simulation.run()
    assert report.arrived
    return [p for p in _payloads(spool) if p.kind == KIND.KIND_POSITION]


async def test_an_assignment_with_a_planned_route_is_driven_along_it_to_its_last_stop(tmp_path: Path,
                                                                                       signer) -> None:
    # Houston → Dallas, planned straight between the stops (no known road): off the seed lane altogether
    with Spool(tmp_path / "s.db") as spool:
        positions = await _drive_assignment(spool, signer, _assignment([HOUSTON, DALLAS], [HOUSTON, DALLAS]))
    first, last = positions[0].position, positions[-1].position
    print(f"positions={len(positions)} last=({last.lat:.4f}, {last.lon:.4f}) state={positions[-1].vehicle_state}")
    assert haversine_m(first.lat, first.lon, *HOUSTON) < 1 and haversine_m(last.lat, last.lon, *DALLAS) < 1
    assert positions[-1].vehicle_state == "arrived" and positions[-1].mission_id == "m-1"
    # on the way: north-north-west all along, never further from Dallas than Houston is, nowhere near Louisiana
    straight = haversine_m(*HOUSTON, *DALLAS)
    moving = [p.position for p in positions if p.vehicle_state == "enroute"]
    assert moving and all(300 < p.heading_deg < 360 for p in moving)
    assert all(haversine_m(p.lat, p.lon, *DALLAS) <= straight + 1 and p.lon < -95.3 for p in moving)
    # along the great circle: at halfway, as far from either end
    middle = min(moving, key=lambda p: abs(haversine_m(p.lat, p.lon, *HOUSTON) - straight / 2))
    assert abs(haversine_m(middle.lat, middle.lon, *DALLAS) - straight / 2) < 3_000


async def test_an_assignment_without_a_planned_route_drives_the_seed_lane(tmp_path: Path, signer) -> None:
    # an older server's assignment: stops only; the seed lane's inner waypoints (through Baton Rouge)
    with Spool(tmp_path / "s.db") as spool:
        positions = await _drive_assignment(spool, signer, _assignment([HOUSTON, ATLANTA], []))
    last = positions[-1].position
    assert haversine_m(last.lat, last.lon, *ATLANTA) < 1
    assert min(haversine_m(p.position.lat, p.position.lon, 30.4515, -91.1871) for p in positions) < 5_000


async def test_a_truck_waiting_for_its_next_mission_reports_itself_where_its_last_run_ended(tmp_path: Path,
                                                                                             signer) -> None:
    where = tmp_path / "s.where.json"
    with Spool(tmp_path / "s.db") as spool:
        first = Simulation(Recorder(spool, signer, VEHICLE), None, speedup=1e9, scenario=parse_scenario(None),
                           wait_for_mission=True, route_from_assignment=True, frame_every=10, position_path=where)
        first.on_command(_assignment([HOUSTON, DALLAS], [HOUSTON, DALLAS]))
        assert (await first.run()).arrived
        # the next run, waiting for a mission: idle at Dallas (not at Houston, where the seed lane starts)
        again = Simulation(Recorder(spool, signer, VEHICLE), None, speedup=1e9, scenario=parse_scenario(None),
                           wait_for_mission=True, route_from_assignment=True, frame_every=10, position_path=where)
        waiting = asyncio.create_task(again.run())
        await wait_for(lambda: again.report.frames >= 1, timeout_seconds=30, interval_seconds=0.001)
        idle = _payloads(spool)[-1]
        again.on_command(_assignment([DALLAS, HOUSTON], [DALLAS, HOUSTON]))
        assert (await waiting).arrived
        home = _payloads(spool)[-1].position
        # an unreadable file: where its route starts, as a new truck would
        where.write_text("{not json")
        fresh = Simulation(Recorder(spool, signer, VEHICLE), None, speedup=1e9, scenario=parse_scenario(None),
                           wait_for_mission=True, position_path=where)
    assert idle.vehicle_state == "idle" and haversine_m(idle.position.lat, idle.position.lon, *DALLAS) < 1
    assert haversine_m(home.lat, home.lon, *HOUSTON) < 1  # the second run ended back in Houston
    assert fresh.truck.parked_at is None


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


def _payloads(spool: Spool) -> list[frame_pb2.FramePayload]:
    return [frame_pb2.FramePayload.FromString(frame_pb2.SignedFrame.FromString(f.frame).payload)
            for f in spool.unacked_after(0, 100_000)]


def _takeover_command(which: str, mission_id: str = "m-1") -> stream_pb2.Command:
    payload = {"hand_over": stream_pb2.HandOver, "hand_back": stream_pb2.HandBack}[which]
    return stream_pb2.Command(command_id=f"{which}-1", **{which: payload(mission_id=mission_id, exception_id="exc-1")})


async def test_a_law_enforcement_stop_is_handed_to_a_human_and_back(tmp_path: Path, signer) -> None:
    accepted, completed = stream_pb2.CommandAck.OUTCOME_ACCEPTED, stream_pb2.CommandAck.OUTCOME_COMPLETED
    refused = stream_pb2.CommandAck.OUTCOME_REJECTED
    with Spool(tmp_path / "s.db") as spool:
        simulation = Simulation(Recorder(spool, signer, VEHICLE), None, speedup=400, mission_id="m-1",
                                scenario=parse_scenario("takeover"), scenario_at=20, max_sim_seconds=400,
                                stop_hold_seconds=30)  # waiting for the hand-over; under remote control, no limit
        task = asyncio.create_task(simulation.run())
        await wait_for(lambda: simulation.truck.state == "pulled_over", timeout_seconds=30, interval_seconds=0.005)
        assert simulation.on_command(_takeover_command("hand_back"))[0] == refused  # nothing handed over yet
        assert simulation.on_command(_takeover_command("hand_over", "another-mission"))[0] == refused
        assert simulation.on_command(_takeover_command("hand_over")) == (accepted, "remote operator in control")
        taken_at, held = simulation.report.simulated_seconds, simulation.truck.distance_m
        await wait_for(lambda: simulation.report.simulated_seconds >= taken_at + 60, timeout_seconds=30,
                       interval_seconds=0.005)
        assert simulation.truck.distance_m == held and simulation.truck.state == "remote-control"
        assert simulation.on_command(_takeover_command("hand_back")) == (completed, "autonomy stack in control")
        report = await asyncio.wait_for(task, timeout=30)
        payloads = _payloads(spool)
    assert report.simulated_seconds == 400 and simulation.truck.distance_m > held  # it drove on after the hand-back
    events = [p.event.code for p in payloads if p.kind == KIND.KIND_EVENT]
    assert events == ["law_enforcement_stop", "takeover_started", "takeover_ended"]
    remote = [p for p in payloads if p.kind == KIND.KIND_POSITION and p.vehicle_state == "remote-control"]
    assert len(remote) >= 59 and all(p.position.speed_kph == 0 for p in remote)  # positions kept coming
    assert payloads[-1].vehicle_state == "enroute" and payloads[-1].position.speed_kph > 0


async def test_a_moving_truck_handed_over_stops_and_a_reroute_waits_for_the_hand_back(tmp_path: Path, signer) -> None:
    with Spool(tmp_path / "s.db") as spool:
        simulation = Simulation(Recorder(spool, signer, VEHICLE), None, speedup=400, mission_id="m-1",
                                scenario=parse_scenario(None), max_sim_seconds=300, stop_hold_seconds=100_000)
        task = asyncio.create_task(simulation.run())
        await wait_for(lambda: simulation.report.simulated_seconds >= 20, timeout_seconds=30, interval_seconds=0.005)
        simulation.on_command(_takeover_command("hand_over"))  # an operator's CARGO takeover while it drives
        taken_at, held = simulation.report.simulated_seconds, simulation.truck.distance_m
        detour = stream_pb2.Command(command_id="r1", reroute=stream_pb2.Reroute(
            waypoints=[location_pb2.Location(lat=30.9, lon=-93.0), location_pb2.Location(lat=33.749, lon=-84.388)]))
        simulation.on_command(detour)
        await wait_for(lambda: simulation.report.simulated_seconds >= taken_at + 30, timeout_seconds=30,
                       interval_seconds=0.005)
        assert simulation.truck.distance_m <= held + 30 and not simulation.report.rerouted  # the human holds it
        simulation.on_command(_takeover_command("hand_back"))
        report = await asyncio.wait_for(task, timeout=30)
    assert report.rerouted and simulation.truck.state == "enroute"  # the autonomy stack follows the reroute now


async def test_under_remote_control_a_stop_is_refused_and_a_lidar_failure_keeps_the_human_in_control(
        tmp_path: Path, signer) -> None:
    """The cloud's minimal-risk stop (the lidar's failure raises one) is the remote operator's to make while they
    drive: refused, and the truck engages no minimal-risk condition of its own, so the hand-back still finds it under
    remote control and completes."""
    refused, completed = stream_pb2.CommandAck.OUTCOME_REJECTED, stream_pb2.CommandAck.OUTCOME_COMPLETED
    with Spool(tmp_path / "s.db") as spool:
        simulation = Simulation(Recorder(spool, signer, VEHICLE), None, speedup=400, mission_id="m-1",
                                scenario=parse_scenario("sensor-fault"), scenario_at=20, max_sim_seconds=600,
                                stop_hold_seconds=100_000)
        task = asyncio.create_task(simulation.run())
        await wait_for(lambda: simulation.truck.sensors.get("lidar_status") == "degraded", timeout_seconds=30,
                       interval_seconds=0.005)
        simulation.on_command(_takeover_command("hand_over"))
        await wait_for(lambda: simulation.truck.sensors.get("lidar_status") == "fault", timeout_seconds=30,
                       interval_seconds=0.005)
        stop = stream_pb2.Command(command_id="stop-1", stop=stream_pb2.StopVehicle())
        assert simulation.on_command(stop)[0] == refused
        assert simulation.truck.state == "remote-control"
        assert simulation.on_command(_takeover_command("hand_back"))[0] == completed
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        payloads = _payloads(spool)
    alarms = [p.alarm.code for p in payloads if p.HasField("alarm")]
    assert "LIDAR_FAILURE" in alarms and "MRC_ENGAGED" not in alarms


async def test_a_pulled_over_truck_nobody_takes_over_ends_its_run_after_the_hold(tmp_path: Path, signer) -> None:
    with Spool(tmp_path / "s.db") as spool:
        simulation = Simulation(Recorder(spool, signer, VEHICLE), None, speedup=1e9, mission_id="m-1",
                                scenario=parse_scenario("takeover"), stop_hold_seconds=45)
        report = await asyncio.wait_for(simulation.run(), timeout=30)
    assert report.simulated_seconds == 900 + 45 and simulation.truck.state == "pulled_over"


async def test_a_pre_trip_failure_holds_the_truck_at_the_pickup_until_a_passing_check(tmp_path: Path, signer) -> None:
    with Spool(tmp_path / "s.db") as spool:
        simulation = Simulation(Recorder(spool, signer, VEHICLE), None, speedup=2_000, mission_id="m-1",
                                scenario=parse_scenario("pre-trip-failure"), max_sim_seconds=120, stop_hold_seconds=5)
        task = asyncio.create_task(simulation.run())
        await wait_for(lambda: spool.kinds(), timeout_seconds=30, interval_seconds=0.005)
        # The cloud answers the failed check with a hold (PRE_TRIP_FAILURE, contingency HOLD): kept while it waits.
        hold = stream_pb2.Command(command_id="stop-1",
                                  stop=stream_pb2.StopVehicle(mode=stream_pb2.StopVehicle.MODE_HOLD))
        assert simulation.on_command(hold)[0] == stream_pb2.CommandAck.OUTCOME_COMPLETED
        report = await asyncio.wait_for(task, timeout=30)
        payloads = _payloads(spool)
    health = [i for i, p in enumerate(payloads) if p.kind == KIND.KIND_HEALTH]
    assert len(health) == 2 and health[0] == 0
    failed = [(c.check, c.detail) for c in payloads[0].health_checks
              if c.blocking and c.outcome == health_check_pb2.HealthCheckResult.OUTCOME_FAIL]
    assert failed == [("lidar", "fault")]
    waiting = payloads[1:health[1]]
    assert len(waiting) == 301 and all(p.kind == KIND.KIND_POSITION and p.position.speed_kph == 0 for p in waiting)
    assert {p.vehicle_state for p in waiting} <= {"pre_trip", "stopped"}
    assert all(c.outcome == health_check_pb2.HealthCheckResult.OUTCOME_PASS for c in payloads[health[1]].health_checks)
    # The passing check lifted the hold: it departed and drove on past the hold's few seconds.
    assert report.simulated_seconds == 120 and payloads[-1].vehicle_state == "enroute"


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
