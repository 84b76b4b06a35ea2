"""An operator's command reaches the truck on its stream, and the truck's acknowledgements show on the command
(CreateVehicleCommand / GetVehicleCommand / ListVehicleCommands over real mTLS, real store, real mesh)."""

from __future__ import annotations

import uuid

import grpc
import pytest

from haulmesh.telemetry.v1 import command_pb2, stream_pb2, telemetry_service_pb2, telemetry_service_pb2_grpc
from haulmesh.type.v1 import location_pb2
from services.runtime import Mesh, actor_metadata, carrier_metadata, error_info, new_id

from ...conftest import Pki, wait_for
from ..helpers import Session, Truck, dispatch_to

VehicleCommand = command_pb2.VehicleCommand
Outcome = stream_pb2.CommandAck.Outcome


def _stub(channel: grpc.aio.Channel) -> telemetry_service_pb2_grpc.TelemetryServiceStub:
    return telemetry_service_pb2_grpc.TelemetryServiceStub(channel)


def _stop(vehicle_id: str, reason: str = "lidar fault reported by the driver-out monitor",
          request_id: str = "") -> telemetry_service_pb2.CreateVehicleCommandRequest:
    return telemetry_service_pb2.CreateVehicleCommandRequest(
        parent=f"vehicles/{vehicle_id}", request_id=request_id, vehicle_command=VehicleCommand(
            stop=stream_pb2.StopVehicle(mode=stream_pb2.StopVehicle.MODE_MINIMAL_RISK_STOP), reason=reason))


def _ack(command_id: str, outcome: int, detail: str = "") -> stream_pb2.StreamTelemetryRequest:
    ack = stream_pb2.CommandAck(command_id=command_id, outcome=outcome, detail=detail)
    ack.device_time.GetCurrentTime()
    return stream_pb2.StreamTelemetryRequest(command_ack=ack)


async def _create_once_dispatched(stub, request, timeout_seconds: float = 15.0) -> VehicleCommand:
    """CreateVehicleCommand, retried while the vehicle's mission is not known to telemetry yet (the dispatch reaches
    it through the mission service's events: a fleet operator may command only a vehicle on its carrier's mission)."""
    async def attempt() -> VehicleCommand | None:
        try:
            return await stub.CreateVehicleCommand(request, timeout=10)
        except grpc.aio.AioRpcError as exc:
            info = error_info(exc)
            if exc.code() == grpc.StatusCode.PERMISSION_DENIED and info is not None \
                    and info.reason == "TENANT_NOT_ALLOWED":
                return None
            raise

    return await wait_for(attempt, timeout_seconds=timeout_seconds, interval_seconds=0.2)


async def test_a_fleet_operators_stop_reaches_the_truck_and_its_acks_are_tracked(mesh: Mesh, mesh_pki: Pki) -> None:
    carrier = f"oc{uuid.uuid4().hex[:6]}"
    truck = Truck.mint(mesh_pki.ca, f"OC-{uuid.uuid4().hex[:8].upper()}")
    mission = await dispatch_to(mesh, mesh_pki, truck, carrier)
    operator = mesh_pki.credentials("operator", "desk-1", role="fleet-operator", carriers=(carrier,))
    async with grpc.aio.secure_channel(mesh.address("telemetry"), operator) as channel:
        stub = _stub(channel)
        request_id = new_id()
        created = await _create_once_dispatched(stub, _stop(truck.vehicle_id, request_id=request_id))
        command_id = created.name.rpartition("/")[2]
        assert created.name == f"vehicles/{truck.vehicle_id}/commands/{command_id}"
        assert created.state == VehicleCommand.STATE_QUEUED and not created.acks
        assert created.mission == mission.name
        assert created.requester.endswith("/operator/desk-1")
        assert created.expire_time.ToSeconds() - created.create_time.ToSeconds() == 15 * 60
        # The same request_id again: the same command, not a second one.
        again = await stub.CreateVehicleCommand(_stop(truck.vehicle_id, request_id=request_id), timeout=10)
        assert again.name == created.name

        async with grpc.aio.secure_channel(mesh.address("telemetry"), truck.credentials()) as truck_channel:
            session = Session(truck_channel)
            session.send(truck.hello())
            try:
                commands = await wait_for(lambda: [c for c in session.of("command") if c.command_id == command_id],
                                          timeout_seconds=15)
                stop = commands[0].stop
                assert stop.mode == stream_pb2.StopVehicle.MODE_MINIMAL_RISK_STOP
                assert stop.mission_id == mission.name.removeprefix("missions/")
                assert stop.reason == "lidar fault reported by the driver-out monitor"
                assert commands[0].expire_time == created.expire_time
                session.send(_ack(command_id, Outcome.OUTCOME_ACCEPTED))

                async def in_state(state: int) -> VehicleCommand | None:
                    current = await stub.GetVehicleCommand(
                        telemetry_service_pb2.GetVehicleCommandRequest(name=created.name), timeout=10)
                    return current if current.state == state else None

                accepted = await wait_for(lambda: in_state(VehicleCommand.STATE_ACCEPTED), timeout_seconds=15)
                assert [a.outcome for a in accepted.acks] == [Outcome.OUTCOME_ACCEPTED]
                session.send(_ack(command_id, Outcome.OUTCOME_COMPLETED, "stopped on the shoulder"))
                done = await wait_for(lambda: in_state(VehicleCommand.STATE_COMPLETED), timeout_seconds=15)
            finally:
                await session.aclose()
        assert [(a.outcome, a.detail) for a in done.acks] == [(Outcome.OUTCOME_ACCEPTED, ""),
                                                             (Outcome.OUTCOME_COMPLETED, "stopped on the shoulder")]
        assert done.update_time.ToNanoseconds() >= done.create_time.ToNanoseconds()

        # A second command; the list is newest first and pages.
        resume = await stub.CreateVehicleCommand(telemetry_service_pb2.CreateVehicleCommandRequest(
            parent=f"vehicles/{truck.vehicle_id}", vehicle_command=VehicleCommand(
                resume=stream_pb2.ResumeVehicle(), reason="fault cleared by the field team")), timeout=10)
        first = await stub.ListVehicleCommands(telemetry_service_pb2.ListVehicleCommandsRequest(
            parent=f"vehicles/{truck.vehicle_id}", page_size=1), timeout=10)
        assert [c.name for c in first.vehicle_commands] == [resume.name] and first.next_page_token
        second = await stub.ListVehicleCommands(telemetry_service_pb2.ListVehicleCommandsRequest(
            parent=f"vehicles/{truck.vehicle_id}", page_size=1, page_token=first.next_page_token), timeout=10)
        assert [c.name for c in second.vehicle_commands] == [created.name] and not second.next_page_token
        assert second.vehicle_commands[0].state == VehicleCommand.STATE_COMPLETED


