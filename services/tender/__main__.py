"""Entry point: ``python -m services.tender``. Wiring only; settings are in config.py."""

from haulmesh.billing.v1 import billing_service_pb2_grpc
from haulmesh.mission.v1 import mission_service_pb2_grpc
from haulmesh.tender.v1 import tender_service_pb2, tender_service_pb2_grpc
from services.runtime import Idempotency, Service, run_service

from . import workers
from .config import ELIGIBILITY_FILE_ENV, TenderConfig
from .eligibility import load_policy
from .server import POLICY, TenderServicer
from .store import TenderStore
from .usecases import Fleet, TenderBook


def register(service: Service) -> None:
    # Tender settings are validated here, before the server starts: a bad value is a start-up error.
    config = TenderConfig.from_env()
    policy = load_policy({ELIGIBILITY_FILE_ENV: str(config.eligibility_file)}, facts=config.lanes)
    fleet = Fleet(billing=lambda: service.stub(billing_service_pb2_grpc.BillingServiceStub, "billing"),
                  mission=lambda: service.stub(mission_service_pb2_grpc.MissionServiceStub, "mission"))
    book = TenderBook(store=TenderStore(service.redis), policy=policy, fleet=fleet,
                      idempotency=Idempotency(service.redis), offer_ttl=config.offer_ttl)
    service.add(tender_service_pb2_grpc.add_TenderServiceServicer_to_server, TenderServicer(book),
                tender_service_pb2.DESCRIPTOR.services_by_name["TenderService"])
    workers.register(service, book)


if __name__ == "__main__":
    run_service("tender", POLICY, register)
