"""The environment the chart gives each container starts the real service.

The rendered container's env is applied as is, with only what a cluster would provide substituted: the
mounted TLS Secret (cert-manager's key names tls.crt / tls.key / ca.crt, here from the dev PKI), the state
emptyDir, REDIS_URL from its Secret (a real Valkey the tests start) and, so that parallel test runs cannot
collide, free ports instead of the fixed container ports. The service must come up SERVING over mTLS, serve
metrics, and stop cleanly on SIGTERM, as the kubelet would stop it.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
import urllib.request
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from services.runtime import check_health, free_port

from .conftest import SERVICES, ChartRenderer

REPO = Path(__file__).resolve().parents[3]
PORT_VARIABLES = ("HAULMESH_PORT", "HAULMESH_METRICS_PORT", "HAULMESH_HEALTH_PORT", "HAULMESH_HTTP_PORT",
                  "HAULMESH_GATEWAY_DEVICE_PORT")


def _pod_environment(container: dict[str, Any], pod: Path, certs: Path, name: str, store_url: str) -> dict[str, str]:
    tls = pod / "etc-haulmesh-tls"
    tls.mkdir(parents=True)
    # The Secret's keys, as cert-manager and the README's `kubectl create secret` write them.
    (tls / "tls.crt").write_bytes((certs / f"{name}.pem").read_bytes())
    (tls / "tls.key").write_bytes((certs / f"{name}-key.pem").read_bytes())
    (tls / "ca.crt").write_bytes((certs / "ca.pem").read_bytes())
    # The audit anchor's Secret (the chart makes it; dev-bootstrap made this one).
    audit = pod / "etc-haulmesh-audit"
    audit.mkdir(parents=True)
    (audit / "audit-signing-key.pem").write_bytes((certs / "audit-signing-key.pem").read_bytes())
    env: dict[str, str] = {}
    for entry in container["env"]:
        if "valueFrom" in entry:
            assert entry["name"] in ("REDIS_URL", "POD_NAME"), entry
            if entry["name"] == "REDIS_URL":
                env["REDIS_URL"] = store_url
            continue
        value = entry["value"].replace("/etc/haulmesh/tls", str(tls)).replace("/var/lib/haulmesh", str(pod / "state"))
        value = value.replace("/etc/haulmesh/audit", str(audit))
        env[entry["name"]] = value
    for variable in PORT_VARIABLES:
        if variable in env:
            env[variable] = str(free_port())
    # No load balancer to wait for here (test_shutdown_fits_the_grace_period checks the chart's figures).
    env["HAULMESH_SHUTDOWN_DRAIN_SECONDS"] = "0"
    return env


@contextlib.asynccontextmanager
async def _pod(chart: ChartRenderer, mesh_pki: Any, store_url: str, tmp_path: Path,
               name: str) -> AsyncIterator[tuple[dict[str, Any], dict[str, str]]]:
    """The service ``name`` running with the chart's container env; stopped with SIGTERM, which must exit 0."""
    container = chart.render().container(name)
    env = _pod_environment(container, tmp_path, mesh_pki.directory, name, store_url)
    (tmp_path / "state").mkdir()
    log_path = tmp_path / "service.log"
    with log_path.open("wb") as log:
        process = await asyncio.create_subprocess_exec(
            sys.executable, *container["command"][1:], cwd=REPO, stdout=log, stderr=log,
            env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "PYTHONPATH": str(REPO), **env},
        )
        try:
            address = f"127.0.0.1:{env['HAULMESH_PORT']}"
            status = ""
            for _ in range(100):
                status = await check_health(address, mesh_pki.credentials("service", "gateway"), timeout_seconds=1)
                if status == "SERVING" or process.returncode is not None:
                    break
                await asyncio.sleep(0.1)
            assert status == "SERVING", (status, log_path.read_text()[-2000:])
            yield container, env
        finally:
            if process.returncode is None:
                process.send_signal(signal.SIGTERM)
            code = await asyncio.wait_for(process.wait(), timeout=30)
    assert code == 0, log_path.read_text()[-2000:]


@pytest.mark.parametrize("name", SERVICES)
async def test_the_chart_environment_starts_the_service(chart: ChartRenderer, mesh_pki: Any, store_url: str,
                                                        tmp_path: Path, name: str) -> None:
    async with _pod(chart, mesh_pki, store_url, tmp_path, name) as (container, env):
        assert env["HAULMESH_LISTEN_HOST"] == "0.0.0.0"
        address = f"127.0.0.1:{env['HAULMESH_PORT']}"
        readiness = container["readinessProbe"]["grpc"]["service"]
        assert await check_health(address, mesh_pki.credentials("service", "gateway"), service=readiness) == "SERVING"
        metrics_url = f"http://127.0.0.1:{env['HAULMESH_METRICS_PORT']}/metrics"
        body = await asyncio.to_thread(lambda: urllib.request.urlopen(metrics_url, timeout=5).read())
        assert b"process_cpu_seconds_total" in body or b"python_info" in body


async def test_the_kubelet_probe_port_answers_in_plain_text(chart: ChartRenderer, mesh_pki: Any, store_url: str,
                                                             tmp_path: Path) -> None:
    async with _pod(chart, mesh_pki, store_url, tmp_path, "billing") as (container, env):
        # What the kubelet does: grpc.health.v1 Check over plain text, no client certificate.
        async with grpc.aio.insecure_channel(f"127.0.0.1:{env['HAULMESH_HEALTH_PORT']}") as channel:
            stub = health_pb2_grpc.HealthStub(channel)
            for probe in ("livenessProbe", "readinessProbe"):
                request = health_pb2.HealthCheckRequest(service=container[probe]["grpc"].get("service", ""))
                reply = await stub.Check(request, timeout=2)
                assert reply.status == health_pb2.HealthCheckResponse.SERVING


def test_shutdown_fits_the_grace_period(chart: ChartRenderer) -> None:
    # SIGTERM: health NOT_SERVING, the drain, then in-flight calls get the grace period; the kubelet's SIGKILL
    # must come after all of it.
    rendered = chart.render()
    for name in SERVICES:
        env = rendered.env(name)
        budget = float(env["HAULMESH_SHUTDOWN_DRAIN_SECONDS"]["value"]) + float(
            env["HAULMESH_GRACE_PERIOD_SECONDS"]["value"])
        spec = rendered.deployment(name)["spec"]["template"]["spec"]
        assert budget + 5 <= spec["terminationGracePeriodSeconds"], name
