"""The chart's enrolment key (values ``enrolment``): the CA key that signs trucks' certificates reaches the gateway
only, read-only, and only when a Secret is named (docs/security.md, "Enrolment and renewal")."""

from __future__ import annotations

import pytest

from .conftest import SERVICES, ChartRenderer

_ENV = ("HAULMESH_GATEWAY_ENROLMENT_CA_CERT_FILE", "HAULMESH_GATEWAY_ENROLMENT_CA_KEY_FILE",
        "HAULMESH_GATEWAY_VEHICLE_CERT_TTL_SECONDS")


def test_without_a_secret_no_pod_gets_a_signing_key(chart: ChartRenderer) -> None:
    rendered = chart.render({})
    for name in SERVICES:
        assert not set(_ENV) & set(rendered.env(name)), name
        assert "/etc/haulmesh/enrolment" not in {m["mountPath"] for m in rendered.container(name)["volumeMounts"]}


def test_only_the_gateway_mounts_the_enrolment_key(chart: ChartRenderer) -> None:
    rendered = chart.render({"enrolment": {"secretName": "mesh-ca", "vehicleCertTtlSeconds": 43200}})
    for name in SERVICES:
        mounts = {m["mountPath"]: m for m in rendered.container(name)["volumeMounts"]}
        assert ("/etc/haulmesh/enrolment" in mounts) == (name == "gateway"), name
        assert (set(_ENV) <= set(rendered.env(name))) == (name == "gateway"), name
    mount = next(m for m in rendered.container("gateway")["volumeMounts"] if m["name"] == "enrolment")
    assert mount["readOnly"] is True and "subPath" not in mount
    env = rendered.env("gateway")
    assert env["HAULMESH_GATEWAY_ENROLMENT_CA_KEY_FILE"]["value"] == "/etc/haulmesh/enrolment/tls.key"
    assert env["HAULMESH_GATEWAY_VEHICLE_CERT_TTL_SECONDS"]["value"] == "43200"
    volume = next(v for v in rendered.deployment("gateway")["spec"]["template"]["spec"]["volumes"]
                  if v["name"] == "enrolment")
    assert volume["secret"]["secretName"] == "mesh-ca" and not volume["secret"].get("optional")


def test_a_lifetime_out_of_range_is_refused(chart: ChartRenderer) -> None:
    with pytest.raises(Exception, match="vehicleCertTtlSeconds"):
        chart.render({"enrolment": {"secretName": "mesh-ca", "vehicleCertTtlSeconds": 1}})
