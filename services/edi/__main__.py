"""Entry point: ``python -m services.edi``. Wiring only; settings are in config.py."""

import asyncio
import logging

from haulmesh.mission.v1 import mission_service_pb2_grpc
from haulmesh.tender.v1 import tender_service_pb2_grpc
from services.runtime import ConfigError, Service, run_service

from . import workers
from .archive import RawArchive
from .config import EdiConfig
from .folders import PartnerFolders
from .server import POLICY
from .sftp import SftpServer
from .store import EdiStore
from .usecases import EdiDesk, MissionClient, TenderClient


async def register(service: Service) -> None:
    # EDI settings, the partners file first, are validated here, before the server starts: a bad value is a
    # start-up error (exit status 2).
    config = EdiConfig.from_env()
    log = logging.getLogger("haulmesh.edi")
    # asyncssh logs every connection, channel and SFTP request at INFO: the door's own log says what matters.
    logging.getLogger("asyncssh").setLevel(logging.WARNING)
    folders = PartnerFolders(config.root_dir)
    if not len(config.partners):
        log.warning("no trading partner configured (HAULMESH_EDI_PARTNERS_FILE): no folder is read%s",
                    ", no SFTP door is opened" if config.sftp.enabled else "")
        return
    folders.ensure(p.id for p in config.partners)
    log.info("%d trading partners (%s), folders under %s", len(config.partners),
             ", ".join(p.id for p in config.partners), config.root_dir)
    desk = EdiDesk(partners=config.partners, store=EdiStore(service.redis), archive=RawArchive(config.archive_url),
                   folders=folders,
                   tenders=TenderClient(lambda: service.stub(tender_service_pb2_grpc.TenderServiceStub, "tender")),
                   lanes=config.lanes, durable=service.durable,
                   duplicate_window_seconds=config.duplicate_window_seconds,
                   missions=MissionClient(lambda: service.stub(mission_service_pb2_grpc.MissionServiceStub, "mission")))
    workers.register(service, desk, poll_interval_seconds=config.poll_interval_seconds,
                     files_per_poll=config.files_per_poll)
    if config.sftp.enabled:
        await open_sftp_door(service, config)
    else:
        log.info("no SFTP door (HAULMESH_EDI_SFTP_PORT=0): partners' files come through the folders only")


async def open_sftp_door(service: Service, config: EdiConfig) -> SftpServer:
    """Start the SFTP door before the service serves (a missing host key or a taken port is a start-up error, exit
    status 2) and close it as the service stops. Uploads land in the folders the poller reads, so the door takes
    files even while the store is still awaited."""
    sftp = config.sftp
    door = SftpServer(config.root_dir, {p.id: p.ssh_authorized_keys for p in config.partners},
                      host_key_path=sftp.host_key_file, generate_host_key=sftp.generate_host_key,
                      host=sftp.bind_host, port=sftp.port, limits=sftp.limits)
    try:
        await door.start()
    except OSError as exc:
        raise ConfigError(f"the SFTP door cannot listen on {sftp.bind_host}:{sftp.port}: {exc.strerror or exc}",
                          field="HAULMESH_EDI_SFTP_PORT") from None
    closed = asyncio.Event()

    async def run() -> None:
        await closed.wait()

    async def stop() -> None:
        # Health is NOT_SERVING by now; uploads still open are discarded (the partner sends them again).
        await door.close()
        closed.set()

    service.add_companion(run, stop)
    return door


if __name__ == "__main__":
    run_service("edi", POLICY, register)
