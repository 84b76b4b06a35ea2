"""Entry point: ``python -m services.gateway`` — one process, two products: the REST door (rest/: the TMS's
HTTP listener and the trucks' device listener) and the webhook service (webhooks/: its gRPC server and loops)."""

import logging

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from services.runtime import Service, resolve_redis_url, run_service
from services.runtime.enrolment import VehicleSigner

from .config import GatewayConfig
from .console.app import Console
from .console.oidc import OidcClient
from .console.sessions import ConsoleSessions
from .rest.app import HttpListener, create_app
from .rest.auth import AuthConfig, Authenticator
from .rest.descriptors import load_api
from .rest.device import DeviceGateway, TlsScopeProtocol, device_api, device_ssl_context
from .rest.docs_ui import DevTokenEndpoint, DocsUi, require_dev_mode
from .rest.enrol import Enrolment
from .rest.handler import RestGateway
from .rest.ratelimit import TenantRateLimiter
from .rest.sse import StreamSlots
from .webhooks.server import POLICY, register_grpc

_log = logging.getLogger("haulmesh.gateway")


def rest_gateway(service: Service, config: GatewayConfig) -> RestGateway:
    """The REST side (see docs/gateway.md)."""
    shared = service.config
    return RestGateway(
        api=load_api(),
        authenticator=Authenticator(AuthConfig.from_config(config)),
        # The gateway's own store user, as its service client (docs/security.md, "Store users").
        limiter=TenantRateLimiter.from_config(config, resolve_redis_url(shared.redis_url, shared.state_dir,
                                                                        user=shared.service_name)),
        # haulmesh.<area>.v1 is served by the mesh service <area>; the gateway's own (webhooks) included.
        channel=lambda peer: service.channels.channel(shared.peer_addresses[peer]),
        max_request_bytes=config.max_request_bytes,
        durable=service.durable,
        streams=StreamSlots(config.sse_max_streams_per_process, config.sse_max_streams_per_carrier,
                            config.sse_retry_after_seconds),
        token_url=config.oauth_token_url,
    )


def docs_ui(service: Service, config: GatewayConfig, rest: RestGateway) -> DocsUi:
    """The interactive reference (/docs), with the dev issuer's token endpoint in dev mode (rest/docs_ui.py)."""
    dev_tokens = None
    if config.dev_token_endpoint:
        dev_tokens = DevTokenEndpoint.checked(
            state_dir=service.config.state_dir, issuer=config.jwt_issuer, audience=config.jwt_audience,
            jwks_file=config.jwks_file, jwks_url=config.jwks_url, listen_host=service.config.listen_host,
            scopes={method.scope for method in rest.api.methods if method.scope})
    return DocsUi(config.docs_ui_dir, dev_tokens)


def console(service: Service, config: GatewayConfig) -> Console:
    """The operations console (/console/): sign-in by the carrier's identity provider, or the dev login in dev mode."""
    if config.console_dev_login:
        require_dev_mode("HAULMESH_CONSOLE_DEV_LOGIN", "signs people in as any role of any carrier",
                         state_dir=service.config.state_dir, jwks_file=config.jwks_file, jwks_url=config.jwks_url,
                         listen_host=service.config.listen_host)
        _log.warning("DEV MODE: /console/dev-login signs anyone in as any role (HAULMESH_CONSOLE_DEV_LOGIN=1)")
    return Console(ConsoleSessions(lambda: service.redis, session_seconds=config.console_session_seconds),
                   assets_dir=config.console_assets_dir, tile_url=config.console_tile_url,
                   oidc=OidcClient(config.oidc) if config.oidc is not None else None,
                   dev_login=config.console_dev_login, dev_carrier=config.console_dev_carrier)


def register(service: Service) -> None:
    # Every setting first: a bad one stops the process before anything is served (ConfigError).
    config = GatewayConfig.from_env(state_dir=service.config.state_dir, mesh_ca_file=service.config.tls.ca_file)
    signer = None
    if config.enrolment_ca_key_file is not None and config.enrolment_ca_cert_file is not None:
        signer = VehicleSigner.from_files(config.enrolment_ca_cert_file, config.enrolment_ca_key_file,
                                          valid_seconds=config.vehicle_cert_ttl_seconds)
        _log.info("enrolment and renewal on: vehicle certificates of %d s signed with %s",
                  config.vehicle_cert_ttl_seconds, config.enrolment_ca_key_file)
    else:
        _log.info("enrolment and renewal off: no HAULMESH_GATEWAY_ENROLMENT_CA_KEY_FILE (both routes answer 503)")
    register_grpc(service, config)

    async def ready() -> bool:
        try:
            return bool(await service.redis.ping())
        except Exception:
            return False

    rest = rest_gateway(service, config)
    operations_console = console(service, config)
    rest.session_principal = operations_console.principal
    # Trucks enrol and renew here (rest/enrol.py): with a token on the TMS's listener, with their certificate on theirs.
    async def refuse_revoked(der: bytes) -> None:
        # A renewal gives a new serial: a revoked certificate must never renew into one the deny-list lacks.
        service.revocations.check_pem(
            x509.load_der_x509_certificate(der).public_bytes(serialization.Encoding.PEM))

    enrolment = Enrolment(signer, lambda: service.redis, rest.limiter, service.audit, service.durable,
                          certificate_check=refuse_revoked)
    listener = HttpListener(create_app(ready, rest, docs_ui(service, config, rest),
                                       [*enrolment.enrol_routes(), *operations_console.routes()]),
                            service.config.listen_host, service.config.http_port)

    async def stop_rest() -> None:
        await listener.stop()
        await rest.limiter.close()  # its store connections (a late device request reconnects: harmless)

    service.add_companion(listener.run, stop_rest)
    # The trucks' door (HAULMESH_GATEWAY_DEVICE_PORT): the same pipeline, client certificates instead of tokens.
    device = DeviceGateway(api=device_api(rest.api), authenticator=rest.authenticator, limiter=rest.limiter,
                           channel=rest.channel, max_request_bytes=rest.max_request_bytes,
                           max_inflight_requests=config.device_max_inflight_requests,
                           revocations=service.revocations)
    context = device_ssl_context(service.config.tls)
    devices = HttpListener(create_app(ready, device, extra_routes=enrolment.renew_routes()),
                           service.config.listen_host, service.config.device_port,
                           http=TlsScopeProtocol, ws="none", ssl_context_factory=lambda _config, _default: context)
    service.add_companion(devices.run, devices.stop)


if __name__ == "__main__":
    run_service("gateway", POLICY, register)
