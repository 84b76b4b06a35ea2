"""Control numbers from durable counters: formats, the wrap, an interchange's allocation."""

from __future__ import annotations

import pytest

from services.edi.domain import CONTROL_MAXIMUM, ControlCounters, ControlKind, control_number


@pytest.mark.parametrize(("kind", "counter", "number"), [
    (ControlKind.INTERCHANGE, 1, "000000001"),
    (ControlKind.GROUP, 1, "1"),
    (ControlKind.SET, 1, "0001"),
    (ControlKind.SET, 123_456, "123456"),
    (ControlKind.INTERCHANGE, CONTROL_MAXIMUM, "999999999"),
    (ControlKind.INTERCHANGE, CONTROL_MAXIMUM + 1, "000000001"),  # the wrap skips 0
    (ControlKind.GROUP, 2 * CONTROL_MAXIMUM + 5, "5"),
])
def test_control_numbers_have_their_formats_and_wrap_to_1(kind: ControlKind, counter: int, number: str) -> None:
    assert control_number(kind, counter) == number


def test_counters_count_from_one() -> None:
    with pytest.raises(ValueError, match="from 1"):
        control_number(ControlKind.SET, 0)


def test_an_allocation_numbers_an_interchange_and_returns_the_counters_after_it() -> None:
    allocation, after = ControlCounters(interchange=41, group=7, set=99).allocate((2, 1))
    assert allocation.interchange == "000000042"
    assert allocation.groups == ("8", "9")
    assert allocation.sets == (("0100", "0101"), ("0102",))
    assert after == ControlCounters(42, 9, 102)
    again, _ = after.allocate()
    assert (again.interchange, again.groups, again.sets) == ("000000043", ("10",), (("0103",),))
    with pytest.raises(ValueError, match="at least one"):
        after.allocate((0,))
