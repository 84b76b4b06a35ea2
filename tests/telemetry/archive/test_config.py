"""The archive's environment variables: defaults, and a clear error for each kind of bad value."""

from __future__ import annotations

from pathlib import Path

import pytest

from services.telemetry.config import TelemetryConfig
from tests.telemetry.helpers import TelemetryProcess


def test_defaults_put_the_archive_under_the_state_dir(tmp_path: Path) -> None:
    config = TelemetryConfig.from_env({"HAULMESH_STATE_DIR": str(tmp_path)})
    assert config.archive_url == str(tmp_path.resolve() / "archive")
    assert config.archive_retention_days == 2557 and config.archive_after_seconds == 3600.0
    assert not config.archive_test_kill_after_write


def test_values_are_read() -> None:
    config = TelemetryConfig.from_env({"HAULMESH_ARCHIVE_URL": "s3://b/p?endpoint_url=http://127.0.0.1:1",
                                       "HAULMESH_ARCHIVE_RETENTION_DAYS": "365",
                                       "HAULMESH_ARCHIVE_AFTER_SECONDS": "90",
                                       "HAULMESH_ARCHIVE_TEST_KILL_AFTER_WRITE": "1"})
    assert config.archive_url.startswith("s3://b/p")
    assert (config.archive_retention_days, config.archive_after_seconds) == (365, 90.0)
    assert config.archive_test_kill_after_write


@pytest.mark.parametrize(("key", "value"), [
    ("HAULMESH_ARCHIVE_RETENTION_DAYS", "0"), ("HAULMESH_ARCHIVE_RETENTION_DAYS", "7.5"),
    ("HAULMESH_ARCHIVE_RETENTION_DAYS", "99999"), ("HAULMESH_ARCHIVE_AFTER_SECONDS", "-1"),
    ("HAULMESH_ARCHIVE_AFTER_SECONDS", "soon"), ("HAULMESH_ARCHIVE_TEST_KILL_AFTER_WRITE", "yes"),
])
def test_bad_values_name_the_variable(key: str, value: str) -> None:
    with pytest.raises(ValueError, match=key):
        TelemetryConfig.from_env({key: value})


async def test_a_bad_archive_url_stops_the_process_naming_the_variable(mesh_pki, store_url: str,
                                                                         tmp_path: Path) -> None:
    process = TelemetryProcess(mesh_pki.directory, tmp_path, store_url, HAULMESH_ARCHIVE_URL="ftp://nowhere")
    with pytest.raises(RuntimeError, match="exited"):
        await process.start(mesh_pki.credentials("operator", "probe"))
    assert "HAULMESH_ARCHIVE_URL" in process.log_path.read_text()
