"""The edge client against the real telemetry service (the session mesh: real processes, mTLS, Valkey).

Each test uses its own vehicle (a certificate from the mesh CA) so the frames other tests store for
AU-TRK-1001 in the shared store do not move its high-water mark.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import shutil
import subprocess
import sys
import urllib.request
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from edge_client.spool import Spool
from services.runtime import Mesh, free_port, pki
from tests.conftest import wait_for
from tests.faultproxy import FaultProxy
from tests.telemetry.helpers import stored_sequences as _stored
from tests.trucks import Truck

ROOT = Path(__file__).resolve().parents[2]


def _truck(mesh_pki, directory: Path) -> str:
    """Issues a fresh vehicle's certificate from the mesh CA into ``directory`` (the CLI's cert dir)."""
    truck = Truck.mint(mesh_pki.ca, f"AU-TRK-{random.randrange(5000, 9999)}")
    pki.write_pem_files(directory, f"vehicle-{truck.vehicle_id}", truck.issued, mesh_pki.ca.certificate_pem)
    return truck.vehicle_id


def _edge_metrics(port: int) -> dict[str, float]:
    """One scrape of the edge client's endpoint, checked by promtool where it is installed."""
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    promtool = shutil.which("promtool")
    if promtool:
        checked = subprocess.run([promtool, "check", "metrics"], input=text, capture_output=True, text=True,
                                 timeout=30)
        assert checked.returncode == 0, checked.stdout + checked.stderr
    samples = {s.name: s.value for f in text_string_to_metric_families(text) for s in f.samples}
    assert not any("vehicle" in labels for f in text_string_to_metric_families(text) for _, labels, *_ in f.samples)
    return samples


def _last_sequence(path: Path) -> int:
    if not path.exists():
        return 0
    with Spool(path) as spool:
        return spool.stats().last_sequence


async def test_simulated_truck_through_an_outage_to_the_telemetry_service(mesh: Mesh, mesh_pki, tmp_path: Path) -> None:
    """Pre-trip and a drive at 1 Hz, the link cut by a proxy for 10 simulated minutes: all stored once, in order."""
    certs = tmp_path / "certs"
    vehicle = _truck(mesh_pki, certs)
    port = int(mesh.address("telemetry").rsplit(":", 1)[1])
    proxy = await FaultProxy(f"127.0.0.1:{port}").start()
    spool_path = tmp_path / "spool.db"
    metrics_port = free_port()
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "edge_client", "--cert-dir", str(certs), "--target", proxy.address,
        "simulate", "--vehicle", vehicle, "--spool", str(spool_path), "--quiet", "--speedup", "600",
        "--max-sim-minutes", "20", "--drain-seconds", "90", "--backoff-cap", "0.5",
        "--metrics-port", str(metrics_port),
        cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(ROOT)},
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    try:
        await wait_for(lambda: _last_sequence(spool_path) >= 60, timeout_seconds=60)
        online = await asyncio.to_thread(_edge_metrics, metrics_port)
        proxy.reset(refuse_new=True)
        cut_at = _last_sequence(spool_path)
        await wait_for(lambda: _last_sequence(spool_path) >= cut_at + 600, timeout_seconds=120)
        offline = await asyncio.to_thread(_edge_metrics, metrics_port)
        proxy.pass_through()
        out, err = await asyncio.wait_for(process.communicate(), timeout=180)
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
        await proxy.close()
    report = json.loads(out.decode().strip().splitlines()[-1])
    stored = await _stored(mesh, mesh_pki, vehicle)
    print(f"vehicle={vehicle} frames={report['frames']} offline_from={cut_at} stored={len(stored)} "
          f"acked_through={report['acked_through']} sessions={report['sessions']} rejected={report['rejected']}")
    assert process.returncode == 0, err.decode()[-2000:]
    assert report["spool_depth"] == 0 and report["rejected"] == 0 and report["sessions"] >= 2
    # The truck's own Prometheus endpoint saw the link and the spool as they were (no vehicle label).
    assert online["edge_link_up"] == 1 and online["edge_stream_sessions_total"] >= 1
    assert 0 <= online["edge_cpu_utilization_percent"] <= 100 and online["edge_acked_sequence"] > 0
    assert offline["edge_link_up"] == 0 and offline["edge_spool_depth_frames"] >= 600
    print(f"edge metrics: online {online}, during the cut spool depth {offline['edge_spool_depth_frames']:.0f}")
    assert report["acked_through"] == report["last_sequence"] == report["frames"]
    assert stored == list(range(1, report["frames"] + 1))
