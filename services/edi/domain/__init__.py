"""The EDI service's rules: the X12 envelope and segment layer. Plain Python: no gRPC, no Redis, no I/O.

Private modules, re-exported here (import from ``services.edi.domain``):

* ``_tokens``: delimiters, segments, the split and join of one segment, X12's character set;
* ``_envelope``: Interchange / FunctionalGroup / TransactionSet / Ta1, :func:`read` (a file into readings with
  their problems, never raising for bad input) and :func:`write` (counts computed, the ISA at 106 characters,
  delimiters in data refused);
* ``_schema``: declarative set schemas (``Seg``, ``Loop``, ``El``, syntax notes) and :func:`validate` into AK3/AK4;
* ``_sets``: the 997 and 204 schemas and the default catalog;
* ``_ack``: the 997 for a received group, the TA1 for an interchange, inbound 997s read;
* ``_control``: control numbers from durable per-partner counters;
* ``_values``: N2 money as Decimal, dates and times;
* ``_codes`` and ``_errors``: the acknowledgement code lists and the exception root :class:`X12Error`.
"""

from ._ack import (
    GroupAcknowledgement,
    SetAcknowledgement,
    acknowledge,
    acknowledgement_group,
    read_997,
    ta1_for,
)
from ._codes import ElementSyntax, GroupSyntax, SegmentSyntax, SetSyntax, Ta1Note
from ._control import CONTROL_MAXIMUM, Allocation, ControlCounters, ControlKind, control_number
from ._envelope import (
    FunctionalGroup,
    GroupReading,
    Interchange,
    Reading,
    SetReading,
    Ta1,
    TransactionSet,
    echoable_group,
    read,
    write,
    write_text,
)
from ._errors import (
    AcknowledgementError,
    ElementError,
    GroupError,
    InterchangeError,
    SegmentError,
    SetError,
    WriteRefused,
    X12Error,
)
from ._schema import Catalog, El, Loop, Seg, SetSchema, validate
from ._sets import CATALOG, FUNCTIONAL_IDS, PURPOSES, SCHEMA_204, SCHEMA_997, SCHEMA_997_5010, STOP_REASONS
from ._tokens import (
    DATA_CHARACTERS,
    SEPARATOR_CHOICES,
    TERMINATOR_CHOICES,
    Delimiters,
    Element,
    Segment,
    join_segment,
    split_segment,
)
from ._values import format_date, format_time, from_implied, parse_date, parse_time, to_implied

__all__ = [
    "CATALOG",
    "CONTROL_MAXIMUM",
    "DATA_CHARACTERS",
    "FUNCTIONAL_IDS",
    "PURPOSES",
    "SCHEMA_204",
    "SCHEMA_997",
    "SCHEMA_997_5010",
    "SEPARATOR_CHOICES",
    "STOP_REASONS",
    "TERMINATOR_CHOICES",
    "AcknowledgementError",
    "Allocation",
    "Catalog",
    "ControlCounters",
    "ControlKind",
    "Delimiters",
    "El",
    "Element",
    "ElementError",
    "ElementSyntax",
    "FunctionalGroup",
    "GroupAcknowledgement",
    "GroupError",
    "GroupReading",
    "GroupSyntax",
    "Interchange",
    "InterchangeError",
    "Loop",
    "Reading",
    "Seg",
    "Segment",
    "SegmentError",
    "SegmentSyntax",
    "SetAcknowledgement",
    "SetError",
    "SetReading",
    "SetSchema",
    "SetSyntax",
    "Ta1",
    "Ta1Note",
    "TransactionSet",
    "WriteRefused",
    "X12Error",
    "acknowledge",
    "acknowledgement_group",
    "control_number",
    "echoable_group",
    "format_date",
    "format_time",
    "from_implied",
    "join_segment",
    "parse_date",
    "parse_time",
    "read",
    "read_997",
    "split_segment",
    "ta1_for",
    "to_implied",
    "validate",
    "write",
    "write_text",
]
