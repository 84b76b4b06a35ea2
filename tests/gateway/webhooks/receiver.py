"""A real webhook receiver for tests: ``http.server`` in a thread that verifies every signature itself.

Verification is written here from the Standard Webhooks spec (not with the library the gateway signs
with), so a signing bug cannot hide behind the same code on both sides.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import ssl
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


def verify(secrets: list[str], headers: dict[str, str], body: bytes, *, tolerance_seconds: int = 300) -> bool:
    """Standard Webhooks verification: any ``v1`` signature matching any secret, timestamp within tolerance."""
    message_id, timestamp, signatures = (headers.get(h, "") for h in
                                         ("webhook-id", "webhook-timestamp", "webhook-signature"))
    if not (message_id and timestamp.isdigit() and signatures):
        return False
    if abs(time.time() - int(timestamp)) > tolerance_seconds:
        return False
    content = f"{message_id}.{timestamp}.".encode() + body
    expected = {base64.b64encode(hmac.new(base64.b64decode(s.removeprefix("whsec_")), content,
                                          hashlib.sha256).digest()).decode() for s in secrets}
    for candidate in signatures.split(" "):
        version, _, value = candidate.partition(",")
        if version == "v1" and any(hmac.compare_digest(value, e) for e in expected):
            return True
    return False


@dataclass
class Received:
    path: str
    headers: dict[str, str]
    body: bytes
    verified: bool
    status: int

    @property
    def event(self) -> dict[str, Any]:
        return json.loads(self.body)


@dataclass
class Receiver:
    """Listens on 127.0.0.1:<free port>; answers with ``respond(request_number) -> status``."""

    secrets: list[str]
    respond: Callable[[int], int] = lambda _n: 204
    received: list[Received] = field(default_factory=list)
    #: Serve HTTPS with this context (else plain HTTP).
    tls: ssl.SSLContext | None = None
    _server: ThreadingHTTPServer | None = None

    @property
    def port(self) -> int:
        assert self._server is not None
        return self._server.server_address[1]

    def url(self, path: str = "/hooks", *, host: str = "127.0.0.1") -> str:
        return f"{'https' if self.tls else 'http'}://{host}:{self.port}{path}"

    def start(self) -> Receiver:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            timeout = 5  # a client that stalls cannot hold a thread (or the test) for long

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("content-length", "0")))
                headers = {k.lower(): v for k, v in self.headers.items()}
                status = receiver.respond(len(receiver.received))
                receiver.received.append(Received(self.path, headers, body, verify(receiver.secrets, headers, body),
                                                  status))
                self.send_response(status)
                self.send_header("content-length", "2")
                self.end_headers()
                self.wfile.write(b"no" if status >= 300 else b"ok")

            def log_message(self, *_: object) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        if self.tls is not None:
            # The handshake happens in the request's thread (with its time-out), never in the accepting one.
            self._server.socket = self.tls.wrap_socket(self._server.socket, server_side=True,
                                                       do_handshake_on_connect=False)
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
