"""The truck's certificate: enrolment with a one-time token, renewal before expiry, and credentials that follow it.

* :func:`enrol` generates the truck's ECDSA P-256 key on the truck (written 0600, never sent), sends a CSR and the
  operator's one-time token to the gateway (``POST /api/v1/vehicles/{id}:enrol``) and writes the certificate it gets.
* :class:`Renewer` renews at :data:`RENEW_AT_FRACTION` of the certificate's lifetime over the gateway's device
  listener (mTLS with the current certificate), with a CSR of the SAME key: the key is the truck's identity for its
  frame signatures (a TPM key is made once and never exported), so frames signed before and after the renewal carry
  the same key id and the open telemetry stream is not disturbed. Only the certificate file is replaced.
* :class:`VehicleFiles` gives channel credentials re-read from the files when they changed: the stream client asks
  for them at every new session, so the open stream keeps its connection and the next one presents the new serial.

Files (the layout ``haulmesh pki issue vehicle`` writes): ``ca.pem``, ``vehicle-<id>.pem``, ``vehicle-<id>-key.pem``.
"""

from __future__ import annotations

import asyncio
import datetime as _dt
import logging
import os
import random
import ssl
from dataclasses import dataclass
from pathlib import Path

import grpc
import httpx
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

__all__ = ["RENEW_AT_FRACTION", "EnrolmentError", "Renewer", "VehicleFiles", "enrol", "renew", "vehicle_csr"]

_log = logging.getLogger("haulmesh.edge.certs")

#: Renew once this fraction of the certificate's lifetime has passed: a third of it is left to retry in (8 h of a
#: 24 h certificate), so a gateway outage of hours does not strand the truck.
RENEW_AT_FRACTION = 2 / 3
#: One enrolment or renewal request, all told.
REQUEST_TIMEOUT_SECONDS = 15.0


class EnrolmentError(Exception):
    """Enrolment or renewal failed; the message says why (the gateway's reason when it answered)."""

    def __init__(self, message: str, *, reason: str = "", status: int = 0) -> None:
        super().__init__(message)
        self.reason = reason
        self.status = status


@dataclass(frozen=True)
class VehicleFiles:
    """The certificate files of one truck, and credentials built from what they hold now."""

    cert_dir: Path
    vehicle_id: str

    @property
    def ca_file(self) -> Path:
        return self.cert_dir / "ca.pem"

    @property
    def cert_file(self) -> Path:
        return self.cert_dir / f"vehicle-{self.vehicle_id}.pem"

    @property
    def key_file(self) -> Path:
        return self.cert_dir / f"vehicle-{self.vehicle_id}-key.pem"

    def certificate(self) -> x509.Certificate:
        return x509.load_pem_x509_certificate(self.cert_file.read_bytes())

    def channel_credentials(self) -> grpc.ChannelCredentials:
        """gRPC credentials with the certificate the files hold now (called for every new session)."""
        return grpc.ssl_channel_credentials(root_certificates=self.ca_file.read_bytes(),
                                            private_key=self.key_file.read_bytes(),
                                            certificate_chain=self.cert_file.read_bytes())

    def ssl_context(self) -> ssl.SSLContext:
        """Client TLS context for the gateway's device listener: the mesh CA, this truck's certificate."""
        context = ssl.create_default_context(cafile=str(self.ca_file))
        context.load_cert_chain(self.cert_file, self.key_file)
        return context


def vehicle_csr(key: ec.EllipticCurvePrivateKey, vehicle_id: str) -> str:
    """The PEM CSR the truck sends to enrol or renew: its public key and its SPIFFE ID as the only URI SAN, signed
    with its own key (proof that it holds it). The gateway takes nothing else from it."""
    spiffe_id = f"spiffe://haulmesh.local/vehicle/{vehicle_id}"
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, vehicle_id[:64])]))
        .add_extension(x509.SubjectAlternativeName([x509.UniformResourceIdentifier(spiffe_id)]), critical=False)
        .sign(key, hashes.SHA256())
    )
    return csr.public_bytes(serialization.Encoding.PEM).decode()


def _write(path: Path, data: bytes, mode: int) -> None:
    # A temporary file then a rename: a reader (the stream client opening a session) never sees half a file.
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)
    os.replace(tmp, path)


def _load_key(path: Path) -> ec.EllipticCurvePrivateKey:
    key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    if not isinstance(key, ec.EllipticCurvePrivateKey) or not isinstance(key.curve, ec.SECP256R1):
        raise EnrolmentError(f"{path} is not an ECDSA P-256 key")
    return key


def _reason_of(response: httpx.Response) -> tuple[str, str]:
    try:
        body = response.json()
    except ValueError:
        return "", response.text[:200]
    reason = next((d.get("reason", "") for d in body.get("details", []) if isinstance(d, dict)), "")
    return reason, str(body.get("message", ""))


