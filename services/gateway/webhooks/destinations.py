"""Where a webhook may be sent: the URL's form and the guard against server-side request forgery.

Plain Python, no I/O (resolving the host is the caller's: webhooks/usecases.py). Public unicast addresses
are allowed; private, loopback, link-local, multicast, reserved and unspecified ones (IPv4 and IPv6,
including IPv4 inside IPv4-mapped, NAT64, 6to4 and Teredo IPv6 addresses) only when explicitly allowed
(``HAULMESH_WEBHOOK_ALLOWED_CIDRS``). The rules of the subscriptions themselves are in domain.py.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from urllib.parse import SplitResult, urlsplit

from services.runtime import ConfigError, FieldViolation, InvalidArgument

__all__ = [
    "MAX_URL_LENGTH",
    "Destination",
    "DestinationGuard",
    "IpNetwork",
    "check_addresses",
    "check_scheme",
    "parse_allowed_cidrs",
    "parse_destination",
]

MAX_URL_LENGTH = 2048

IpNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
IpAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

# IPv6 ranges that carry an IPv4 address inside (NAT64, 6to4): judged by the embedded IPv4 address.
_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")
_NAT64_LOCAL = ipaddress.IPv6Network("64:ff9b:1::/48")
_SIX_TO_FOUR = ipaddress.IPv6Network("2002::/16")


def parse_allowed_cidrs(text: str) -> tuple[IpNetwork, ...]:
    """``HAULMESH_WEBHOOK_ALLOWED_CIDRS``: a comma-separated list of networks (empty: none allowed)."""
    networks = []
    for part in (p.strip() for p in text.split(",")):
        if not part:
            continue
        try:
            networks.append(ipaddress.ip_network(part, strict=False))
        except ValueError:
            raise ConfigError(f"HAULMESH_WEBHOOK_ALLOWED_CIDRS: {part!r} is not a network",
                              field="HAULMESH_WEBHOOK_ALLOWED_CIDRS") from None
    return tuple(networks)


def _embedded_ipv4(address: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    if address.ipv4_mapped is not None:
        return address.ipv4_mapped
    if address in _NAT64:
        return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    if address.sixtofour is not None:
        return address.sixtofour
    if address.teredo is not None:
        return address.teredo[1]
    return None


# IANA special-purpose ranges refused whatever the Python version's ``ipaddress`` flags say (they have
# changed between releases, e.g. for 192.0.0.0/24).
_SPECIAL = tuple(ipaddress.ip_network(n) for n in (
    "0.0.0.0/8", "10.0.0.0/8", "100.64.0.0/10", "127.0.0.0/8", "169.254.0.0/16", "172.16.0.0/12",
    "192.0.0.0/24", "192.0.2.0/24", "192.88.99.0/24", "192.168.0.0/16", "198.18.0.0/15", "198.51.100.0/24",
    "203.0.113.0/24", "224.0.0.0/4", "240.0.0.0/4",
    "::/128", "::1/128", "100::/64", "2001::/23", "2001:db8::/32", "3fff::/20", "5f00::/16", "fc00::/7",
    "fe80::/10", "fec0::/10", "ff00::/8"))


def _flags_public(address: IpAddress) -> bool:
    if any(address.version == n.version and address in n for n in _SPECIAL):
        return False
    return not (address.is_private or address.is_loopback or address.is_link_local or address.is_multicast
                or address.is_reserved or address.is_unspecified or not address.is_global)


def _is_public(address: IpAddress) -> bool:
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None or address in _NAT64:
            # Reaches (or is translated to) the IPv4 address inside: only that address counts.
            return _flags_public(_embedded_ipv4(address))  # type: ignore[arg-type]
        if address in _NAT64_LOCAL:
            return False
        embedded = _embedded_ipv4(address)
        if embedded is not None:  # 6to4, Teredo: both the tunnel address and the IPv4 inside must be public
            return _flags_public(address) and _flags_public(embedded)
    return _flags_public(address)


@dataclass(frozen=True)
class DestinationGuard:
    """Decides which resolved addresses a webhook may be sent to.

    Public unicast addresses are allowed; private, loopback, link-local, multicast, reserved and
    unspecified ones (IPv4 and IPv6, including IPv4 inside IPv4-mapped, NAT64, 6to4 and Teredo IPv6
    addresses) only when inside ``allowed`` (``HAULMESH_WEBHOOK_ALLOWED_CIDRS``).
    """

    allowed: tuple[IpNetwork, ...] = ()

    def _normalise(self, address: IpAddress) -> IpAddress:
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
            return address.ipv4_mapped
        return address

    def explicitly_allowed(self, address: str | IpAddress) -> bool:
        """Whether ``address`` is inside the allow-list."""
        ip = self._normalise(ipaddress.ip_address(address))
        return any(ip.version == n.version and ip in n for n in self.allowed)

    def permits(self, address: str | IpAddress) -> bool:
        """Whether a connection to ``address`` is allowed."""
        ip = self._normalise(ipaddress.ip_address(address))
        return self.explicitly_allowed(ip) or _is_public(ip)

    def refused(self, addresses: Iterable[str]) -> list[str]:
        """The addresses among ``addresses`` that are refused (an empty list: all allowed)."""
        return [a for a in addresses if not self.permits(a)]


@dataclass(frozen=True)
class Destination:
    """A parsed webhook URL: what to connect to and what to send as Host / TLS server name."""

    url: str
    scheme: str
    host: str
    port: int
    target: str  # path and query, what goes on the request line


def parse_destination(url: str, *, field: str = "url") -> Destination:
    """Parse and check a webhook URL's form (not its addresses: see :class:`DestinationGuard`)."""
    def bad(description: str) -> InvalidArgument:
        return InvalidArgument(f"{field}: {description}", reason="INVALID_ARGUMENT",
                               violations=[FieldViolation(field, description)])

    if not url:
        raise bad("required: an absolute https:// URL")
    if len(url) > MAX_URL_LENGTH:
        raise bad(f"at most {MAX_URL_LENGTH} characters")
    if any(c.isspace() or ord(c) < 0x20 or ord(c) == 0x7F for c in url):
        raise bad("must not contain whitespace or control characters")
    try:
        parts: SplitResult = urlsplit(url)
        port = parts.port
    except ValueError:
        raise bad("not a valid URL") from None
    if parts.scheme not in ("https", "http"):
        raise bad("must be an https:// URL")
    if not parts.hostname:
        raise bad("must name a host")
    if parts.username is not None or parts.password is not None:
        raise bad("must not carry credentials (user:password@)")
    if parts.fragment:
        raise bad("must not have a #fragment")
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    return Destination(url, parts.scheme, parts.hostname, port or (443 if parts.scheme == "https" else 80), target)


