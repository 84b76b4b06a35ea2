"""Control numbers: ISA13, GS06 and ST02 per trading partner, as a pure mapping from a durable counter.

The store (later) keeps, per partner and kind, one counter that only ever grows (an ``INCRBY`` in one atomic
operation with what it numbers); this module turns counter values into control numbers, so the numbering rules
live in one place and need no I/O:

* ISA13: 9 digits, zero-padded (``000000001``);
* GS06: 1 to 9 digits, unpadded (``1``);
* ST02: 4 to 9 digits, zero-padded to at least 4 (``0001``); one sequence per partner (not restarted per group),
  so an inbound 997's AK2-02 names one set of ours on its own;
* a counter ``n`` (1, 2, ...) maps to ``((n - 1) mod 999,999,999) + 1``: after 999,999,999 the next number is 1
  again (0 is never used). At a few thousand documents a day a wrap is centuries away; the duplicate window a
  partner keeps (30 days by default, the notes) is far shorter than a wrap, so a number is never seen twice.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

__all__ = ["CONTROL_MAXIMUM", "Allocation", "ControlCounters", "ControlKind", "control_number"]

CONTROL_MAXIMUM = 999_999_999


class ControlKind(Enum):
    """Which control number: its segment element and its printed width (minimum digits)."""

    INTERCHANGE = ("ISA13", 9)
    GROUP = ("GS06", 1)
    SET = ("ST02", 4)

    @property
    def width(self) -> int:
        return self.value[1]


def control_number(kind: ControlKind, counter: int) -> str:
    """The control number for the ``counter``-th allocation (counting from 1) of ``kind``."""
    if counter < 1:
        raise ValueError(f"control counters count from 1, not {counter}")
    number = (counter - 1) % CONTROL_MAXIMUM + 1
    return f"{number:0{kind.width}d}"


@dataclass(frozen=True)
class Allocation:
    """The control numbers of one outbound interchange: its ISA13, a GS06 per group, the ST02s of each group."""

    interchange: str
    groups: tuple[str, ...]
    sets: tuple[tuple[str, ...], ...]


@dataclass(frozen=True)
class ControlCounters:
    """A partner's counters: the last value used of each kind (0: none yet). Pure: :meth:`allocate` returns the
    numbers and the counters after them; the store persists the new counters atomically with the documents."""

    interchange: int = 0
    group: int = 0
    set: int = 0

    def allocate(self, sets_per_group: tuple[int, ...] = (1,)) -> tuple[Allocation, ControlCounters]:
        """Numbers for one interchange holding ``len(sets_per_group)`` groups of so many sets each."""
        if any(n < 1 for n in sets_per_group):
            raise ValueError("a group holds at least one set")
        isa13 = control_number(ControlKind.INTERCHANGE, self.interchange + 1)
        groups = tuple(control_number(ControlKind.GROUP, self.group + k) for k in range(1, len(sets_per_group) + 1))
        sets, used = [], self.set
        for count in sets_per_group:
            sets.append(tuple(control_number(ControlKind.SET, used + k) for k in range(1, count + 1)))
            used += count
        after = ControlCounters(self.interchange + 1, self.group + len(sets_per_group), used)
        return Allocation(isa13, groups, tuple(sets)), after
