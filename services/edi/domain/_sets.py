"""The set schemas: the 997 (004010 and 005010) and the 204 (004010), and the default :data:`CATALOG`.

Element numbers, types, lengths and syntax notes follow the X12 004010 dictionary (checked against public
references of the standard; a partner's guide narrows it, never widens it). Code lists appear where the code
decides what this service does: a 204's purpose (B2A-01) and stop reason (S5-02) are the ones it acts on, so
anything else is answered in the 997 as an invalid code (AK4 code 7) rather than guessed at. The 997's own code
lists are the standard's. Segments the 204 mapping does not read (equipment, hazardous materials, order detail)
keep their place in the order with their elements unchecked (``elements=None``), so a partner who sends them is
not rejected for it.

Each 204 element and segment says whether the reading (_load_tender.py) uses it (``used=False`` where it does
not; see _schema.py for what that makes of an error in it: noted in the 997, AK5 ``E``, the tender still made).
The tests hold these flags to the reader: every element marked unused is corrupted and the tender read must not
change; every element ``haulmesh edi check`` measures as mapped, kept or checked must be marked used.

The 990/214/210 schemas come with their writers (_set_990, _set_214, _set_210: they are written, not read, and
validate what we send). The 005010 204, 990, 214 and 210 are their 004010 schemas with the differences of
_set_5010.py applied (L11-01, N9-02 and B10-01 grew to 50 characters; L11 and N4 gained elements); the catalog
finds a set's schema by ST01 and GS08, and :func:`schema_for` gives a writer the schema of the partner's version.
"""

from __future__ import annotations

from ._errors import WriteRefused
from ._schema import Catalog, El, Loop, Seg, SetSchema
from ._set_210 import SCHEMA_210
from ._set_214 import SCHEMA_214
from ._set_990 import SCHEMA_990
from ._set_5010 import five_010

__all__ = ["CATALOG", "FUNCTIONAL_IDS", "PURPOSES", "SCHEMA_204", "SCHEMA_204_5010", "SCHEMA_210_5010",
           "SCHEMA_214_5010", "SCHEMA_990_5010", "SCHEMA_997", "SCHEMA_997_5010", "STOP_REASONS", "schema_for"]

#: GS01 per set (the notes' checklist).
FUNCTIONAL_IDS = {"204": "SM", "990": "GF", "214": "QM", "210": "IM", "997": "FA"}

_V4010 = frozenset({"004010"})
_V5010 = frozenset({"005010"})


def _codes(*values: str) -> frozenset[str]:
    return frozenset(values)


# --- 997 -----------------------------------------------------------------------------------------------------

_AK3_CODES = _codes(*(str(n) for n in range(1, 9)))
_AK4_CODES = _codes(*(str(n) for n in range(1, 11)), "12", "13")
_AK5_STATUS = _codes("A", "E", "M", "R", "W", "X")
_AK5_CODES = _codes(*(str(n) for n in range(1, 28)))
_AK9_STATUS = _codes("A", "E", "M", "P", "R", "W", "X")
_AK9_CODES = _codes(*(str(n) for n in range(1, 7)), *(str(n) for n in range(10, 27)))