def check_scheme(destination: Destination, addresses: Sequence[str], guard: DestinationGuard,
                 *, field: str = "url") -> None:
    """``http://`` is accepted only when every address is explicitly allowed (development, tests)."""
    if destination.scheme == "http" and not (addresses and all(guard.explicitly_allowed(a) for a in addresses)):
        raise InvalidArgument(f"{field}: must be an https:// URL", reason="INVALID_ARGUMENT",
                              violations=[FieldViolation(field, "must be an https:// URL (http only for "
                                                                "explicitly allowed development destinations)")])


def check_addresses(destination: Destination, addresses: Sequence[str], guard: DestinationGuard,
                    *, field: str = "url") -> None:
    """INVALID_ARGUMENT unless the host resolved and every address it resolved to is permitted."""
    if not addresses:
        raise InvalidArgument(f"{field}: host {destination.host!r} does not resolve", reason="INVALID_ARGUMENT",
                              violations=[FieldViolation(field, "host does not resolve")])
    refused = guard.refused(addresses)
    if refused:
        raise InvalidArgument(f"{field}: host {destination.host!r} resolves to a non-public address",
                              reason="INVALID_ARGUMENT",
                              violations=[FieldViolation(field, "must resolve to public addresses only "
                                                                "(private, loopback, link-local, multicast, "
                                                                "reserved and unspecified are refused)")])
    check_scheme(destination, addresses, guard, field=field)
