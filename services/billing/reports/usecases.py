"""The KPI report use case: validate the request, read the window's facts, ask the domain, answer."""

from __future__ import annotations

from datetime import UTC, datetime

from haulmesh.billing.v1 import report_service_pb2
from services.runtime import FieldViolation, InvalidArgument, from_timestamp
from services.runtime.limits import KPI_REPORT_SECONDS

from ..convert import money_from_pb
from . import convert, domain
from .store import ReportStore

__all__ = ["Reports"]



def _now() -> datetime:
    return datetime.now(UTC)


def _time(request: report_service_pb2.GetKpiReportRequest, name: str) -> datetime | None:
    if not request.HasField(name):
        return None
    stamp = getattr(request, name)
    # The limit the OpenAPI document states (services/runtime/limits.py).
    if not KPI_REPORT_SECONDS[0] <= stamp.seconds <= KPI_REPORT_SECONDS[1]:
        raise InvalidArgument(f"{name} is out of range", violations=[
            FieldViolation(name, "must be between 1970-01-01 and 9999-12-31")])
    return from_timestamp(stamp) or datetime.fromtimestamp(0, UTC)


def _ms(when: datetime) -> int:
    return int(when.timestamp() * 1000)


class Reports:
    """The ReportService use cases: ``(carrier, request) -> answer``."""

    def __init__(self, store: ReportStore, *, max_missions: int = 50_000) -> None:
        self._store = store
        self._max = max_missions

    async def get_kpi_report(self, tenant: str, request: report_service_pb2.GetKpiReportRequest
                             ) -> report_service_pb2.GetKpiReportResponse:
        now = _now()
        start, end = domain.resolve_window(_time(request, "start_time"), _time(request, "end_time"), now)
        lane = convert.lane_from_pb(request.lane) if request.HasField("lane") else None
        domain.validate_lane(lane)
        baseline = money_from_pb(request.baseline_cost_per_mile) if request.HasField("baseline_cost_per_mile") \
            else None
        domain.validate_baseline(baseline)
        start_ms, end_ms = _ms(start), _ms(end)
        # Only the carrier of the call is read: its facts live under its own hash tag (store.py).
        missions = await self._store.missions(tenant, start_ms, end_ms, self._max)
        domain.check_report_size(len(missions), self._max, "missions")
        tenders = await self._store.tenders(tenant, start_ms, end_ms, self._max)
        domain.check_report_size(len(tenders), self._max, "tenders")
        report = domain.build_report(
            (f for f in (convert.mission_facts(i, h) for i, h in missions) if f is not None),
            (f for f in (convert.tender_facts(i, h) for i, h in tenders) if f is not None),
            start_ms=start_ms, end_ms=end_ms, lane=lane, baseline=baseline)
        return convert.report_to_pb(tenant, report, start=start, end=end, baseline=baseline, now=now)
