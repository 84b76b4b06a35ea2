"""The 210 (Motor Carrier Freight Details and Invoice, 004010) schema: what :func:`invoice_210` writes.

Element numbers, types, lengths and syntax notes follow the X12 004010 dictionary. Money elements (B3-07, L1-04,
L3-05) are ``N2``: implied cents. The code lists checked are those this service decides: B3-04 (PP prepaid,
CC collect, TP third party), the rate qualifiers (L1-03) and billed-as qualifiers (L0-03) of the charge units it
bills in, and the weight codes. L1-08 (special charge code) is not narrowed: it comes from the partner's map.
Segments the writer does not send keep their place in the order, unchecked (``elements=None``).

Table: ST, B3, C2, C3, ITD, N9 (300), G62 (6), R3 (12), H3 (6), K1 (10), loop 0100 N1 (10: N1 N2 N3 N4 N9),
loop 0200 N7 (10), detail loop 0400 LX (9999: LX, N9 (5), POD, L5 (30), loop 0410 H1, L0 (10), L1 (10), L4 (10),
L7 (10), K1 (10)), summary L3, SE.
"""

from __future__ import annotations

from ._schema import El, Loop, Seg, SetSchema

__all__ = ["BILLED_AS", "PAYMENT_METHODS", "RATE_QUALIFIERS", "SCHEMA_210"]

_V4010 = frozenset({"004010"})

#: B3-04 (146): prepaid, collect, third party.
PAYMENT_METHODS = frozenset({"PP", "CC", "TP"})
#: L1-03 / L3-04 (122) as sent: PM per mile, PR per hour, PL per load, FR flat rate, CT percentage of total.
RATE_QUALIFIERS = frozenset({"PM", "PR", "PL", "FR", "CT"})
#: L0-03 (221) as sent: DM miles, TH hours, NL load, FR flat rate.
BILLED_AS = frozenset({"DM", "TH", "NL", "FR"})
_WEIGHT_QUALIFIERS = frozenset({"G", "N", "B", "FR"})  # 187: gross, net, billed, freight
_WEIGHT_UNITS = frozenset({"L", "K"})  # 188: pounds, kilograms


def _n9(max_use: int) -> Seg:
    return Seg("N9", max_use=max_use, rules=("R0203",), elements=(
        El("128", "ID", 2, 3, mandatory=True), El("127", "AN", 1, 30), El("369", "AN", 1, 45), El("373", "DT", 8, 8),
        El("337", "TM", 4, 8), El("623", "ID", 2, 2)))


def _k1(max_use: int) -> Seg:
    return Seg("K1", max_use=max_use, elements=(El("61", "AN", 1, 30, mandatory=True), El("61", "AN", 1, 30)))


_B3 = Seg("B3", mandatory=True, rules=("P0910",), elements=(
    El("147", "ID", 1, 1), El("76", "AN", 1, 22, mandatory=True), El("145", "AN", 1, 30),
    El("146", "ID", 2, 2, mandatory=True, codes=PAYMENT_METHODS), El("188", "ID", 1, 1, codes=_WEIGHT_UNITS),
    El("373", "DT", 8, 8, mandatory=True), El("193", "N2", 1, 12, mandatory=True), El("202", "ID", 2, 2),
    El("32", "DT", 8, 8), El("374", "ID", 3, 3), El("140", "ID", 2, 4, mandatory=True), El("373", "DT", 8, 8),
    El("168", "ID", 1, 2), El("1492", "ID", 2, 2)))

_C3 = Seg("C3", elements=(El("100", "ID", 3, 3, mandatory=True), El("280", "R", 4, 10), El("100", "ID", 3, 3),
                          El("100", "ID", 3, 3)))

