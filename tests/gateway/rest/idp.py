"""A real identity provider for the token tests: ES256 signing keys and an HTTPS JWKS endpoint (a certificate of a
test CA) that counts, and timestamps, every fetch it serves."""

from __future__ import annotations

import base64
import http.server
import json
import ssl
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import jwt
from cryptography.hazmat.primitives.asymmetric import ec

from services.runtime import pki
from services.runtime.tokens import DEFAULT_AUDIENCE, DEFAULT_ISSUER

__all__ = ["IdentityProvider", "b64url", "claims"]


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def claims(carrier: str = "acme", scopes: str = "webhook:read", **overrides: object) -> dict:
    """A valid access token's claims for the gateway's default issuer and audience, with ``overrides``."""
    now = int(time.time())
    body: dict = {"iss": DEFAULT_ISSUER, "aud": DEFAULT_AUDIENCE, "sub": f"tms@{carrier}", "iat": now, "nbf": now,
                  "exp": now + 300, "jti": uuid.uuid4().hex, "carrier": carrier, "scope": scopes}
    body.update(overrides)
    return {k: v for k, v in body.items() if v is not None}


class IdentityProvider:
    """Signing keys by kid, of which ``published`` are listed at ``url``; ``failing`` answers 500, after
    ``delay_seconds``."""

    def __init__(self, directory: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self.ca = pki.create_ca("Test IdP CA")
        self.ca_file = directory / "idp-ca.pem"
        self.ca_file.write_bytes(self.ca.certificate_pem)
        issued = pki.issue(self.ca, [], valid_days=1, ip_addresses=("127.0.0.1",), dns_names=("localhost",))
        self._cert, self._key = directory / "idp.pem", directory / "idp-key.pem"
        self._cert.write_bytes(issued.certificate_pem)
        self._key.write_bytes(issued.private_key_pem)
        self.keys: dict[str, ec.EllipticCurvePrivateKey] = {}
        self.published: list[str] = []
        self.failing = False
        #: Seconds each answer is held back (a slow IdP).
        self.delay_seconds = 0.0
        #: Every JWKS request served: its time.monotonic() and the kids the answer listed (the server's threads
        #: append).
        self.served: list[tuple[float, tuple[str, ...]]] = []
        self.port = 0

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}/jwks.json"

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def fetches(self) -> int:
        return len(self.served)

    @property
    def fetch_times(self) -> list[float]:
        return [at for at, _ in self.served]

    def fetches_listing(self, kid: str) -> int:
        """How many answers listed ``kid``."""
        return sum(1 for _, kids in self.served if kid in kids)

    def rotate(self, *, retire_old: bool = False) -> str:
        """A new key, published (beside the old ones unless ``retire_old``); returns its kid."""
        kid = f"k-{uuid.uuid4().hex[:12]}"
        self.keys[kid] = ec.generate_private_key(ec.SECP256R1())
        self.published = [kid] if retire_old else [*self.published, kid]
        return kid

    def jwks(self, kids: tuple[str, ...] | None = None) -> dict:
        """The published keys (or ``kids``) as a JWK Set."""
        entries = []
        for kid in self.published if kids is None else kids:
            public = json.loads(jwt.algorithms.ECAlgorithm.to_jwk(self.keys[kid].public_key()))
            entries.append({**public, "kid": kid, "alg": "ES256", "use": "sig"})
        return {"keys": entries}

    def token(self, kid: str | None = None, *, header: dict | None = None, key: object = None, **claim: object) -> str:
        """A token signed by ``kid``'s key (default: the newest), header ``typ: at+jwt`` unless ``header`` says
        otherwise; signed raw so that the header is exactly what is asked (PyJWT would add ``typ: JWT``)."""
        kid = kid or self.published[-1]
        head = {"alg": "ES256", "typ": "at+jwt", "kid": kid, **(header or {})}
        head = {k: v for k, v in head.items() if v is not None}
        signing_input = f"{b64url(json.dumps(head).encode())}.{b64url(json.dumps(claims(**claim)).encode())}"
        signer = key if key is not None else self.keys[kid]
        signature = jwt.algorithms.ECAlgorithm(jwt.algorithms.ECAlgorithm.SHA256).sign(signing_input.encode(), signer)
        return f"{signing_input}.{b64url(signature)}"

    @contextmanager
    def serving(self) -> Iterator[IdentityProvider]:
        """The HTTPS JWKS endpoint on a free loopback port, in a thread, for the ``with`` block."""
        idp = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                if self.path != "/jwks.json":
                    self.send_error(404)
                    return
                at, listed = time.monotonic(), tuple(idp.published)
                time.sleep(idp.delay_seconds)
                body = b'{"error": "down"}' if idp.failing else json.dumps(idp.jwks(listed)).encode()
                idp.served.append((at, () if idp.failing else listed))
                self.send_response(500 if idp.failing else 200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(self._cert, self._key)
        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        # The handshake in the handler's thread, not in accept(): a stalled client must not stop the server.
        server.socket = context.wrap_socket(server.socket, server_side=True, do_handshake_on_connect=False)
        self.port = server.server_port
        thread = threading.Thread(target=server.serve_forever, daemon=True)
        thread.start()
        try:
            yield self
        finally:
            server.shutdown()
            server.server_close()
