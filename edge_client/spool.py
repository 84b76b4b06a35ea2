"""The truck's disk spool: every reading is written here, signed, before it is sent, and kept until acked.

Storage is one SQLite file in WAL mode. ``synchronous=FULL``: in WAL mode ``NORMAL`` already survives a crash
of this process (kill -9), but a commit may roll back on a power loss, and a truck loses power (ignition off,
a crash, a battery swap) far more often than a server does. ``FULL`` fsyncs the WAL on every commit; at the
reading rate of a truck (a few per second) that costs nothing noticeable, and a reading whose enqueue
returned then survives both.

The spool also keeps the vehicle's sequence counter: sequences must be strictly increasing across reboots,
so the counter lives in the same transaction as the frame it numbers.

Bound: at most ``max_frames`` unacknowledged frames. When full, the oldest *routine* frame (POSITION, EVENT)
is evicted to make room; alarms, faults and health frames are never evicted (they may exceed the bound: they
are rare, and losing one is worse than a few kilobytes more on disk). Evictions are counted for ever in the
spool and reported in every Heartbeat (``dropped_frames``); the server also sees them as a gap between its
high-water mark and ``Hello.oldest_spooled_sequence``.

The mission log: the payload of every frame recorded for a mission (``FramePayload.mission_id`` set) is also kept,
acked or not, until the mission's proof of delivery is accepted (:meth:`Spool.forget_mission`): the truck signs
the digest of its *own* telemetry log (edge_client/pod.py), not what the server says it stored. Bounded by
``max_log_frames`` (oldest evicted first, counted as ``log_evicted``; a proof then covers what remains, and the
server sees the shorter range). The assignments the truck accepted are kept beside it (load number, stops).
A mission's log and assignment go when its proof is accepted, when the mission is cancelled (the truck accepted a
``CancelAssignment``: :meth:`Spool.end_mission`), or when it is older than ``max_mission_age_days`` (pruned at
open and by :meth:`Spool.prune`: a mission whose proof never went through must not hold the disk for ever).

Row counts (frames, log rows) are counters kept in the same transactions as the rows, so the bound costs no
``COUNT(*)`` scan per frame (that scan grows with the spool: a truck offline for a day holds 86,400 frames).
"""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from haulmesh.telemetry.v1 import frame_pb2, stream_pb2

__all__ = ["ROUTINE_KINDS", "Spool", "SpoolStats", "SpooledFrame"]

#: Kinds the bound may evict. Anything else (ALARM, FAULT, HEALTH and kinds a newer stack invents) is kept.
ROUTINE_KINDS = frozenset({frame_pb2.FramePayload.KIND_POSITION, frame_pb2.FramePayload.KIND_EVENT})

_SCHEMA = """
CREATE TABLE IF NOT EXISTS frames (
    sequence INTEGER PRIMARY KEY,
    kind     INTEGER NOT NULL,
    routine  INTEGER NOT NULL,
    frame    BLOB    NOT NULL
);
CREATE INDEX IF NOT EXISTS frames_routine ON frames (routine, sequence);
CREATE TABLE IF NOT EXISTS counters (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS commands (command_id TEXT PRIMARY KEY, outcome INTEGER NOT NULL, detail TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS mission_log (
    sequence   INTEGER PRIMARY KEY,
    mission_id TEXT    NOT NULL,
    payload    BLOB    NOT NULL
);
CREATE INDEX IF NOT EXISTS mission_log_by_mission ON mission_log (mission_id, sequence);
CREATE TABLE IF NOT EXISTS assignments (mission_id TEXT PRIMARY KEY, assignment BLOB NOT NULL);
"""
_COUNTERS = ("last_sequence", "dropped", "rejected", "log_evicted", "frame_rows", "log_rows")
#: Columns added after the first release: (table, column, definition). Old spools get them at open, stamped now.
_ADDED_COLUMNS = (("mission_log", "recorded_at", "INTEGER NOT NULL DEFAULT 0"),
                  ("assignments", "accepted_at", "INTEGER NOT NULL DEFAULT 0"))


@dataclass(frozen=True)
class SpooledFrame:
    """One spooled frame: its sequence and the serialized ``SignedFrame``, exactly as it will be sent."""

    sequence: int
    frame: bytes


