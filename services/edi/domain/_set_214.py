"""The 214 (Transportation Carrier Shipment Status Message, 004010) schema: what :func:`status_214` writes.

Element numbers, types, lengths and syntax notes follow the X12 004010 dictionary. Code lists are narrowed to what
this service sends (a partner's guide narrows the standard, never widens it): the shipment statuses (AT7-01) of
the run and ``SD`` (delayed, for exceptions), the reasons (AT7-02) of the exception table and ``NS``, the
appointment statuses (AT7-03), the time codes (AT7-07) of X12's element 623. Segments the writer does not send
keep their place in the order with their elements unchecked (``elements=None``).

Table (heading, one detail loop): ST, B10, L11 (300), MAN, Q7, K1, AT8, loop 0100 N1 (10: N1 N2 N3 N4 G61 L11),
loop 0150 MS3 (12), loop 0200 LX (999999: LX, loop 0205 AT7 (10: AT7 MS1 MS2), L11 (10), MAN, Q7, K1 (10), AT5,
AT8, loop 0210 CD3), SE.
"""

from __future__ import annotations

from ._schema import El, Loop, Seg, SetSchema

__all__ = ["APPOINTMENT_STATUSES", "SCHEMA_214", "STATUS_CODES", "STATUS_REASONS", "TIME_CODES"]

_V4010 = frozenset({"004010"})

#: AT7-01 (1650) as sent: X3 arrived at pickup, AF departed pickup, X6 en route, X1 arrived at delivery,
#: D1 delivered (unloaded), CD departed delivery, AG estimated delivery, SD shipment delayed.
STATUS_CODES = frozenset({"X3", "AF", "X6", "X1", "D1", "CD", "AG", "SD"})
#: AT7-02 / AT7-04 (1651) as sent: NS normal, NA normal appointment, A1 missed delivery, AY missed pickup,
#: AF accident, AG consignee related, AH driver related, AI mechanical breakdown, AJ other carrier related,
#: AM shipper related, AO weather or natural disaster, AU civil event, BE road conditions, BG other.
STATUS_REASONS = frozenset({"NS", "NA", "A1", "AY", "AF", "AG", "AH", "AI", "AJ", "AM", "AO", "AU", "BE", "BG"})
#: AT7-03 (1652): AA pickup appointment, AB delivery appointment.
APPOINTMENT_STATUSES = frozenset({"AA", "AB"})
#: X12 element 623: ISO offsets P01..P12 (01-12), M12..M01 (13-24), the North American zones (standard,
#: daylight, generic), GM, LT (local time) and UT.
TIME_CODES = frozenset({f"{n:02d}" for n in range(1, 25)} | {
    "AD", "AS", "AT", "CD", "CS", "CT", "ED", "ES", "ET", "GM", "HD", "HS", "HT", "LT", "MD", "MS", "MT", "ND",
    "NS", "NT", "PD", "PS", "PT", "UT"})


def _l11(max_use: int) -> Seg:
    return Seg("L11", max_use=max_use, rules=("P0102",), elements=(
        El("127", "AN", 1, 30), El("128", "ID", 2, 3), El("352", "AN", 1, 80)))


def _k1(max_use: int) -> Seg:
    return Seg("K1", max_use=max_use, elements=(El("61", "AN", 1, 30, mandatory=True), El("61", "AN", 1, 30)))


_B10 = Seg("B10", mandatory=True, rules=("R0106", "E0105", "P0506"), elements=(
    El("127", "AN", 1, 30), El("145", "AN", 1, 30), El("140", "ID", 2, 4, mandatory=True), El("71", "N0", 1, 3),
    El("128", "ID", 2, 3), El("127", "AN", 1, 30), El("1073", "ID", 1, 1)))

_AT7 = Seg("AT7", mandatory=True, rules=("E0103", "P0102", "P0304", "C0605", "C0706"), elements=(
    El("1650", "ID", 2, 2, codes=STATUS_CODES), El("1651", "ID", 2, 2, codes=STATUS_REASONS),
    El("1652", "ID", 2, 2, codes=APPOINTMENT_STATUSES), El("1651", "ID", 2, 2, codes=STATUS_REASONS),
    El("373", "DT", 8, 8), El("337", "TM", 4, 8), El("623", "ID", 2, 2, codes=TIME_CODES)))

_MS1 = Seg("MS1", rules=("L010203", "E0104", "C0201", "C0301", "P0405", "C0604", "C0705"), elements=(
    El("19", "AN", 2, 30), El("156", "ID", 2, 2), El("26", "ID", 2, 3), El("1654", "ID", 7, 7),
    El("1655", "ID", 7, 7), El("1280", "ID", 1, 1, codes=frozenset("EW")),
    El("1280", "ID", 1, 1, codes=frozenset("NS"))))

_MS2 = Seg("MS2", rules=("P0102", "C0402"), elements=(
    El("140", "ID", 2, 4), El("207", "AN", 1, 10), El("40", "ID", 2, 2), El("761", "N0", 1, 1)))

SCHEMA_214 = SetSchema("214", "QM", _V4010, (
    _B10,
    _l11(300),
    Seg("MAN", max_use=9999),
    Seg("Q7", max_use=10),
    _k1(10),
    Seg("AT8", max_use=10),
    Loop("0100", (Seg("N1"), Seg("N2"), Seg("N3", max_use=2), Seg("N4"), Seg("G61"), _l11(10)), max_use=10),
    Loop("0150", (Seg("MS3"),), max_use=12),
    Loop("0200", (
        Seg("LX", mandatory=True, elements=(El("554", "N0", 1, 6, mandatory=True),)),
        Loop("0205", (_AT7, _MS1, _MS2), max_use=10),
        _l11(10),
        Seg("MAN", max_use=9999),
        Seg("Q7", max_use=10),
        _k1(10),
        Seg("AT5", max_use=10),
        Seg("AT8", max_use=10),
        Loop("0210", (Seg("CD3"), Seg("L11", max_use=20), Seg("AT7", max_use=10), Seg("NM1"), Seg("Q7", max_use=10),
                      Seg("AT8", max_use=10)), max_use=1000),
    ), max_use=999999),
))
