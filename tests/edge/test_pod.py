"""The truck's proof of delivery (edge_client/pod.py): built from its own mission log, signed with its key; the
mission log kept past acks; the pickup dwell of the simulator."""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec

from edge_client.pod import Photo, PodError, build_proof, telemetry_log_sha256, wait_until_acked
from edge_client.recorder import Recorder
from edge_client.simulator import Simulation, parse_scenario
from edge_client.spool import Spool
from haulmesh.mission.v1 import mission_pb2
from haulmesh.telemetry.v1 import frame_pb2, stream_pb2
from services.runtime import pki

from .conftest import VEHICLE

KIND = frame_pb2.FramePayload
ROOT = Path(__file__).resolve().parents[2]


def _record(recorder: Recorder, mission_id: str, lat: float = 30.0) -> int:
    return recorder.record(KIND(kind=KIND.KIND_POSITION, mission_id=mission_id,
                                position=frame_pb2.Position(lat=lat, lon=-95.0)))


def test_the_proof_covers_the_missions_own_frames_and_verifies_with_the_trucks_key(tmp_path: Path, signer,
                                                                                    vehicle_files) -> None:
    with Spool(tmp_path / "s.db") as spool:
        recorder = Recorder(spool, signer, VEHICLE)
        _record(recorder, "")  # before the assignment: not the mission's
        sequences = [_record(recorder, "M1", 30.0 + i / 10) for i in range(5)]
        spool.mark_acked(sequences[2])  # acked frames stay in the mission log
        spool.remember_assignment(stream_pb2.MissionAssignment(mission_id="M1", load={"tms_load_id": "LOAD-9"}))
        log = spool.mission_log("M1")
        assert [s for s, _ in log] == sequences
        photo = Photo("https://photos.example/seal.jpg", "ab" * 32, "image/jpeg")
        proof = build_proof(spool, signer, vehicle_id=VEHICLE, mission_id="M1", received_by="Dock 7",
                            photos=[photo])
    manifest = mission_pb2.DeliveryManifest.FromString(proof.manifest)
    assert (manifest.mission_id, manifest.vehicle_id, manifest.tms_load_id) == ("M1", VEHICLE, "LOAD-9")
    assert (manifest.telemetry_first_sequence, manifest.telemetry_last_sequence) == (sequences[0], sequences[-1])
    assert manifest.telemetry_log_sha256 == telemetry_log_sha256(raw for _, raw in log)
    assert (manifest.location.lat, manifest.location.lon) == (pytest.approx(30.4), -95.0)  # the last fix
    assert list(manifest.photo_sha256) == ["ab" * 32] and proof.photos[0].uri == photo.uri
    certificate = x509.load_pem_x509_certificate(vehicle_files[1].read_bytes())
    certificate.public_key().verify(proof.manifest_signature, proof.manifest, ec.ECDSA(hashes.SHA256()))
    assert proof.key_id == signer.key_id


def test_no_log_no_load_or_bad_photos_are_clear_errors(tmp_path: Path, signer) -> None:
    with Spool(tmp_path / "s.db") as spool:
        with pytest.raises(PodError, match="no frame recorded for mission M2"):
            build_proof(spool, signer, vehicle_id=VEHICLE, mission_id="M2", tms_load_id="L")
        _record(Recorder(spool, signer, VEHICLE), "M2")
        with pytest.raises(PodError, match="no load number"):
            build_proof(spool, signer, vehicle_id=VEHICLE, mission_id="M2")
        with pytest.raises(PodError, match="https:// or s3://"):
            build_proof(spool, signer, vehicle_id=VEHICLE, mission_id="M2", tms_load_id="L",
                        photos=[Photo("ftp://x", "ab" * 32)])
        when = datetime(2026, 2, 1, 18, 0, tzinfo=UTC)
        proof = build_proof(spool, signer, vehicle_id=VEHICLE, mission_id="M2", tms_load_id="L", deliver_time=when,
                            location=(33.7, -84.4))
        manifest = mission_pb2.DeliveryManifest.FromString(proof.manifest)
        assert manifest.deliver_time.ToDatetime(tzinfo=UTC) == when and manifest.location.lat == 33.7


