"""One conversion between protobuf Timestamps and aware datetimes, for every service."""

from __future__ import annotations

from datetime import UTC, datetime

from google.protobuf import timestamp_pb2

__all__ = ["from_timestamp", "timestamp_ms", "to_timestamp"]


def to_timestamp(when: datetime) -> timestamp_pb2.Timestamp:
    """``when`` (aware; a naive value is refused rather than guessed) as a Timestamp."""
    if when.tzinfo is None:
        raise ValueError(f"naive datetime {when.isoformat()}: give it a time zone")
    ts = timestamp_pb2.Timestamp()
    ts.FromDatetime(when.astimezone(UTC))
    return ts


def from_timestamp(ts: timestamp_pb2.Timestamp) -> datetime | None:
    """A set Timestamp as an aware UTC datetime; None for the unset (zero) value."""
    return ts.ToDatetime(tzinfo=UTC) if (ts.seconds or ts.nanos) else None


def timestamp_ms(ms: int) -> timestamp_pb2.Timestamp:
    """A Timestamp of ``ms`` milliseconds since the epoch (store indexes keep milliseconds)."""
    ts = timestamp_pb2.Timestamp()
    ts.FromMilliseconds(ms)
    return ts
