"""Entry point: ``python -m services.billing``. Wiring only; settings are in config.py."""

from haulmesh.billing.v1 import (
    billing_service_pb2,
    billing_service_pb2_grpc,
    evidence_service_pb2,
    evidence_service_pb2_grpc,
)
from haulmesh.mission.v1 import mission_service_pb2_grpc
from haulmesh.telemetry.v1 import telemetry_service_pb2_grpc
from services.runtime import Idempotency, Service, run_service

from . import workers
from .config import BillingConfig
from .evidence import server as evidence_server
from .evidence.usecases import EvidenceExport
from .reports import server as reports_server
from .reports import workers as reports_workers
from .reports.store import ReportStore
from .server import POLICY, BillingServicer
from .store import BillingStore
from .usecases import Billing


def register(service: Service) -> None:
    # Billing settings are validated here, before the server starts: a bad value is a start-up error.
    config = BillingConfig.from_env()
    store = BillingStore(service.redis)
    service.add(billing_service_pb2_grpc.add_BillingServiceServicer_to_server,
                BillingServicer(Billing(store, Idempotency(service.redis), config)),
                billing_service_pb2.DESCRIPTOR.services_by_name["BillingService"])
    export = EvidenceExport(
        store, service.redis, config, ca_file=service.config.tls.ca_file,
        mission=lambda: service.stub(mission_service_pb2_grpc.MissionServiceStub, "mission"),
        telemetry=lambda: service.stub(telemetry_service_pb2_grpc.TelemetryServiceStub, "telemetry"))
    service.add(evidence_service_pb2_grpc.add_EvidenceServiceServicer_to_server,
                evidence_server.EvidenceServicer(export),
                evidence_service_pb2.DESCRIPTOR.services_by_name["EvidenceService"])
    workers.register(service, store)
    # The KPI report (reports/): its projection of the mesh's events and ReportService.
    report_store = ReportStore(service.redis, retention_days=config.kpi_retention_days)
    reports_server.register(service, report_store, max_missions=config.report_max_missions)
    reports_workers.register(service, report_store)


if __name__ == "__main__":
    run_service("billing", POLICY | reports_server.POLICY | evidence_server.POLICY, register)
