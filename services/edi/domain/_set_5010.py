"""005010 where it differs from 004010, for the sets this service reads (204) and writes (990, 214, 210).

The 005010 schemas are not written out again: each is its 004010 schema with the differences below applied
(:func:`revised`, per segment id, wherever the segment is in the set), so what did not change is shared, and a
fix to a 004010 definition reaches its 005010 twin. The 997's two versions are built side by side in _sets.py
(its 005010 additions, AK1-03, AK2-03 and the AK4 C030-03, came with the 997 itself).

The differences, from public references of the standard (X12's dictionary is not public; these pages quote it):

* element 127 (Reference Identification) is 1 to 50 characters from 004030 on, 1 to 30 in 004010: L11-01
  (doc.chinlinktech.com/x12/004030/segment/L11), B10-01 and B10-06 (kasoftware.com/schema/edi/x12/00403/
  segments/B10), N9-02 (the 004010 N9 at kasoftware.com/schema/edi/x12/00401/segments/N9 has 1 to 30; the
  stedi.com X12 reference's later N9 pages the longer one);
* L11 gains L11-04 (373, date) and L11-05 (1073, yes/no), and the note R0103 (at least one of L11-01 and L11-03)
  beside P0102 (stedi.com/edi/x12-004040/segment/L11). The 204 reading does not use L11-04/05: an error in
  them is noted in the 997, the tender still read;
* N4 gains N4-07 (1715, country subdivision code, 1 to 3) with the notes E0207 (N4-02 or N4-07, not both) and
  C0704 (N4-07 wants N4-04) (stedi.com/edi/x12-004030/segment/N4). The reading does not use N4-07, but E0207
  names N4-02, which it does: a state and a subdivision together reject the set (AK4 N4-07 code 10);
* the 990's B1 has B1-05 (yes/no) and B1-06 (decline reason, 3 characters) from 004020 on
  (doc.chinlinktech.com/x12/004020/segment/B1): not written by this service, which puts a decline's reason where
  the partner's :class:`DeclineStyle` says (K1 and/or V9) in either version, so the 990 schema, which lists what
  we send, does not list them;
* the 214's B10 has B10-08 and B10-09 (the set's date and time) from 004030 on (the kasoftware B10 page above):
  not written, not listed, as above.

Not found different in the pages read (so shared as they are): B2, B2A, G62, S5, AT8, L5, L3, NTE, N1, N2, N3,
G61, AT7, MS1, MS2, LX, K1, V9, B3, C3, L0, L1, and the tables (segment order, loops, maximum uses) of the four
sets; the dictionary pages cover elements, not tables, so the tables are the least checked part. One partner's
005010 204 guide (Kinexo's, on stedi.com/app/guides) lists the heading L11 with a maximum use of 99999 where
004010 has 50: not applied, as it is one guide's and not confirmed in the standard (a partner sending more than
50 header L11s is answered AK3 code 5 until it is). Where a partner's 005010 guide narrows further, its partner
entry says so, as for 004010.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping

from ._errors import WriteRefused
from ._schema import El, Loop, Seg, SetSchema

__all__ = ["REFERENCE_MAX", "V5010", "five_010", "reference_max", "revised"]

V5010 = frozenset({"005010"})

#: Element 127's (Reference Identification: L11-01, N9-02, B10-01) maximum length per version.
REFERENCE_MAX = {"004010": 30, "005010": 50}


def reference_max(version: str) -> int:
    """Element 127's maximum length in ``version`` (GS08); a version this service does not write is refused."""
    try:
        return REFERENCE_MAX[version[:6]]
    except KeyError:
        raise WriteRefused(f"version {version!r} is not written (004010 and 005010 are)") from None

#: A segment's change from one version to the next.
Revision = Callable[[Seg], Seg]


def revised(schema: SetSchema, versions: frozenset[str], revisions: Mapping[str, Revision]) -> SetSchema:
    """``schema`` for ``versions``, each segment whose id ``revisions`` names replaced by its revision (in every
    loop it appears in); segments not named, loops and the table are shared as they are."""

    def walk(nodes: tuple[Seg | Loop, ...]) -> tuple[Seg | Loop, ...]:
        out: list[Seg | Loop] = []
        for node in nodes:
            if isinstance(node, Loop):
                out.append(dataclasses.replace(node, children=walk(node.children)))
            elif node.id in revisions and node.elements is not None:  # an unchecked segment stays unchecked
                out.append(revisions[node.id](node))
            else:
                out.append(node)
        return tuple(out)

    return SetSchema(schema.set_id, schema.functional_id, versions, walk(schema.body))


def _reference_50(seg: Seg) -> Seg:
    """Element 127 (Reference Identification) at 1 to 50 characters."""
    assert seg.elements is not None
    return dataclasses.replace(seg, elements=tuple(
        dataclasses.replace(e, max=REFERENCE_MAX["005010"]) if e.ref == "127" else e for e in seg.elements))


def _l11(seg: Seg) -> Seg:
    seg = _reference_50(seg)
    assert seg.elements is not None
    return dataclasses.replace(seg, rules=(*seg.rules, "R0103"), elements=(
        *seg.elements, El("373", "DT", 8, 8, used=False), El("1073", "ID", 1, 1, used=False)))


def _n4(seg: Seg) -> Seg:
    assert seg.elements is not None
    return dataclasses.replace(seg, rules=(*seg.rules, "E0207", "C0704"),
                               elements=(*seg.elements, El("1715", "ID", 1, 3, used=False)))


#: The differences, per segment id (the module docstring says where each comes from).
_REVISIONS: dict[str, Revision] = {"L11": _l11, "N4": _n4, "N9": _reference_50, "B10": _reference_50}


def five_010(schema: SetSchema) -> SetSchema:
    """The 005010 schema of a 004010 one: the differences of this module applied."""
    return revised(schema, V5010, _REVISIONS)
