"""TelemetryService over gRPC: translation between the wire and the telemetry rules, nothing more."""

from __future__ import annotations

from haulmesh.telemetry.v1 import telemetry_service_pb2_grpc
from services.runtime import Policy

from .store import TelemetryStore

__all__ = ["POLICY", "TelemetryServicer"]

_SERVICE = "/haulmesh.telemetry.v1.TelemetryService"
_READERS = ["service/gateway", "service/mission", "operator/*"]

#: Trucks stream only as themselves (checked per frame against the certificate); readers are the
#: gateway (for the TMS), the mission service and fleet operators.
POLICY = Policy({
    f"{_SERVICE}/StreamTelemetry": ["vehicle/*"],
    f"{_SERVICE}/IngestTelemetry": ["vehicle/*", "service/gateway"],
    f"{_SERVICE}/ListTelemetryFrames": _READERS,
    f"{_SERVICE}/WatchVehicleTelemetry": _READERS,
    f"{_SERVICE}/WatchMissionTelemetry": _READERS,
})


class TelemetryServicer(telemetry_service_pb2_grpc.TelemetryServiceServicer):
    """Telemetry RPCs. Methods not implemented yet answer UNIMPLEMENTED (the generated default)."""

    def __init__(self, store: TelemetryStore) -> None:
        self._store = store
