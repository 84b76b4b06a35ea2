"""The 990 (Response to a Load Tender, 004010) schema: what we send, validated before it leaves.

ST, B1 (mandatory), N9 references, V9 event detail, K1 remarks, SE. Element numbers, types and lengths follow the
004010 dictionary; the schema narrows the standard to what a carrier's answer needs (a partner's guide narrows it
the same way): B1-01 (our SCAC), B1-03 (the answer's date) and B1-04 are required, and B1-04 is ``A`` (accept) or
``D`` (decline). 004010's B1 has no decline reason (B1-06 comes in 004020): the reason goes in K1 or V9, as the
partner's guide says. Elements after V9-08 are not used by this service and not listed.
"""

from __future__ import annotations

from ._schema import El, Seg, SetSchema

__all__ = ["DECISIONS", "SCHEMA_990"]

#: B1-04 (558), reservation action: A accepted, D declined.
DECISIONS = frozenset({"A", "D"})

SCHEMA_990 = SetSchema("990", "GF", frozenset({"004010"}), (
    Seg("B1", mandatory=True, elements=(
        El("140", "ID", 2, 4, mandatory=True), El("145", "AN", 1, 30, mandatory=True),
        El("373", "DT", 8, 8, mandatory=True), El("558", "ID", 1, 1, mandatory=True, codes=DECISIONS))),
    Seg("N9", max_use=100, rules=("R0203", "C0605"), elements=(
        El("128", "ID", 2, 3, mandatory=True), El("127", "AN", 1, 30), El("369", "AN", 1, 45),
        El("373", "DT", 8, 8), El("337", "TM", 4, 8), El("623", "ID", 2, 2))),
    Seg("V9", elements=(
        El("304", "ID", 3, 3, mandatory=True), El("106", "AN", 1, 25), El("373", "DT", 8, 8), El("337", "TM", 4, 8),
        El("19", "AN", 2, 30), El("156", "ID", 2, 2), El("26", "ID", 2, 3), El("1650", "ID", 3, 3))),
    Seg("K1", max_use=10, elements=(El("61", "AN", 1, 30, mandatory=True), El("61", "AN", 1, 30))),
))
