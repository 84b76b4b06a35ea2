"""The folder transport: an upload is taken only once complete, at most N a poll, oldest first; an outbound file
appears whole under its name; a processed file leaves ``in/``."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from services.edi.folders import PartnerFolders


@pytest.fixture
def folders(tmp_path: Path) -> PartnerFolders:
    folders = PartnerFolders(tmp_path)
    folders.ensure(["prairie", "lonestar"])
    return folders


def test_each_partner_has_its_folders(folders: PartnerFolders, tmp_path: Path) -> None:
    for partner in ("prairie", "lonestar"):
        assert sorted(p.name for p in (tmp_path / partner).iterdir()) == ["archive", "failed", "in", "out"]


def test_uploads_in_progress_and_growing_files_are_not_taken(folders: PartnerFolders) -> None:
    inbox = folders.folder("prairie", "in")
    (inbox / "load.x12.part").write_bytes(b"ISA")
    (inbox / "load2.tmp").write_bytes(b"ISA")
    (inbox / ".hidden").write_bytes(b"ISA")
    (inbox / "subfolder").mkdir()
    growing = inbox / "growing.x12"
    growing.write_bytes(b"ISA*00")
    assert folders.ready(["prairie"], limit=10) == []  # first sight: not yet known to be complete
    with open(growing, "ab") as handle:
        handle.write(b"*more")
    assert folders.ready(["prairie"], limit=10) == []  # it changed since the last poll
    assert folders.ready(["prairie"], limit=10) == [("prairie", growing)]  # unchanged: complete


def test_at_most_n_files_a_poll_oldest_first(folders: PartnerFolders) -> None:
    paths = []
    for n in range(5):
        partner = "prairie" if n % 2 else "lonestar"
        path = folders.folder(partner, "in") / f"f{n}.x12"
        path.write_bytes(b"x")
        os.utime(path, ns=(1_000_000_000 * (100 - n), 1_000_000_000 * (100 - n)))  # f4 is the oldest
        paths.append((partner, path))
    folders.ready(["prairie", "lonestar"], limit=3)
    assert folders.ready(["prairie", "lonestar"], limit=3) == [paths[4], paths[3], paths[2]]


def test_a_processed_file_leaves_in(folders: PartnerFolders) -> None:
    path = folders.folder("prairie", "in") / "load.x12"
    path.write_bytes(b"ISA")
    moved = folders.settle(path, "prairie")
    assert not path.exists() and moved.parent == folders.folder("prairie", "archive") and moved.read_bytes() == b"ISA"
    path.write_bytes(b"junk")
    failed = folders.settle(path, "prairie", failed=True)
    assert failed.parent == folders.folder("prairie", "failed") and failed.name.endswith("load.x12")


def test_an_outbound_file_appears_whole(folders: PartnerFolders) -> None:
    written = folders.write_out("prairie", "997_000000001.x12", b"ISA*...~")
    assert written.read_bytes() == b"ISA*...~"
    assert [p.name for p in folders.folder("prairie", "out").iterdir()] == ["997_000000001.x12"]  # no .tmp left
    with pytest.raises(ValueError, match="plain, visible name"):
        folders.write_out("prairie", "../escape.x12", b"x")
    with pytest.raises(ValueError, match="plain, visible name"):
        folders.write_out("prairie", ".hidden", b"x")