async def _refusal(call) -> tuple[grpc.StatusCode, str]:
    """The status code and ErrorInfo reason ``call`` fails with."""
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await call
    info = error_info(raised.value)
    return raised.value.code(), info.reason if info else ""


async def test_who_may_command_which_vehicle(mesh: Mesh, mesh_pki: Pki) -> None:
    carrier = f"oc{uuid.uuid4().hex[:6]}"
    truck = Truck.mint(mesh_pki.ca, f"OC-{uuid.uuid4().hex[:8].upper()}")
    await dispatch_to(mesh, mesh_pki, truck, carrier)
    idle = Truck.mint(mesh_pki.ca, f"OC-{uuid.uuid4().hex[:8].upper()}")  # never on a mission
    ours = mesh_pki.credentials("operator", "desk-2", role="fleet-operator", carriers=(carrier,))
    theirs = mesh_pki.credentials("operator", "desk-3", role="fleet-operator", carriers=("someone-else",))
    async with grpc.aio.secure_channel(mesh.address("telemetry"), ours) as ours_ch, \
            grpc.aio.secure_channel(mesh.address("telemetry"), theirs) as theirs_ch, \
            grpc.aio.secure_channel(mesh.address("telemetry"), mesh_pki.credentials("operator", "admin")) as admin_ch, \
            grpc.aio.secure_channel(mesh.address("telemetry"),
                                    mesh_pki.credentials("service", "gateway")) as gateway_ch, \
            grpc.aio.secure_channel(mesh.address("telemetry"),
                                    mesh_pki.credentials("service", "billing")) as billing_ch:
        created = await _create_once_dispatched(_stub(ours_ch), _stop(truck.vehicle_id))
        # Another carrier's fleet operator can neither command that truck nor read the command.
        assert await _refusal(_stub(theirs_ch).CreateVehicleCommand(_stop(truck.vehicle_id), timeout=10)) == \
            (grpc.StatusCode.PERMISSION_DENIED, "TENANT_NOT_ALLOWED")
        assert await _refusal(_stub(theirs_ch).GetVehicleCommand(
            telemetry_service_pb2.GetVehicleCommandRequest(name=created.name), timeout=10)) == \
            (grpc.StatusCode.PERMISSION_DENIED, "TENANT_NOT_ALLOWED")
        listed = await _stub(theirs_ch).ListVehicleCommands(
            telemetry_service_pb2.ListVehicleCommandsRequest(parent=f"vehicles/{truck.vehicle_id}"), timeout=10)
        assert not listed.vehicle_commands
        # No service but the gateway, acting for one carrier (a person at the console): a command is a person's.
        assert await _refusal(_stub(billing_ch).CreateVehicleCommand(_stop(truck.vehicle_id), timeout=10)) == \
            (grpc.StatusCode.PERMISSION_DENIED, "METHOD_NOT_ALLOWED")
        assert await _refusal(_stub(gateway_ch).CreateVehicleCommand(_stop(truck.vehicle_id), timeout=10)) == \
            (grpc.StatusCode.INVALID_ARGUMENT, "TENANT_REQUIRED")
        for_other = carrier_metadata("someone-else") + actor_metadata("mallory", "haulmesh-console")
        # Another carrier learns nothing: NOT_FOUND, as for any resource of another tenant.
        assert await _refusal(_stub(gateway_ch).CreateVehicleCommand(
            _stop(truck.vehicle_id), metadata=for_other, timeout=10)) == \
            (grpc.StatusCode.NOT_FOUND, "VEHICLE_NOT_FOUND")
        assert await _refusal(_stub(gateway_ch).GetVehicleCommand(telemetry_service_pb2.GetVehicleCommandRequest(
            name=created.name), metadata=for_other, timeout=10)) == \
            (grpc.StatusCode.NOT_FOUND, "VEHICLE_NOT_FOUND")
        assert await _refusal(_stub(gateway_ch).ListVehicleCommands(telemetry_service_pb2.ListVehicleCommandsRequest(
            parent=f"vehicles/{truck.vehicle_id}"), metadata=for_other, timeout=10)) == \
            (grpc.StatusCode.NOT_FOUND, "VEHICLE_NOT_FOUND")
        for_ours = carrier_metadata(carrier) + actor_metadata("ann", "haulmesh-console")
        seen = await _stub(gateway_ch).GetVehicleCommand(telemetry_service_pb2.GetVehicleCommandRequest(
            name=created.name), metadata=for_ours, timeout=10)
        assert seen.name == created.name
        by_console = await _stub(gateway_ch).CreateVehicleCommand(
            _stop(truck.vehicle_id), metadata=for_ours, timeout=10)
        assert by_console.requester == "ann via haulmesh-console"
        # A vehicle on no mission: a fleet operator may not; a platform admin may stop it, not reroute it.
        assert await _refusal(_stub(ours_ch).CreateVehicleCommand(_stop(idle.vehicle_id), timeout=10)) == \
            (grpc.StatusCode.PERMISSION_DENIED, "TENANT_NOT_ALLOWED")
        stopped = await _stub(admin_ch).CreateVehicleCommand(_stop(idle.vehicle_id), timeout=10)
        assert stopped.state == VehicleCommand.STATE_QUEUED and not stopped.mission
        reroute = telemetry_service_pb2.CreateVehicleCommandRequest(
            parent=f"vehicles/{idle.vehicle_id}", vehicle_command=VehicleCommand(
                reroute=stream_pb2.Reroute(waypoints=[location_pb2.Location(lat=30.9, lon=-93.0)]), reason="closure"))
        assert await _refusal(_stub(admin_ch).CreateVehicleCommand(reroute, timeout=10)) == \
            (grpc.StatusCode.FAILED_PRECONDITION, "NO_CURRENT_MISSION")
        # An unknown command of a known vehicle; a malformed name.
        assert await _refusal(_stub(admin_ch).GetVehicleCommand(telemetry_service_pb2.GetVehicleCommandRequest(
            name=f"vehicles/{truck.vehicle_id}/commands/{new_id()}"), timeout=10)) == \
            (grpc.StatusCode.NOT_FOUND, "COMMAND_NOT_FOUND")
        assert await _refusal(_stub(admin_ch).GetVehicleCommand(
            telemetry_service_pb2.GetVehicleCommandRequest(name="vehicles/x"), timeout=10)) == \
            (grpc.StatusCode.INVALID_ARGUMENT, "INVALID_RESOURCE_NAME")
        assert await _refusal(_stub(admin_ch).CreateVehicleCommand(telemetry_service_pb2.CreateVehicleCommandRequest(
            parent="vehicles/not a vehicle", vehicle_command=_stop("X").vehicle_command), timeout=10)) == \
            (grpc.StatusCode.INVALID_ARGUMENT, "INVALID_RESOURCE_NAME")


async def test_an_invalid_command_names_every_bad_field(mesh: Mesh, mesh_pki: Pki) -> None:
    from google.rpc import error_details_pb2, status_pb2

    request = telemetry_service_pb2.CreateVehicleCommandRequest(
        parent="vehicles/OC-ANY", vehicle_command=VehicleCommand(
            reroute=stream_pb2.Reroute(waypoints=[location_pb2.Location(lat=95, lon=-93.0),
                                                  location_pb2.Location(lat=0, lon=0)]), reason=" "))
    request.vehicle_command.expire_time.FromSeconds(1)
    async with grpc.aio.secure_channel(mesh.address("telemetry"), mesh_pki.credentials("operator", "admin")) as ch:
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await _stub(ch).CreateVehicleCommand(request, timeout=10)
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    status = status_pb2.Status.FromString(dict(raised.value.trailing_metadata())["grpc-status-details-bin"])
    fields = set()
    for detail in status.details:
        if detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            bad = error_details_pb2.BadRequest()
            detail.Unpack(bad)
            fields |= {v.field for v in bad.field_violations}
    assert fields == {"vehicle_command.reason", "vehicle_command.reroute.waypoints[0]",
                      "vehicle_command.reroute.waypoints[1]", "vehicle_command.expire_time"}
