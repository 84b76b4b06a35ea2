"""Several telemetry worker processes on one port (HAULMESH_WORKERS, SO_REUSEPORT) under a supervising parent."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import sys
import urllib.request
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from services.runtime import ConfigError, ServiceConfig, free_port
from tests.conftest import Pki, wait_for

from ..helpers import TelemetryProcess, Truck, close_streams, free_metrics_port, open_streams


def _listening(port: int) -> bool:
    with socket.socket() as probe:
        return probe.connect_ex(("127.0.0.1", port)) == 0


def _streams_served(port: int) -> float:
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    for family in text_string_to_metric_families(text):
        if family.name == "haulmesh_telemetry_open_streams":
            return sum(sample.value for sample in family.samples)
    raise AssertionError("no haulmesh_telemetry_open_streams on the endpoint")


async def test_two_workers_share_the_port_and_a_killed_one_comes_back(mesh_pki: Pki, store_url: str,
                                                                      tmp_path: Path) -> None:
    metrics_port = free_metrics_port(2)
    process = TelemetryProcess(mesh_pki.directory, tmp_path, store_url, HAULMESH_WORKERS="2",
                               HAULMESH_METRICS_PORT=str(metrics_port))
    await process.start(mesh_pki.credentials("operator", "probe"))
    try:
        # Both workers listening on the gRPC port (else the kernel hands every connection to the one that is).
        workers = await wait_for(lambda: (lambda c: c if len(c) == 2 else None)(set(process.listening_workers())),
                                 timeout_seconds=30)
        for port in (metrics_port, metrics_port + 1):  # both workers up (each serves its metrics before gRPC)
            await wait_for(lambda port=port: _listening(port), timeout_seconds=30)
        trucks = [Truck.mint(mesh_pki.ca) for _ in range(24)]
        opened = await open_streams(process, trucks)
        # The kernel spread the connections over both workers (all 24 on one: 2 ** -23).
        per_worker = [await asyncio.to_thread(_streams_served, metrics_port + i) for i in (0, 1)]
        assert sum(per_worker) == 24 and min(per_worker) > 0, per_worker
        await close_streams(opened)

        victim = sorted(workers)[0]
        os.kill(victim, signal.SIGKILL)
        replaced = await wait_for(lambda: (lambda c: c if len(c) == 2 and victim not in c else None)(
            set(process.worker_pids())), timeout_seconds=30)
        # The port kept serving through the loss, and serves on both workers again.
        opened = await open_streams(process, [Truck.mint(mesh_pki.ca) for _ in range(4)])
        await close_streams(opened)
        assert process.process is not None and process.process.returncode is None
    finally:
        await process.stop()
    assert process.process is not None and process.process.returncode == 0
    print(f"2 workers on one port: streams per worker {per_worker}; worker pid {victim} killed, "
          f"replaced by {sorted(replaced - workers)}; parent exited 0 on SIGTERM")


async def test_a_service_that_is_not_scalable_refuses_workers(mesh_pki: Pki, store_url: str, tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("HAULMESH_")}
    env.update(HAULMESH_CERT_DIR=str(mesh_pki.directory), HAULMESH_STATE_DIR=str(tmp_path), REDIS_URL=store_url,
               HAULMESH_PORT=str(free_port()), HAULMESH_WORKERS="2")
    child = await asyncio.create_subprocess_exec(sys.executable, "-m", "services.billing", env=env,
                                                 stderr=asyncio.subprocess.PIPE)
    _, err = await asyncio.wait_for(child.communicate(), 30)
    assert child.returncode == 2 and b"HAULMESH_WORKERS" in err


@pytest.mark.parametrize("bad", ["0", "two", "65"])
def test_the_worker_count_is_checked(bad: str) -> None:
    with pytest.raises(ConfigError) as caught:
        ServiceConfig.from_env("telemetry", {"HAULMESH_WORKERS": bad})
    assert caught.value.field == "HAULMESH_WORKERS"
