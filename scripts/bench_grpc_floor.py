"""``make bench``'s gRPC floor (issue 13): what the truck stream costs a server before it does any of its own work.

A bare grpc.aio server of the same ``StreamTelemetry`` contract, as its own process, over the same mTLS (client
certificates required): Hello → Welcome, then it reads every message and acknowledges the last sequence it read,
paced like the service (at most one Ack per stream every ``TelemetryConfig.ack_interval_seconds``, the first after a
quiet spell at once). No verification, no store, no interceptors, no metrics. The bench's own 10 Hz and 1 Hz phases
drive it (bench_telemetry.drive_live / drive_1hz: the same trucks, messages and pacing as against the service), and
its CPU per frame is read from /proc as the service's is.

So ``telemetry_server_cpu_us_per_frame`` can be read as floor + the service's own work, and the floor against
``ecdsa_verify_us`` shows what part of a target written as a multiple of verify the transport alone takes.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from pathlib import Path

import grpc
from bench_telemetry import drive_1hz, drive_live, make_trucks

from haulmesh.telemetry.v1 import stream_pb2, telemetry_service_pb2_grpc
from services.runtime import free_port, pki
from services.telemetry.config import TelemetryConfig

__all__ = ["grpc_floor"]

#: The service's default pacing, so that the floor sends the Acks the service would.
ACK_INTERVAL_SECONDS = TelemetryConfig.ack_interval_seconds


class _BareTelemetry(telemetry_service_pb2_grpc.TelemetryServiceServicer):
    """The stream protocol's skeleton: a reader task, an outbound queue the handler drains, paced Acks."""

    async def StreamTelemetry(self, request_iterator, context):
        iterator = aiter(request_iterator)
        if await anext(iterator, None) is None:
            return
        yield stream_pb2.StreamTelemetryResponse(welcome=stream_pb2.Welcome(high_water_sequence=0))
        outbound: asyncio.Queue[stream_pb2.StreamTelemetryResponse | None] = asyncio.Queue()
        loop = asyncio.get_running_loop()
        state = {"through": 0, "last_ack": float("-inf"), "timer": None}

        def flush() -> None:
            state["timer"] = None
            state["last_ack"] = loop.time()
            outbound.put_nowait(stream_pb2.StreamTelemetryResponse(ack=stream_pb2.Ack(
                through_sequence=state["through"])))

        async def read() -> None:
            async for request in iterator:
                if request.WhichOneof("message") != "frames" or not request.frames.frames:
                    continue
                state["through"] = request.frames.frames[-1].sequence
                wait = state["last_ack"] + ACK_INTERVAL_SECONDS - loop.time()
                if wait <= 0:
                    flush()
                elif state["timer"] is None:
                    state["timer"] = loop.call_later(wait, flush)
            outbound.put_nowait(None)

        reader = asyncio.create_task(read())
        try:
            while (response := await outbound.get()) is not None:
                yield response
        finally:
            reader.cancel()
            if state["timer"] is not None:
                state["timer"].cancel()


async def _serve(port: int, cert_dir: Path) -> None:
    server = grpc.aio.server()
    telemetry_service_pb2_grpc.add_TelemetryServiceServicer_to_server(_BareTelemetry(), server)
    credentials = grpc.ssl_server_credentials(
        [((cert_dir / "server.key").read_bytes(), (cert_dir / "server.pem").read_bytes())],
        root_certificates=(cert_dir / "ca.pem").read_bytes(), require_client_auth=True)
    server.add_secure_port(f"127.0.0.1:{port}", credentials)
    await server.start()
    await server.wait_for_termination()


async def _wait_listening(port: int, process: asyncio.subprocess.Process, timeout_seconds: float = 30) -> None:
    deadline = time.monotonic() + timeout_seconds
    while time.monotonic() < deadline:
        if process.returncode is not None:
            raise RuntimeError(f"the gRPC floor server exited with {process.returncode}")
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.close()
            return
        except OSError:
            await asyncio.sleep(0.1)
    raise RuntimeError(f"the gRPC floor server did not listen on {port} within {timeout_seconds} s")


async def grpc_floor(*, trucks: int = 100, rate: int = 1000, seconds: float = 5.0, slow_trucks: int = 1000,
                     slow_seconds: int = 10) -> dict:
    """The bare server's CPU per frame in the bench's 10 Hz and 1 Hz phases (keys ``grpc_floor_*``)."""
    ca = pki.create_ca()
    with tempfile.TemporaryDirectory() as directory:
        cert_dir = Path(directory)
        issued = pki.issue(ca, pki.identity_for("service", "telemetry"), valid_days=1, ip_addresses=("127.0.0.1",))
        (cert_dir / "server.pem").write_bytes(issued.certificate_pem)
        (cert_dir / "server.key").write_bytes(issued.private_key_pem)
        (cert_dir / "ca.pem").write_bytes(ca.certificate_pem)
        port = free_port()
        process = await asyncio.create_subprocess_exec(sys.executable, __file__, "--serve", str(port), str(cert_dir))
        try:
            await _wait_listening(port, process)
            address = f"127.0.0.1:{port}"
            live = await drive_live(address, {"server": process.pid}, make_trucks(ca, trucks, "FLOOR"), rate=rate,
                                    seconds=seconds)
            slow = await drive_1hz(address, process.pid, make_trucks(ca, slow_trucks, "FLOOR-SLOW"),
                                   seconds=slow_seconds)
        finally:
            process.kill()
            await process.wait()
    return {"grpc_floor_cpu_us_per_frame": round(live["server"], 1),
            "grpc_floor_1hz_cpu_us_per_frame": round(slow.server_cpu_us, 1),
            "grpc_floor_1hz_acks_per_frame": round(slow.acks_per_frame, 3)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--serve", nargs=2, metavar=("PORT", "CERT_DIR"), help="run the bare server (the bench "
                        "starts it so)")
    args = parser.parse_args()
    if args.serve:
        asyncio.run(_serve(int(args.serve[0]), Path(args.serve[1])))
        return 0
    print(asyncio.run(grpc_floor()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
