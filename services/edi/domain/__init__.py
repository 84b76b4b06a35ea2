"""The EDI service's rules: the X12 envelope and segment layer. Plain Python: no gRPC, no Redis, no I/O.

Private modules, re-exported here (import from ``services.edi.domain``):

* ``_tokens``: delimiters, segments, the split and join of one segment, X12's character set;
* ``_envelope``: Interchange / FunctionalGroup / TransactionSet / Ta1, :func:`read` (a file into readings with
  their problems, never raising for bad input) and :func:`write` (counts computed, the ISA at 106 characters,
  delimiters in data refused);
* ``_schema``: declarative set schemas (``Seg``, ``Loop``, ``El``, syntax notes) and :func:`validate` into AK3/AK4;
* ``_sets``: the 997 and 204 schemas, the catalog, and :func:`schema_for` a set in a version (004010, or
  005010 from ``_set_5010``'s differences);
* ``_load_tender``: a 204 as a :class:`LoadTender` (:func:`read_load_tender`, problems as AK3/AK4) and back;
* ``_response``: the 990 accepting or declining a tender (:func:`response_990`, schema in ``_set_990``);
* ``_status`` and ``_invoice``: the 214 shipment status and 210 freight invoice writers (schemas in
  ``_set_214`` and ``_set_210``);
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
from ._invoice import (
    BILLED_AS_BY_UNIT,
    CHARGE_CODES,
    RATE_QUALIFIER_BY_UNIT,
    FreightInvoice,
    InvoiceCharge,
    InvoiceError,
    InvoiceParty,
    invoice_210,
)
from ._load_tender import (
    DELIVERY_REASONS,
    PICKUP_REASONS,
    Commodity,
    Contact,
    LoadTender,
    Moment,
    Money,
    Note,
    Party,
    Purpose,
    Quantity,
    Reference,
    Stop,
    StopPlace,
    Window,
    WindowKind,
    read_load_tender,
    write_load_tender,
)
from ._response import Decision, DeclineStyle, TenderResponse, read_990, response_990
from ._schema import Catalog, El, Loop, Seg, SetSchema, validate
from ._set_210 import SCHEMA_210
from ._set_214 import SCHEMA_214
from ._set_990 import SCHEMA_990
from ._sets import (
    CATALOG,
    FUNCTIONAL_IDS,
    PURPOSES,
    SCHEMA_204,
    SCHEMA_997,
    SCHEMA_997_5010,
    STOP_REASONS,
    schema_for,
)
from ._status import (
    ARRIVED_AT_DELIVERY,
    ARRIVED_AT_PICKUP,
    DELIVERED,
    DEPARTED_DELIVERY,
    DEPARTED_PICKUP,
    EN_ROUTE,
    ESTIMATED_DELIVERY,
    EXCEPTION_REASONS,
    EXCEPTION_REMARKS,
    SHIPMENT_DELAYED,
    CityState,
    Coordinates,
    Equipment,
    ShipmentReference,
    ShipmentStatus,
    StatusError,
    StatusEvent,
    clean_text,
    eta_event,
    exception_event,
    from_dddmmss,
    remarks,
    status_214,
    time_code_for,
    to_dddmmss,
)
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
    "ARRIVED_AT_DELIVERY",
    "ARRIVED_AT_PICKUP",
    "BILLED_AS_BY_UNIT",
    "CATALOG",
    "CHARGE_CODES",
    "CONTROL_MAXIMUM",
    "DATA_CHARACTERS",
    "DELIVERED",
    "DELIVERY_REASONS",
    "DEPARTED_DELIVERY",
    "DEPARTED_PICKUP",
    "EN_ROUTE",
    "ESTIMATED_DELIVERY",
    "EXCEPTION_REASONS",
    "EXCEPTION_REMARKS",
    "FUNCTIONAL_IDS",
    "PICKUP_REASONS",
    "PURPOSES",
    "RATE_QUALIFIER_BY_UNIT",
    "SCHEMA_204",
    "SCHEMA_210",
    "SCHEMA_214",
    "SCHEMA_990",
    "SCHEMA_997",
    "SCHEMA_997_5010",
    "SEPARATOR_CHOICES",
    "SHIPMENT_DELAYED",
    "STOP_REASONS",
    "TERMINATOR_CHOICES",
    "AcknowledgementError",
    "Allocation",
    "Catalog",
    "CityState",
    "Commodity",
    "Contact",
    "ControlCounters",
    "ControlKind",
    "Coordinates",
    "Decision",
    "DeclineStyle",
    "Delimiters",
    "El",
    "Element",
    "ElementError",
    "ElementSyntax",
    "Equipment",
    "FreightInvoice",
    "FunctionalGroup",
    "GroupAcknowledgement",
    "GroupError",
    "GroupReading",
    "GroupSyntax",
    "Interchange",
    "InterchangeError",
    "InvoiceCharge",
    "InvoiceError",
    "InvoiceParty",
    "LoadTender",
    "Loop",
    "Moment",
    "Money",
    "Note",
    "Party",
    "Purpose",
    "Quantity",
    "Reading",
    "Reference",
    "Seg",
    "Segment",
    "SegmentError",
    "SegmentSyntax",
    "SetAcknowledgement",
    "SetError",
    "SetReading",
    "SetSchema",
    "SetSyntax",
    "ShipmentReference",
    "ShipmentStatus",
    "StatusError",
    "StatusEvent",
    "Stop",
    "StopPlace",
    "Ta1",
    "Ta1Note",
    "TenderResponse",
    "TransactionSet",
    "Window",
    "WindowKind",
    "WriteRefused",
    "X12Error",
    "acknowledge",
    "acknowledgement_group",
    "clean_text",
    "control_number",
    "echoable_group",
    "eta_event",
    "exception_event",
    "format_date",
    "format_time",
    "from_dddmmss",
    "from_implied",
    "invoice_210",
    "join_segment",
    "parse_date",
    "parse_time",
    "read",
    "read_990",
    "read_997",
    "read_load_tender",
    "remarks",
    "response_990",
    "schema_for",
    "split_segment",
    "status_214",
    "ta1_for",
    "time_code_for",
    "to_dddmmss",
    "to_implied",
    "validate",
    "write",
    "write_load_tender",
    "write_text",
]

# Trading partners (the service's config; the SFTP door reads their keys).
from ._partners import (
    ACK_RESEND_MINUTES,
    CARRIER_ID,
    STATUS_EVENT_CODES,
    Partner,
    PartnerConfigError,
    Partners,
    ResponsePolicy,
    ResponseRule,
    parse_partners,
)

__all__ += ["ACK_RESEND_MINUTES", "CARRIER_ID", "STATUS_EVENT_CODES", "Partner", "PartnerConfigError", "Partners",
            "ResponsePolicy", "ResponseRule", "parse_partners"]

# Outbound rules: a billing invoice as the 210's content (_invoicing).
from ._invoicing import check_charge_codes, freight_invoice, invoice_charge  # noqa: E402 (appended, after __all__ +=)

__all__ += ["check_charge_codes", "freight_invoice", "invoice_charge"]

# Outbound rules: 997s awaited for what we send, overdue, resent, given up (_tracking).
from ._tracking import (  # noqa: E402 (appended, after __all__ +=)
    ACK_FINAL_STATES,
    AckAction,
    AckFinding,
    AckReport,
    AckResult,
    AckSchedule,
    AckState,
    AckStep,
    OutboundDocument,
    TrackingError,
    Transmission,
    advance_tracking,
    apply_997,
    record_resend,
    track_sent,
)

__all__ += ["ACK_FINAL_STATES", "AckAction", "AckFinding", "AckReport", "AckResult", "AckSchedule", "AckState",
            "AckStep", "OutboundDocument", "TrackingError", "Transmission", "advance_tracking", "apply_997",
            "record_resend", "track_sent"]

# Outbound rules: which 214 statuses to send and when, from the mesh's events (_milestones).
from ._milestones import (  # noqa: E402 (appended, after __all__ +=)
    MILESTONE_EVENTS,
    MilestoneState,
    PositionFormat,
    StatusPreferences,
    StopPlan,
    equipment_for,
    milestones,
    shipment_status,
    start_milestones,
    stop_plans,
)

__all__ += ["MILESTONE_EVENTS", "MilestoneState", "PositionFormat", "StatusPreferences", "StopPlan", "equipment_for",
            "milestones", "shipment_status", "start_milestones", "stop_plans"]