def _store_answer(files: VehicleFiles, response: httpx.Response, key: ec.EllipticCurvePrivateKey,
                  *, write_ca: bool) -> x509.Certificate:
    if response.status_code != 200:
        reason, message = _reason_of(response)
        raise EnrolmentError(f"{response.status_code} {reason or 'error'}: {message}", reason=reason,
                             status=response.status_code)
    body = response.json()
    certificate = x509.load_pem_x509_certificate(body["certificate"].encode())
    if certificate.public_key() != key.public_key():
        raise EnrolmentError("the gateway answered a certificate for another key; not installed")
    if write_ca and not files.ca_file.exists():
        _write(files.ca_file, body["caCertificates"].encode(), 0o644)
    _write(files.cert_file, certificate.public_bytes(serialization.Encoding.PEM), 0o644)
    return certificate


async def enrol(gateway_url: str, files: VehicleFiles, token: str, *,
                verify: ssl.SSLContext | str | bool = True) -> x509.Certificate:
    """Enrol the truck: its own key (made now unless the key file already holds one, e.g. a TPM-provisioned truck's
    public handle), a CSR naming ``vehicle/<id>``, the one-time ``token``; the certificate is written beside the key.

    ``gateway_url``: the gateway's TMS listener (``https://`` in production; the token travels in the body).
    ``ca.pem`` is written from the answer only when the truck was not provisioned with one.
    """
    files.cert_dir.mkdir(parents=True, exist_ok=True)
    if files.key_file.exists():
        key = _load_key(files.key_file)
    else:
        key = ec.generate_private_key(ec.SECP256R1())
        _write(files.key_file, key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                 serialization.NoEncryption()), 0o600)
    csr = vehicle_csr(key, files.vehicle_id)
    url = f"{gateway_url.rstrip('/')}/api/v1/vehicles/{files.vehicle_id}:enrol"
    async with httpx.AsyncClient(timeout=REQUEST_TIMEOUT_SECONDS, verify=verify) as client:
        try:
            response = await client.post(url, json={"token": token, "csr": csr})
        except httpx.HTTPError as exc:
            raise EnrolmentError(f"cannot reach the gateway at {gateway_url}: {exc!r}") from None
    return _store_answer(files, response, key, write_ca=True)


async def renew(device_url: str, files: VehicleFiles) -> x509.Certificate:
    """One renewal over the device listener with the current certificate; the new one replaces it on disk."""
    key = _load_key(files.key_file)
    csr = vehicle_csr(key, files.vehicle_id)
    url = f"{device_url.rstrip('/')}/api/v1/vehicles/{files.vehicle_id}:renewCertificate"
    # A fresh context per renewal: it must present the certificate the files hold now.
    async with httpx.AsyncClient(timeout=REQUEST_TIMEOUT_SECONDS, verify=files.ssl_context()) as client:
        try:
            response = await client.post(url, json={"csr": csr})
        except httpx.HTTPError as exc:
            raise EnrolmentError(f"cannot reach the gateway's device listener at {device_url}: {exc!r}") from None
    return _store_answer(files, response, key, write_ca=False)


class Renewer:
    """Renews the truck's certificate at ``fraction`` of its lifetime, for as long as it runs.

    A failed renewal is retried after a tenth of the time left (between 1 s and 5 minutes, jittered), so the retries
    get denser as expiry nears; a certificate that has expired cannot renew (the listener refuses it): the truck
    must enrol again, which is logged as an error.
    """

    def __init__(self, device_url: str, files: VehicleFiles, *, fraction: float = RENEW_AT_FRACTION) -> None:
        if not 0 < fraction < 1:
            raise ValueError(f"the renewal point must be a fraction of the lifetime in (0, 1), got {fraction}")
        self.device_url = device_url
        self.files = files
        self.fraction = fraction
        self.renewals = 0
        self.failures = 0
        self.last_error = ""
        #: Set after every successful renewal (tests and callers wait on it).
        self.renewed = asyncio.Event()

    def due_in_seconds(self, now: _dt.datetime | None = None) -> float:
        """Seconds until the current certificate is due for renewal (negative: overdue)."""
        certificate = self.files.certificate()
        start, end = certificate.not_valid_before_utc, certificate.not_valid_after_utc
        due = start + (end - start) * self.fraction
        return (due - (now or _dt.datetime.now(_dt.UTC))).total_seconds()

    async def run(self) -> None:
        """Sleep until due, renew, repeat; until cancelled."""
        while True:
            wait = await asyncio.to_thread(self.due_in_seconds)
            if wait > 0:
                await asyncio.sleep(wait)
            try:
                certificate = await renew(self.device_url, self.files)
            except (EnrolmentError, OSError, ValueError, ssl.SSLError) as exc:
                self.failures += 1
                self.last_error = str(exc)
                left = (self.files.certificate().not_valid_after_utc - _dt.datetime.now(_dt.UTC)).total_seconds()
                if left <= 0:
                    _log.error("certificate of %s expired without renewal (%s): enrol the truck again",
                               self.files.vehicle_id, exc)
                    return
                delay = min(300.0, max(1.0, left / 10)) * random.uniform(0.8, 1.0)  # noqa: S311 (jitter)
                _log.warning("certificate renewal failed (%s); retrying in %.0f s (%.0f s before expiry)", exc,
                             delay, left)
                await asyncio.sleep(delay)
                continue
            self.renewals += 1
            self.renewed.set()
            _log.info("certificate renewed: serial %x until %s", certificate.serial_number,
                      certificate.not_valid_after_utc.isoformat(timespec="seconds"))
