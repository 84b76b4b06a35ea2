"""Edge fixtures: a vehicle key and certificate from the project's PKI (tests may import services)."""

from __future__ import annotations

from pathlib import Path

import pytest

from edge_client.signer import KeyFileSigner
from services.runtime import pki

VEHICLE = "AU-TRK-1001"


@pytest.fixture(scope="session")
def vehicle_files(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(key path, certificate path) of a vehicle certificate issued by a throwaway CA."""
    directory = tmp_path_factory.mktemp("vehicle")
    issued = pki.issue(pki.create_ca(), pki.identity_for("vehicle", VEHICLE), valid_days=1)
    (directory / "key.pem").write_bytes(issued.private_key_pem)
    (directory / "cert.pem").write_bytes(issued.certificate_pem)
    return directory / "key.pem", directory / "cert.pem"


@pytest.fixture(scope="session")
def signer(vehicle_files: tuple[Path, Path]) -> KeyFileSigner:
    """A KeyFileSigner for the test vehicle."""
    return KeyFileSigner.from_files(*vehicle_files)
