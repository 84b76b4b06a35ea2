"""``haulmesh-edge``: the truck's command line.

    haulmesh-edge check --vehicle AU-TRK-1001       connect to the telemetry service as the truck, over mTLS
    haulmesh-edge simulate --vehicle AU-TRK-1001 --speedup 60 [--scenario sensor-fault|connectivity-loss:MINUTES|
                  edge-crash|road-closure|takeover|pre-trip-failure] [--scenario-at MINUTES]
                  [--frame-every-sim-seconds N] [--pickup-dwell-minutes M [--dwell-speedup X]]
                                                    drive Houston → Atlanta, spooling and streaming signed frames
    haulmesh-edge run --vehicle AU-TRK-1001         the stream client alone: send what the spool holds, keep going
    haulmesh-edge enrol --vehicle AU-TRK-1001 --token hmenrol_...
                                                    make the truck's key here, send a CSR with the operator's
                                                    one-time token, install the certificate it gets
    haulmesh-edge status --vehicle AU-TRK-1001      what the spool holds
    haulmesh-edge pod --vehicle AU-TRK-1001 --mission missions/ID [--photo URI,SHA256] [--received-by NAME]
                  [--seal-number S] [--submit]      build and sign the proof of delivery from the truck's own
                                                    telemetry log; with --submit wait until the server acked the
                                                    log's last frame, then submit it (mTLS as the truck)
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import re
import subprocess
import sys
import uuid
from datetime import datetime
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from haulmesh.mission.v1 import mission_pb2

from .certs import RENEW_AT_FRACTION, EnrolmentError, Renewer, VehicleFiles, enrol
from .client import BACKOFF_CAP_SECONDS, CpuSampler, Keepalive, StreamClient
from .metrics import EdgeCollector, serve_metrics
from .pod import Photo, PodError, build_proof, submit_proof, wait_until_acked
from .recorder import Recorder
from .signer import KeyFileSigner
from .simulator import STOP_HOLD_SECONDS, Simulation, parse_scenario
from .spool import Spool

__all__ = ["main"]

_CHILD_ENV = "HAULMESH_EDGE_SUPERVISED"  # set in the process the edge-crash supervisor restarts
_MAX_RESTARTS = 3


def _credentials(cert_dir: Path, vehicle: str) -> grpc.ChannelCredentials:
    try:
        return grpc.ssl_channel_credentials(
            root_certificates=(cert_dir / "ca.pem").read_bytes(),
            private_key=(cert_dir / f"vehicle-{vehicle}-key.pem").read_bytes(),
            certificate_chain=(cert_dir / f"vehicle-{vehicle}.pem").read_bytes(),
        )
    except FileNotFoundError as exc:
        raise SystemExit(f"haulmesh-edge: {exc.filename} is missing: issue the truck's certificate with "
                         f"'haulmesh pki issue vehicle {vehicle}'") from None


def _signer(cert_dir: Path, vehicle: str) -> KeyFileSigner:
    try:
        return KeyFileSigner.from_files(cert_dir / f"vehicle-{vehicle}-key.pem", cert_dir / f"vehicle-{vehicle}.pem")
    except FileNotFoundError as exc:
        raise SystemExit(f"haulmesh-edge: {exc.filename} is missing") from None


def _spool(args: argparse.Namespace) -> Spool:
    path = Path(args.spool or Path(".haulmesh") / "edge" / args.vehicle / "spool.db")
    path.parent.mkdir(parents=True, exist_ok=True)
    return Spool(path, max_frames=args.max_spool_frames)


async def _check(args: argparse.Namespace) -> int:
    credentials = _credentials(Path(args.cert_dir), args.vehicle)
    async with grpc.aio.secure_channel(args.target, credentials) as channel:
        try:
            reply = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5)
        except grpc.aio.AioRpcError as exc:
            print(f"{args.target}: {exc.code().name}: {exc.details()}", file=sys.stderr)
            return 1
    status = health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
    print(f"{args.target}: {status} (as vehicle {args.vehicle})")
    return 0 if status == "SERVING" else 1


def _client(args: argparse.Namespace, spool: Spool, boot_id: str, on_command=None) -> StreamClient:
    _credentials(Path(args.cert_dir), args.vehicle)  # a missing file is named now, not at the first connection
    # Re-read at every session: a renewed certificate is presented by the next connection (certs.py).
    return StreamClient(args.target, VehicleFiles(Path(args.cert_dir), args.vehicle).channel_credentials, spool,
                        vehicle_id=args.vehicle, boot_id=boot_id, on_command=on_command,
                        backoff_base=args.backoff_base, backoff_cap=args.backoff_cap,
                        keepalive=Keepalive(args.keepalive_time_seconds, args.keepalive_timeout_seconds))


def _metrics(args: argparse.Namespace, spool: Spool, client: StreamClient | None) -> None:
    if not args.metrics_port:
        return
    if not 0 < args.metrics_port < 65536:
        raise SystemExit(f"haulmesh-edge: --metrics-port must be 1-65535, got {args.metrics_port}")
    collector = EdgeCollector(spool.stats, lambda: client.stats if client else None,
                              lambda: bool(client and client.connected.is_set()), CpuSampler())
    try:
        serve_metrics(collector, args.metrics_port)
    except OSError as exc:
        raise SystemExit(f"haulmesh-edge: cannot serve metrics on port {args.metrics_port}: {exc.strerror}") from None


async def _drain(client: StreamClient, spool: Spool, seconds: float) -> bool:
    """Waits until the spool is empty (everything acked), at most ``seconds``."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + seconds
    while loop.time() < deadline:
        if (await asyncio.to_thread(spool.stats)).depth == 0:
            return True
        await asyncio.sleep(0.1)
    return False


