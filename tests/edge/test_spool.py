"""The spool: sequencing, acks, rejects, the bound's eviction policy (exact, and as a property)."""

from __future__ import annotations

from pathlib import Path

import hypothesis.strategies as st
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from hypothesis import HealthCheck, given, settings

from edge_client.recorder import Recorder
from edge_client.spool import ROUTINE_KINDS, Spool
from haulmesh.telemetry.v1 import frame_pb2

from .conftest import VEHICLE

Kind = frame_pb2.FramePayload
ALL_KINDS = [Kind.KIND_POSITION, Kind.KIND_EVENT, Kind.KIND_HEALTH, Kind.KIND_ALARM, Kind.KIND_FAULT]


def _raw(spool: Spool, kind: int) -> int:
    return spool.enqueue(kind, lambda seq: b"frame-%d" % seq)


def test_sequences_start_at_one_and_survive_reopen(tmp_path: Path) -> None:
    with Spool(tmp_path / "s.db") as spool:
        assert [_raw(spool, Kind.KIND_POSITION) for _ in range(3)] == [1, 2, 3]
        spool.mark_acked(3)
        assert spool.stats().depth == 0
    with Spool(tmp_path / "s.db") as spool:
        # the counter outlives the frames: an emptied spool never reuses a sequence
        assert _raw(spool, Kind.KIND_POSITION) == 4


def test_ack_reject_and_resume_window(tmp_path: Path) -> None:
    with Spool(tmp_path / "s.db") as spool:
        for _ in range(10):
            _raw(spool, Kind.KIND_POSITION)
        assert spool.mark_acked(4) == 4
        assert spool.reject(6) and not spool.reject(6)
        assert [f.sequence for f in spool.unacked_after(4, 3)] == [5, 7, 8]
        assert [f.frame for f in spool.unacked_after(8, 10)] == [b"frame-9", b"frame-10"]
        stats = spool.stats()
        print(f"depth={stats.depth} rejected={stats.rejected}")
        assert (stats.depth, stats.oldest_sequence, stats.last_sequence, stats.rejected) == (5, 5, 10, 1)


def test_server_ahead_raises_the_counter(tmp_path: Path) -> None:
    with Spool(tmp_path / "s.db") as spool:
        spool.mark_acked(41)  # a wiped spool meets a server that already holds 41 frames
        assert _raw(spool, Kind.KIND_POSITION) == 42


def test_failed_build_stores_nothing(tmp_path: Path) -> None:
    with Spool(tmp_path / "s.db") as spool:
        def boom(seq: int) -> bytes:
            raise RuntimeError("signer unavailable")
        try:
            spool.enqueue(Kind.KIND_POSITION, boom)
        except RuntimeError:
            pass
        assert spool.stats().depth == 0
        assert _raw(spool, Kind.KIND_POSITION) == 1


def test_full_spool_drops_oldest_routine_and_keeps_alarms(tmp_path: Path) -> None:
    with Spool(tmp_path / "s.db", max_frames=5) as spool:
        plan = [Kind.KIND_POSITION, Kind.KIND_ALARM, Kind.KIND_POSITION, Kind.KIND_FAULT, Kind.KIND_EVENT,
                Kind.KIND_HEALTH, Kind.KIND_POSITION, Kind.KIND_ALARM]
        for kind in plan:
            _raw(spool, kind)
        stats = spool.stats()
        print(f"spooled={len(plan)} kept={stats.depth} dropped={stats.dropped}")
        # 1 (POSITION), 3 (POSITION), 5 (EVENT) were the oldest routine frames; 7 is the newest routine one
        assert spool.sequences() == [2, 4, 6, 7, 8]
        assert stats.dropped == 3
        # only critical frames left but one: a new routine frame evicts 7, then itself is the oldest
        _raw(spool, Kind.KIND_ALARM)
        assert spool.sequences() == [2, 4, 6, 8, 9]
        _raw(spool, Kind.KIND_POSITION)
        assert spool.sequences() == [2, 4, 6, 8, 9]
        assert spool.stats().dropped == 5


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(kinds=st.lists(st.sampled_from(ALL_KINDS), max_size=60), bound=st.integers(1, 12),
       acks=st.lists(st.integers(0, 60), max_size=4))