@dataclass(frozen=True)
class SpoolStats:
    """What the spool holds and what it has lost, for heartbeats and Hello."""

    depth: int
    last_sequence: int
    oldest_sequence: int
    dropped: int
    rejected: int


class Spool:
    """A bounded, crash-safe queue of signed frames keyed by the vehicle's sequence.

    Thread-safe (one connection behind a lock): the asyncio client calls it through ``asyncio.to_thread``
    so fsyncs never block the event loop.
    """

    def __init__(self, path: str | Path, *, max_frames: int = 500_000, max_log_frames: int = 1_000_000,
                 max_mission_age_days: float = 14.0) -> None:
        if max_frames < 1 or max_log_frames < 1:
            raise ValueError("max_frames and max_log_frames must be at least 1")
        if not max_mission_age_days > 0:
            raise ValueError("max_mission_age_days must be positive")
        self.path = Path(path)
        self.max_frames = max_frames
        self.max_log_frames = max_log_frames
        self.max_mission_age_seconds = max_mission_age_days * 86400
        self._lock = threading.Lock()
        # isolation_level=None: we issue BEGIN IMMEDIATE ourselves, so a transaction takes the write lock
        # before it reads the counter (two writers can never hand out the same sequence).
        self._db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.execute("PRAGMA busy_timeout=10000")
        self._db.executescript(_SCHEMA)
        with self._transaction() as db:
            now = int(time.time())
            for table, column, definition in _ADDED_COLUMNS:
                if column not in {row[1] for row in db.execute(f"PRAGMA table_info({table})")}:
                    db.execute(f"ALTER TABLE {table} ADD COLUMN {column} {definition}")
                    # unknown age: counted from now (names from _ADDED_COLUMNS, never input)
                    db.execute(f"UPDATE {table} SET {column} = ?", (now,))  # noqa: S608
            db.executemany("INSERT OR IGNORE INTO counters (name, value) VALUES (?, 0)", [(c,) for c in _COUNTERS])
            # One count at open (a spool written before the counters, or by a crash-free older version); from
            # here on every write keeps them.
            db.execute("UPDATE counters SET value = (SELECT COUNT(*) FROM frames) WHERE name = 'frame_rows'")
            db.execute("UPDATE counters SET value = (SELECT COUNT(*) FROM mission_log) WHERE name = 'log_rows'")
        self.prune()

    def close(self) -> None:
        """Closes the database (committed frames are already on disk)."""
        with self._lock:
            self._db.close()

    def __enter__(self) -> Spool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- writing --------------------------------------------------------------------------------------------

    def enqueue(self, kind: int, build: Callable[[int], bytes], *, mission_id: str = "") -> int:
        """Assigns the next sequence, stores ``build(sequence)`` (a serialized SignedFrame) and commits.

        Returns the sequence only once the frame is durable. ``build`` runs inside the transaction, so the
        payload is signed with the sequence it is stored under; if it raises, nothing is stored and the
        sequence is not used. If the spool is full, the oldest routine frame is evicted and counted, which
        may be the new frame itself when the spool holds nothing but alarms and faults. With ``mission_id`` the
        frame's payload also joins that mission's log, in the same transaction.
        """
        routine = kind in ROUTINE_KINDS
        with self._lock, self._transaction() as db:
            sequence = self._counter(db, "last_sequence") + 1
            frame = build(sequence)
            db.execute("UPDATE counters SET value = ? WHERE name = 'last_sequence'", (sequence,))
            db.execute("INSERT INTO frames (sequence, kind, routine, frame) VALUES (?, ?, ?, ?)",
                       (sequence, kind, int(routine), frame))
            self._add_rows(db, "frame_rows", 1)
            self._enforce_bound(db)
            if mission_id:
                self._log(db, sequence, mission_id, frame_pb2.SignedFrame.FromString(frame).payload)
        return sequence

    def _log(self, db: sqlite3.Connection, sequence: int, mission_id: str, payload: bytes) -> None:
        known = db.execute("SELECT 1 FROM mission_log WHERE sequence = ?", (sequence,)).fetchone() is not None
        db.execute("INSERT OR REPLACE INTO mission_log (sequence, mission_id, payload, recorded_at) "
                   "VALUES (?, ?, ?, ?)", (sequence, mission_id, payload, int(time.time())))
        if not known:
            self._add_rows(db, "log_rows", 1)
        excess = self._counter(db, "log_rows") - self.max_log_frames
        if excess > 0:
            removed = db.execute("DELETE FROM mission_log WHERE sequence IN "
                                 "(SELECT sequence FROM mission_log ORDER BY sequence LIMIT ?)", (excess,)).rowcount
            self._add_rows(db, "log_rows", -removed)
            db.execute("UPDATE counters SET value = value + ? WHERE name = 'log_evicted'", (removed,))

    def _enforce_bound(self, db: sqlite3.Connection) -> None:
        excess = self._counter(db, "frame_rows") - self.max_frames
        if excess <= 0:
            return
        victims = [row[0] for row in db.execute(
            "SELECT sequence FROM frames WHERE routine = 1 ORDER BY sequence LIMIT ?", (excess,))]
        if victims:
            db.executemany("DELETE FROM frames WHERE sequence = ?", [(s,) for s in victims])
            self._add_rows(db, "frame_rows", -len(victims))
            db.execute("UPDATE counters SET value = value + ? WHERE name = 'dropped'", (len(victims),))

    @staticmethod
    def _add_rows(db: sqlite3.Connection, counter: str, delta: int) -> None:
        if delta:
            db.execute("UPDATE counters SET value = value + ? WHERE name = ?", (delta, counter))

    def mark_acked(self, through_sequence: int) -> int:
        """Deletes every frame at or below ``through_sequence`` (the server holds them durably).

        Also raises the sequence counter to ``through_sequence`` if the server is ahead (a spool wiped or
        restored from an old image): new frames must never reuse a sequence the server already holds.
        Returns the number of frames deleted.
        """
        with self._lock, self._transaction() as db:
            deleted = db.execute("DELETE FROM frames WHERE sequence <= ?", (through_sequence,)).rowcount
            self._add_rows(db, "frame_rows", -deleted)
            db.execute("UPDATE counters SET value = MAX(value, ?) WHERE name = 'last_sequence'",
                       (through_sequence,))
        return deleted

    def reject(self, sequence: int) -> bool:
        """Removes a frame the server refused (final: it must not be resent) and counts it.

        Returns False if the frame was not in the spool (already removed).
        """
        with self._lock, self._transaction() as db:
            removed = db.execute("DELETE FROM frames WHERE sequence = ?", (sequence,)).rowcount
            if removed:
                self._add_rows(db, "frame_rows", -1)
                db.execute("UPDATE counters SET value = value + 1 WHERE name = 'rejected'")
        return bool(removed)

    # -- reading --------------------------------------------------------------------------------------------

    def unacked_after(self, sequence: int, limit: int) -> list[SpooledFrame]:
        """The spooled frames above ``sequence``, ascending, at most ``limit`` of them."""
        with self._lock:
            rows = self._db.execute(
                "SELECT sequence, frame FROM frames WHERE sequence > ? ORDER BY sequence LIMIT ?",
                (sequence, limit)).fetchall()
        return [SpooledFrame(s, f) for s, f in rows]

    def sequences(self) -> list[int]:
        """Every spooled sequence, ascending (for tests and diagnostics)."""
        with self._lock:
            return [row[0] for row in self._db.execute("SELECT sequence FROM frames ORDER BY sequence")]

    def kinds(self) -> dict[int, int]:
        """Sequence → frame kind of every spooled frame (for tests and diagnostics)."""
        with self._lock:
            return dict(self._db.execute("SELECT sequence, kind FROM frames"))

    def stats(self) -> SpoolStats:
        """Depth, counters and the oldest spooled sequence, read in one snapshot."""
        with self._lock:
            oldest = self._db.execute("SELECT COALESCE(MIN(sequence), 0) FROM frames").fetchone()[0]
            counters = dict(self._db.execute("SELECT name, value FROM counters"))
        return SpoolStats(depth=counters["frame_rows"], last_sequence=counters["last_sequence"], oldest_sequence=oldest,
                          dropped=counters["dropped"], rejected=counters["rejected"])

    # -- the mission log and assignments (for the proof of delivery) --------------------------------------

    def mission_log(self, mission_id: str) -> list[tuple[int, bytes]]:
        """(sequence, payload bytes exactly as signed) of every frame recorded for the mission, ascending."""
        with self._lock:
            return [(s, bytes(p)) for s, p in self._db.execute(
                "SELECT sequence, payload FROM mission_log WHERE mission_id = ? ORDER BY sequence", (mission_id,))]

    def acked_through(self, sequence: int) -> bool:
        """Whether no frame at or below ``sequence`` is still waiting for the server's ack."""
        with self._lock:
            return self._db.execute("SELECT 1 FROM frames WHERE sequence <= ? LIMIT 1", (sequence,)).fetchone() is None

    def forget_mission(self, mission_id: str) -> int:
        """Drops a mission's log and assignment once its proof of delivery is accepted; the rows removed."""
        with self._lock, self._transaction() as db:
            return self._forget(db, mission_id)

    def end_mission(self, mission_id: str) -> int:
        """The mission ended without a proof to sign (the truck accepted its cancellation): its log and
        assignment are dropped like a proven one's; the log rows removed."""
        return self.forget_mission(mission_id)

    def prune(self, now: float | None = None) -> int:
        """Drops the logs and assignments of missions older than ``max_mission_age_days`` (by the assignment's
        acceptance, else the newest frame of the log): a proof never accepted must not keep them for ever. The
        log rows removed."""
        cutoff = int((time.time() if now is None else now) - self.max_mission_age_seconds)
        with self._lock, self._transaction() as db:
            stale = {row[0] for row in db.execute(
                "SELECT mission_id FROM assignments WHERE accepted_at < ?", (cutoff,))}
            stale |= {row[0] for row in db.execute(
                "SELECT mission_id FROM mission_log WHERE mission_id NOT IN (SELECT mission_id FROM assignments) "
                "GROUP BY mission_id HAVING MAX(recorded_at) < ?", (cutoff,))}
            return sum(self._forget(db, mission_id) for mission_id in sorted(stale))

    def _forget(self, db: sqlite3.Connection, mission_id: str) -> int:
        removed = db.execute("DELETE FROM mission_log WHERE mission_id = ?", (mission_id,)).rowcount
        db.execute("DELETE FROM assignments WHERE mission_id = ?", (mission_id,))
        self._add_rows(db, "log_rows", -removed)
        return removed

    def remember_assignment(self, assignment: stream_pb2.MissionAssignment) -> None:
        """Keeps an accepted assignment (load number, stops) until the mission's proof is accepted."""
        with self._lock, self._transaction() as db:
            db.execute("INSERT OR REPLACE INTO assignments (mission_id, assignment, accepted_at) VALUES (?, ?, ?)",
                       (assignment.mission_id, assignment.SerializeToString(), int(time.time())))

    def assignment(self, mission_id: str) -> stream_pb2.MissionAssignment | None:
        """The assignment of ``mission_id`` the truck accepted, or None."""
        with self._lock:
            row = self._db.execute("SELECT assignment FROM assignments WHERE mission_id = ?",
                                   (mission_id,)).fetchone()
        return None if row is None else stream_pb2.MissionAssignment.FromString(row[0])

    # -- command outcomes (the truck answers a repeated command with its previous outcome) ------------------

    def command_outcome(self, command_id: str) -> tuple[int, str] | None:
        """The outcome recorded for a command, or None if the truck has not seen it."""
        with self._lock:
            row = self._db.execute("SELECT outcome, detail FROM commands WHERE command_id = ?",
                                   (command_id,)).fetchone()
        return (row[0], row[1]) if row else None

    def record_command(self, command_id: str, outcome: int, detail: str) -> None:
        """Remembers a command's latest outcome, durably, so a restart still deduplicates it."""
        with self._lock, self._transaction() as db:
            db.execute("INSERT OR REPLACE INTO commands (command_id, outcome, detail) VALUES (?, ?, ?)",
                       (command_id, outcome, detail))

    # -- internals ------------------------------------------------------------------------------------------

    def _transaction(self) -> _Transaction:
        return _Transaction(self._db)

    @staticmethod
    def _counter(db: sqlite3.Connection, name: str) -> int:
        return int(db.execute("SELECT value FROM counters WHERE name = ?", (name,)).fetchone()[0])


class _Transaction:
    """BEGIN IMMEDIATE … COMMIT (ROLLBACK on error): the commit is the durability point."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self._db = db

    def __enter__(self) -> sqlite3.Connection:
        self._db.execute("BEGIN IMMEDIATE")
        return self._db

    def __exit__(self, exc_type: object, *rest: object) -> None:
        self._db.execute("ROLLBACK" if exc_type else "COMMIT")
