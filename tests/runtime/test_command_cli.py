"""``haulmesh command`` (services/runtime/command_cli.py) against a real mesh: send, follow the truck's answers, show,
list, and a refused request's field errors."""

from __future__ import annotations

import asyncio
import os
import sys
import uuid

import grpc

from haulmesh.telemetry.v1 import stream_pb2
from services.runtime import Mesh

from ..conftest import Pki, wait_for
from ..telemetry.helpers import Session, Truck


async def _haulmesh(mesh: Mesh, mesh_pki: Pki, *args: str) -> tuple[int, str, str]:
    env = {**os.environ, "HAULMESH_TELEMETRY_ADDR": mesh.address("telemetry"),
           "HAULMESH_CERT_DIR": str(mesh_pki.directory)}
    done = await asyncio.create_subprocess_exec(sys.executable, "-m", "services.runtime.cli", "command", *args,
                                                env=env, stdout=asyncio.subprocess.PIPE,
                                                stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(done.communicate(), 90)
    return done.returncode, out.decode(), err.decode()


async def test_send_waits_for_the_trucks_answer_then_show_and_list_find_it(mesh: Mesh, mesh_pki: Pki) -> None:
    truck = Truck.mint(mesh_pki.ca, f"CLI-{uuid.uuid4().hex[:8].upper()}")  # on no mission: the CLI is an admin
    async with grpc.aio.secure_channel(mesh.address("telemetry"), truck.credentials()) as channel:
        session = Session(channel)
        session.send(truck.hello())
        try:
            sending = asyncio.create_task(_haulmesh(mesh, mesh_pki, "send", truck.vehicle_id, "hold", "--reason",
                                                    "yard closed for the night", "--wait", "60"))
            command = (await wait_for(lambda: session.of("command"), timeout_seconds=30))[0]
            assert command.stop.mode == stream_pb2.StopVehicle.MODE_HOLD
            assert command.stop.reason == "yard closed for the night"
            ack = stream_pb2.CommandAck(command_id=command.command_id, outcome=stream_pb2.CommandAck.OUTCOME_COMPLETED,
                                        detail="holding at gate 4")
            ack.device_time.GetCurrentTime()
            session.send(stream_pb2.StreamTelemetryRequest(command_ack=ack))
            code, out, err = await sending
        finally:
            await session.aclose()
    name = f"vehicles/{truck.vehicle_id}/commands/{command.command_id}"
    lines = out.splitlines()
    assert code == 0, err
    assert lines[0].startswith(f"{name}  stop  QUEUED  ") and "no mission" in lines[0]
    assert lines[-1].startswith(f"{name}  stop  COMPLETED  ") and lines[-1].endswith("truck: holding at gate 4")

    code, out, _ = await _haulmesh(mesh, mesh_pki, "show", name)
    assert code == 0 and out.startswith(f"{name}  stop  COMPLETED  ")
    code, out, _ = await _haulmesh(mesh, mesh_pki, "list", truck.vehicle_id)
    assert code == 0 and [line.split()[0] for line in out.splitlines()] == [name]


async def test_a_refused_command_names_the_field_and_exits_2(mesh: Mesh, mesh_pki: Pki) -> None:
    code, out, err = await _haulmesh(mesh, mesh_pki, "send", "CLI-NOBODY", "reroute", "--reason", "closure")
    assert code == 2 and not out
    assert "INVALID_ARGUMENT" in err and "vehicle_command.reroute.waypoints: at least one waypoint is required" in err
    code, _, err = await _haulmesh(mesh, mesh_pki, "send", "CLI-NOBODY", "reroute", "--reason", "x",
                                   "--waypoint", "north")
    assert code == 2 and "expected LAT,LON" in err  # argparse's own refusal, before any call
