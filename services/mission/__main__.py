"""Entry point: ``python -m services.mission``."""

from haulmesh.billing.v1 import billing_service_pb2_grpc
from haulmesh.mission.v1 import mission_service_pb2, mission_service_pb2_grpc
from services.runtime import Service, run_service

from .config import MissionSettings
from .server import CONSUMED_TYPES, POLICY, MissionServicer
from .store import MissionStore


def register(service: Service) -> None:
    settings = MissionSettings.from_env()
    servicer = MissionServicer(MissionStore(service.redis, billing_grace_seconds=settings.billing_grace_seconds),
                               settings, service.stub(billing_service_pb2_grpc.BillingServiceStub, "billing"))
    service.add(mission_service_pb2_grpc.add_MissionServiceServicer_to_server, servicer,
                mission_service_pb2.DESCRIPTOR.services_by_name["MissionService"])
    # Delivered missions are billed at once by the consumer; the sweeper retries those billing could not take.
    service.add_consumer("mission", servicer.handle_event, types=CONSUMED_TYPES)
    service.add_companion(servicer.sweep_billing, servicer.stop_sweeping)


if __name__ == "__main__":
    run_service("mission", POLICY, register)
