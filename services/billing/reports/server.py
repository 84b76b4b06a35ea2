"""ReportService over gRPC: the carrier from the call's metadata, the request to the use case
(:class:`~services.billing.reports.usecases.Reports`), its answer back. No rules here."""

from __future__ import annotations

import grpc

from haulmesh.billing.v1 import report_service_pb2, report_service_pb2_grpc
from services.runtime import BILLING_ADMINS, FLEET_OPERATORS, PLATFORM_ADMINS, Policy, Service, carrier

from .store import ReportStore
from .usecases import Reports

__all__ = ["POLICY", "ReportServicer", "register"]

_SERVICE = "/haulmesh.billing.v1.ReportService"

#: The TMS reads its report through the gateway (scope report:read); operators read any carrier's, naming it
#: in the haulmesh-carrier metadata (``haulmesh report --carrier``).
POLICY = Policy({f"{_SERVICE}/GetKpiReport": ["service/gateway", FLEET_OPERATORS, BILLING_ADMINS, PLATFORM_ADMINS]})


class ReportServicer(report_service_pb2_grpc.ReportServiceServicer):
    """The KPI report RPC."""

    def __init__(self, reports: Reports) -> None:
        self._reports = reports

    async def GetKpiReport(self, request: report_service_pb2.GetKpiReportRequest,
                           context: grpc.aio.ServicerContext) -> report_service_pb2.GetKpiReportResponse:
        return await self._reports.get_kpi_report(carrier(context), request)


def register(service: Service, store: ReportStore, *, max_missions: int) -> None:
    """Serve ReportService with ``service``."""
    service.add(report_service_pb2_grpc.add_ReportServiceServicer_to_server,
                ReportServicer(Reports(store, max_missions=max_missions)),
                report_service_pb2.DESCRIPTOR.services_by_name["ReportService"])
