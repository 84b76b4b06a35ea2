"""Entry point: ``python -m services.tender``.

Configuration beyond the runtime's: ``HAULMESH_TENDER_ELIGIBILITY_FILE`` (the eligibility policy, default
services/tender/eligibility.json) and ``HAULMESH_TENDER_OFFER_TTL_SECONDS`` (offer lifetime, default 900).
"""

import os
from datetime import timedelta

from haulmesh.billing.v1 import billing_service_pb2_grpc
from haulmesh.mission.v1 import mission_service_pb2_grpc
from haulmesh.tender.v1 import tender_service_pb2, tender_service_pb2_grpc
from services.runtime import ConfigError, Idempotency, Service, run_service

from .domain import DEFAULT_OFFER_TTL
from .eligibility import load_policy
from .server import POLICY, Fleet, OfferLapser, TenderBook, TenderServicer
from .store import TenderStore

OFFER_TTL_ENV = "HAULMESH_TENDER_OFFER_TTL_SECONDS"


def offer_ttl(env=os.environ) -> timedelta:
    raw = env.get(OFFER_TTL_ENV, "")
    if not raw:
        return DEFAULT_OFFER_TTL
    try:
        seconds = float(raw)
    except ValueError:
        raise ConfigError(f"{OFFER_TTL_ENV} must be a number of seconds, got {raw!r}", field=OFFER_TTL_ENV) from None
    if not 1 <= seconds <= 86400:
        raise ConfigError(f"{OFFER_TTL_ENV} must be 1 to 86400 seconds, got {raw!r}", field=OFFER_TTL_ENV)
    return timedelta(seconds=seconds)


def register(service: Service) -> None:
    fleet = Fleet(billing=lambda: service.stub(billing_service_pb2_grpc.BillingServiceStub, "billing"),
                  mission=lambda: service.stub(mission_service_pb2_grpc.MissionServiceStub, "mission"))
    book = TenderBook(store=TenderStore(service.redis), policy=load_policy(), fleet=fleet,
                      idempotency=Idempotency(service.redis), offer_ttl=offer_ttl())
    service.add(tender_service_pb2_grpc.add_TenderServiceServicer_to_server, TenderServicer(book),
                tender_service_pb2.DESCRIPTOR.services_by_name["TenderService"])
    lapser = OfferLapser(book)
    service.add_companion(lapser.run, lapser.stop)


if __name__ == "__main__":
    run_service("tender", POLICY, register)
