"""Entry point: ``python -m services.gateway`` — the HTTP listener for the TMS and a gRPC server beside it."""

from services.runtime import Service, resolve_redis_url, run_service

from .app import HttpListener, create_app
from .auth import AuthConfig, Authenticator
from .descriptors import load_api
from .device import DeviceGateway, TlsScopeProtocol, device_api, device_ssl_context
from .ratelimit import TenantRateLimiter
from .rest import RestGateway, max_request_bytes_from_env
from .server import POLICY, register_grpc


def rest_gateway(service: Service) -> RestGateway:
    """The REST side from the environment (see docs/gateway.md); raises ConfigError on bad settings."""
    config = service.config
    return RestGateway(
        api=load_api(),
        authenticator=Authenticator(AuthConfig.from_env(config.state_dir)),
        limiter=TenantRateLimiter.from_env(resolve_redis_url(config.redis_url, config.state_dir)),
        # haulmesh.<area>.v1 is served by the mesh service <area>; the gateway's own (webhooks) included.
        channel=lambda peer: service.channels.channel(config.peer_addresses[peer]),
        max_request_bytes=max_request_bytes_from_env(),
        durable=service.durable,
    )


def register(service: Service) -> None:
    register_grpc(service)

    async def ready() -> bool:
        try:
            return bool(await service.redis.ping())
        except Exception:
            return False

    rest = rest_gateway(service)
    listener = HttpListener(create_app(ready, rest), service.config.listen_host, service.config.http_port)
    service.add_companion(listener.run, listener.stop)
    # The trucks' door (HAULMESH_GATEWAY_DEVICE_PORT): the same pipeline, client certificates instead of tokens.
    device = DeviceGateway(api=device_api(rest.api), authenticator=rest.authenticator, limiter=rest.limiter,
                           channel=rest.channel, max_request_bytes=rest.max_request_bytes)
    context = device_ssl_context(service.config.tls)
    devices = HttpListener(create_app(ready, device), service.config.listen_host, service.config.device_port,
                           http=TlsScopeProtocol, ws="none", ssl_context_factory=lambda _config, _default: context)
    service.add_companion(devices.run, devices.stop)


if __name__ == "__main__":
    run_service("gateway", POLICY, register)
