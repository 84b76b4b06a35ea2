"""The test fault injector (HAULMESH_TEST_FAULTS_FILE) has a production guard: refused without HAULMESH_TEST_MODE=1
(a real service process exits 2 naming both), and a loud WARNING at start when it is on."""

from __future__ import annotations

import asyncio
import logging
import os
import sys
from pathlib import Path

import pytest

from haulmesh.tender.v1 import tender_service_pb2, tender_service_pb2_grpc
from services.runtime import ConfigError, Service, ServiceConfig, free_port
from services.tender.server import TENDER_POLICY as POLICY
from tests.conftest import make_pki

from .test_security import CountingTenders, _issue_server_cert


def test_the_faults_file_alone_is_refused(tmp_path: Path) -> None:
    faults = str(tmp_path / "faults.json")
    with pytest.raises(ConfigError) as refused:
        ServiceConfig.from_env("tender", {"HAULMESH_TEST_FAULTS_FILE": faults})
    assert refused.value.field == "HAULMESH_TEST_FAULTS_FILE" and "HAULMESH_TEST_MODE=1" in str(refused.value)
    with pytest.raises(ConfigError):
        ServiceConfig.from_env("tender", {"HAULMESH_TEST_FAULTS_FILE": faults, "HAULMESH_TEST_MODE": "yes"})
    config = ServiceConfig.from_env("tender", {"HAULMESH_TEST_FAULTS_FILE": faults, "HAULMESH_TEST_MODE": "1"})
    assert config.test_faults_file == Path(faults)


async def test_a_service_process_with_the_faults_file_alone_exits_2(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("HAULMESH_")}
    env.update({"HAULMESH_TEST_FAULTS_FILE": str(tmp_path / "faults.json"), "HAULMESH_STATE_DIR": str(tmp_path)})
    process = await asyncio.create_subprocess_exec(sys.executable, "-m", "services.tender", env=env,
                                                   stdin=asyncio.subprocess.DEVNULL,
                                                   stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    _, stderr = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode == 2 and b"HAULMESH_TEST_MODE=1" in stderr


async def test_the_injector_on_is_logged_as_a_warning_at_start(tmp_path: Path, store_url: str,
                                                               caplog: pytest.LogCaptureFixture) -> None:
    p = make_pki(tmp_path / "ca")
    config = ServiceConfig(service_name="tender", listen_host="127.0.0.1", port=free_port(),
                           tls=_issue_server_cert(p, tmp_path / "server"), state_dir=tmp_path, redis_url=store_url,
                           grace_period_seconds=0.5, test_faults_file=tmp_path / "faults.json")
    service = Service(config, POLICY)
    service.add(tender_service_pb2_grpc.add_TenderServiceServicer_to_server, CountingTenders(),
                tender_service_pb2.DESCRIPTOR.services_by_name["TenderService"])
    with caplog.at_level(logging.WARNING, logger="haulmesh.server"):
        await service.start()
    try:
        assert any(r.levelno == logging.WARNING and "TEST MODE" in r.getMessage() for r in caplog.records)
    finally:
        await service.stop()
