"""The webhook service's Prometheus metrics: delivery outcomes and attempt durations.

``haulmesh_webhook_deliveries_total{outcome}`` counts each attempt's outcome (succeeded, retrying, failed,
skipped) and ``haulmesh_webhook_attempt_duration_seconds`` times the HTTP attempts (DNS check, connect, POST
and reply). ``haulmesh_webhook_eta_held_back_total`` counts ETA updates a subscription's ETA policy held back
(no delivery recorded); ``haulmesh_webhook_eta_duplicates_total`` counts ETA events that had a delivery already
(a redelivered event: neither sent again nor held back). No subscription, carrier or URL label.
"""

from __future__ import annotations

from prometheus_client import Counter, Histogram

from services.runtime import METRICS_REGISTRY

__all__ = ["WEBHOOK_ATTEMPT_DURATION", "WEBHOOK_DELIVERIES", "WEBHOOK_ETA_DUPLICATES", "WEBHOOK_ETA_HELD_BACK"]

WEBHOOK_DELIVERIES = Counter("haulmesh_webhook_deliveries_total", "Webhook delivery attempts by outcome: succeeded, "
                             "retrying (will be tried again), failed (gave up), skipped (subscription not "
                             "active).", ["outcome"], registry=METRICS_REGISTRY)
WEBHOOK_ATTEMPT_DURATION = Histogram("haulmesh_webhook_attempt_duration_seconds", "Seconds one webhook HTTP attempt "
                                     "took (destination check, connect, POST, reply).",
                                     buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
                                     registry=METRICS_REGISTRY)
for _outcome in ("succeeded", "retrying", "failed", "skipped"):
    WEBHOOK_DELIVERIES.labels(_outcome)
WEBHOOK_ETA_HELD_BACK = Counter("haulmesh_webhook_eta_held_back_total", "ETA updates not delivered to a subscription "
                                "because its ETA policy held them back (moved too little, too soon).",
                                registry=METRICS_REGISTRY)
WEBHOOK_ETA_DUPLICATES = Counter("haulmesh_webhook_eta_duplicates_total", "ETA events a subscription had a delivery "
                                 "for already (redelivered by the stream): not sent again, not held back.",
                                 registry=METRICS_REGISTRY)
