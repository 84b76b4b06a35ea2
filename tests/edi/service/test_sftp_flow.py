"""The EDI service's SFTP door in the real service process: a partner's TMS, as an asyncssh client with its own key,
uploads a 204 into ``in/`` and fetches the 997 and the 990 from ``out/``, nothing but SFTP between them.

The mesh gives the door a free port (HAULMESH_EDI_SFTP_PORT, ``Mesh.edi_sftp_port``) and, the variable for the host
key unset on a loopback door, the service generates a development host key under the state folder: the client pins
that key, as a partner pins the production one's fingerprint.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import asyncssh
import grpc
import pytest

from haulmesh.mission.v1 import mission_service_pb2, mission_service_pb2_grpc, vehicle_pb2
from haulmesh.type.v1 import equipment_pb2
from services.edi.config import SftpConfig
from services.edi.domain import Decision, read, read_990, read_997
from services.runtime import ConfigError, Mesh, free_port, new_id

from ...conftest import Pki, running_mesh, wait_for
from .samples import load_tender_204

EXAMPLE = Path(__file__).parents[3] / "services" / "edi" / "partners.example.toml"
PARTNER_KEY = asyncssh.generate_private_key("ssh-ed25519")


@pytest.fixture(scope="module")
async def sftp_mesh(mesh_pki: Pki, tmp_path_factory: pytest.TempPathFactory):
    state = tmp_path_factory.mktemp("edi-sftp-mesh")
    # The repository's example partners, prairie's key being this test's own.
    partners = state / "partners.toml"
    public = PARTNER_KEY.export_public_key().decode().strip()
    partners.write_text(re.sub(r'"ssh-ed25519 [^"]+"', f'"{public} prairie-test"', EXAMPLE.read_text(), count=1))
    env = {"HAULMESH_EDI_PARTNERS_FILE": str(partners), "HAULMESH_EDI_ROOT": str(state / "edi"),
           "HAULMESH_EDI_ARCHIVE_URL": str(state / "edi-archive"), "HAULMESH_EDI_POLL_SECONDS": "0.1"}
    async with running_mesh(mesh_pki, state, env=env) as mesh:
        assert mesh.edi_sftp_port, "the mesh opens the EDI service's SFTP door"
        async with grpc.aio.secure_channel(mesh.address("mission"),
                                           mesh_pki.credentials("operator", "dispatch")) as channel:
            vehicle = vehicle_pb2.Vehicle(
                display_name="EDI SFTP test truck", home_region="US-TX-DAL",
                availability=vehicle_pb2.Vehicle.AVAILABILITY_AVAILABLE,
                capabilities=vehicle_pb2.VehicleCapabilities(
                    equipment=[equipment_pb2.EQUIPMENT_DRY_VAN_53FT], max_cargo_weight_lb=45_000,
                    night_operations=True))
            await mission_service_pb2_grpc.MissionServiceStub(channel).CreateVehicle(
                mission_service_pb2.CreateVehicleRequest(vehicle_id=f"EDI-SFTP-{new_id()[-6:].upper()}",
                                                         vehicle=vehicle),
                timeout=10)
        yield mesh, state


def _connect(mesh, state: Path, key: asyncssh.SSHKey = PARTNER_KEY):
    # The service made its development host key here (0600); the client trusts that key and no other.
    host_key = asyncssh.read_private_key(state / "edi-sftp" / "ssh_host_key")
    assert (state / "edi-sftp" / "ssh_host_key").stat().st_mode & 0o077 == 0
    return asyncssh.connect("127.0.0.1", mesh.edi_sftp_port, username="prairie", client_keys=[key],
                            known_hosts=([host_key.convert_to_public()], [], []), agent_path=None, config=None)


async def test_a_204_over_sftp_is_answered_by_a_997_and_a_990_in_out(sftp_mesh) -> None:
    mesh, state = sftp_mesh
    shipment = f"PF-{new_id()[-8:].upper()}"
    async with _connect(mesh, state) as conn, conn.start_sftp_client() as sftp:
        assert sorted(await sftp.listdir("/")) == [".", "..", "in", "out"]
        before = set(await sftp.listdir("out"))
        async with sftp.open(f"in/{shipment}.x12", "wb") as upload:
            await upload.write(load_tender_204(shipment, isa13="000000301"))

        async def answered() -> dict[str, bytes] | None:
            fresh = sorted(set(await sftp.listdir("out")) - before)
            kinds = {kind: name for name in fresh for kind in ("997", "990") if name.startswith(f"{kind}_")}
            if len(kinds) < 2:
                return None
            got = {}
            for kind, name in kinds.items():
                async with sftp.open(f"out/{name}", "rb") as download:
                    got[kind] = await download.read()
                await sftp.remove(f"out/{name}")  # collected, as a partner's client does
            return got

        got = await wait_for(answered, timeout_seconds=30, interval_seconds=0.2)
        assert not [n for n in await sftp.listdir("in") if n not in (".", "..")]  # taken by the poller

    (reading,) = read(got["997"])
    ack = read_997(reading.groups[0].sets[0].transaction)
    assert (ack.group_control, ack.status, ack.accepted) == ("301", "A", 1)
    (reading,) = read(got["990"])
    answer = read_990(reading.groups[0].sets[0].transaction)
    assert answer.shipment_id == shipment and answer.decision is Decision.ACCEPT, answer
    # The service's log: the door's own lines (the upload received), none of asyncssh's INFO chatter.
    log = [json.loads(line) for line in mesh.children["edi"].log_path.read_text().splitlines()
           if line.startswith("{")]
    assert any(e["logger"] == "haulmesh.edi.sftp" and f"in/{shipment}.x12" in e["message"] for e in log)
    assert not [e for e in log if e["logger"].startswith("asyncssh") and e["level"] == "INFO"]
    # What the partner removed after fetching is gone from the service's folder too.
    assert not (got.keys() & {n[:3] for n in os_listdir(state / "edi" / "prairie" / "out") if n not in before})


async def test_only_the_partners_key_opens_the_door(sftp_mesh) -> None:
    mesh, state = sftp_mesh
    with pytest.raises(asyncssh.PermissionDenied):
        async with _connect(mesh, state, key=asyncssh.generate_private_key("ssh-ed25519")):
            pass


def os_listdir(folder: Path) -> list[str]:
    return [p.name for p in folder.iterdir()]


def test_the_doors_settings_are_checked(tmp_path: Path) -> None:
    """Off by default; a generated host key on loopback only; a given key must exist and be private; limits in
    range. Each refusal names its variable (the service exits with status 2 on it)."""
    state = tmp_path / "state"
    assert not SftpConfig.from_env({}, state).enabled
    dev = SftpConfig.from_env({"HAULMESH_EDI_SFTP_PORT": "2222"}, state)
    assert (dev.port, dev.bind_host, dev.generate_host_key) == (2222, "127.0.0.1", True)
    assert dev.host_key_file == state / "edi-sftp" / "ssh_host_key"
    key = tmp_path / "ssh_host_key"
    key.write_bytes(asyncssh.generate_private_key("ssh-ed25519").export_private_key())
    key.chmod(0o600)
    production = SftpConfig.from_env({"HAULMESH_EDI_SFTP_PORT": "2222", "HAULMESH_EDI_SFTP_BIND_HOST": "0.0.0.0",
                                      "HAULMESH_EDI_SFTP_HOST_KEY_FILE": str(key),
                                      "HAULMESH_EDI_SFTP_MAX_CONNECTIONS": "8",
                                      "HAULMESH_EDI_SFTP_MAX_FILE_BYTES": "65536"}, state)
    assert not production.generate_host_key
    assert (production.limits.max_connections, production.limits.max_file_bytes) == (8, 65536)
    refused = {
        "HAULMESH_EDI_SFTP_HOST_KEY_FILE": {"HAULMESH_EDI_SFTP_BIND_HOST": "0.0.0.0"},  # production: no key made
        "HAULMESH_EDI_SFTP_BIND_HOST": {"HAULMESH_EDI_SFTP_BIND_HOST": "sftp.example.com"},
        "HAULMESH_EDI_SFTP_MAX_CONNECTIONS": {"HAULMESH_EDI_SFTP_MAX_CONNECTIONS": "0"},
        "HAULMESH_EDI_SFTP_MAX_FILE_BYTES": {"HAULMESH_EDI_SFTP_MAX_FILE_BYTES": "lots"},
        "HAULMESH_EDI_SFTP_PORT": {"HAULMESH_EDI_SFTP_PORT": "70000"},
    }
    for variable, env in refused.items():
        with pytest.raises(ConfigError) as caught:
            SftpConfig.from_env({"HAULMESH_EDI_SFTP_PORT": "2222", **env}, state)
        assert caught.value.field == variable and variable in str(caught.value)
    key.chmod(0o604)  # readable by every user
    for missing_or_open in (tmp_path / "absent", key):
        with pytest.raises(ConfigError, match="HAULMESH_EDI_SFTP_HOST_KEY_FILE"):
            SftpConfig.from_env({"HAULMESH_EDI_SFTP_PORT": "2222",
                                 "HAULMESH_EDI_SFTP_HOST_KEY_FILE": str(missing_or_open)}, state)


def test_the_local_mesh_opens_the_door(tmp_path: Path) -> None:
    """``haulmesh run`` (default ports): 2222, the chart's port too; a mesh on free ports (tests, demos): a free one;
    HAULMESH_EDI_SFTP_PORT given wins, 0 included; no EDI service, no door; listed where a partners file is set."""
    assert Mesh(tmp_path, optional=("edi",)).edi_sftp_port == 2222
    free = Mesh(tmp_path, optional=("edi",), http_port=free_port())
    assert free.edi_sftp_port not in (0, 2222) and free.extra_env["HAULMESH_EDI_SFTP_PORT"] == str(free.edi_sftp_port)
    assert Mesh(tmp_path, optional=("edi",), extra_env={"HAULMESH_EDI_SFTP_PORT": "0"}).edi_sftp_port == 0
    assert Mesh(tmp_path).edi_sftp_port == 0
    door = ("edi SFTP door (trading partners)", "sftp://127.0.0.1:2222")
    assert door in Mesh(tmp_path, extra_env={"HAULMESH_EDI_PARTNERS_FILE": str(EXAMPLE)}).describe()
    assert door not in Mesh(tmp_path, optional=("edi",)).describe()  # no partner: the service opens no door
