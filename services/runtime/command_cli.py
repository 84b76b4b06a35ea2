"""``haulmesh command``: an operator's commands to a vehicle from a terminal (TelemetryService.CreateVehicleCommand).

Sends with the CLI's operator certificate (``operator-cli`` in the cert dir); what it may do is that certificate's
role (docs/security.md, "Operator roles"):

    haulmesh command send AU-TRK-1001 stop --reason "lidar fault reported" --wait 120
    haulmesh command send AU-TRK-1001 reroute --waypoint 30.9,-93.0 --waypoint 33.749,-84.388 --reason "I-10 closed"
    haulmesh command send AU-TRK-1001 resume --reason "fault cleared"
    haulmesh command show vehicles/AU-TRK-1001/commands/01J...
    haulmesh command list AU-TRK-1001

``--wait SECONDS`` follows the command until the truck gives a final answer (or it expires), printing each change;
the exit status is then 0 only if the truck carried it out. A refused request prints each invalid field.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc

from haulmesh.telemetry.v1 import command_pb2, stream_pb2, telemetry_service_pb2, telemetry_service_pb2_grpc
from haulmesh.type.v1 import location_pb2

from ._config import TlsConfig
from ._status import describe_rpc_error
from ._tls import CertificateFiles, client_credentials

__all__ = ["add_parser"]

ACTIONS = ("stop", "hold", "reroute", "resume", "cancel")
_POLL_SECONDS = 0.5


def _waypoint(text: str) -> tuple[float, float]:
    try:
        lat, lon = (float(part) for part in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected LAT,LON (e.g. 30.9,-93.0), got {text!r}") from None
    return lat, lon


def add_parser(sub: Any, *, cert_dir: Callable[[argparse.Namespace], Path], address: Callable[[str], str]) -> None:
    """The ``command`` sub-command of ``haulmesh`` (``address(service)`` gives a service's host:port)."""
    c = sub.add_parser("command", help="an operator's commands to a vehicle: send (stop, hold, reroute, resume, "
                       "cancel), show, list", description=__doc__.split("\n\n", 2)[1] + "\n\n" +
                       __doc__.split("\n\n", 2)[2], formatter_class=argparse.RawDescriptionHelpFormatter)
    csub = c.add_subparsers(dest="command_action", required=True)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--timeout", type=float, default=30.0, help="seconds per call (default 30)")
    send = csub.add_parser("send", parents=[common],
                           help="send a command to a vehicle; --wait follows the truck's answers")
    send.add_argument("vehicle", help="vehicle id, e.g. AU-TRK-1001")
    send.add_argument("action", choices=ACTIONS, help="stop: minimal-risk stop; hold: stay where it is; reroute: "
                      "through --waypoint; resume: go on after a stop; cancel: drop the assignment")
    send.add_argument("--reason", required=True, help="why (1-500 characters; the truck logs it, the audit keeps it)")
    send.add_argument("--waypoint", type=_waypoint, action="append", default=[], help="LAT,LON (reroute; repeat)")
    send.add_argument("--exception", default="", help="the mission exception it answers, if any (stop, reroute)")
    send.add_argument("--expire-minutes", type=float, help="the truck must not act on it after this (default 15)")
    send.add_argument("--request-id", default="", help="idempotency key: a retry with it sends nothing twice")
    send.add_argument("--wait", type=float, default=0.0, metavar="SECONDS",
                      help="follow the command until the truck's final answer, at most this long")
    show = csub.add_parser("show", parents=[common], help="a command and the truck's answers")
    show.add_argument("name", help="vehicles/{vehicle}/commands/{command}")
    listing = csub.add_parser("list", parents=[common], help="a vehicle's commands, newest first")
    listing.add_argument("vehicle")
    listing.add_argument("--limit", type=int, default=20)
    c.set_defaults(func=lambda a: asyncio.run(_run(a, cert_dir(a), address("telemetry"))))


async def _run(args: argparse.Namespace, certs: Path, address: str) -> int:
    credentials = client_credentials(CertificateFiles(TlsConfig(
        certs / "ca.pem", certs / "operator-cli.pem", certs / "operator-cli-key.pem")))
    async with grpc.aio.secure_channel(address, credentials) as channel:
        stub = telemetry_service_pb2_grpc.TelemetryServiceStub(channel)
        try:
            if args.command_action == "send":
                return await _send(stub, args)
            if args.command_action == "show":
                print(_line(await _get(stub, args.name, args.timeout)))
                return 0
            return await _list(stub, args)
        except grpc.aio.AioRpcError as exc:
            print(f"haulmesh command {args.command_action}: {describe_rpc_error(exc)}", file=sys.stderr)
            return 2 if exc.code() in (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.PERMISSION_DENIED,
                                       grpc.StatusCode.FAILED_PRECONDITION, grpc.StatusCode.NOT_FOUND) else 1


def _request(args: argparse.Namespace) -> telemetry_service_pb2.CreateVehicleCommandRequest:
    command = command_pb2.VehicleCommand(reason=args.reason)
    if args.action in ("stop", "hold"):
        mode = stream_pb2.StopVehicle.MODE_HOLD if args.action == "hold" else \
            stream_pb2.StopVehicle.MODE_MINIMAL_RISK_STOP
        command.stop.CopyFrom(stream_pb2.StopVehicle(mode=mode, exception_id=args.exception))
    elif args.action == "reroute":
        command.reroute.CopyFrom(stream_pb2.Reroute(
            waypoints=[location_pb2.Location(lat=lat, lon=lon) for lat, lon in args.waypoint],
            exception_id=args.exception))
    elif args.action == "resume":
        command.resume.CopyFrom(stream_pb2.ResumeVehicle())
    else:
        command.cancel_assignment.CopyFrom(stream_pb2.CancelAssignment())
    if args.expire_minutes is not None:
        command.expire_time.FromNanoseconds(time.time_ns() + int(args.expire_minutes * 60e9))
    return telemetry_service_pb2.CreateVehicleCommandRequest(parent=f"vehicles/{args.vehicle}",
                                                             vehicle_command=command, request_id=args.request_id)


async def _send(stub: Any, args: argparse.Namespace) -> int:
    command = await stub.CreateVehicleCommand(_request(args), timeout=args.timeout)
    print(_line(command))
    if args.wait <= 0:
        return 0
    state = command_pb2.VehicleCommand.State
    final = {state.STATE_COMPLETED, state.STATE_REJECTED, state.STATE_FAILED, state.STATE_EXPIRED}
    deadline, seen = time.monotonic() + args.wait, command.state
    while command.state not in final and time.monotonic() < deadline:
        await asyncio.sleep(_POLL_SECONDS)
        command = await _get(stub, command.name, args.timeout)
        if command.state != seen:
            seen = command.state
            print(_line(command))
    if command.state not in final:
        print(f"haulmesh command send: no final answer within {args.wait:g} s (still "
              f"{state.Name(command.state).removeprefix('STATE_')}); `haulmesh command show {command.name}`",
              file=sys.stderr)
        return 1
    return 0 if command.state == state.STATE_COMPLETED else 1


async def _get(stub: Any, name: str, call_seconds: float) -> Any:
    return await stub.GetVehicleCommand(telemetry_service_pb2.GetVehicleCommandRequest(name=name),
                                        timeout=call_seconds)


async def _list(stub: Any, args: argparse.Namespace) -> int:
    reply = await stub.ListVehicleCommands(telemetry_service_pb2.ListVehicleCommandsRequest(
        parent=f"vehicles/{args.vehicle}", page_size=max(1, args.limit)), timeout=args.timeout)
    for command in reply.vehicle_commands:
        print(_line(command))
    if not reply.vehicle_commands:
        print(f"no commands for vehicles/{args.vehicle} that this operator may see")
    return 0


def _line(command: Any) -> str:
    state = command_pb2.VehicleCommand.State.Name(command.state).removeprefix("STATE_")
    last = command.acks[-1] if command.acks else None
    answer = f"; truck: {last.detail}" if last is not None and last.detail else ""
    return (f"{command.name}  {command.WhichOneof('action')}  {state}  "
            f"{command.create_time.ToJsonString()}  {command.mission or 'no mission'}  \"{command.reason}\"{answer}")
