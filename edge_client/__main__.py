"""``haulmesh-edge``: the truck's command line.

    haulmesh-edge check --vehicle AU-TRK-1001    connect to the telemetry service as the truck, over mTLS
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

__all__ = ["main"]


def _credentials(cert_dir: Path, vehicle: str) -> grpc.ChannelCredentials:
    try:
        return grpc.ssl_channel_credentials(
            root_certificates=(cert_dir / "ca.pem").read_bytes(),
            private_key=(cert_dir / f"vehicle-{vehicle}-key.pem").read_bytes(),
            certificate_chain=(cert_dir / f"vehicle-{vehicle}.pem").read_bytes(),
        )
    except FileNotFoundError as exc:
        raise SystemExit(f"haulmesh-edge: {exc.filename} is missing: issue the truck's certificate with "
                         f"'haulmesh pki issue vehicle {vehicle}'") from None


async def _check(args: argparse.Namespace) -> int:
    credentials = _credentials(Path(args.cert_dir), args.vehicle)
    async with grpc.aio.secure_channel(args.target, credentials) as channel:
        try:
            reply = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5)
        except grpc.aio.AioRpcError as exc:
            print(f"{args.target}: {exc.code().name}: {exc.details()}", file=sys.stderr)
            return 1
    status = health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
    print(f"{args.target}: {status} (as vehicle {args.vehicle})")
    return 0 if status == "SERVING" else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="haulmesh-edge", description="Haulmesh truck-side client")
    parser.add_argument("--cert-dir", default=os.environ.get("HAULMESH_CERT_DIR", ".haulmesh/certs"))
    parser.add_argument("--target", default=os.environ.get("HAULMESH_TELEMETRY_ADDR", "127.0.0.1:50053"),
                        help="telemetry service host:port")
    sub = parser.add_subparsers(dest="command", required=True)
    check = sub.add_parser("check", help="connect as the truck and report the telemetry service's health")
    check.add_argument("--vehicle", required=True, help="vehicle id, e.g. AU-TRK-1001")
    check.set_defaults(func=lambda a: asyncio.run(_check(a)))
    args = parser.parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