def test_eviction_policy_property(tmp_path_factory, kinds: list[int], bound: int, acks: list[int]) -> None:
    """Model check: critical frames are never dropped, routine frames go oldest first, drops are counted."""
    with Spool(tmp_path_factory.mktemp("p") / "s.db", max_frames=bound) as spool:
        model: list[tuple[int, int]] = []  # (sequence, kind) the model expects spooled
        dropped = 0
        ack_at = {i * max(1, len(kinds) // (len(acks) + 1)): a for i, a in enumerate(acks, start=1)}
        for i, kind in enumerate(kinds):
            seq = _raw(spool, kind)
            assert seq == i + 1
            model.append((seq, kind))
            while len(model) > bound:
                routine = [m for m in model if m[1] in ROUTINE_KINDS]
                if not routine:
                    break
                model.remove(routine[0])
                dropped += 1
            if i in ack_at:
                ack_at[i] = min(ack_at[i], seq)  # the server never acks what it was not sent
                spool.mark_acked(ack_at[i])
                model = [m for m in model if m[0] > ack_at[i]]
            assert spool.sequences() == [m[0] for m in model]
            assert spool.stats().depth == len(model)  # the row counter, never a COUNT(*), stays exact
        assert spool.stats().dropped == dropped
        critical = {s for s, k in enumerate(kinds, start=1) if k not in ROUTINE_KINDS}
        acked = max([a for i, a in ack_at.items() if i < len(kinds)], default=0)
        assert {s for s in critical if s > acked} <= set(spool.sequences())


def test_recorded_frames_are_signed_over_the_stored_payload(tmp_path: Path, signer) -> None:
    with Spool(tmp_path / "s.db") as spool:
        recorder = Recorder(spool, signer, VEHICLE)
        payload = frame_pb2.FramePayload(kind=Kind.KIND_POSITION, position=frame_pb2.Position(lat=29.76, lon=-95.37))
        assert recorder.record(payload) == 1
        [stored] = spool.unacked_after(0, 10)
        frame = frame_pb2.SignedFrame.FromString(stored.frame)
        decoded = frame_pb2.FramePayload.FromString(frame.payload)
        assert (frame.sequence, decoded.sequence, decoded.vehicle_id) == (1, 1, VEHICLE)
        assert frame.key_id == signer.key_id and len(frame.key_id) == 64
        signer._key.public_key().verify(frame.signature, frame.payload, ec.ECDSA(hashes.SHA256()))


def _logged(spool: Spool, mission_id: str) -> int:
    def build(seq: int) -> bytes:
        payload = frame_pb2.FramePayload(vehicle_id=VEHICLE, sequence=seq, mission_id=mission_id)
        return frame_pb2.SignedFrame(sequence=seq, payload=payload.SerializeToString()).SerializeToString()

    return spool.enqueue(Kind.KIND_POSITION, build, mission_id=mission_id)


def _rows(spool: Spool, table: str) -> int:
    import sqlite3

    with sqlite3.connect(spool.path) as db:
        return db.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0]  # noqa: S608 - a test's fixed names


def test_old_or_cancelled_missions_leave_the_spool(tmp_path: Path) -> None:
    """A mission's log and assignment go when it is cancelled or older than max_mission_age_days (a proof that
    never went through must not hold the disk for ever); a current mission's stay."""
    import time

    from haulmesh.telemetry.v1 import stream_pb2

    with Spool(tmp_path / "s.db", max_mission_age_days=1) as spool:
        for mission in ("old", "current", "cancelled"):
            spool.remember_assignment(stream_pb2.MissionAssignment(mission_id=mission))
            _logged(spool, mission)
            _logged(spool, mission)
        _logged(spool, "unassigned")
        assert spool.end_mission("cancelled") == 2
        assert spool.mission_log("cancelled") == [] and spool.assignment("cancelled") is None
        assert spool.prune(now=time.time() + 0.5 * 86400) == 0  # nothing is a day old yet
        import sqlite3

        with sqlite3.connect(spool.path) as db:  # "old" was accepted two days ago
            db.execute("UPDATE assignments SET accepted_at = accepted_at - 2 * 86400 WHERE mission_id = 'old'")
        assert spool.prune() == 2
        assert spool.assignment("old") is None and spool.mission_log("old") == []
        assert len(spool.mission_log("current")) == 2 and spool.assignment("current") is not None
        assert spool.prune(now=time.time() + 2 * 86400) == 3  # in two days: every mission is stale
        assert _rows(spool, "mission_log") == 0 and _rows(spool, "assignments") == 0


def test_row_counters_match_the_tables_across_reopen_and_a_legacy_spool(tmp_path: Path) -> None:
    import sqlite3

    with Spool(tmp_path / "s.db", max_log_frames=3) as spool:
        for _ in range(5):
            _logged(spool, "m1")
        spool.mark_acked(2)
        assert spool.stats().depth == _rows(spool, "frames") == 3
        assert len(spool.mission_log("m1")) == _rows(spool, "mission_log") == 3  # bounded by the counter
    # A spool of the release before the counters and time columns: opened, migrated, counted once.
    legacy = tmp_path / "legacy.db"
    with sqlite3.connect(legacy) as db:
        db.executescript("""
            CREATE TABLE frames (sequence INTEGER PRIMARY KEY, kind INTEGER NOT NULL, routine INTEGER NOT NULL,
                                 frame BLOB NOT NULL);
            CREATE TABLE counters (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
            CREATE TABLE mission_log (sequence INTEGER PRIMARY KEY, mission_id TEXT NOT NULL, payload BLOB NOT NULL);
            CREATE TABLE assignments (mission_id TEXT PRIMARY KEY, assignment BLOB NOT NULL);
            INSERT INTO counters VALUES ('last_sequence', 2);
            INSERT INTO frames VALUES (1, 1, 1, x'00'), (2, 1, 1, x'00');
            INSERT INTO mission_log VALUES (1, 'm', x'00'), (2, 'm', x'00');
            INSERT INTO assignments VALUES ('m', x'');
        """)
    with Spool(legacy) as spool:
        assert spool.stats().depth == 2 and len(spool.mission_log("m")) == 2  # kept: its age counts from now
        assert _raw(spool, Kind.KIND_POSITION) == 3 and spool.stats().depth == 3
