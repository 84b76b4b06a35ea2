"""Entry point: ``python -m services.telemetry``."""

from haulmesh.telemetry.v1 import telemetry_service_pb2, telemetry_service_pb2_grpc
from services.runtime import Service, run_service

from .server import POLICY, TelemetryServicer
from .store import TelemetryStore


def register(service: Service) -> None:
    service.add(telemetry_service_pb2_grpc.add_TelemetryServiceServicer_to_server,
                TelemetryServicer(TelemetryStore(service.redis)),
                telemetry_service_pb2.DESCRIPTOR.services_by_name["TelemetryService"])


if __name__ == "__main__":
    run_service("telemetry", POLICY, register)
