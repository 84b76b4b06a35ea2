"""The truck's certificate swapped under an open stream (issue 12, "Renewal"): a renewed certificate file does not
disturb the open telemetry stream, and the next connection presents the new serial (scripted cloud, real mTLS).
The renewal request itself is tested against the gateway's route in tests/gateway/rest/test_enrolment.py."""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass, field
from pathlib import Path

from cryptography import x509

from edge_client.certs import VehicleFiles, vehicle_csr
from edge_client.client import StreamClient
from edge_client.recorder import Recorder
from edge_client.signer import KeyFileSigner
from edge_client.spool import Spool
from haulmesh.telemetry.v1 import frame_pb2
from services.runtime import pki
from tests.conftest import wait_for

from .cloud import ScriptedCloud, start_cloud
from .conftest import VEHICLE


@dataclass
class SerialCloud(ScriptedCloud):
    """The scripted cloud, noting the serial of the client certificate that opened each stream."""

    serials: list[int] = field(default_factory=list)

    async def StreamTelemetry(self, request_iterator, context):
        pem = context.auth_context()["x509_pem_cert"][0]
        self.serials.append(x509.load_pem_x509_certificate(pem).serial_number)
        async for response in super().StreamTelemetry(request_iterator, context):
            yield response


async def test_a_renewed_certificate_keeps_the_stream_and_is_presented_on_reconnect(tmp_path: Path) -> None:
    ca = pki.create_ca()
    first = pki.issue(ca, pki.identity_for("vehicle", VEHICLE), valid_days=1)
    files = VehicleFiles(tmp_path, VEHICLE)
    pki.write_pem_files(tmp_path, f"vehicle-{VEHICLE}", first, ca.certificate_pem)
    spool = Spool(tmp_path / "spool.db")
    recorder = Recorder(spool, KeyFileSigner.from_files(files.key_file, files.cert_file), VEHICLE)
    server = await start_cloud(ca, SerialCloud(first.private_key.public_key()))
    client = StreamClient(server.address, files.channel_credentials, spool, vehicle_id=VEHICLE,
                          boot_id=recorder.boot_id, backoff_base=0.05, backoff_cap=0.5, poll_interval=0.2)
    task = asyncio.create_task(client.run())

    async def frames(count: int) -> None:
        for _ in range(count):
            await asyncio.to_thread(recorder.record, frame_pb2.FramePayload(kind=frame_pb2.FramePayload.KIND_POSITION))
            client.notify()

    try:
        await frames(5)
        await wait_for(lambda: server.cloud.high_water == 5, timeout_seconds=10)
        # The renewal: a new certificate for the same key, the file replaced as the renewer does.
        renewed = pki.sign_vehicle_csr(ca, vehicle_csr(first.private_key, VEHICLE).encode(), VEHICLE,
                                       valid_seconds=3600)
        pki.write_pem_files(tmp_path, f"vehicle-{VEHICLE}",
                            pki.IssuedCertificate(renewed, first.private_key), ca.certificate_pem)
        await frames(5)  # signed with the same key: the open stream takes them
        await wait_for(lambda: server.cloud.high_water == 10, timeout_seconds=10)
        assert client.stats.sessions == 1 and client.stats.failures == 0
        assert server.cloud.serials == [first.certificate.serial_number]
        client.cut_link(0.0)  # the link drops; the truck reconnects
        await wait_for(lambda: client.stats.sessions == 2, timeout_seconds=10)
        await frames(5)
        await wait_for(lambda: server.cloud.high_water == 15, timeout_seconds=10)
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await server.server.stop(0)
        spool.close()
    assert server.cloud.serials == [first.certificate.serial_number, renewed.serial_number]
    assert not server.cloud.rejected and client.stats.failures == 0
