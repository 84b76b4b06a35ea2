"""``make bench``'s tender yardstick: the REST create done the simplest honest way, in one process.

``reference_tender_cpu_ms`` is what one ``POST /api/v1/tenders`` costs when nothing but the job is done: a
Starlette endpoint under uvicorn (the gateway's HTTP parser, httptools; the asyncio loop, as the gateway) that

* checks the bearer JWT: ES256 against the dev issuer's JWKS, ``typ``, ``iss``, ``aud``, ``exp``/``nbf``, ``sub``,
  the ``carrier`` claim and the ``tender:create`` scope; verified tokens are remembered until their ``exp`` in a
  TLRU cache, as the gateway's VerifiedTokens does (a TMS repeats its token, so neither side re-verifies it);
* parses the seed's tender JSON and validates it with the mesh's own limits (services/runtime/limits.py):
  load id, both stops, the ISO 8601 pickup window (≥ 30 min, ≤ 14 days long, ends in the future, starts within
  14 days), equipment code, weight; every violation is answered 400 with its field;
* commits the tender and its outbox event in one transaction (MULTI, SET, XADD, EXEC) and waits for the AOF
  fsync with ``WAITAOF 1 0`` on the same connection, in one round trip: durable before the answer, as the mesh;
* answers 200 ``{"name", "tmsLoadId", "state": "STATE_PENDING"}`` (committed; no offer is computed: the
  yardstick is the floor of the create, not of the evaluation).

``start_reference`` runs it as its own process on a store of its own (an embedded Valkey with the mesh's settings)
so that the bench reads the CPU of the server and of the store from /proc, as it does for the mesh.
Run by hand: ``REDIS_URL=... python scripts/bench_reference.py --port 8099 --jwks <state>/issuer/jwks.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import socket
import sys
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import jwt
import redis.asyncio
import uvicorn
from cachetools import TLRUCache
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from services.runtime import EmbeddedStore, free_port
from services.runtime.limits import MAX_ADDRESS, TENDER_WEIGHT_LB, TMS_LOAD_ID
from services.runtime.tokens import DEFAULT_AUDIENCE, DEFAULT_ISSUER

SCRIPT = Path(__file__).resolve()
ROOT = SCRIPT.parents[1]

__all__ = ["ReferenceServer", "make_app", "start_reference", "validate_tender"]

#: The TMS equipment codes the gateway maps (docs/openapi.json, Equipment).
EQUIPMENT_CODES = frozenset({"53FT_DRYVAN", "48FT_DRYVAN", "53FT_REEFER", "48FT_FLATBED", "48FT_STEPDECK", "TANKER",
                             "CONTAINER", "POWER_ONLY"})
MIN_PICKUP_WINDOW = timedelta(minutes=30)
MAX_WINDOW = timedelta(days=14)
MAX_AHEAD = timedelta(days=14)
#: The mesh's HAULMESH_DURABLE_TIMEOUT_SECONDS default: past it the create is refused (503), never acknowledged.
DURABLE_TIMEOUT_MS = 3000
#: Verified tokens remembered, as the gateway (services/gateway/rest/tokencache.py).
TOKEN_CACHE_ENTRIES = 10_000
TOKEN_CACHE_MAX_AGE_SECONDS = 60.0


def _location(value: object, path: str, out: list[dict]) -> None:
    if not isinstance(value, dict):
        out.append({"field": path, "description": "required: an object with lat, lon, address"})
        return
    lat, lon = value.get("lat"), value.get("lon")
    if not (isinstance(lat, int | float) and math.isfinite(lat) and -90 <= lat <= 90):
        out.append({"field": f"{path}.lat", "description": "must be a latitude in [-90, 90]"})
    if not (isinstance(lon, int | float) and math.isfinite(lon) and -180 <= lon <= 180):
        out.append({"field": f"{path}.lon", "description": "must be a longitude in [-180, 180]"})
    if lat == 0 and lon == 0:
        out.append({"field": path, "description": "required: (0, 0) is treated as not set"})
    address = value.get("address", "")
    if not isinstance(address, str) or len(address) > MAX_ADDRESS:
        out.append({"field": f"{path}.address", "description": f"a string of at most {MAX_ADDRESS} characters"})


def _instant(text: str) -> datetime:
    moment = datetime.fromisoformat(text)
    if moment.tzinfo is None:
        raise ValueError("no time zone")
    return moment


def validate_tender(body: object, now: datetime) -> list[dict]:
    """Field violations of the seed's tender payload (empty: valid), by the mesh's rules for those fields."""
    if not isinstance(body, dict):
        return [{"field": "", "description": "the body must be a JSON object (the tender)"}]
    out: list[dict] = []
    load_id = body.get("tenderId")
    if not isinstance(load_id, str) or not TMS_LOAD_ID.fullmatch(load_id):
        out.append({"field": "tenderId", "description": "required: 1 to 64 characters from [A-Za-z0-9._:/-]"})
    _location(body.get("origin"), "origin", out)
    _location(body.get("destination"), "destination", out)
    window = body.get("pickupWindow")
    try:
        start_text, end_text = window.split("/") if isinstance(window, str) else ("", "")
        start, end = _instant(start_text), _instant(end_text)
    except ValueError:
        out.append({"field": "pickupWindow", "description": "required: an ISO 8601 interval start/end with offsets"})
    else:
        if end - start < MIN_PICKUP_WINDOW:
            out.append({"field": "pickupWindow", "description": "the window must last at least 30 minutes"})
        if end - start > MAX_WINDOW:
            out.append({"field": "pickupWindow", "description": "the window must last at most 14 days"})
        if end <= now:
            out.append({"field": "pickupWindow", "description": "must end in the future"})
        if start > now + MAX_AHEAD:
            out.append({"field": "pickupWindow", "description": "must start at most 14 days ahead"})
    if body.get("equipment") not in EQUIPMENT_CODES:
        out.append({"field": "equipment", "description": f"required: one of {', '.join(sorted(EQUIPMENT_CODES))}"})
    weight = body.get("weightLb")
    low, high = TENDER_WEIGHT_LB
    if isinstance(weight, bool) or not isinstance(weight, int) or not low <= weight <= high:
        out.append({"field": "weightLb", "description": f"must be an integer in [{low}, {high}] pounds"})
    return out


def _error(status: int, message: str, violations: list[dict] | None = None) -> JSONResponse:
    return JSONResponse({"error": {"code": status, "message": message, "details": violations or []}},
                        status_code=status)


def make_app(redis_url: str, jwks_file: Path, *, issuer: str = DEFAULT_ISSUER,
             audience: str = DEFAULT_AUDIENCE) -> Starlette:
    """The reference endpoint (``POST /api/v1/tenders``) and ``GET /healthz``, on the store at ``redis_url``."""
    keys = jwt.PyJWKSet.from_json(jwks_file.read_text())
    verified: TLRUCache[str, dict] = TLRUCache(maxsize=TOKEN_CACHE_ENTRIES,
                                               ttu=lambda _key, claims, _now: claims["_until"], timer=time.time)
    pool = redis.asyncio.ConnectionPool.from_url(redis_url, max_connections=256)

    def principal(header: str) -> dict | None:
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token:
            return None
        claims = verified.get(token)
        if claims is not None:
            return claims
        try:
            head = jwt.get_unverified_header(token)
            if head.get("typ") not in ("at+jwt", "application/at+jwt"):
                return None
            key = keys[head["kid"]]
            claims = jwt.decode(token, key.key, algorithms=["ES256"], audience=audience, issuer=issuer, leeway=30,
                                options={"require": ["exp", "iat", "nbf", "sub", "iss", "aud"]})
        except (jwt.PyJWTError, KeyError):
            return None
        if not isinstance(claims.get("carrier"), str):
            return None
        claims["_until"] = min(float(claims["exp"]), time.time() + TOKEN_CACHE_MAX_AGE_SECONDS)
        verified[token] = claims
        return claims

    async def commit(carrier: str, tender_id: str, record: bytes) -> bool:
        """MULTI/SET/XADD/EXEC + WAITAOF on one connection, one round trip; whether the fsync confirmed it."""
        connection = await pool.get_connection()
        try:
            commands = [("MULTI",), ("SET", f"ref:tender:{{{carrier}}}:{tender_id}", record),
                        ("XADD", f"ref:events:{{{carrier}}}", "*", "type", "tender.created", "tender", tender_id),
                        ("EXEC",), ("WAITAOF", 1, 0, DURABLE_TIMEOUT_MS)]
            await connection.send_packed_command(connection.pack_commands(commands))
            replies = [await connection.read_response() for _ in commands]
        finally:
            await pool.release(connection)
        applied, (local, _replicas) = replies[3], replies[4]
        return applied is not None and int(local) >= 1

    async def create(request: Request) -> Response:
        claims = principal(request.headers.get("authorization", ""))
        if claims is None:
            return _error(401, "a valid bearer access token is required")
        if "tender:create" not in str(claims.get("scope", "")).split():
            return _error(403, "the token lacks the tender:create scope")
        try:
            body = json.loads(await request.body())
        except ValueError:
            return _error(400, "the body is not JSON")
        now = datetime.now(UTC)
        violations = validate_tender(body, now)
        if violations:
            return _error(400, "the tender is invalid", violations)
        tender_id = uuid.uuid4().hex
        record = json.dumps({**body, "name": f"tenders/{tender_id}", "state": "STATE_PENDING",
                             "createTime": now.isoformat()}).encode()
        if not await commit(claims["carrier"], tender_id, record):
            return _error(503, "the store did not confirm the write on disk in time")
        return JSONResponse({"name": f"tenders/{tender_id}", "tmsLoadId": body["tenderId"], "state": "STATE_PENDING"})

    async def healthz(_request: Request) -> Response:
        return Response("ok")

    return Starlette(routes=[Route("/api/v1/tenders", create, methods=["POST"]), Route("/healthz", healthz)])


@dataclass
class ReferenceServer:
    """A running reference server: its URL, its process and the store's pid (None: a store of someone else's)."""

    url: str
    process: asyncio.subprocess.Process
    store_pid: int | None

    @property
    def pids(self) -> list[int]:
        return [self.process.pid] + ([self.store_pid] if self.store_pid else [])


@asynccontextmanager
async def start_reference(state_dir: Path, *, redis_url: str | None = None,
                          start_timeout_seconds: float = 30.0) -> AsyncIterator[ReferenceServer]:
    """The reference server in its own process, trusting the dev issuer of ``state_dir``; on ``redis_url``, else
    on an embedded store of its own under ``state_dir/reference-store`` (stopped on exit)."""
    store = None
    if redis_url is None:
        store = EmbeddedStore(state_dir / "reference-store")
        redis_url = (await asyncio.to_thread(store.ensure_running)).url
    port = free_port()
    # The store's URL carries its password: the environment, not the command line (``ps``).
    process = await asyncio.create_subprocess_exec(
        sys.executable, str(SCRIPT), "--port", str(port), "--jwks", str(state_dir / "issuer" / "jwks.json"),
        # This checkout's code first, not whatever the venv's editable install points at.
        env={**os.environ, "REDIS_URL": redis_url,
             "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))},
        stdin=asyncio.subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + start_timeout_seconds
        while not await asyncio.to_thread(_listening, port):
            if process.returncode is not None:
                raise RuntimeError(f"the reference server exited at start ({process.returncode})")
            if time.monotonic() > deadline:
                raise RuntimeError(f"the reference server did not listen within {start_timeout_seconds:g} s")
            await asyncio.sleep(0.05)
        info = store.info() if store is not None else None
        yield ReferenceServer(f"http://127.0.0.1:{port}", process, info.pid if info else None)
    finally:
        if process.returncode is None:
            process.terminate()
            try:
                await asyncio.wait_for(process.wait(), 10)
            except TimeoutError:
                process.kill()
                await process.wait()
        if store is not None:
            await asyncio.to_thread(store.stop)


def _listening(port: int) -> bool:
    with socket.socket() as probe:
        probe.settimeout(0.2)
        return probe.connect_ex(("127.0.0.1", port)) == 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--jwks", type=Path, required=True, help="the issuer's JWKS file (<state>/issuer/jwks.json)")
    args = parser.parse_args()
    redis_url = os.environ.get("REDIS_URL")
    if not redis_url:
        parser.error("REDIS_URL must name the store (redis://:password@host:port/0)")
    if not args.jwks.is_file():
        parser.error(f"--jwks {args.jwks}: no such file (mint a token first: it creates the dev issuer)")
    uvicorn.run(make_app(redis_url, args.jwks), host="127.0.0.1", port=args.port, http="httptools", loop="asyncio",
                lifespan="off", access_log=False, log_level="warning", server_header=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
