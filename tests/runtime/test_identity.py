"""Identity parsing: exactly one SPIFFE URI SAN of our trust domain, nothing else."""

from __future__ import annotations

import string

import pytest
from hypothesis import given
from hypothesis import strategies as st

from services.runtime import Identity, IdentityError, identity_from_pem, pki

names = st.text(alphabet=string.ascii_letters + string.digits + "._-", min_size=1, max_size=63).filter(
    lambda s: s[0].isalnum())


@given(kind=st.sampled_from(["service", "vehicle", "operator"]), name=names)
def test_round_trip(kind: str, name: str) -> None:
    identity = Identity(kind, name)
    assert Identity.parse(identity.spiffe_id) == identity


@given(uri=st.text(max_size=120))
def test_arbitrary_text_is_rejected_or_canonical(uri: str) -> None:
    try:
        identity = Identity.parse(uri)
    except IdentityError:
        return
    assert identity.spiffe_id == uri


@pytest.mark.parametrize("uri", [
    "spiffe://other.domain/service/tender",
    "spiffe://haulmesh.local/robot/tender",
    "spiffe://haulmesh.local/service/",
    "spiffe://haulmesh.local/service/a/b",
    "spiffe://haulmesh.local/vehicle/-leading-dash",
    "https://haulmesh.local/service/tender",
])
def test_rejects_foreign_or_malformed(uri: str) -> None:
    with pytest.raises(IdentityError):
        Identity.parse(uri)


def test_certificate_with_two_uri_sans_is_rejected() -> None:
    ca = pki.create_ca()
    issued = pki.issue(ca, [pki.identity_for("vehicle", "AU-TRK-1"), pki.identity_for("service", "tender")])
    with pytest.raises(IdentityError, match="exactly one URI SAN, it carries 2"):
        identity_from_pem(issued.certificate_pem)


def test_certificate_without_uri_san_is_rejected() -> None:
    ca = pki.create_ca()
    issued = pki.issue(ca, [], dns_names=("localhost",))
    with pytest.raises(IdentityError, match="carries 0"):
        identity_from_pem(issued.certificate_pem)


def test_single_uri_san_gives_identity() -> None:
    ca = pki.create_ca()
    issued = pki.issue(ca, pki.identity_for("vehicle", "AU-TRK-1001"), dns_names=("x",))
    assert identity_from_pem(issued.certificate_pem) == Identity("vehicle", "AU-TRK-1001")
