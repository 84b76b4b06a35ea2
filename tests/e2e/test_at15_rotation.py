"""AT-15 (issue 12): service and truck certificates rotated every few seconds, for minutes, under load.

A mesh of its own (its own PKI, so rotating its files touches no other test's mesh), with the gateway signing
vehicle certificates of ``1.5 * period`` (the edge client renews at 2/3 of that: about once a period). Under load:

* trucks, each enrolled for real (``haulmesh pki enrol-token`` → ``edge_client`` enrol over the gateway), streaming a
  signed frame every 0.2 s with the real ``StreamClient`` and renewing with the real ``Renewer`` over the device
  listener (mTLS with the current certificate);
* the TMS posting tenders over REST (gateway → tender → billing and mission: every hop an mTLS channel);
* every ``period`` seconds every service's certificate is replaced on disk by a new one valid ``3 * period``.

What passes:

* 0 TLS-attributable failures: every REST call 200; no truck stream failed (``failures == 0``) and the trucks that
  never reconnect kept their ONE stream through every renewal (``sessions == 1``); every renewal succeeded; every
  frame acked, none rejected;
* 0 restarts: every service process is the one that started;
* the new serial within one period: each period, the "prober" truck reconnects and the telemetry service logs the
  serial its stream presented, which must be the certificate the truck holds then (renewed < one period before);
  each service's listener presents the certificate written < one period before (a real handshake reads it).

That a service's OUTGOING calls present the rotated certificate is proven where the server's view is at hand:
tests/runtime/test_rotation.py (a Service calling itself, serials compared). The short version runs in
``make test`` (< 30 s); the full one (``make chaos``) for minutes.
"""

from __future__ import annotations

import asyncio
import random
import re
import socket
import ssl
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
from cryptography import x509

from edge_client.certs import Renewer, VehicleFiles, enrol
from edge_client.client import StreamClient
from edge_client.recorder import Recorder
from edge_client.signer import KeyFileSigner
from edge_client.spool import Spool
from haulmesh.telemetry.v1 import frame_pb2
from services.runtime import MESH_SERVICES, Mesh, connect_sync, pki, poll_until, resolve_redis_url
from services.runtime.cli import main as cli
from services.runtime.enrolment import issue_token
from services.runtime.tokens import mint
from tests.conftest import Pki, running_mesh

from .test_chaos_mesh import SCOPES, _tender


@dataclass
class TruckRig:
    """One enrolled truck: its files, spool, recorder, stream client and renewer."""

    files: VehicleFiles
    spool: Spool
    recorder: Recorder
    client: StreamClient
    renewer: Renewer
    recorded: int = 0
    tasks: list[asyncio.Task[None]] = field(default_factory=list)


@dataclass
class Figures:
    rest_calls: int = 0
    rest_failures: list[str] = field(default_factory=list)
    service_rotations: int = 0
    server_serial_checks: int = 0
    server_serial_misses: list[str] = field(default_factory=list)
    probes: int = 0
    probe_misses: list[str] = field(default_factory=list)


def _own_pki(directory: Path) -> Pki:
    assert cli(["--cert-dir", str(directory), "pki", "dev-bootstrap"]) == 0
    return Pki(directory, pki.load_ca(directory))


def _rotate_services(p: Pki, valid_seconds: float) -> dict[str, int]:
    """Every service's certificate replaced (key first, as cert-manager and `haulmesh pki` do); the new serials."""
    serials = {}
    for name in MESH_SERVICES:
        issued = pki.issue(p.ca, pki.identity_for("service", name), valid_days=valid_seconds / 86400,
                           dns_names=(name, f"haulmesh-{name}", "localhost"), ip_addresses=("127.0.0.1", "::1"))
        pki.write_pem_files(p.directory, name, issued, p.ca.certificate_pem)
        serials[name] = issued.certificate.serial_number
    return serials


def _server_serial(address: str, p: Pki) -> int:
    """The serial of the certificate a listener presents in a new handshake (as the CLI operator)."""
    host, port = address.rsplit(":", 1)
    context = ssl.create_default_context(cafile=str(p.directory / "ca.pem"))
    context.load_cert_chain(p.directory / "operator-cli.pem", p.directory / "operator-cli-key.pem")
    context.check_hostname = False
    context.set_alpn_protocols(["h2"])
    with socket.create_connection((host, int(port)), timeout=5) as raw, \
            context.wrap_socket(raw, server_hostname=host) as tls:
        return x509.load_der_x509_certificate(tls.getpeercert(binary_form=True)).serial_number


