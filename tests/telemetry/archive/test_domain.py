"""The archive's pure rules: keys, part cutting, due frames, retention dates, the trim boundary."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime

from hypothesis import given
from hypothesis import strategies as st

from services.telemetry.domain.archive import (
    ARCHIVE_PREFIX,
    PartEntry,
    PartPlan,
    day_of,
    due_count,
    manifest_key,
    part_key,
    partition,
    plan_parts,
    retain_until_ms,
    trim_boundary,
)

DAY_MS = 86_400_000
T0 = int(datetime(2026, 3, 1, tzinfo=UTC).timestamp() * 1000)


def test_layout_of_keys() -> None:
    p = partition("acme", "AU-TRK-1001", "2026-03-01")
    assert p == "archive/v1/carrier=acme/vehicle=AU-TRK-1001/date=2026-03-01"
    assert partition("", "AU-TRK-1001", "2026-03-01").startswith("archive/v1/carrier=_unassigned/")
    key = part_key(p, 7, 12)
    assert key == p + "/part-00000000000000000007-00000000000000000012.parquet"
    assert manifest_key(key) == ("archive/v1/manifest/carrier=acme/vehicle=AU-TRK-1001/date=2026-03-01/"
                                 "part-00000000000000000007-00000000000000000012.json")
    # Ids that are not path-safe stay one segment each (no '/', no '..').
    odd = partition("a/b", "..", "2026-03-01")
    assert odd.split("/")[2:4] == ["carrier=a%2Fb", "vehicle=.."] and odd.count("/") == 4


@given(st.integers(1, 2**63), st.integers(0, 2**63))
def test_part_keys_sort_by_sequence(first: int, length: int) -> None:
    p = partition("c", "v", "2026-03-01")
    a, b = part_key(p, first, first + length), part_key(p, first + length + 1, first + length + 2)
    assert a < b


def test_manifest_key_refuses_other_keys() -> None:
    for bad in ("archive/v1/x.parquet", "other/part-1-2.parquet"):
        try:
            manifest_key(bad)
        except ValueError:
            continue
        raise AssertionError(bad)


@st.composite
def stored_frames(draw: st.DrawFn) -> list[tuple[int, int]]:
    """Ascending sequences with gaps, device times mostly ascending across a few days, some jumping back."""
    sequences = sorted(draw(st.sets(st.integers(1, 5000), max_size=120)))
    out, t = [], T0
    for s in sequences:
        t += draw(st.sampled_from([1000, 60_000, DAY_MS // 3, -DAY_MS]))
        out.append((s, t))
    return out


@given(stored_frames(), st.integers(1, 50))
def test_parts_are_disjoint_runs_of_one_day_covering_every_frame(frames: list[tuple[int, int]],
                                                                  max_frames: int) -> None:
    plans = plan_parts("V", "c", frames, retention_days=30, max_frames=max_frames)
    covered = []
    for plan in plans:
        run = [f for f in frames if plan.first <= f[0] <= plan.last]
        assert len(run) == plan.count <= max_frames
        assert {day_of(t) for _, t in run} == {plan.day}
        assert plan.retain_until_ms == retain_until_ms(plan.day, 30)
        covered += [s for s, _ in run]
    assert covered == [s for s, _ in frames]  # every frame once, in order: no two parts share a sequence
    assert all(a.last < b.first for a, b in itertools.pairwise(plans))


def test_retention_counts_from_the_end_of_the_data_day() -> None:
    end = retain_until_ms("2026-03-01", 10)
    assert datetime.fromtimestamp(end / 1000, UTC) == datetime(2026, 3, 12, tzinfo=UTC)


@given(st.lists(st.integers(0, 1000), max_size=30).map(sorted), st.integers(0, 1000))
def test_due_frames_are_the_prefix_received_by_the_cutoff(receive: list[int], cutoff: int) -> None:
    n = due_count(receive, cutoff)
    assert all(t <= cutoff for t in receive[:n]) and all(t > cutoff for t in receive[n:])


@given(st.integers(0, 10**6), st.integers(0, 10**6))
def test_trim_never_passes_the_watermark_nor_the_hot_window(archived: int, expired: int) -> None:
    boundary = trim_boundary(archived, expired)
    assert boundary <= archived and boundary <= expired and boundary >= 0


def test_plans_and_entries_round_trip() -> None:
    plan = PartPlan("V", "c", "2026-03-01", 1, 9, 9, 123)
    assert PartPlan.from_json(plan.to_json()) == plan and plan.key.startswith(ARCHIVE_PREFIX)
    entry = PartEntry(plan.key, "ab" * 32, 10, 1, 9, 9, "v1", 123)
    assert PartEntry.from_json(entry.to_json()) == entry
