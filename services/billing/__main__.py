"""Entry point: ``python -m services.billing``."""

from haulmesh.billing.v1 import billing_service_pb2, billing_service_pb2_grpc
from services.runtime import Idempotency, Service, run_service

from .config import BillingConfig
from .events import QuoteAcceptances
from .server import POLICY, BillingServicer
from .store import BillingStore


def register(service: Service) -> None:
    # Billing settings are validated here, before the server starts: a bad value is a start-up error.
    config = BillingConfig.from_env()
    store = BillingStore(service.redis)
    service.add(billing_service_pb2_grpc.add_BillingServiceServicer_to_server,
                BillingServicer(store, Idempotency(service.redis), config),
                billing_service_pb2.DESCRIPTOR.services_by_name["BillingService"])
    QuoteAcceptances(store).register(service)


if __name__ == "__main__":
    run_service("billing", POLICY, register)
