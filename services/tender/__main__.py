"""Entry point: ``python -m services.tender``. Wiring only; settings are in config.py."""

from haulmesh.billing.v1 import billing_service_pb2_grpc
from haulmesh.mission.v1 import mission_service_pb2_grpc
from haulmesh.tender.v1 import (
    facility_service_pb2,
    facility_service_pb2_grpc,
    tender_service_pb2,
    tender_service_pb2_grpc,
)
from services.runtime import Idempotency, Service, run_service

from . import workers
from .config import ELIGIBILITY_FILE_ENV, TenderConfig
from .eligibility import load_policy
from .server import POLICY, FacilityServicer, TenderServicer
from .store import FacilityStore, TenderStore
from .usecases import FacilityRegistry, Fleet, TenderBook, zip_centroid


def register(service: Service) -> None:
    # Tender settings are validated here, before the server starts: a bad value is a start-up error.
    config = TenderConfig.from_env()
    policy = load_policy({ELIGIBILITY_FILE_ENV: str(config.eligibility_file)}, facts=config.lanes)
    fleet = Fleet(billing=lambda: service.stub(billing_service_pb2_grpc.BillingServiceStub, "billing"),
                  mission=lambda: service.stub(mission_service_pb2_grpc.MissionServiceStub, "mission"))
    facilities = FacilityStore(service.redis)
    idempotency = Idempotency(service.redis)
    book = TenderBook(store=TenderStore(service.redis), policy=policy, fleet=fleet, idempotency=idempotency,
                      offer_ttl=config.offer_ttl, facilities=facilities)
    zip_centroid("77002")  # read the ZIP centroids now, not in the first tender that needs one
    service.add(tender_service_pb2_grpc.add_TenderServiceServicer_to_server, TenderServicer(book),
                tender_service_pb2.DESCRIPTOR.services_by_name["TenderService"])
    service.add(facility_service_pb2_grpc.add_FacilityServiceServicer_to_server,
                FacilityServicer(FacilityRegistry(facilities, idempotency)),
                facility_service_pb2.DESCRIPTOR.services_by_name["FacilityService"])
    workers.register(service, book)


if __name__ == "__main__":
    run_service("tender", POLICY, register)
