"""Entry point: ``python -m services.mission``."""

from haulmesh.mission.v1 import mission_service_pb2, mission_service_pb2_grpc
from services.runtime import Service, run_service

from .server import POLICY, MissionServicer
from .store import MissionStore


def register(service: Service) -> None:
    service.add(mission_service_pb2_grpc.add_MissionServiceServicer_to_server,
                MissionServicer(MissionStore(service.redis)),
                mission_service_pb2.DESCRIPTOR.services_by_name["MissionService"])


if __name__ == "__main__":
    run_service("mission", POLICY, register)
