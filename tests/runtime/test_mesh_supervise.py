"""The local mesh (`haulmesh run`) restarts a crashed service with backoff instead of stopping everything, and gives
up (stopping the mesh) only on one that a restart cannot mend."""

from __future__ import annotations

import asyncio
import os
import signal
from pathlib import Path

from tests.conftest import Pki, running_mesh, wait_for


async def test_a_service_killed_is_restarted_and_the_others_never_stop(mesh_pki: Pki, tmp_path: Path) -> None:
    async with running_mesh(mesh_pki, tmp_path) as mesh:
        stop = asyncio.Event()
        supervising = asyncio.ensure_future(mesh.supervise(stop))
        others = {name: child.process.pid for name, child in mesh.children.items() if name != "billing"}
        billing = mesh.children["billing"]
        killed = billing.process.pid
        os.kill(killed, signal.SIGKILL)
        await wait_for(lambda: billing.restarts == 1, timeout_seconds=30)
        assert billing.process.pid != killed
        await mesh.wait_serving(timeout_seconds=60)  # every service SERVING, billing's new process included
        assert {name: mesh.children[name].process.pid for name in others} == others
        assert all(mesh.children[name].process.returncode is None for name in others)
        stop.set()
        assert await asyncio.wait_for(supervising, 10) is None  # stopped on request, nothing given up on
        assert billing.restarts == 1


async def test_a_configuration_error_is_not_restarted_but_stops_the_mesh(mesh_pki: Pki, tmp_path: Path) -> None:
    async with running_mesh(mesh_pki, tmp_path) as mesh:
        supervising = asyncio.ensure_future(mesh.supervise(asyncio.Event()))
        mesh.extra_env["HAULMESH_RATE_LIMIT"] = "as fast as you like"  # the gateway's next start: exit 2
        gateway = mesh.children["gateway"]
        os.kill(gateway.process.pid, signal.SIGKILL)
        given_up = await asyncio.wait_for(supervising, 60)  # restarted once (a crash), then exit 2: given up
        assert given_up is gateway and gateway.restarts == 1 and gateway.process.returncode == 2


async def test_a_failed_spawn_is_retried_and_a_service_that_cannot_start_is_given_up(mesh_pki: Pki,
                                                                                    tmp_path: Path) -> None:
    """A restart whose spawn raises (EMFILE, ENOMEM) is retried, the keeper lives on; a service that dies at every
    start with exit 1 (here: Python cannot even initialize) is given up after max_short_runs, not restarted forever."""
    async with running_mesh(mesh_pki, tmp_path) as mesh:
        mesh.restart_backoff_start_seconds = 0.05
        real_spawn, failed = mesh._spawn, []

        async def spawn(child):
            if not failed:
                failed.append(child.name)
                raise OSError(24, "Too many open files")
            await real_spawn(child)

        mesh._spawn = spawn
        supervising = asyncio.ensure_future(mesh.supervise(asyncio.Event()))
        billing = mesh.children["billing"]
        killed = billing.process.pid
        os.kill(killed, signal.SIGKILL)
        await wait_for(lambda: billing.restarts == 1, timeout_seconds=30)
        assert failed == ["billing"] and billing.process.pid != killed and not supervising.done()

        mesh.extra_env["PYTHONHOME"] = str(tmp_path / "no-such-python")  # every next start: exit 1 at once
        gateway = mesh.children["gateway"]
        os.kill(gateway.process.pid, signal.SIGKILL)
        given_up = await asyncio.wait_for(supervising, 60)
        assert given_up is gateway and gateway.process.returncode == 1
        # The kill (a short run too when the mesh is young), then every run died at start: given up, not looping.
        assert gateway.restarts in (mesh.max_short_runs - 1, mesh.max_short_runs)
        assert "in a row" in gateway.gave_up_reason and "cannot start" in gateway.gave_up_reason
