"""The mission service's Prometheus metrics: dispatch-ack latency and how missions end.

Dispatch ack (the seed's "dispatch ack time" SLO, < 30 s, < 5 s where an SLA requires it) is the time from
the mission's ``dispatch_time`` (the mission service's clock, when CreateMission committed the assignment)
to the truck acknowledging the assignment command. Two measures of it:

* ``aurora_mission_latency_seconds`` (the seed's name): ``dispatch_ack_time - dispatch_time`` as recorded on
  the mission, i.e. the truck's own ack time (its clock, trusted within the telemetry service's skew
  window). What the TMS sees on the mission resource.
* ``haulmesh_mission_dispatch_ack_seconds``: the mission service's clock only, from ``dispatch_time`` until it
  recorded the ack. It includes the event pipeline (truck → telemetry → event → mission) and no clock skew,
  so it is the one the SLO alerts use (deploy/prometheus/rules.yaml).

A truck offline at dispatch acks when it reconnects: that wait is part of both measures, as the TMS feels it.

Mission success: ``haulmesh_missions_finished_total{outcome}`` counts missions reaching a terminal state
(completed, aborted, cancelled). The SLO (> 99 %) is completed / (completed + aborted): a cancellation is the
customer's decision, not a failed mission. No mission, vehicle or carrier label.

Fleet: ``haulmesh_fleet_vehicles{connectivity, availability}`` is the roster by connectivity (online, offline,
unknown: never connected) and availability (available, assigned, maintenance, out_of_service), recomputed
periodically from the roster by every replica (fleet-wide: aggregate with ``max``, not ``sum``). At most 12
series, whatever the fleet's size; idle trucks offline are ``{connectivity="offline", availability="available"}``.

Disputed proofs: ``haulmesh_mission_pod_disputes_escalated_total`` counts delivered missions left unbilled because
their proof of delivery stayed DISPUTED past ``HAULMESH_POD_DISPUTE_SECONDS`` (alert on any increase: an operator
decides each; the list is the carrier's ``billing-disputed`` set).
"""

from __future__ import annotations

from collections.abc import Mapping

from prometheus_client import Counter, Gauge, Histogram

from services.runtime import METRICS_REGISTRY

__all__ = ["CHECK_INS_OVERDUE", "DISPATCH_ACK", "DISPUTES_ESCALATED", "FLEET_VEHICLES", "MISSIONS_FINISHED",
           "MISSION_LATENCY", "record_check_in_overdue", "record_dispatch_ack", "record_dispute_escalated",
           "record_finished", "record_fleet"]

# Buckets with edges at both objectives (5 s and 30 s), so the SLI is an exact bucket ratio.
_ACK_BUCKETS = (0.5, 1, 2, 5, 10, 15, 30, 60, 120, 300, 900, 3600)
MISSION_LATENCY = Histogram("aurora_mission_latency_seconds", "Seconds from dispatch to the truck's acknowledgement "
                            "of its assignment, by the mission's recorded times (dispatch_ack_time - "
                            "dispatch_time; the truck's clock for the ack).", buckets=_ACK_BUCKETS,
                            registry=METRICS_REGISTRY)
DISPATCH_ACK = Histogram("haulmesh_mission_dispatch_ack_seconds", "Seconds from dispatch until the mission service "
                         "recorded the truck's acknowledgement (server clock only; the dispatch-ack SLO's SLI).",
                         buckets=_ACK_BUCKETS, registry=METRICS_REGISTRY)
MISSIONS_FINISHED = Counter("haulmesh_missions_finished_total", "Missions that reached a terminal state, by "
                            "outcome: completed, aborted or cancelled.", ["outcome"], registry=METRICS_REGISTRY)
_OUTCOMES = {name: MISSIONS_FINISHED.labels(name) for name in ("completed", "aborted", "cancelled")}


def record_dispatch_ack(dispatch_seconds: float, ack_seconds: float, recorded_seconds: float) -> None:
    """Observe one acknowledged dispatch (Unix seconds of dispatch, of the truck's ack, of recording it)."""
    # A truck clock slightly behind ours (within the accepted skew) does not make an ack before dispatch.
    MISSION_LATENCY.observe(max(0.0, ack_seconds - dispatch_seconds))
    DISPATCH_ACK.observe(max(0.0, recorded_seconds - dispatch_seconds))


def record_finished(outcome: str) -> None:
    """Count a mission that reached the terminal state ``outcome`` (completed / aborted / cancelled)."""
    _OUTCOMES[outcome].inc()


FLEET_VEHICLES = Gauge("haulmesh_fleet_vehicles", "Roster vehicles by connectivity (online, offline, unknown) and "
                       "availability (available, assigned, maintenance, out_of_service).",
                       ["connectivity", "availability"], registry=METRICS_REGISTRY)
_CONNECTIVITY = ("online", "offline", "unknown")
_AVAILABILITY = ("available", "assigned", "maintenance", "out_of_service")


def record_fleet(counts: Mapping[tuple[str, str], int]) -> None:
    """Set the fleet gauge from ``counts`` of (connectivity, availability); absent combinations are 0."""
    for connectivity in _CONNECTIVITY:
        for availability in _AVAILABILITY:
            FLEET_VEHICLES.labels(connectivity, availability).set(counts.get((connectivity, availability), 0))


DISPUTES_ESCALATED = Counter("haulmesh_mission_pod_disputes_escalated_total", "Delivered missions whose DISPUTED proof "
                             "of delivery (frames of its signed range missing, or contradicting it) outlived "
                             "HAULMESH_POD_DISPUTE_SECONDS unbilled: each needs an operator.",
                             registry=METRICS_REGISTRY)


def record_dispute_escalated() -> None:
    """Count one mission escalated to an operator for a disputed proof (once per mission)."""
    DISPUTES_ESCALATED.inc()


CHECK_INS_OVERDUE = Counter("haulmesh_mission_check_ins_overdue_total", "Required check-ins escalated as overdue "
                            "(past their due time by more than HAULMESH_CHECK_IN_OVERDUE_GRACE_SECONDS), once per due "
                            "time: each is a person's missing confirmation.", registry=METRICS_REGISTRY)


def record_check_in_overdue() -> None:
    """Count one overdue check-in escalated."""
    CHECK_INS_OVERDUE.inc()
