"""Entry point: ``python -m services.mission``."""

from haulmesh.billing.v1 import billing_service_pb2_grpc
from haulmesh.mission.v1 import mission_service_pb2, mission_service_pb2_grpc
from haulmesh.telemetry.v1 import telemetry_service_pb2_grpc
from services.runtime import Service, run_service

from .config import MissionSettings
from .server import POLICY, MissionServicer
from .store import MissionStore
from .usecases import MissionUseCases
from .workers import CONSUMED_TYPES, MissionWorkers


def register(service: Service) -> None:
    settings = MissionSettings.from_env()
    store = MissionStore(service.redis, billing_grace_seconds=settings.billing_grace_seconds)
    missions = MissionUseCases(store, settings,
                               lambda: service.stub(billing_service_pb2_grpc.BillingServiceStub, "billing"),
                               lambda: service.stub(telemetry_service_pb2_grpc.TelemetryServiceStub, "telemetry"))
    service.add(mission_service_pb2_grpc.add_MissionServiceServicer_to_server, MissionServicer(missions),
                mission_service_pb2.DESCRIPTOR.services_by_name["MissionService"])
    # Delivered missions are billed at once by the consumer; the sweeper retries those billing could not take.
    workers = MissionWorkers(missions, store, settings)
    service.add_consumer("mission", workers.handle_event, types=CONSUMED_TYPES)
    service.add_periodic("mission-billing-sweep", workers.sweep_billing,
                         interval_seconds=settings.billing_sweep_seconds)
    service.add_periodic("fleet gauge", workers.count_fleet, interval_seconds=settings.fleet_gauge_seconds)
    # Required check-ins past their due time (+ grace) are escalated: the event check_in_overdue (webhook, console).
    service.add_periodic("check-in sweep", workers.sweep_check_ins, interval_seconds=settings.check_in_sweep_seconds)


if __name__ == "__main__":
    run_service("mission", POLICY, register)