async def _with_client(client: StreamClient | None, body, renewer: Renewer | None = None):
    tasks = [asyncio.create_task(part.run()) for part in (client, renewer) if part]
    try:
        return await body
    finally:
        for task in tasks:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task


def _renewer(args: argparse.Namespace) -> Renewer | None:
    """The certificate's renewal beside the stream client (off with --no-renew)."""
    if args.no_renew:
        return None
    return Renewer(args.device_url, VehicleFiles(Path(args.cert_dir), args.vehicle), fraction=args.renew_at_fraction)


async def _enrol(args: argparse.Namespace) -> int:
    files = VehicleFiles(Path(args.cert_dir), args.vehicle)
    if files.cert_file.exists() and not args.force:
        print(f"haulmesh-edge: {files.cert_file} exists: the truck is enrolled (it renews itself); --force enrols "
              "again with a new token", file=sys.stderr)
        return 2
    token = args.token or os.environ.get("HAULMESH_ENROLMENT_TOKEN", "")
    if not token:
        print("haulmesh-edge: give the operator's one-time token (--token or HAULMESH_ENROLMENT_TOKEN)",
              file=sys.stderr)
        return 2
    verify = args.gateway_ca_file if args.gateway_ca_file else True
    try:
        certificate = await enrol(args.gateway_url, files, token, verify=verify)
    except EnrolmentError as exc:
        print(f"haulmesh-edge: enrolment refused: {exc}", file=sys.stderr)
        return 1
    print(json.dumps({"vehicle": args.vehicle, "certificate": str(files.cert_file), "key": str(files.key_file),
                      "serial": format(certificate.serial_number, "x"),
                      "expire_time": certificate.not_valid_after_utc.isoformat(timespec="seconds")}), flush=True)
    return 0


async def _status_lines(simulation: Simulation, spool: Spool, client: StreamClient | None) -> None:
    """A live status line every two seconds (stderr), for the demo's terminal."""
    while True:
        await asyncio.sleep(2)
        stats, truck = await asyncio.to_thread(spool.stats), simulation.truck
        point = truck.route.at(truck.distance_m)
        link = "up" if client and client.connected.is_set() else "down"
        print(f"[edge] t+{simulation.report.simulated_seconds // 60:>4} min  {truck.odometer_miles:7.1f} mi  "
              f"{truck.state:<18} ({point.lat:.4f}, {point.lon:.4f})  spool {stats.depth:>6}  "
              f"acked {client.stats.acked_through if client else 0:>7}  link {link}", file=sys.stderr, flush=True)


