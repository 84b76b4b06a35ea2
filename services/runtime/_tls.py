"""mTLS credentials whose certificate files are re-read when they change, without a restart.

cert-manager and our own ``haulmesh pki`` rotate certificates by replacing files; a server picks the new
pair up on its next handshake, a client on its next channel.
"""

from __future__ import annotations

import logging
import os
import threading
from dataclasses import dataclass

import grpc
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from prometheus_client import Gauge

from ._config import TlsConfig
from ._metrics import METRICS_REGISTRY

__all__ = ["CertificateFiles", "client_credentials", "reloading_server_credentials"]

_log = logging.getLogger("haulmesh.tls")

#: When this workload's certificates expire, set whenever they are (re)loaded: the alert rules page on
#: a rotation that did not happen (deploy/prometheus/rules.yaml, docs/runbooks/CertificateExpiring*.md).
CERTIFICATE_EXPIRY = Gauge("haulmesh_certificate_expiry_timestamp_seconds", "Unix time at which this process's "
                           "certificate expires, by kind: leaf (its own identity) or ca (the trust bundle's "
                           "first certificate).", ["kind"], registry=METRICS_REGISTRY)


def _export_expiry(material: _Material) -> None:
    for kind, pem in (("leaf", material.cert_pem), ("ca", material.ca_pem)):
        try:
            CERTIFICATE_EXPIRY.labels(kind).set(x509.load_pem_x509_certificate(pem).not_valid_after_utc.timestamp())
        except ValueError:  # an unparsable bundle fails the handshakes loudly; the gauge keeps its last value
            _log.warning("cannot read the %s certificate's expiry", kind)


@dataclass(frozen=True)
class _Material:
    ca_pem: bytes
    cert_pem: bytes
    key_pem: bytes
    stamp: tuple[tuple[int, int], ...]


def _stamp(tls: TlsConfig) -> tuple[tuple[int, int], ...]:
    stats = [os.stat(p) for p in (tls.ca_file, tls.cert_file, tls.key_file)]
    return tuple((s.st_mtime_ns, s.st_size) for s in stats)


def _key_matches(cert_pem: bytes, key_pem: bytes) -> bool:
    cert = x509.load_pem_x509_certificate(cert_pem)
    key = serialization.load_pem_private_key(key_pem, password=None)
    public = serialization.PublicFormat.SubjectPublicKeyInfo
    return cert.public_key().public_bytes(serialization.Encoding.DER, public) == key.public_key().public_bytes(
        serialization.Encoding.DER, public
    )


class CertificateFiles:
    """The current certificate material of one workload, re-read from disk when its files change.

    A pair caught half-replaced (new certificate, old key) is ignored until it is whole again, so a
    rotation in progress never breaks the server's handshakes.
    """

    def __init__(self, tls: TlsConfig) -> None:
        self._tls = tls
        self._lock = threading.Lock()
        tls.check_readable()
        self._material = self._read()
        if self._material is None:
            raise ValueError(f"certificate {tls.cert_file} does not match key {tls.key_file}")
        _export_expiry(self._material)

    def _read(self) -> _Material | None:
        stamp = _stamp(self._tls)
        material = _Material(self._tls.ca_file.read_bytes(), self._tls.cert_file.read_bytes(),
                             self._tls.key_file.read_bytes(), stamp)
        try:
            if not _key_matches(material.cert_pem, material.key_pem):
                return None
        except ValueError:
            return None
        return material

    @property
    def current(self) -> _Material:
        return self._material

    def refresh(self) -> _Material | None:
        """Re-read the files if they changed; returns the new material, or None when nothing changed."""
        with self._lock:
            try:
                if _stamp(self._tls) == self._material.stamp:
                    return None
                material = self._read()
            except OSError as exc:
                _log.warning("certificate files unreadable, keeping the current ones: %s", exc)
                return None
            if material is None:
                _log.warning("certificate and key do not match (rotation in progress?); keeping current pair")
                return None
            self._material = material
            _export_expiry(material)
            _log.info("reloaded certificate %s", self._tls.cert_file)
            return material


def reloading_server_credentials(files: CertificateFiles) -> grpc.ServerCredentials:
    """Server credentials requiring a client certificate from our CA, reloaded on each new handshake."""

    def configuration(material: _Material) -> grpc.ServerCertificateConfiguration:
        return grpc.ssl_server_certificate_configuration(
            [(material.key_pem, material.cert_pem)], root_certificates=material.ca_pem
        )

    served = [files.current]

    def fetch() -> grpc.ServerCertificateConfiguration | None:
        # Called by gRPC core before each handshake: a stat of three files, cheap next to the handshake. Compared
        # with what this server was last given, not taken from refresh()'s answer: the process's channels share
        # ``files`` and may have seen the change first.
        files.refresh()
        material = files.current
        if material is served[0]:
            return None
        served[0] = material
        return configuration(material)

    return grpc.dynamic_ssl_server_credentials(
        configuration(files.current), fetch, require_client_authentication=True
    )


def client_credentials(files: CertificateFiles) -> grpc.ChannelCredentials:
    """Channel credentials presenting this workload's current certificate."""
    material = files.refresh() or files.current
    return grpc.ssl_channel_credentials(
        root_certificates=material.ca_pem, private_key=material.key_pem, certificate_chain=material.cert_pem
    )

