"""Entry point: ``python -m services.edi``. Wiring only; settings are in config.py."""

import logging

from haulmesh.tender.v1 import tender_service_pb2_grpc
from services.runtime import Service, run_service

from . import workers
from .archive import RawArchive
from .config import EdiConfig
from .folders import PartnerFolders
from .server import POLICY
from .store import EdiStore
from .usecases import EdiDesk, TenderClient


def register(service: Service) -> None:
    # EDI settings, the partners file first, are validated here, before the server starts: a bad value is a
    # start-up error (exit status 2).
    config = EdiConfig.from_env()
    log = logging.getLogger("haulmesh.edi")
    folders = PartnerFolders(config.root_dir)
    if not len(config.partners):
        log.warning("no trading partner configured (HAULMESH_EDI_PARTNERS_FILE): no folder is read")
        return
    folders.ensure(p.id for p in config.partners)
    log.info("%d trading partners (%s), folders under %s", len(config.partners),
             ", ".join(p.id for p in config.partners), config.root_dir)
    desk = EdiDesk(partners=config.partners, store=EdiStore(service.redis), archive=RawArchive(config.archive_url),
                   folders=folders,
                   tenders=TenderClient(lambda: service.stub(tender_service_pb2_grpc.TenderServiceStub, "tender")),
                   lanes=config.lanes, durable=service.durable,
                   duplicate_window_seconds=config.duplicate_window_seconds)
    workers.register(service, desk, poll_interval_seconds=config.poll_interval_seconds,
                     files_per_poll=config.files_per_poll)


if __name__ == "__main__":
    run_service("edi", POLICY, register)
