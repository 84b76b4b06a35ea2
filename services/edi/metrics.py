"""The EDI service's Prometheus metrics (issue 15: documents by set and outcome, 997 latency, unacknowledged age).

* ``haulmesh_edi_documents_total{direction, set, state}``: every document recorded, in (``204``, ``997``; a file
  or interchange refused as a whole has set ``""``) or out (``997``, ``TA1``, ``990``, ``214``, ``210``), by its
  state when recorded (received, ``accepted_with_errors``: a set our 997 accepts with errors noted in data the 204
  reading does not use, acted on all the same, rejected, duplicate; sent, awaiting_997; ``refused``: a 214 or 210
  whose content our writer cannot express, recorded and logged, never sent). No partner label: a carrier's partner
  count is unbounded in principle, and the documents' records (the store) name them.
* ``haulmesh_edi_ack_latency_seconds``: from an inbound file being taken from ``in/`` to its 997 being placed in
  ``out/`` (partners expect 997s within seconds).
* ``haulmesh_edi_overdue_total``: transmissions of ours counted overdue (no 997 within the partner's deadline);
  a steady increase is a partner not acknowledging: alert on it.
* ``haulmesh_edi_unacknowledged_oldest_age_seconds``: the age of the oldest document of ours (990, 214, 210) still
  awaiting its 997, over every partner (0 when none is); set by the 997 chaser at each pass (every 30 s). Given-up
  documents no longer count (they were alerted and logged as a person's turn). The chart's alert reads this name.
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

from services.runtime import METRICS_REGISTRY

__all__ = ["ACK_LATENCY", "DOCUMENTS", "OVERDUE", "UNACKNOWLEDGED_AGE"]

DOCUMENTS = Counter("haulmesh_edi_documents_total", "X12 documents recorded, by direction (in/out), set id "
                    "and state when recorded.", ["direction", "set", "state"], registry=METRICS_REGISTRY)
ACK_LATENCY = Histogram("haulmesh_edi_ack_latency_seconds", "Seconds from an inbound file taken to its 997 placed "
                        "in the partner's out/ folder.", buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
                        registry=METRICS_REGISTRY)
OVERDUE = Counter("haulmesh_edi_overdue_total", "Transmissions of ours counted overdue: no 997 within the "
                  "partner's deadline.", registry=METRICS_REGISTRY)
UNACKNOWLEDGED_AGE = Gauge("haulmesh_edi_unacknowledged_oldest_age_seconds", "Age in seconds of the oldest "
                           "document of ours still awaiting the partner's 997 (0: none).",
                           registry=METRICS_REGISTRY)
