"""The telemetry service's use cases: orchestration of the store, the domain and the mission service.

* stream.py: truck streams and single frames, from verification to durable acks; command delivery;
* reads.py: pages and watches of a vehicle's or a mission's frames;
* tracking.py: derived events and liveness of the vehicles on a mission, published through the outbox;
* fleet.py: what the roster should know of each vehicle (position, last heard, connectivity, ETAs), in batches;
* commands.py: mission events and operators' commands → commands queued for trucks;
* missions.py: telemetry's own events → mission service calls;
* archive.py: the archive tier (Parquet parts in the object store, trim only after archive) and reads across tiers.
"""

from .archive import (
    ArchiveConflict,
    ArchiveObjects,
    Archiver,
    ArchiveRun,
    ArchiveStoreMismatch,
    ArchiveUnavailable,
    TieredFrames,
)
from .commands import CommandRelay, OperatorCommands
from .fleet import FleetReporter
from .missions import MissionActions, MissionNotReady
from .reads import Reads
from .stream import COMMAND_SWEEP_SECONDS, FrameCredits, Session, Streams
from .tracking import MISSION_EVENT_TYPES, MissionTracking

__all__ = [
    "COMMAND_SWEEP_SECONDS",
    "MISSION_EVENT_TYPES",
    "ArchiveConflict",
    "ArchiveObjects",
    "ArchiveRun",
    "ArchiveStoreMismatch",
    "ArchiveUnavailable",
    "Archiver",
    "CommandRelay",
    "FleetReporter",
    "FrameCredits",
    "MissionActions",
    "MissionNotReady",
    "MissionTracking",
    "OperatorCommands",
    "Reads",
    "Session",
    "Streams",
    "TieredFrames",
]
