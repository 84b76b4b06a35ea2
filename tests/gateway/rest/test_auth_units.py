"""The Authenticator in-process: a JWKS served over HTTP, key rotation in the JWKS file, configuration."""

from __future__ import annotations

import http.server
import json
import threading
import time
from pathlib import Path

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

from services.gateway.rest.auth import AuthConfig, Authenticator
from services.gateway.rest.errors import RestError
from services.runtime import ConfigError
from services.runtime.tokens import DEFAULT_AUDIENCE, DEFAULT_ISSUER, jwks_path, mint


@pytest.fixture
def jwks_server(tmp_path: Path):
    """A loopback HTTP server publishing the dev issuer's jwks.json of ``tmp_path``."""
    mint(carrier="acme", scopes="x", state_dir=tmp_path)
    directory = jwks_path(tmp_path).parent

    class Handler(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *args, **kwargs) -> None:
            super().__init__(*args, directory=str(directory), **kwargs)

        def log_message(self, *args) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}/jwks.json"
    server.shutdown()
    server.server_close()


async def test_keys_from_a_jwks_url(tmp_path: Path, jwks_server: str) -> None:
    auth = Authenticator(AuthConfig.from_env(tmp_path, {"HAULMESH_JWKS_URL": jwks_server}))
    principal = await auth.authenticate("Bearer " + mint(carrier="acme", scopes="a b", state_dir=tmp_path))
    assert principal.carrier == "acme" and principal.scopes == {"a", "b"}
    other = tmp_path / "other"
    with pytest.raises(RestError) as refused:
        await auth.authenticate("Bearer " + mint(carrier="acme", scopes="a", state_dir=other))
    assert refused.value.code_name == "UNAUTHENTICATED"


async def test_a_rotated_key_is_trusted_without_restart(tmp_path: Path) -> None:
    auth = Authenticator(AuthConfig.from_env(tmp_path, {}))
    old = mint(carrier="acme", scopes="a", state_dir=tmp_path)
    assert (await auth.authenticate(f"Bearer {old}")).carrier == "acme"
    (tmp_path / "issuer" / "signing-key.pem").unlink()
    new = mint(carrier="acme", scopes="a", state_dir=tmp_path)  # a new key; jwks.json now lists only it
    assert (await auth.authenticate(f"Bearer {new}")).carrier == "acme"


async def test_no_jwks_yet_refuses_every_token(tmp_path: Path) -> None:
    auth = Authenticator(AuthConfig.from_env(tmp_path / "empty", {}))
    with pytest.raises(RestError):
        await auth.authenticate("Bearer " + mint(carrier="acme", scopes="a", state_dir=tmp_path))


@pytest.mark.parametrize("env", [
    {"HAULMESH_JWKS_URL": "http://keys.example/jwks.json"},
    {"HAULMESH_JWKS_URL": "https://keys.example/jwks.json", "HAULMESH_JWKS_FILE": "/tmp/jwks.json"},
    {"HAULMESH_JWT_LEEWAY_SECONDS": "soon"},
    {"HAULMESH_JWT_LEEWAY_SECONDS": "3600"},
    {"HAULMESH_JWKS_COOLDOWN_SECONDS": "0"},
    {"HAULMESH_JWKS_COOLDOWN_SECONDS": "301"},  # more than the refresh age
    {"HAULMESH_JWKS_REFRESH_SECONDS": "soon"},
    {"HAULMESH_JWKS_MAX_STALE_SECONDS": "-1"},
    {"HAULMESH_JWKS_MAX_STALE_SECONDS": "nan"},
    {"HAULMESH_JWKS_FETCH_TIMEOUT_SECONDS": "31"},
    {"HAULMESH_JWT_ISSUER_CARRIERS": "acme,Globex"},
    {"HAULMESH_JWT_ISSUER_CARRIERS": "acme,,globex"},
])
def test_bad_configuration_is_refused(tmp_path: Path, env: dict[str, str]) -> None:
    with pytest.raises(ConfigError):
        AuthConfig.from_env(tmp_path, env)


def test_defaults(tmp_path: Path) -> None:
    config = AuthConfig.from_env(tmp_path, {})
    assert (config.issuer, config.audience) == (DEFAULT_ISSUER, DEFAULT_AUDIENCE)
    assert config.jwks_file == jwks_path(tmp_path) and config.leeway_seconds == 30


def _jwks_file(tmp_path: Path, keys: dict[str, tuple[object, str]]) -> Path:
    """A JWKS of the public halves of ``keys`` (kid → (private key, alg))."""
    entries = []
    for kid, (key, alg) in keys.items():
        algorithm = jwt.get_algorithm_by_name(alg)
        entry = json.loads(algorithm.to_jwk(key.public_key()))
        entries.append({**entry, "kid": kid, "alg": alg, "use": "sig"})
    path = tmp_path / "keys.json"
    path.write_text(json.dumps({"keys": entries}))
    return path


def _token(key: object, alg: str, kid: str, carrier: str = "acme") -> str:
    now = int(time.time())
    claims = {"iss": DEFAULT_ISSUER, "aud": DEFAULT_AUDIENCE, "sub": "tms", "iat": now, "exp": now + 60,
              "carrier": carrier,
              "scope": "tender:read"}
    return jwt.encode(claims, key, algorithm=alg, headers={"kid": kid, "typ": "at+jwt"})


async def test_every_allowed_algorithm_and_only_with_its_own_key_type(tmp_path: Path) -> None:
    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    ec_key = ec.generate_private_key(ec.SECP256R1())
    ed_key = ed25519.Ed25519PrivateKey.generate()
    path = _jwks_file(tmp_path, {"rsa": (rsa_key, "RS256"), "ec": (ec_key, "ES256"), "ed": (ed_key, "EdDSA")})
    auth = Authenticator(AuthConfig.from_env(tmp_path, {"HAULMESH_JWKS_FILE": str(path)}))
    for key, alg, kid in ((rsa_key, "RS256", "rsa"), (ec_key, "ES256", "ec"), (ed_key, "EdDSA", "ed")):
        assert (await auth.authenticate(f"Bearer {_token(key, alg, kid)}")).carrier == "acme"
    # A valid signature by the RSA key, presented under the EC key's kid: the key does not suit the algorithm.
    with pytest.raises(RestError, match="does not match"):
        await auth.authenticate(f"Bearer {_token(rsa_key, 'RS256', 'ec')}")
    # RSA-PSS and ES384 are not on the allow-list even with a matching key type.
    with pytest.raises(RestError, match="not accepted"):
        await auth.authenticate(f"Bearer {_token(rsa_key, 'PS256', 'rsa')}")