async def _simulate(args: argparse.Namespace) -> int:
    scenario = parse_scenario(args.scenario)
    spool = _spool(args)
    progress = spool.path.with_name(spool.path.stem + ".sim.json")
    if not os.environ.get(_CHILD_ENV):
        progress.unlink(missing_ok=True)  # a new run starts afresh (where the last ended); only a restart resumes
    recorder = Recorder(spool, _signer(Path(args.cert_dir), args.vehicle), args.vehicle)
    simulation = Simulation(recorder, None, speedup=args.speedup, scenario=scenario, mission_id=args.mission,
                            wait_for_mission=args.wait_for_mission, progress_path=progress,
                            max_sim_seconds=int(args.max_sim_minutes * 60) if args.max_sim_minutes else None,
                            frame_every=args.frame_every_sim_seconds, route_from_assignment=args.route_from_assignment,
                            pickup_dwell_seconds=round(args.pickup_dwell_minutes * 60),
                            dwell_speedup=args.dwell_speedup, stop_hold_seconds=args.stop_hold_seconds,
                            position_path=spool.path.with_name(spool.path.stem + ".where.json"),
                            scenario_at=round(args.scenario_at * 60) if args.scenario_at is not None else None)
    client = None if args.offline else _client(args, spool, recorder.boot_id, simulation.on_command)
    simulation.link = client
    _metrics(args, spool, client)

    async def body() -> int:
        status = asyncio.create_task(_status_lines(simulation, spool, client)) if not args.quiet else None
        try:
            report = await simulation.run()
            drained = await _drain(client, spool, args.drain_seconds) if client else False
        finally:
            if status:
                status.cancel()
        stats = spool.stats()
        print(json.dumps({
            "vehicle": args.vehicle, "scenario": scenario.name, "frames": report.frames, "by_kind": report.by_kind,
            "simulated_minutes": round(report.simulated_seconds / 60, 1), "arrived": report.arrived,
            "rerouted": report.rerouted, "commands": report.commands, "drained": drained,
            "last_sequence": stats.last_sequence, "spool_depth": stats.depth, "dropped": stats.dropped,
            "rejected": stats.rejected, "acked_through": client.stats.acked_through if client else 0,
            "sessions": client.stats.sessions if client else 0}), flush=True)
        return 0 if (drained or not client) else 2

    try:
        return await _with_client(client, body(), None if args.offline else _renewer(args))
    finally:
        spool.close()


async def _run(args: argparse.Namespace) -> int:
    spool = _spool(args)
    client = _client(args, spool, str(uuid.uuid4()))
    _metrics(args, spool, client)

    async def body() -> int:
        if args.exit_when_drained:
            await client.connected.wait()
            while not await _drain(client, spool, 3600):
                pass
            print(json.dumps({"acked_through": client.stats.acked_through, "sessions": client.stats.sessions,
                              "rejected": dict(client.stats.rejected)}), flush=True)
            return 0
        await asyncio.Event().wait()  # until interrupted
        return 0

    try:
        return await _with_client(client, body(), _renewer(args))
    finally:
        spool.close()


def _status(args: argparse.Namespace) -> int:
    with _spool(args) as spool:
        stats = spool.stats()
    print(json.dumps({"spool": str(spool.path), "depth": stats.depth, "last_sequence": stats.last_sequence,
                      "oldest_sequence": stats.oldest_sequence, "dropped": stats.dropped, "rejected": stats.rejected}))
    return 0


def _photo(text: str) -> Photo:
    uri, _, digest = text.rpartition(",")
    if not uri or not digest:
        raise argparse.ArgumentTypeError("expected URI,SHA256")
    return Photo(uri=uri, sha256=digest)


def _when(text: str) -> datetime:
    try:
        when = datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError("expected an ISO 8601 time with offset, e.g. 2026-02-01T18:20:00Z") from None
    if when.tzinfo is None:
        raise argparse.ArgumentTypeError("give the time zone (e.g. Z or +00:00)")
    return when


