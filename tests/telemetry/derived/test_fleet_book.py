"""The fleet book (services/telemetry/domain/fleet.py): memory per frame, a report per flush, at once on a
connectivity change, nothing lost when a report fails."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from services.telemetry.domain.fleet import OFFLINE, ONLINE, FleetBook
from services.telemetry.domain.geometry import LatLon

T0 = datetime(2026, 12, 2, 12, tzinfo=UTC)


def _s(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def test_a_thousand_frames_are_one_report_with_the_newest_position() -> None:
    book = FleetBook()
    assert book.heard("T1", _s(0))  # first heard: due at once
    for i in range(1000):
        assert not book.heard("T1", _s(i / 10), location=LatLon(30 + i / 1000, -97), location_time=_s(i / 10))
    [report] = book.take(500)
    assert report.connectivity == ONLINE and report.location == LatLon(30.999, -97) and report.last_seen == _s(99.9)
    assert book.take(500) == []  # nothing new since


def test_an_older_fix_does_not_replace_a_newer_one() -> None:
    book = FleetBook()
    book.heard("T1", _s(10), location=LatLon(1, 1), location_time=_s(10))
    book.heard("T1", _s(11), location=LatLon(2, 2), location_time=_s(5))  # a replayed backlog frame
    assert book.take(1)[0].location == LatLon(1, 1)


def test_offline_is_due_at_once_and_leaves_the_book_once_reported() -> None:
    book = FleetBook()
    book.heard("T1", _s(0))
    book.take(10)
    assert not book.offline("T1", _s(0), silent_since=_s(-1))  # a frame came after the silence began
    assert book.offline("T1", _s(0), silent_since=_s(5))
    [report] = book.take(10)
    assert report.connectivity == OFFLINE and len(book) == 0
    assert book.heard("T1", _s(20))  # back: due at once again


def test_estimates_per_stop_newest_by_device_time_and_a_new_mission_drops_the_old() -> None:
    book = FleetBook()
    book.heard("T1", _s(0))
    book.estimate("T1", "missions/a", 1, _s(3600), _s(10))
    book.estimate("T1", "missions/a", 1, _s(3000), _s(5))  # older frame: ignored
    assert book.take(1)[0].estimates == {1: (_s(3600), _s(10))}
    book.estimate("T1", "missions/a", 1, _s(3500), _s(20))
    book.estimate("T1", "missions/b", 0, _s(900), _s(21))
    [report] = book.take(1)
    assert report.mission == "missions/b" and report.estimates == {0: (_s(900), _s(21))}
    book.estimate("T9", "missions/c", 0, _s(1), _s(1))  # never heard here: not on the book
    assert book.take(5) == []


def test_a_failed_report_is_given_back_whole() -> None:
    book = FleetBook()
    for i in range(5):
        book.heard(f"T{i}", _s(i), location=LatLon(i, i), location_time=_s(i))
    book.estimate("T0", "missions/a", 1, _s(3600), _s(1))
    first = book.take(3)
    assert [r.vehicle_id for r in first] == ["T0", "T1", "T2"] and book.due() == 2
    book.give_back(first)
    again = book.take(10)
    assert {r.vehicle_id for r in again} == {f"T{i}" for i in range(5)}
    assert next(r for r in again if r.vehicle_id == "T0").estimates == {1: (_s(3600), _s(1))}
    book.offline("T1", _s(1), silent_since=_s(10))
    lost = book.take(10)
    book.give_back(lost)  # an offline report that failed comes back although it left the book
    assert [r.connectivity for r in book.take(10)] == [OFFLINE]


def test_a_flush_takes_what_was_due_when_it_began_not_what_changed_since() -> None:
    book = FleetBook()
    for i in range(3):
        book.heard(f"T{i}", _s(0))
    through = book.mark()
    first = book.take(2, through=through)
    book.heard("T0", _s(1))  # a frame while the first batch is on its way: the next flush's
    book.heard("T9", _s(1))  # new here (news, but after the mark)
    rest = book.take(2, through=through)
    assert [r.vehicle_id for r in first + rest] == ["T0", "T1", "T2"]
    assert book.take(10, through=through) == []  # done, although T0 and T9 are dirty again
    assert {r.vehicle_id for r in book.take(10, through=book.mark())} == {"T0", "T9"}


def test_an_early_round_carries_only_connectivity_changes() -> None:
    book = FleetBook()
    book.heard("T1", _s(0))
    book.take(10)
    book.heard("T1", _s(1), location=LatLon(30, -97), location_time=_s(1))  # a position: waits for the round
    assert book.heard("T2", _s(1))  # came online: news
    assert [r.vehicle_id for r in book.take(10, urgent_only=True)] == ["T2"]
    assert [r.vehicle_id for r in book.take(10)] == ["T1"]


def test_a_report_given_back_restores_what_the_roster_was_told() -> None:
    book = FleetBook()
    assert book.heard("T1", _s(0))
    book.take(10)  # reported online
    book.heard("T1", _s(1))
    failed = book.take(10)
    book.give_back(failed)
    # The roster still knows T1 online: the next frame is no news (it used to be, so every frame retried).
    assert not book.heard("T1", _s(2))
    assert book.offline("T1", _s(2), silent_since=_s(3))  # a real change still is
    went = book.take(10)
    book.give_back(went)
    assert not book.heard("T1", _s(4))  # back online before the roster heard it went: nothing to announce
    [again] = book.take(10)
    assert again.connectivity == ONLINE and again.was_reported == ONLINE


def test_an_invalid_fix_is_not_kept_but_the_vehicle_was_heard() -> None:
    book = FleetBook()
    book.heard("T1", _s(0), location=LatLon(30, -97), location_time=_s(0))
    for bad in (LatLon(0, 0), LatLon(float("nan"), -97), LatLon(30, float("inf")), LatLon(91, 0), LatLon(0, 181)):
        book.heard("T1", _s(1), location=bad, location_time=_s(1))
    [report] = book.take(10)
    assert report.location == LatLon(30, -97) and report.location_time == _s(0) and report.last_seen == _s(1)