def _schema_997(version: frozenset[str], five: bool) -> SetSchema:
    c030 = (El("722", "N0", 1, 2, mandatory=True), El("1528", "N0", 1, 2)) + ((El("1686", "N0", 1, 4),) if five
                                                                              else ())
    ak1 = (El("479", "ID", 2, 2, mandatory=True), El("28", "N0", 1, 9, mandatory=True)) + (
        (El("480", "AN", 1, 12),) if five else ())
    ak2 = (El("143", "ID", 3, 3, mandatory=True), El("329", "AN", 4, 9, mandatory=True)) + (
        (El("1705", "AN", 1, 35),) if five else ())
    return SetSchema("997", "FA", version, (
        Seg("AK1", mandatory=True, elements=ak1),
        Loop("AK2", (
            Seg("AK2", elements=ak2),
            Loop("AK3", (
                Seg("AK3", elements=(El("721", "ID", 2, 3, mandatory=True), El("719", "N0", 1, 6, mandatory=True),
                                     El("447", "AN", 1, 4), El("720", "ID", 1, 3, codes=_AK3_CODES))),
                Seg("AK4", max_use=99, elements=(
                    El("C030", "AN", 1, 2, mandatory=True, components=c030), El("725", "N0", 1, 4),
                    El("723", "ID", 1, 3, mandatory=True, codes=_AK4_CODES), El("724", "AN", 1, 99))),
            ), max_use=999999),
            Seg("AK5", mandatory=True, elements=(
                El("717", "ID", 1, 1, mandatory=True, codes=_AK5_STATUS),
                *(El("718", "ID", 1, 3, codes=_AK5_CODES) for _ in range(5)))),
        ), max_use=999999),
        Seg("AK9", mandatory=True, elements=(
            El("715", "ID", 1, 1, mandatory=True, codes=_AK9_STATUS), El("97", "N0", 1, 6, mandatory=True),
            El("123", "N0", 1, 6, mandatory=True), El("2", "N0", 1, 6, mandatory=True),
            *(El("716", "ID", 1, 3, codes=_AK9_CODES) for _ in range(5)))),
    ))


SCHEMA_997 = _schema_997(_V4010, five=False)
SCHEMA_997_5010 = _schema_997(_V5010, five=True)

# --- 204 (004010) ------------------------------------------------------------------------------------------------

#: B2A-01: 00 original, 01 cancellation, 04 change, 05 replace (the purposes a tender has).
PURPOSES = _codes("00", "01", "04", "05")
#: S5-02: load/unload, complete load/unload, part load/unload.
STOP_REASONS = _codes("LD", "UL", "CL", "CU", "PL", "PU")
#: B2-06 (146): shipment method of payment.
_PAYMENT = _codes("11", "BP", "CA", "CC", "CD", "CF", "DE", "DF", "FO", "HP", "MX", "NC", "NR", "PA", "PB", "PC",
                  "PD", "PE", "PL", "PO", "PP", "PS", "PU", "RC", "RF", "RS", "SD", "TP", "WC")

#: Read: B2-02 SCAC, B2-04 shipment id, B2-06 payment method.
_B2 = Seg("B2", mandatory=True, elements=(
    El("375", "ID", 2, 2, used=False), El("140", "ID", 2, 4), El("159", "ID", 6, 9, used=False), El("145", "AN", 1, 30),
    El("188", "ID", 1, 1, used=False), El("146", "ID", 2, 2, mandatory=True, codes=_PAYMENT),
    El("147", "ID", 1, 1, used=False), El("86", "N0", 1, 3, used=False), El("458", "ID", 1, 1, used=False),
    El("171", "ID", 2, 2, used=False), El("335", "ID", 3, 3, used=False), El("591", "ID", 3, 3, used=False)))
_B2A = Seg("B2A", mandatory=True, elements=(El("353", "ID", 2, 2, mandatory=True, codes=PURPOSES),
                                             El("346", "ID", 2, 2)))


def _l11(max_use: int) -> Seg:
    return Seg("L11", max_use=max_use, rules=("P0102",), elements=(
        El("127", "AN", 1, 30), El("128", "ID", 2, 3), El("352", "AN", 1, 80)))


def _g62(max_use: int, *, used: bool = True) -> Seg:
    return Seg("G62", max_use=max_use, used=used, rules=("R0103", "P0102", "P0304"), elements=(
        El("432", "ID", 2, 2), El("373", "DT", 8, 8), El("176", "ID", 1, 2), El("337", "TM", 4, 8),
        El("623", "ID", 2, 2)))


_MS3 = Seg("MS3", used=False, elements=(El("140", "ID", 2, 4, mandatory=True), El("133", "ID", 1, 2, mandatory=True),
                            El("19", "AN", 2, 30), El("91", "ID", 1, 2), El("156", "ID", 2, 2)))


