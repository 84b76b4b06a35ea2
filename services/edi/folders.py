"""The folder transport: the embedded default, and the layout the SFTP door serves (each partner jailed in its own).

::

    <root>/<partner id>/in/        the partner's uploads, read by the poller
    <root>/<partner id>/out/       our documents for the partner to collect (and delete)
    <root>/<partner id>/archive/   inbound files once processed
    <root>/<partner id>/failed/    inbound files that held no interchange at all (kept, and archived raw too)

Rules that keep a partner and us from reading half a file:

* inbound: dot-files and ``*.part`` / ``*.tmp`` / ``*.filepart`` are uploads in progress and never read; a file is
  taken only once its size and modification time are the same on two polls in a row (an upload that writes in
  place is still growing); at most N files per poll, oldest first;
* outbound: written as ``out/.<name>.tmp``, flushed and fsync'd, then ``os.replace``'d to ``out/<name>``, so the
  name appears only with the whole file behind it.

Synchronous file work: the async callers run it in a thread.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterable
from pathlib import Path

__all__ = ["IN_PROGRESS_SUFFIXES", "PartnerFolders"]

#: Suffixes of uploads not yet complete (SFTP clients and scripts use these until they rename).
IN_PROGRESS_SUFFIXES = (".part", ".tmp", ".filepart", ".partial")
_SUBFOLDERS = ("in", "out", "archive", "failed")


class PartnerFolders:
    """Every partner's folders under one root, and which inbound files are ready."""

    def __init__(self, root: Path) -> None:
        self.root = root
        #: path -> (size, mtime_ns) when last seen: a file is ready when it is seen unchanged.
        self._last_seen: dict[Path, tuple[int, int]] = {}

    def folder(self, partner: str, which: str) -> Path:
        if which not in _SUBFOLDERS:
            raise ValueError(f"no {which!r} folder; expected one of {', '.join(_SUBFOLDERS)}")
        return self.root / partner / which

    def ensure(self, partners: Iterable[str]) -> None:
        for partner in partners:
            for which in _SUBFOLDERS:
                self.folder(partner, which).mkdir(parents=True, exist_ok=True)

    def ready(self, partners: Iterable[str], *, limit: int) -> list[tuple[str, Path]]:
        """Inbound files that are complete (unchanged since the last poll), oldest first, at most ``limit``."""
        candidates: list[tuple[int, str, Path]] = []
        seen_now: dict[Path, tuple[int, int]] = {}
        for partner in partners:
            inbox = self.folder(partner, "in")
            try:
                entries = list(os.scandir(inbox))
            except FileNotFoundError:
                continue
            for entry in entries:
                if entry.name.startswith(".") or entry.name.endswith(IN_PROGRESS_SUFFIXES):
                    continue
                try:
                    if not entry.is_file(follow_symlinks=False):
                        continue
                    stat = entry.stat(follow_symlinks=False)
                except FileNotFoundError:
                    continue
                path = Path(entry.path)
                signature = (stat.st_size, stat.st_mtime_ns)
                seen_now[path] = signature
                if self._last_seen.get(path) == signature:
                    candidates.append((stat.st_mtime_ns, partner, path))
        self._last_seen = seen_now
        candidates.sort()
        return [(partner, path) for _, partner, path in candidates[:limit]]

    def settle(self, path: Path, partner: str, *, failed: bool = False) -> Path:
        """Move a processed inbound file out of ``in/`` (to ``archive/``, or ``failed/``); its new path."""
        target_dir = self.folder(partner, "failed" if failed else "archive")
        target_dir.mkdir(parents=True, exist_ok=True)
        target = target_dir / f"{time.strftime('%Y%m%dT%H%M%S')}-{time.time_ns() % 1_000_000_000:09d}-{path.name}"
        os.replace(path, target)
        self._last_seen.pop(path, None)
        return target

    def write_out(self, partner: str, name: str, data: bytes) -> Path:
        """Write ``out/<name>`` whole: a hidden temporary file, fsync'd, then renamed into place."""
        if "/" in name or name.startswith("."):
            raise ValueError(f"outbound file name {name!r} must be a plain, visible name")
        outbox = self.folder(partner, "out")
        outbox.mkdir(parents=True, exist_ok=True)
        final = outbox / name
        temporary = outbox / f".{name}.tmp"
        with open(temporary, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, final)
        directory = os.open(outbox, os.O_RDONLY)
        try:
            os.fsync(directory)  # the rename itself survives a crash
        finally:
            os.close(directory)
        return final
