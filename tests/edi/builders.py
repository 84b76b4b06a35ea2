"""Small builders the EDI tests share: envelopes around segments, and the sample files."""

from __future__ import annotations

from pathlib import Path

from services.edi.domain import Delimiters, FunctionalGroup, Interchange, Segment, TransactionSet

SAMPLES = Path(__file__).parent / "samples"


def sample(name: str) -> bytes:
    return (SAMPLES / name).read_bytes()


def stops(*names: str) -> tuple[Segment, ...]:
    """A minimal valid 204 body with one stop per name (the first loads, the others unload)."""
    body = [Segment.of("B2", "", "HMSH", "", "SHIP-1", "", "PP"), Segment.of("B2A", "00", "LT")]
    for number, name in enumerate(names, 1):
        body += [Segment.of("S5", str(number), "LD" if number == 1 else "UL"),
                 Segment.of("N1", "SH" if number == 1 else "CN", name, "93", f"LOC-{number}")]
    return tuple(body)


def set_204(control: str = "0001", body: tuple[Segment, ...] | None = None) -> TransactionSet:
    return TransactionSet("204", control, body if body is not None else stops("Origin Yard", "Destination DC"))


def group(*sets: TransactionSet, functional_id: str = "SM", control: str = "77", version: str = "004010") -> \
        FunctionalGroup:
    return FunctionalGroup(functional_id, "PRAIRIEFRT", "HAULMESH", "20260315", "0905", control, version,
                           sets or (set_204(),))


def interchange(*groups: FunctionalGroup, control: str = "000000077", version: str = "00401",
                delimiters: Delimiters | None = None, **fields) -> Interchange:
    return Interchange("ZZ", "PRAIRIEFRT", "ZZ", "HAULMESH", "260315", "0905", control, version,
                       groups=groups if groups else (group(),),
                       delimiters=delimiters or Delimiters(line_end="\n"), **fields)
