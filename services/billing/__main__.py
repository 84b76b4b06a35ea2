"""Entry point: ``python -m services.billing``."""

from haulmesh.billing.v1 import billing_service_pb2, billing_service_pb2_grpc
from services.runtime import Service, run_service

from .server import POLICY, BillingServicer
from .store import BillingStore


def register(service: Service) -> None:
    service.add(billing_service_pb2_grpc.add_BillingServiceServicer_to_server,
                BillingServicer(BillingStore(service.redis)),
                billing_service_pb2.DESCRIPTOR.services_by_name["BillingService"])


if __name__ == "__main__":
    run_service("billing", POLICY, register)