async def _enrolled_truck(mesh: Mesh, p: Pki, root: Path, index: int) -> TruckRig:
    vehicle = f"AU-TRK-R{index}{uuid.uuid4().hex[:6].upper()}"
    directory = root / vehicle
    directory.mkdir(parents=True)
    (directory / "ca.pem").write_bytes(p.ca.certificate_pem)
    files = VehicleFiles(directory, vehicle)
    store = connect_sync(resolve_redis_url(None, mesh.state_dir))
    try:
        token, _ = issue_token(store, vehicle, ttl_seconds=300)
    finally:
        store.close()
    await enrol(f"http://127.0.0.1:{mesh.http_port}", files, token)
    spool = Spool(directory / "spool.db", max_frames=100_000)
    recorder = Recorder(spool, KeyFileSigner.from_files(files.key_file, files.cert_file), vehicle)
    client = StreamClient(mesh.address("telemetry"), files.channel_credentials, spool, vehicle_id=vehicle,
                          boot_id=recorder.boot_id, backoff_base=0.05, backoff_cap=0.5)
    renewer = Renewer(f"https://127.0.0.1:{mesh.device_port}", files)
    return TruckRig(files, spool, recorder, client, renewer)


async def _drive(truck: TruckRig, stop: asyncio.Event) -> None:
    while not stop.is_set():
        payload = frame_pb2.FramePayload(kind=frame_pb2.FramePayload.KIND_POSITION, vehicle_state="enroute")
        payload.position.lat, payload.position.lon, payload.position.speed_kph = 30.2, -97.7, 88.5
        await asyncio.to_thread(truck.recorder.record, payload)
        truck.recorded += 1
        truck.client.notify()
        await asyncio.sleep(0.2)


async def _rest_load(mesh: Mesh, per_second: float, stop: asyncio.Event, figures: Figures) -> None:
    headers = {"Authorization": f"Bearer {mint(carrier='rotation', scopes=SCOPES, state_dir=mesh.state_dir)}"}
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{mesh.http_port}", headers=headers,
                                 timeout=15) as http:
        while not stop.is_set():
            started = time.monotonic()
            response = await http.post("/api/v1/tenders", json=_tender(f"AT15-{uuid.uuid4().hex[:10]}"),
                                       headers={"Idempotency-Key": uuid.uuid4().hex})
            figures.rest_calls += 1
            if response.status_code != 200:
                figures.rest_failures.append(f"{response.status_code} {response.text[:200]}")
            await asyncio.sleep(max(0.0, 1 / per_second - (time.monotonic() - started)))


def _presented_serials(log: Path, vehicle: str) -> list[str]:
    pattern = re.compile(rf"vehicle {re.escape(vehicle)} session \S+: client certificate serial (\w+)")
    return pattern.findall(log.read_text(errors="replace"))


async def rotation_under_load(tmp_path: Path, *, seed: int, period_seconds: float, duration_seconds: float,
                              trucks: int, rest_per_second: float) -> tuple[Figures, list[TruckRig], dict]:
    rng = random.Random(seed)
    p = _own_pki(tmp_path / "certs")
    vehicle_ttl = max(5, round(1.5 * period_seconds))
    env = {"HAULMESH_GATEWAY_VEHICLE_CERT_TTL_SECONDS": str(vehicle_ttl), "HAULMESH_RATE_LIMIT": "off"}
    figures = Figures()
    async with running_mesh(p, tmp_path / "state", env=env) as mesh:
        pids = {name: child.process.pid for name, child in mesh.children.items()}
        rigs = [await _enrolled_truck(mesh, p, tmp_path / "trucks", i) for i in range(trucks)]
        prober, steady = rigs[0], rigs[1:]
        stop = asyncio.Event()
        tasks = [asyncio.create_task(_rest_load(mesh, rest_per_second, stop, figures))]
        for rig in rigs:
            rig.tasks = [asyncio.create_task(rig.client.run()), asyncio.create_task(rig.renewer.run()),
                         asyncio.create_task(_drive(rig, stop))]
        telemetry_log = mesh.children["telemetry"].log_path
        try:
            await poll_until(lambda: all(r.client.stats.sessions >= 1 for r in rigs), timeout_seconds=20,
                             what="every truck's first session")
            deadline = time.monotonic() + duration_seconds
            while time.monotonic() < deadline:
                # Rotate the services' certificates (each valid 3 periods: a process that kept the old one would
                # fail its next handshakes within the run).
                serials = await asyncio.to_thread(_rotate_services, p, 3 * period_seconds)
                figures.service_rotations += 1
                rotated_at = time.monotonic()
                # The prober reconnects at a random moment of the period; its new stream must present the
                # certificate it holds (renewed less than a period ago).
                await asyncio.sleep(rng.uniform(0.3, 0.6) * period_seconds)
                holding = format(prober.files.certificate().serial_number, "x")
                sessions = prober.client.stats.sessions
                prober.client.cut_link(0.0)
                await poll_until(lambda s=sessions: prober.client.stats.sessions > s, timeout_seconds=period_seconds,
                                 what="the prober's new session")
                figures.probes += 1
                presented = await poll_until(lambda: _presented_serials(telemetry_log, prober.files.vehicle_id)[
                    prober.client.stats.sessions - 1:], timeout_seconds=period_seconds, what="the session's log")
                # The renewer may have swapped the file again while the prober reconnected: either is current.
                held_after = format(prober.files.certificate().serial_number, "x")
                if presented[0] not in (holding, held_after):
                    figures.probe_misses.append(f"presented {presented[0]}, held {holding} then {held_after}")
                # Each listener presents the certificate written this period.
                for name in MESH_SERVICES:
                    seen = await asyncio.to_thread(_server_serial, mesh.address(name), p)
                    figures.server_serial_checks += 1
                    if seen != serials[name]:
                        figures.server_serial_misses.append(f"{name}: {seen:x} != {serials[name]:x}")
                await asyncio.sleep(max(0.0, period_seconds - (time.monotonic() - rotated_at)))
            stop.set()
            # The run is over: renewals stop, and the services get certificates that outlive the drain below.
            for rig in rigs:
                rig.tasks[1].cancel()
            await asyncio.to_thread(_rotate_services, p, 86400)
            # Every frame recorded is acked (the stream carried on through every rotation).
            await poll_until(lambda: all(r.client.stats.acked_through >= r.recorded for r in rigs),
                             timeout_seconds=30, what="every frame acked")
        finally:
            stop.set()
            for rig in rigs:
                for task in rig.tasks:
                    task.cancel()
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, *(t for r in rigs for t in r.tasks), return_exceptions=True)
            for rig in rigs:
                rig.spool.close()
        alive = {name: child.process.pid for name, child in mesh.children.items()
                 if child.process.returncode is None}
    steady_sessions = [r.client.stats.sessions for r in steady]
    extra = {"restarted": sorted(n for n in pids if alive.get(n) != pids[n]), "steady_sessions": steady_sessions}
    return figures, rigs, extra