def _at5(max_use: int) -> Seg:
    return Seg("AT5", max_use=max_use, used=False, rules=("R010203",), elements=(
        El("152", "ID", 2, 3), El("560", "ID", 2, 10), El("153", "AN", 2, 30)))


_PLD = Seg("PLD", used=False, rules=("P0304",), elements=(El("406", "N0", 1, 3, mandatory=True), El("399", "ID", 1, 1),
                                              El("188", "ID", 1, 1), El("81", "R", 1, 10)))


def _nte(max_use: int) -> Seg:
    # A longer note is kept cut to 80 characters (noted in the 997): the load is no less tenderable for it.
    return Seg("NTE", max_use=max_use, elements=(El("363", "ID", 3, 3),
                                                  El("352", "AN", 1, 80, mandatory=True, cut=True)))


def _at8(max_use: int = 1, *, used: bool = True) -> Seg:
    """Read: AT8-01..04, weight qualifier, unit, weight and lading quantity (not the volume)."""
    return Seg("AT8", max_use=max_use, used=used, rules=("P010203", "P0607"), elements=(
        El("187", "ID", 1, 2), El("188", "ID", 1, 1), El("81", "R", 1, 10), El("80", "N0", 1, 7),
        El("80", "N0", 1, 7, used=False), El("184", "ID", 1, 1, used=False), El("183", "R", 1, 8, used=False)))


def _party(loop_id: str, max_use: int, *, references: bool) -> Loop:
    """N1 name, N2 more name, N3 street (2), N4 city/state/ZIP/country, [L11 references], G61 contacts."""
    return Loop(loop_id, (
        Seg("N1", rules=("R0203", "P0304"), elements=(
            El("98", "ID", 2, 3, mandatory=True), El("93", "AN", 1, 60), El("66", "ID", 1, 2), El("67", "AN", 2, 80),
            El("706", "ID", 2, 2, used=False), El("98", "ID", 2, 3, used=False))),
        Seg("N2", elements=(El("93", "AN", 1, 60, mandatory=True), El("93", "AN", 1, 60))),
        Seg("N3", max_use=2, elements=(El("166", "AN", 1, 55, mandatory=True), El("166", "AN", 1, 55))),
        Seg("N4", rules=("C0605",), elements=(
            El("19", "AN", 2, 30), El("156", "ID", 2, 2), El("116", "ID", 3, 15), El("26", "ID", 2, 3),
            El("309", "ID", 1, 2, used=False), El("310", "AN", 1, 30, used=False))),
        *((_l11(5),) if references else ()),
        Seg("G61", max_use=3, rules=("P0304",), elements=(
            El("366", "ID", 2, 2, mandatory=True), El("93", "AN", 1, 60, mandatory=True), El("365", "ID", 2, 2),
            El("364", "AN", 1, 80), El("443", "AN", 1, 20, used=False))),
    ), max_use=max_use)


def _l5(*, used: bool = True) -> Seg:
    """Read: L5-01..04, lading line, description, commodity code and its qualifier."""
    return Seg("L5", used=used, rules=("P0304",), elements=(
        El("213", "N0", 1, 3), El("79", "AN", 1, 50), El("22", "AN", 1, 30), El("23", "ID", 1, 1),
        *(El(ref, kind, low, high, used=False) for ref, kind, low, high in (
            ("103", "AN", 3, 5), ("87", "AN", 1, 48), ("88", "ID", 1, 2), ("23", "ID", 1, 1), ("22", "AN", 1, 30),
            ("595", "ID", 1, 1)))))


#: LH1's presence is read (a hazardous load, declined over EDI); the detail is not.
_HAZMAT = Loop("0330", (Seg("LH1"), *(Seg(i, max_use=n, used=False) for i, n in (
    ("LH2", 4), ("LH3", 10), ("LFH", 20), ("LEP", 3), ("LH4", 1), ("LHT", 3), ("LHR", 5)))), max_use=100)

