"""The tender service's Prometheus metrics.

``tms_tender_processing_time_seconds`` (the seed's name) is the time from a CreateTender request arriving
at the tender service to the tender being returned with its offer (or its rejection): validation, lane
eligibility, the price from billing, the capacity from mission, scoring and the durable write. It is
measured in the service, so it excludes the gateway's JSON transcoding and authentication (those are in
the gateway's ``haulmesh_http_request_duration_seconds``). No tender, carrier or lane label.
"""

from __future__ import annotations

from prometheus_client import Histogram

from services.runtime import METRICS_REGISTRY

__all__ = ["TENDER_PROCESSING"]

#: Buckets bracket the bench target (p99 ≤ 25 ms at 200 req/s) and the call deadline.
TENDER_PROCESSING = Histogram("tms_tender_processing_time_seconds", "Seconds from a CreateTender request to the "
                              "tender returned with its offer, by outcome: offered, rejected (ineligible or no "
                              "capacity; the answer is still an answer) or failed (an error status).",
                              ["outcome"], buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
                              registry=METRICS_REGISTRY)
for _outcome in ("offered", "rejected", "failed"):
    TENDER_PROCESSING.labels(_outcome)