async def _pod(args: argparse.Namespace) -> int:
    mission_id = args.mission.removeprefix("missions/")
    verification = "RESULT_UNSPECIFIED"
    with _spool(args) as spool:
        try:
            proof = build_proof(spool, _signer(Path(args.cert_dir), args.vehicle), vehicle_id=args.vehicle,
                                mission_id=mission_id, tms_load_id=args.tms_load_id, deliver_time=args.deliver_time,
                                location=(args.lat, args.lon) if args.lat is not None and args.lon is not None
                                else None, seal_number=args.seal_number, received_by=args.received_by,
                                photos=args.photo)
            manifest = mission_pb2.DeliveryManifest.FromString(proof.manifest)
            summary = {"mission": f"missions/{mission_id}", "vehicle": args.vehicle,
                       "tms_load_id": manifest.tms_load_id, "first_sequence": manifest.telemetry_first_sequence,
                       "last_sequence": manifest.telemetry_last_sequence,
                       "telemetry_log_sha256": manifest.telemetry_log_sha256, "submitted": False}
            if args.submit:
                await wait_until_acked(spool, manifest.telemetry_last_sequence,
                                       timeout_seconds=args.ack_timeout_seconds)
                async with grpc.aio.secure_channel(args.mission_target,
                                                   _credentials(Path(args.cert_dir), args.vehicle)) as channel:
                    mission = await submit_proof(channel, mission_id, proof)
                result = mission.proof_of_delivery.telemetry_verification
                verification = mission_pb2.TelemetryVerification.Result.Name(result.result)
                summary.update(submitted=True, state=mission_pb2.Mission.State.Name(mission.state),
                               telemetry_verification=verification.removeprefix("RESULT_"),
                               verification_reason=result.reason, frames_missing=result.frames_missing)
                if result.result == mission_pb2.TelemetryVerification.RESULT_VERIFIED:
                    spool.forget_mission(mission_id)  # proven: the log has served (a disputed one is kept)
            else:
                summary["proof_hex"] = proof.SerializeToString().hex()
        except PodError as exc:
            print(f"haulmesh-edge pod: {exc}", file=sys.stderr)
            return 2
        except grpc.aio.AioRpcError as exc:
            print(f"haulmesh-edge pod: the mission service refused the proof: {exc.code().name}: {exc.details()}",
                  file=sys.stderr)
            return 1
    print(json.dumps(summary), flush=True)
    return 0


def _supervise(argv: list[str]) -> int:
    """Runs the simulation in a child process and restarts it when it dies by SIGKILL (the edge-crash scenario)."""
    env = {**os.environ, _CHILD_ENV: "1"}
    Path(_progress_of(argv)).unlink(missing_ok=True)
    for restart in range(_MAX_RESTARTS + 1):
        result = subprocess.run([sys.executable, "-m", "edge_client", *argv], env=env, check=False)
        if result.returncode != -9:
            return result.returncode
        print(f"[edge] the edge process crashed (SIGKILL); restart {restart + 1}", file=sys.stderr, flush=True)
    return 1


def _progress_of(argv: list[str]) -> str:
    args = _parser().parse_args(argv)
    spool = Path(args.spool or Path(".haulmesh") / "edge" / args.vehicle / "spool.db")
    return str(spool.with_name(spool.stem + ".sim.json"))


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return value


def _non_negative(text: str) -> float:
    value = float(text)
    if not value >= 0:
        raise argparse.ArgumentTypeError("must be >= 0")
    return value


