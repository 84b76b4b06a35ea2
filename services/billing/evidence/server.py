"""EvidenceService over gRPC: the carrier from the call's metadata, the export to
:class:`~services.billing.evidence.usecases.EvidenceExport`, the file back in chunks. No rules here."""

from __future__ import annotations

from collections.abc import AsyncIterator

import grpc
from google.api import httpbody_pb2

from haulmesh.billing.v1 import evidence_service_pb2, evidence_service_pb2_grpc
from services.runtime import BILLING_ADMINS, PLATFORM_ADMINS, Policy, carrier

from .usecases import EvidenceExport

__all__ = ["CHUNK_BYTES", "CONTENT_TYPE", "POLICY", "EvidenceServicer"]

_SERVICE = "/haulmesh.billing.v1.EvidenceService"

#: Who may export: the TMS through the gateway (scope billing:read), operators (``haulmesh evidence export``).
POLICY = Policy({f"{_SERVICE}/ExportEvidencePack": ["service/gateway", BILLING_ADMINS, PLATFORM_ADMINS]})
#: Chunk size of the stream: well under gRPC's 4 MiB message limit.
CHUNK_BYTES = 1 << 20
CONTENT_TYPE = "application/zip"


class EvidenceServicer(evidence_service_pb2_grpc.EvidenceServiceServicer):
    """Evidence RPCs: the carrier from the call's metadata, the rest in :class:`EvidenceExport`."""

    def __init__(self, export: EvidenceExport) -> None:
        self._export = export

    async def ExportEvidencePack(self, request: evidence_service_pb2.ExportEvidencePackRequest,
                                 context: grpc.aio.ServicerContext) -> AsyncIterator[httpbody_pb2.HttpBody]:
        pack = await self._export.export(carrier(context), request)
        for offset in range(0, len(pack), CHUNK_BYTES):
            yield httpbody_pb2.HttpBody(content_type=CONTENT_TYPE if offset == 0 else "",
                                        data=pack[offset:offset + CHUNK_BYTES])