#: Read: L3-01 weight, -02 its qualifier, -05 the offered rate, -11 lading quantity, -12 the weight's unit.
_L3 = Seg("L3", rules=("P0102", "P0304", "P0910"), elements=(
    El("81", "R", 1, 10), El("187", "ID", 1, 2), El("60", "R", 1, 9, used=False), El("122", "ID", 2, 2, used=False),
    El("58", "N2", 1, 12), El("191", "N2", 1, 9, used=False), El("117", "N2", 1, 9, used=False),
    El("150", "ID", 3, 3, used=False), El("183", "R", 1, 8, used=False), El("184", "ID", 1, 1, used=False),
    El("80", "N0", 1, 7), El("188", "ID", 1, 1), El("171", "AN", 1, 7, used=False), El("74", "N2", 2, 12, used=False),
    El("122", "ID", 2, 2, used=False)))

SCHEMA_204 = SetSchema("204", "SM", _V4010, (
    _B2,
    _B2A,
    _l11(50),
    _g62(1),  # G62*64: must respond by
    _MS3,
    _at5(6),
    _PLD,
    Seg("LH6", max_use=6),  # its presence is read (hazardous)
    _nte(10),
    _party("0100", 5, references=True),  # bill-to and shipment-level parties
    Loop("0200", (Seg("N7", used=False), Seg("N7A", used=False), Seg("N7B", used=False), Seg("MEA", used=False),
                  Seg("M7", max_use=2, used=False)), max_use=10),  # equipment: not read
    Loop("0300", (  # one stop
        Seg("S5", mandatory=True, rules=("P0304", "P0506", "P0708"), elements=(
            El("165", "N0", 1, 3, mandatory=True), El("163", "ID", 2, 2, mandatory=True, codes=STOP_REASONS),
            El("81", "R", 1, 10), El("188", "ID", 1, 1), El("382", "R", 1, 10), El("355", "ID", 2, 2),
            El("183", "R", 1, 8, used=False), El("184", "ID", 1, 1, used=False), El("352", "AN", 1, 80, used=False),
            El("154", "ID", 6, 9, used=False), El("190", "ID", 1, 1, used=False))),
        _l11(50),
        _g62(2),  # at most two: one window (x12.org DM#084202)
        _at8(),
        Seg("LAD", max_use=999, used=False),
        _at5(6),
        _PLD,
        _nte(20),
        _party("0310", 1, references=False),  # the stop's place
        Loop("0320", (_l5(), _at8(), _HAZMAT), max_use=99),  # commodities at the stop
        Loop("0350", (Seg("OID", used=False), _g62(2, used=False), Seg("LAD", max_use=999, used=False),
                      Loop("0360", (_l5(used=False), _at8(used=False)), max_use=99)), max_use=999),  # order detail:
        # not read
    ), mandatory=True, max_use=999),
    _L3,
))

# --- 005010: the 004010 schemas with the differences applied (_set_5010.py) ----------------------------------

SCHEMA_204_5010 = five_010(SCHEMA_204)
SCHEMA_990_5010 = five_010(SCHEMA_990)
SCHEMA_214_5010 = five_010(SCHEMA_214)
SCHEMA_210_5010 = five_010(SCHEMA_210)

#: What the reader validates by default.
CATALOG = Catalog((SCHEMA_997, SCHEMA_997_5010, SCHEMA_204, SCHEMA_990, SCHEMA_214, SCHEMA_210,
                   SCHEMA_204_5010, SCHEMA_990_5010, SCHEMA_214_5010, SCHEMA_210_5010))


def schema_for(set_id: str, version: str) -> SetSchema:
    """The schema of ``set_id`` in ``version`` (GS08, e.g. a partner's ``005010``); a version or set the catalog
    does not know is refused (:class:`WriteRefused`): nothing is written in a version it cannot validate."""
    schema = CATALOG.find(set_id, version)
    if schema is None:
        raise WriteRefused(f"no {set_id} schema for version {version!r}")
    return schema