def test_the_mission_log_is_bounded_and_forgotten_after_proof(tmp_path: Path, signer) -> None:
    with Spool(tmp_path / "s.db", max_log_frames=3) as spool:
        recorder = Recorder(spool, signer, VEHICLE)
        sequences = [_record(recorder, "M3") for _ in range(5)]
        assert [s for s, _ in spool.mission_log("M3")] == sequences[2:]
        assert spool.forget_mission("M3") == 3 and spool.mission_log("M3") == []


async def test_waiting_for_acks_polls_and_times_out(tmp_path: Path, signer) -> None:
    with Spool(tmp_path / "s.db") as spool:
        recorder = Recorder(spool, signer, VEHICLE)
        last = [_record(recorder, "M4") for _ in range(3)][-1]
        with pytest.raises(PodError, match=f"#{last} not acked"):
            await wait_until_acked(spool, last, timeout_seconds=0.2, poll_seconds=0.05)
        spool.mark_acked(last)
        await wait_until_acked(spool, last, timeout_seconds=0.2)


async def test_the_simulator_dwells_at_the_pickup_before_the_pre_trip(tmp_path: Path, signer) -> None:
    with Spool(tmp_path / "s.db") as spool:
        simulation = Simulation(Recorder(spool, signer, VEHICLE), None, speedup=1e9, mission_id="M5",
                                scenario=parse_scenario(None), max_sim_seconds=60, frame_every=15,
                                pickup_dwell_seconds=600, dwell_speedup=1e9)
        await simulation.run()
        frames = [KIND.FromString(raw) for _, raw in spool.mission_log("M5")]
    loading = [f for f in frames if f.vehicle_state == "loading"]
    assert len(loading) == 600 // 15 + 1 and all(f.position.speed_kph == 0 for f in loading)
    assert len({(f.position.lat, f.position.lon) for f in loading}) == 1  # parked
    assert frames[len(loading)].kind == KIND.KIND_HEALTH  # then the pre-trip, then the drive
    with pytest.raises(ValueError):
        Simulation(Recorder(spool, signer, VEHICLE), None, speedup=1, scenario=parse_scenario(None),
                   pickup_dwell_seconds=-1)


def test_the_pod_cli_prints_the_signed_proof(tmp_path: Path) -> None:
    ca = pki.create_ca()
    issued = pki.issue(ca, pki.identity_for("vehicle", VEHICLE), valid_days=1)
    pki.write_pem_files(tmp_path / "certs", f"vehicle-{VEHICLE}", issued, ca.certificate_pem)
    from edge_client.signer import KeyFileSigner
    signer = KeyFileSigner(issued.private_key_pem, issued.certificate_pem)
    with Spool(tmp_path / "spool.db") as spool:
        _record(Recorder(spool, signer, VEHICLE), "M6")
    argv = [sys.executable, "-m", "edge_client", "--cert-dir", str(tmp_path / "certs"), "pod", "--vehicle", VEHICLE,
            "--spool", str(tmp_path / "spool.db"), "--mission", "missions/M6", "--tms-load-id", "LOAD-6",
            "--photo", "s3://bucket/a.jpg," + "cd" * 32]
    done = subprocess.run(argv, cwd=tmp_path, env={"PYTHONPATH": str(ROOT)}, capture_output=True, text=True,
                          timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout)
    assert (summary["mission"], summary["tms_load_id"], summary["submitted"]) == ("missions/M6", "LOAD-6", False)
    proof = mission_pb2.ProofOfDelivery.FromString(bytes.fromhex(summary["proof_hex"]))
    assert proof.photos[0].uri == "s3://bucket/a.jpg"
    missing = subprocess.run([*argv[:-4], "--mission", "missions/NOPE"], cwd=tmp_path,
                             env={"PYTHONPATH": str(ROOT)}, capture_output=True, text=True, timeout=60, check=False)
    assert missing.returncode == 2 and "no frame recorded for mission NOPE" in missing.stderr