def _check(figures: Figures, rigs: list[TruckRig], extra: dict, *, min_renewals: int) -> None:
    assert extra["restarted"] == [], f"restarted: {extra['restarted']}"
    assert figures.rest_failures == [], figures.rest_failures[:5]
    assert figures.probe_misses == [], figures.probe_misses
    assert figures.server_serial_misses == [], figures.server_serial_misses
    for rig in rigs:
        stats = rig.client.stats
        if rig is rigs[0]:
            # The prober's link is cut on purpose each period; a write racing that cut may end the session with
            # "RPC already finished" (counted by the client), never with a TLS or connection error.
            assert not re.search(r"SSL|handshake|certificate|UNAVAILABLE|UNAUTHENTICATED", stats.last_error), \
                stats.last_error
            continue
        assert stats.failures == 0, f"{rig.files.vehicle_id}: {stats.last_error}"
        assert not stats.rejected, stats.rejected
        assert rig.renewer.failures == 0, rig.renewer.last_error
        assert rig.renewer.renewals >= min_renewals, (rig.files.vehicle_id, rig.renewer.renewals)
    # The trucks that never reconnected kept their one stream through every renewal.
    assert extra["steady_sessions"] == [1] * (len(rigs) - 1)


def _figure(figures: Figures, rigs: list[TruckRig], extra: dict, period: float, duration: float) -> dict:
    return {"period_seconds": period, "duration_seconds": duration, "trucks": len(rigs),
            "service_rotations": figures.service_rotations, "truck_renewals": sum(r.renewer.renewals for r in rigs),
            "rest_calls": figures.rest_calls, "rest_failures": len(figures.rest_failures),
            "stream_failures": sum(r.client.stats.failures for r in rigs[1:]),
            "prober_cut_races": rigs[0].client.stats.failures, "prober_last_error": rigs[0].client.stats.last_error,
            "frames_acked": sum(r.client.stats.acked_through for r in rigs),
            "probes": figures.probes, "probe_misses": len(figures.probe_misses),
            "server_serial_checks": figures.server_serial_checks,
            "server_serial_misses": len(figures.server_serial_misses),
            "restarts": len(extra["restarted"]), "steady_sessions": extra["steady_sessions"]}


async def test_at15_rotation_under_load_short(tmp_path: Path, chaos_seed: int) -> None:
    # 2 rotations of 4 s: each truck renews at least twice (certificates of 6 s, renewed at 2/3, from enrolment on).
    figures, rigs, extra = await rotation_under_load(tmp_path, seed=chaos_seed, period_seconds=4,
                                                     duration_seconds=8, trucks=2, rest_per_second=4)
    _check(figures, rigs, extra, min_renewals=2)


@pytest.mark.chaos(seeds=1)  # a run is 3 min, 45 rotations probed at seeded moments: once keeps make chaos in budget
@pytest.mark.chaos_id("AT-15")
async def test_at15_rotation_under_load(tmp_path: Path, chaos_seed: int, chaos_record) -> None:
    # The seed's 5 minutes every hour, scaled: every 4 s for 3 minutes, 5 trucks, REST at 10/s.
    period, duration = 4.0, 180.0
    figures, rigs, extra = await rotation_under_load(tmp_path, seed=chaos_seed, period_seconds=period,
                                                     duration_seconds=duration, trucks=5, rest_per_second=10)
    chaos_record("AT-15", **_figure(figures, rigs, extra, period, duration))
    _check(figures, rigs, extra, min_renewals=int(duration / period) - 5)
