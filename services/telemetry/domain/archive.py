"""The archive's rules: where a part goes, what it is named, which frames are due, what a manifest entry says,
and how far the hot stream may be trimmed. Plain Python: no I/O (usecases/archive.py does the writing).

A vehicle's frames leave the hot stream in *parts*: runs of consecutive stored sequences, each one Parquet
object named by its sequence range (``part-<first>-<last>.parquet``) under the partition of its carrier,
vehicle and UTC day of device time. A part is never rewritten; frames stored later (a truck's spool after
an outage) go into a later part. Parts are cut in sequence order from the vehicle's archived watermark, so
no two parts ever cover one sequence, and a part's name is a function of its range: re-running an
interrupted archive finds the same name (create-only refuses a second object), and adopts the first.
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta
from urllib.parse import quote

__all__ = [
    "ARCHIVE_PREFIX",
    "MAX_PART_FRAMES",
    "ROW_GROUP_FRAMES",
    "STORE_ID_KEY",
    "UNASSIGNED_CARRIER",
    "PartEntry",
    "PartPlan",
    "day_of",
    "due_count",
    "manifest_key",
    "part_key",
    "partition",
    "plan_parts",
    "retain_until_ms",
    "trim_boundary",
]

#: Root of every archive key; the ``v1`` is the layout's version (a new layout gets a new root).
ARCHIVE_PREFIX = "archive/v1"
#: Carrier partition of a vehicle whose carrier was never known (no mission yet).
UNASSIGNED_CARRIER = "_unassigned"
#: Most frames in one part: about five hours at 1 Hz, ~1.5 MB of Parquet; bounds the memory of one write
#: and of one read (a page read from the archive decodes one part at a time).
MAX_PART_FRAMES = 20_000

#: Rows per Parquet row group of a part: a read of a few frames decodes one group (~75 KB), not the whole part;
#: each group's sequence statistics (min/max) say which groups a read needs.
ROW_GROUP_FRAMES = 1_000
#: The archive's identity: a random id written create-only at the first start on a store. The Redis store
#: records the first id it was archived to (store.py), and a process whose archive holds another id refuses to
#: archive: two pods on separate directories (a trial's emptyDirs) would otherwise each hold half the parts
#: while the shared watermark lets the hot stream be trimmed behind both.
STORE_ID_KEY = f"{ARCHIVE_PREFIX}/STORE-ID"

_DAY_MS = 86_400_000


def _segment(value: str) -> str:
    # Hive-style partition values, percent-encoded so that any id is one clean path segment (no '/', no '..').
    return quote(value, safe="-_.") or "_"


def partition(carrier_id: str, vehicle_id: str, day: str) -> str:
    """The partition (key prefix, no trailing '/') of a carrier's vehicle's frames of one UTC day."""
    return (f"{ARCHIVE_PREFIX}/carrier={_segment(carrier_id or UNASSIGNED_CARRIER)}/"
            f"vehicle={_segment(vehicle_id)}/date={day}")


def day_of(device_ms: int) -> str:
    """The UTC day (YYYY-MM-DD) of a device time in ms."""
    return datetime.fromtimestamp(device_ms / 1000, UTC).strftime("%Y-%m-%d")


def part_key(partition_key: str, first: int, last: int) -> str:
    """The object key of the part holding sequences ``first``..``last``: zero-padded (20 digits, uint64), so
    keys sort by sequence."""
    return f"{partition_key}/part-{first:020d}-{last:020d}.parquet"


_PART_RE = re.compile(r"^(?P<partition>.+)/part-(?P<first>\d{20})-(?P<last>\d{20})\.parquet$")


def manifest_key(part: str) -> str:
    """The key of a part's manifest object: the part's path under ``archive/v1/manifest/``, ``.json``."""
    match = _PART_RE.match(part)
    if match is None or not part.startswith(ARCHIVE_PREFIX + "/"):
        raise ValueError(f"not an archive part key: {part!r}")
    return f"{ARCHIVE_PREFIX}/manifest/{part.removeprefix(ARCHIVE_PREFIX + '/').removesuffix('.parquet')}.json"


def retain_until_ms(last_day: str, retention_days: int) -> int:
    """When a part's retention ends: ``retention_days`` after the end of the last UTC day it holds. From the
    data's day, not the clock of whoever archives it, so a re-run computes the same date."""
    day = datetime.strptime(last_day, "%Y-%m-%d").replace(tzinfo=UTC) + timedelta(days=1)
    return int((day + timedelta(days=retention_days)).timestamp() * 1000)


@dataclass(frozen=True)
class PartPlan:
    """A part about to be written: its range (every stored sequence in it), frame count and where it goes.
    Recorded in the index before the object is written, so a crash between the two is finished, not redone
    differently (see usecases/archive.py)."""

    vehicle_id: str
    carrier_id: str
    day: str
    first: int
    last: int
    count: int
    retain_until_ms: int

    @property
    def key(self) -> str:
        return part_key(partition(self.carrier_id, self.vehicle_id, self.day), self.first, self.last)

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True, separators=(",", ":"))

    @classmethod
    def from_json(cls, raw: str | bytes) -> PartPlan:
        return cls(**json.loads(raw))


@dataclass(frozen=True)
class PartEntry:
    """A committed part, as the manifest object and the index list it: key, sha256 and size of its bytes,
    sequence range and count, the store's version id, and when its retention ends (ms)."""

    key: str
    sha256: str
    size: int
    first: int
    last: int
    count: int
    version_id: str
    retain_until_ms: int

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True, separators=(",", ":"))

    @classmethod
    def from_json(cls, raw: str | bytes) -> PartEntry:
        return cls(**json.loads(raw))


def due_count(receive_ms: list[int], cutoff_ms: int) -> int:
    """How many of a vehicle's oldest unarchived frames (receive times, ascending with sequence) are due: those
    received at or before ``cutoff_ms`` (now minus the archive lag). Receive times ascend with sequence, so the
    due frames are a prefix."""
    count = 0
    for at in receive_ms:
        if at > cutoff_ms:
            break
        count += 1
    return count


def plan_parts(vehicle_id: str, carrier_id: str, frames: list[tuple[int, int]], *, retention_days: int,
               max_frames: int = MAX_PART_FRAMES) -> list[PartPlan]:
    """Cut ``frames`` — ``(sequence, device time ms)`` of consecutive stored frames, ascending, all due — into
    parts: a new part when the UTC day of device time changes or a part is full. A frame whose device time
    jumps back a day (a clock correction) starts a new part rather than joining an earlier day's: parts are
    runs, so their ranges never overlap."""
    plans: list[PartPlan] = []
    run: list[tuple[int, int]] = []
    run_day = ""

    def close() -> None:
        if run:
            plans.append(PartPlan(vehicle_id, carrier_id, run_day, run[0][0], run[-1][0], len(run),
                                  retain_until_ms(run_day, retention_days)))

    for sequence, device_ms in frames:
        day = day_of(device_ms)
        if run and (day != run_day or len(run) >= max_frames):
            close()
            run = []
        if not run:
            run_day = day
        run.append((sequence, device_ms))
    close()
    return plans


def trim_boundary(archived_upto: int, expired_through: int) -> int:
    """The highest sequence the hot stream may drop: only frames that are archived (at or below the archived
    watermark) AND out of the hot window (at or below the last sequence received before the retention cutoff).
    0: nothing may be dropped."""
    return max(0, min(archived_upto, expired_through))