_PARTY = Loop("0100", (
    Seg("N1", mandatory=True, rules=("R0203", "P0304"), elements=(
        El("98", "ID", 2, 3, mandatory=True), El("93", "AN", 1, 60), El("66", "ID", 1, 2), El("67", "AN", 2, 80),
        El("706", "ID", 2, 2), El("98", "ID", 2, 3))),
    Seg("N2", elements=(El("93", "AN", 1, 60, mandatory=True), El("93", "AN", 1, 60))),
    Seg("N3", max_use=2, elements=(El("166", "AN", 1, 55, mandatory=True), El("166", "AN", 1, 55))),
    Seg("N4", rules=("C0605",), elements=(
        El("19", "AN", 2, 30), El("156", "ID", 2, 2), El("116", "ID", 3, 15), El("26", "ID", 2, 3),
        El("309", "ID", 1, 2), El("310", "AN", 1, 30))),
    _n9(5),
), max_use=10)

_L5 = Seg("L5", max_use=30, rules=("P0304",), elements=(
    El("213", "N0", 1, 3), El("79", "AN", 1, 50), El("22", "AN", 1, 30), El("23", "ID", 1, 1),
    El("103", "AN", 3, 5), El("87", "AN", 1, 48), El("88", "ID", 1, 2), El("23", "ID", 1, 1),
    El("22", "AN", 1, 30), El("595", "ID", 1, 1)))

_L0 = Seg("L0", max_use=10, rules=("P0203", "P0405", "P0607", "P0809"), elements=(
    El("213", "N0", 1, 3), El("220", "R", 1, 11), El("221", "ID", 2, 2, codes=BILLED_AS), El("81", "R", 1, 10),
    El("187", "ID", 1, 2, codes=_WEIGHT_QUALIFIERS), El("183", "R", 1, 8), El("184", "ID", 1, 1),
    El("80", "N0", 1, 7), El("211", "ID", 3, 5), El("458", "AN", 2, 25), El("188", "ID", 1, 1, codes=_WEIGHT_UNITS),
    El("56", "ID", 2, 2), El("380", "R", 1, 15)))

_L1 = Seg("L1", max_use=10, rules=("P0203", "R040506"), elements=(
    El("213", "N0", 1, 3), El("60", "R", 1, 9), El("122", "ID", 2, 2, codes=RATE_QUALIFIERS), El("58", "N2", 1, 12),
    El("191", "N2", 1, 9), El("117", "N2", 1, 9), El("120", "AN", 3, 9), El("150", "ID", 3, 3), El("121", "ID", 1, 3),
    El("39", "ID", 1, 1), El("16", "ID", 1, 1), El("276", "AN", 2, 25)))

_L3 = Seg("L3", mandatory=True, rules=("P0102", "P0304", "P0910"), elements=(
    El("81", "R", 1, 10), El("187", "ID", 1, 2, codes=_WEIGHT_QUALIFIERS), El("60", "R", 1, 9),
    El("122", "ID", 2, 2, codes=RATE_QUALIFIERS), El("58", "N2", 1, 12), El("191", "N2", 1, 9),
    El("117", "N2", 1, 9), El("150", "ID", 3, 3), El("183", "R", 1, 8), El("184", "ID", 1, 1), El("80", "N0", 1, 7),
    El("188", "ID", 1, 1, codes=_WEIGHT_UNITS), El("171", "AN", 1, 7), El("74", "N2", 2, 12), El("122", "ID", 2, 2)))

SCHEMA_210 = SetSchema("210", "IM", _V4010, (
    _B3,
    Seg("C2"),
    _C3,
    Seg("ITD"),
    _n9(300),
    Seg("G62", max_use=6),
    Seg("R3", max_use=12),
    Seg("H3", max_use=6),
    _k1(10),
    _PARTY,
    Loop("0200", (Seg("N7"), Seg("M7", max_use=5)), max_use=10),
    Loop("0400", (
        Seg("LX", mandatory=True, elements=(El("554", "N0", 1, 6, mandatory=True),)),
        _n9(5),
        Seg("POD"),
        _L5,
        Loop("0410", (Seg("H1"), Seg("H2", max_use=2)), max_use=3),
        _L0,
        _L1,
        Seg("L4", max_use=10),
        Seg("L7", max_use=10),
        _k1(10),
    ), max_use=9999),
    _L3,
))
