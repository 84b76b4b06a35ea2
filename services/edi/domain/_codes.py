"""The X12 code lists an acknowledgement speaks: TA1-05, AK3-04, AK4-03, AK5-02..06 and AK9-05..09.

Values are the standard's (X12 004010 / 005010; the 997's and TA1's definitions), named here so a rule reads
``SetSyntax.SEGMENT_COUNT_MISMATCH`` rather than ``4``.
"""

from __future__ import annotations

from enum import IntEnum, StrEnum

__all__ = ["ElementSyntax", "GroupSyntax", "SegmentSyntax", "SetSyntax", "Ta1Note"]


class Ta1Note(StrEnum):
    """TA1-05, the interchange note code."""

    NO_ERROR = "000"
    CONTROL_NUMBER_MISMATCH = "001"  # ISA13 and IEA02 differ (the ISA13 is echoed)
    STANDARD_NOT_SUPPORTED = "002"
    VERSION_NOT_SUPPORTED = "003"
    INVALID_SEGMENT_TERMINATOR = "004"
    INVALID_SENDER_QUALIFIER = "005"
    INVALID_SENDER_ID = "006"
    INVALID_RECEIVER_QUALIFIER = "007"
    INVALID_RECEIVER_ID = "008"
    UNKNOWN_RECEIVER_ID = "009"
    INVALID_AUTHORIZATION_QUALIFIER = "010"
    INVALID_AUTHORIZATION = "011"
    INVALID_SECURITY_QUALIFIER = "012"
    INVALID_SECURITY = "013"
    INVALID_DATE = "014"
    INVALID_TIME = "015"
    INVALID_STANDARDS_ID = "016"
    INVALID_VERSION = "017"
    INVALID_CONTROL_NUMBER = "018"
    INVALID_ACK_REQUESTED = "019"
    INVALID_TEST_INDICATOR = "020"
    INVALID_GROUP_COUNT = "021"
    INVALID_CONTROL_STRUCTURE = "022"
    PREMATURE_END = "023"
    INVALID_CONTENT = "024"
    DUPLICATE_CONTROL_NUMBER = "025"
    INVALID_ELEMENT_SEPARATOR = "026"
    INVALID_COMPONENT_SEPARATOR = "027"

    @property
    def rejects(self) -> bool:
        """Whether this problem rejects the interchange (TA1-04 ``R``) or only notes it (``E``).

        Rejected: what makes the envelope untrustworthy (who sent it, to whom, in which syntax, where it ends).
        Noted: a wrong trailer count or control echo, a malformed date, time, flag or stray content, when every
        group inside was read whole (each group still answers for itself in its 997).
        """
        return self not in _NOTED


_NOTED = frozenset({
    Ta1Note.NO_ERROR, Ta1Note.CONTROL_NUMBER_MISMATCH, Ta1Note.INVALID_AUTHORIZATION_QUALIFIER,
    Ta1Note.INVALID_AUTHORIZATION, Ta1Note.INVALID_SECURITY_QUALIFIER, Ta1Note.INVALID_SECURITY,
    Ta1Note.INVALID_DATE, Ta1Note.INVALID_TIME, Ta1Note.INVALID_ACK_REQUESTED, Ta1Note.INVALID_TEST_INDICATOR,
    Ta1Note.INVALID_GROUP_COUNT, Ta1Note.INVALID_CONTENT,
})


class GroupSyntax(IntEnum):
    """AK9-05..09, functional group syntax error codes (the ones a reader of the envelope can find)."""

    NOT_SUPPORTED = 1
    VERSION_NOT_SUPPORTED = 2
    TRAILER_MISSING = 3
    CONTROL_NUMBER_MISMATCH = 4
    SET_COUNT_MISMATCH = 5
    CONTROL_NUMBER_SYNTAX = 6


class SetSyntax(IntEnum):
    """AK5-02..06, transaction set syntax error codes."""

    NOT_SUPPORTED = 1
    TRAILER_MISSING = 2
    CONTROL_NUMBER_MISMATCH = 3
    SEGMENT_COUNT_MISMATCH = 4
    SEGMENTS_IN_ERROR = 5
    INVALID_SET_ID = 6
    INVALID_CONTROL_NUMBER = 7
    CONTROL_NUMBER_NOT_UNIQUE = 23


class SegmentSyntax(IntEnum):
    """AK3-04, segment syntax error codes."""

    UNRECOGNIZED_ID = 1
    UNEXPECTED = 2
    MANDATORY_MISSING = 3
    LOOP_OVER_MAXIMUM = 4
    OVER_MAXIMUM_USE = 5
    NOT_IN_SET = 6
    OUT_OF_SEQUENCE = 7
    ELEMENT_ERRORS = 8


class ElementSyntax(IntEnum):
    """AK4-03, data element syntax error codes."""

    MANDATORY_MISSING = 1
    CONDITIONAL_MISSING = 2
    TOO_MANY_ELEMENTS = 3
    TOO_SHORT = 4
    TOO_LONG = 5
    INVALID_CHARACTER = 6
    INVALID_CODE = 7
    INVALID_DATE = 8
    INVALID_TIME = 9
    EXCLUSION_VIOLATED = 10
    TOO_MANY_REPETITIONS = 12  # 005010
    TOO_MANY_COMPONENTS = 13  # 005010
