"""Usage metering for billing, and the billing hand-off's retry pacing."""

from __future__ import annotations

from datetime import datetime

from haulmesh.billing.v1 import invoice_pb2
from haulmesh.mission.v1 import mission_pb2
from services.runtime import (
    from_timestamp,
)

# --- Usage -------------------------------------------------------------------------------------------

def whole_minutes(start: datetime, end: datetime) -> int:
    """Whole minutes from ``start`` to ``end``, rounded down, never negative."""
    return max(0, int((end - start).total_seconds() // 60))


def mission_hours(start: datetime, delivered: datetime) -> float:
    """Hours from departure to delivery, never negative, rounded to 1/1000 h (3.6 s)."""
    return round(max(0.0, (delivered - start).total_seconds() / 3600), 3)


def usage(mission: mission_pb2.Mission) -> invoice_pb2.Usage:
    """Metered usage from the recorded times: planned miles, departure-to-delivery hours, dwell per stop."""
    start = from_timestamp(mission.start_time)
    delivered = (from_timestamp(mission.stops[-1].depart_time)
                 or from_timestamp(mission.proof_of_delivery.submit_time))
    metered = invoice_pb2.Usage(lane=mission.lane, miles=mission.route_miles,
                                hours=mission_hours(start, delivered) if start and delivered else 0.0)
    for i, stop in enumerate(mission.stops):
        arrive, depart = from_timestamp(stop.arrive_time), from_timestamp(stop.depart_time)
        if arrive and depart:
            metered.stop_dwells.add(stop_index=i, arrive_time=stop.arrive_time, depart_time=stop.depart_time,
                                    dwell_minutes=whole_minutes(arrive, depart))
    return metered


def billing_retry_delay(attempts: int, sweep_seconds: float, max_backoff_seconds: float) -> float:
    """Seconds until the next billing attempt of a mission billing refused ``attempts`` times: doubling
    from the sweep interval, at most ``max_backoff_seconds``."""
    return min(max_backoff_seconds, sweep_seconds * 2 ** min(attempts, 20))
