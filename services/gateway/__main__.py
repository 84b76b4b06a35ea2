"""Entry point: ``python -m services.gateway`` — the HTTP listener for the TMS and a gRPC server beside it."""

from services.runtime import Service, run_service

from .app import HttpListener, create_app
from .server import POLICY, register_grpc


def register(service: Service) -> None:
    register_grpc(service)

    async def ready() -> bool:
        try:
            return bool(await service.redis.ping())
        except Exception:
            return False

    listener = HttpListener(create_app(ready), service.config.listen_host, service.config.http_port)
    service.add_companion(listener.run, listener.stop)


if __name__ == "__main__":
    run_service("gateway", POLICY, register)
