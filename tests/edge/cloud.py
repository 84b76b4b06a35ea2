"""Test doubles on the cloud side: a scripted telemetry stream server (real gRPC, real mTLS). Links are cut with
the fault proxy (tests/faultproxy.py).

The scripted server follows stream.proto's contract closely enough to exercise the truck: Welcome with the
high-water mark it holds, signature verification with the vehicle certificate's key, storage deduplicated by
sequence, Ack through each batch once "stored", Reject with a reason, queued Commands after Welcome. It
records everything it saw so the tests can count.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

import grpc
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from google.protobuf import duration_pb2

from haulmesh.telemetry.v1 import frame_pb2, stream_pb2, telemetry_service_pb2_grpc
from services.runtime import pki


@dataclass
class ScriptedCloud(telemetry_service_pb2_grpc.TelemetryServiceServicer):
    """An in-test StreamTelemetry server for one vehicle."""

    public_key: ec.EllipticCurvePublicKey
    max_batch_frames: int = 500
    heartbeat_seconds: float = 0.2
    stored: dict[int, frame_pb2.SignedFrame] = field(default_factory=dict)
    received: Counter = field(default_factory=Counter)  # sequence -> times received
    arrival: list[int] = field(default_factory=list)  # sequences newly stored, in arrival order
    batch_sizes: list[int] = field(default_factory=list)
    hellos: list[stream_pb2.Hello] = field(default_factory=list)
    heartbeats: list[stream_pb2.Heartbeat] = field(default_factory=list)
    command_acks: list[stream_pb2.CommandAck] = field(default_factory=list)
    commands: list[stream_pb2.Command] = field(default_factory=list)  # sent after every Welcome until acked
    rejected: Counter = field(default_factory=Counter)
    sessions: int = 0

    @property
    def high_water(self) -> int:
        return max(self.stored, default=0)

    async def StreamTelemetry(self, request_iterator, context):
        hello = (await anext(request_iterator)).hello
        self.hellos.append(hello)
        self.sessions += 1
        welcome = stream_pb2.Welcome(high_water_sequence=self.high_water, max_batch_frames=self.max_batch_frames,
                                     session_id=f"s{self.sessions}",
                                     heartbeat_interval=duration_pb2.Duration(nanos=int(self.heartbeat_seconds * 1e9)))
        yield stream_pb2.StreamTelemetryResponse(welcome=welcome)
        answered = {a.command_id for a in self.command_acks}
        for command in self.commands:
            if command.command_id not in answered:
                yield stream_pb2.StreamTelemetryResponse(command=command)
        async for request in request_iterator:
            kind = request.WhichOneof("message")
            if kind == "heartbeat":
                self.heartbeats.append(request.heartbeat)
            elif kind == "command_ack":
                self.command_acks.append(request.command_ack)
            elif kind == "frames":
                frames = request.frames.frames
                if len(frames) > self.max_batch_frames:
                    await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "BATCH_TOO_LARGE")
                self.batch_sizes.append(len(frames))
                for frame in frames:
                    self.received[frame.sequence] += 1
                    try:
                        self.public_key.verify(frame.signature, frame.payload, ec.ECDSA(hashes.SHA256()))
                    except InvalidSignature:
                        self.rejected["REASON_BAD_SIGNATURE"] += 1
                        yield stream_pb2.StreamTelemetryResponse(reject=stream_pb2.Reject(
                            sequence=frame.sequence, reason=stream_pb2.Reject.REASON_BAD_SIGNATURE, detail="bad"))
                        continue
                    if frame.sequence not in self.stored:
                        self.stored[frame.sequence] = frame
                        self.arrival.append(frame.sequence)
                yield stream_pb2.StreamTelemetryResponse(ack=stream_pb2.Ack(through_sequence=frames[-1].sequence))


@dataclass
class CloudServer:
    """A running ScriptedCloud and what the truck needs to reach it."""

    cloud: ScriptedCloud
    server: grpc.aio.Server
    port: int
    ca_pem: bytes

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"


async def start_cloud(ca: pki.CertificateAuthority, cloud: ScriptedCloud) -> CloudServer:
    """Serves ``cloud`` over mTLS (client certificates required, issued by ``ca``) on a free port."""
    issued = pki.issue(ca, pki.identity_for("service", "telemetry"), valid_days=1,
                       dns_names=("localhost",), ip_addresses=("127.0.0.1",))
    server = grpc.aio.server()
    telemetry_service_pb2_grpc.add_TelemetryServiceServicer_to_server(cloud, server)
    credentials = grpc.ssl_server_credentials([(issued.private_key_pem, issued.certificate_pem)],
                                              root_certificates=ca.certificate_pem, require_client_auth=True)
    port = server.add_secure_port("127.0.0.1:0", credentials)
    await server.start()
    return CloudServer(cloud, server, port, ca.certificate_pem)