def _positive(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError("must be > 0")
    return value


def _fraction(text: str) -> float:
    value = float(text)
    if not 0 < value < 1:
        raise argparse.ArgumentTypeError("must be between 0 and 1, e.g. 0.667")
    return value


def _vehicle_id(text: str) -> str:
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]{0,62}", text):
        raise argparse.ArgumentTypeError("1-63 letters, digits, '.', '_' or '-', starting with a letter or digit")
    return text


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="haulmesh-edge", description="Haulmesh truck-side client")
    parser.add_argument("--cert-dir", default=os.environ.get("HAULMESH_CERT_DIR", ".haulmesh/certs"))
    parser.add_argument("--target", default=os.environ.get("HAULMESH_TELEMETRY_ADDR", "127.0.0.1:50053"),
                        help="telemetry service host:port")
    sub = parser.add_subparsers(dest="command", required=True)
    check = sub.add_parser("check", help="connect as the truck and report the telemetry service's health")
    check.add_argument("--vehicle", required=True, help="vehicle id, e.g. AU-TRK-1001")
    check.set_defaults(func=lambda a: asyncio.run(_check(a)))

    def spool_options(p: argparse.ArgumentParser) -> None:
        p.add_argument("--vehicle", required=True, help="vehicle id, e.g. AU-TRK-1001")
        p.add_argument("--spool", default=os.environ.get("HAULMESH_EDGE_SPOOL"),
                       help="spool file (default .haulmesh/edge/VEHICLE/spool.db)")
        p.add_argument("--max-spool-frames", type=int, default=500_000,
                       help="spool bound; when full the oldest routine frames are dropped (default 500000)")

    def client_options(p: argparse.ArgumentParser) -> None:
        p.add_argument("--backoff-base", type=float, default=0.5, help="reconnect backoff base, seconds")
        p.add_argument("--backoff-cap", type=float, default=BACKOFF_CAP_SECONDS, help="reconnect backoff cap, seconds")
        # A dead link (no FIN, no RST) is found within time + timeout, 15 s by default (docs/decisions.md, "Keepalive,
        # both ends"); shorter for a carrier NAT that forgets a flow sooner, as long as the time stays at or above
        # the server's HAULMESH_KEEPALIVE_MIN_PING_INTERVAL_SECONDS (5 s by default), or the server answers GOAWAY.
        p.add_argument("--keepalive-time-seconds", type=_positive, default=Keepalive.time_seconds,
                       help="ping after this long without a read, seconds (default 10; not below the server's "
                            "minimum ping interval)")
        p.add_argument("--keepalive-timeout-seconds", type=_positive, default=Keepalive.timeout_seconds,
                       help="drop the link when a ping is not answered within this, seconds (default 5)")
        p.add_argument("--metrics-port", type=int, default=0,
                       help="serve Prometheus metrics (spool, link, CPU) on 127.0.0.1:PORT/metrics; 0 = off")
        p.add_argument("--device-url", default=os.environ.get("HAULMESH_GATEWAY_DEVICE_URL", "https://127.0.0.1:8443"),
                       help="the gateway's device listener, where the certificate is renewed (mTLS)")
        p.add_argument("--renew-at-fraction", type=_fraction, default=RENEW_AT_FRACTION,
                       help="renew the certificate when this fraction of its lifetime has passed (default 2/3)")
        p.add_argument("--no-renew", action="store_true", help="never renew the certificate (it is managed outside)")

    simulate = sub.add_parser("simulate", help="drive a simulated truck Houston → Atlanta and stream its telemetry")
    spool_options(simulate)
    client_options(simulate)
    simulate.add_argument("--speedup", type=float, default=60.0, help="simulated seconds per real second")
    simulate.add_argument("--scenario", help="sensor-fault | connectivity-loss:MINUTES | edge-crash | road-closure | "
                          "takeover | pre-trip-failure")
    simulate.add_argument("--scenario-at", type=float, metavar="MINUTES",
                          help="simulated minutes after departure when the scenario starts (default: its own time)")
    simulate.add_argument("--frame-every-sim-seconds", type=_positive_int, default=1, metavar="N",
                          help="one position frame every N simulated seconds (default 1: 1 Hz); thins the "
                               "frames at a high --speedup")
    simulate.add_argument("--route-from-assignment", action="store_true",
                          help="start at the assigned mission's first stop and end at its last (lane waypoints "
                               "in between) instead of the lane's own end points")
    simulate.add_argument("--pickup-dwell-minutes", type=_non_negative, default=0.0, metavar="MINUTES",
                          help="once assigned, sit at the pickup (loading) this many simulated minutes before the "
                               "pre-trip check and departure: a geofence dwell, billed as detention beyond free time")
    simulate.add_argument("--dwell-speedup", type=_positive, metavar="X",
                          help="simulated seconds per real second during the pickup dwell (default: --speedup); "
                               "device time is real, so a slower dwell measures more minutes")
    simulate.add_argument("--stop-hold-seconds", type=_positive_int, default=STOP_HOLD_SECONDS, metavar="N",
                          help="after a stop command, wait this many simulated seconds for a resume before the run "
                               f"ends (default {STOP_HOLD_SECONDS})")
    simulate.add_argument("--mission", default="", help="mission id to report (else taken from an assignment)")
    simulate.add_argument("--wait-for-mission", action="store_true",
                          help="stay idle until the cloud assigns a mission over the stream")
    simulate.add_argument("--max-sim-minutes", type=float, help="stop after this many simulated minutes")
    simulate.add_argument("--drain-seconds", type=float, default=60.0,
                          help="after the drive, wait this long for every frame to be acked")
    simulate.add_argument("--offline", action="store_true", help="spool only, no stream client")
    simulate.add_argument("--quiet", action="store_true", help="no live status lines")
    simulate.set_defaults(func=lambda a: asyncio.run(_simulate(a)))

    run = sub.add_parser("run", help="the stream client alone: send the spool, reconnect, resume")
    spool_options(run)
    client_options(run)
    run.add_argument("--exit-when-drained", action="store_true", help="exit once the spool is empty")
    run.set_defaults(func=lambda a: asyncio.run(_run(a)))

    enrol_cmd = sub.add_parser("enrol", help="enrol the truck: its own key, a CSR and the operator's one-time token")
    enrol_cmd.add_argument("--vehicle", required=True, type=_vehicle_id, help="vehicle id, e.g. AU-TRK-1001")
    enrol_cmd.add_argument("--token", help="the one-time token from 'haulmesh pki enrol-token vehicle ID' "
                                           "(or HAULMESH_ENROLMENT_TOKEN)")
    enrol_cmd.add_argument("--gateway-url", default=os.environ.get("HAULMESH_GATEWAY_URL", "http://127.0.0.1:8080"),
                           help="the gateway's TMS listener (https:// in production)")
    enrol_cmd.add_argument("--gateway-ca-file", help="CA bundle that signs the gateway's https certificate "
                                                     "(default: the system's)")
    enrol_cmd.add_argument("--force", action="store_true", help="enrol again although a certificate exists")
    enrol_cmd.set_defaults(func=lambda a: asyncio.run(_enrol(a)))

    status = sub.add_parser("status", help="what the spool holds")
    spool_options(status)
    status.set_defaults(func=_status)

    pod = sub.add_parser("pod", help="build, sign and (--submit) submit the proof of delivery from the spool's log")
    spool_options(pod)
    pod.add_argument("--mission", required=True, help="the mission, missions/ID or ID")
    pod.add_argument("--tms-load-id", default="", help="the load number (default: from the accepted assignment)")
    pod.add_argument("--deliver-time", type=_when, help="hand-over time, ISO 8601 (default: the last reading's)")
    pod.add_argument("--lat", type=float, help="hand-over latitude (default: the last recorded position)")
    pod.add_argument("--lon", type=float, help="hand-over longitude")
    pod.add_argument("--seal-number", default="", help="trailer seal number as read at delivery")
    pod.add_argument("--received-by", default="", help="the consignee's representative (at most 200 characters)")
    pod.add_argument("--photo", type=_photo, action="append", default=[], metavar="URI,SHA256",
                     help="a delivery photo by reference (https:// or s3:// URI, SHA-256 of its bytes); repeatable")
    pod.add_argument("--submit", action="store_true", help="submit to the mission service once the log is acked")
    pod.add_argument("--mission-target", default=os.environ.get("HAULMESH_MISSION_ADDR", "127.0.0.1:50052"),
                     help="mission service host:port")
    pod.add_argument("--ack-timeout-seconds", type=float, default=60.0,
                     help="how long --submit waits for the server to ack the log's last frame")
    pod.set_defaults(func=lambda a: asyncio.run(_pod(a)))
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``haulmesh-edge``."""
    argv = list(sys.argv[1:] if argv is None else argv)
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    if args.command == "simulate" and args.scenario == "edge-crash" and not os.environ.get(_CHILD_ENV):
        return _supervise(argv)
    try:
        return int(args.func(args))
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
