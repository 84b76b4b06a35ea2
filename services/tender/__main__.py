"""Entry point: ``python -m services.tender``."""

from haulmesh.tender.v1 import tender_service_pb2, tender_service_pb2_grpc
from services.runtime import Service, run_service

from .server import POLICY, TenderServicer
from .store import TenderStore


def register(service: Service) -> None:
    service.add(tender_service_pb2_grpc.add_TenderServiceServicer_to_server,
                TenderServicer(TenderStore(service.redis)),
                tender_service_pb2.DESCRIPTOR.services_by_name["TenderService"])


if __name__ == "__main__":
    run_service("tender", POLICY, register)
