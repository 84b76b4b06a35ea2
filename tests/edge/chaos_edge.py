"""Helpers of the edge chaos tests (tests/edge/test_chaos_spool.py): the edge client as a process the test can
kill -9, read-only looks into its spool, and its memory.

The edge process (:func:`edge_process`) is what runs on a truck: a Recorder spooling signed frames and a
StreamClient streaming the spool to the telemetry service, in one process. It is started from a
``multiprocessing`` fork server that has the edge client's modules imported already, so the hundred kills of
AT-03 cost a fork each, not a Python start (about a second on a loaded 2-core machine). It talks to the test over
a one-way ``multiprocessing`` pipe: each sequence whose ``Recorder.record`` returned, at once. A kill -9 loses
nothing the child wrote to the pipe (it is in the kernel), so the test knows every enqueue that returned.
Driven mode (AT-04) takes orders from a second pipe instead of recording in a loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing
import multiprocessing.connection
import random
import sqlite3
from dataclasses import dataclass
from pathlib import Path

import grpc

from edge_client.client import StreamClient
from edge_client.recorder import Recorder
from edge_client.signer import KeyFileSigner
from edge_client.spool import Spool
from haulmesh.telemetry.v1 import frame_pb2
from services.runtime import pki
from tests.trucks import Truck

__all__ = ["KIND", "EdgeSetup", "SpoolLook", "edge_context", "edge_process", "last_sequence", "look", "payload",
           "rss_kib"]

KIND = frame_pb2.FramePayload

#: Imported once by the fork server, inherited by every edge process it forks. grpc is imported but not
#: initialized there (no channel is made before the fork), so each child starts gRPC afresh.
_PRELOAD = ["edge_client.client", "edge_client.recorder", "edge_client.signer", "edge_client.spool",
            "tests.edge.chaos_edge"]


def edge_context() -> multiprocessing.context.ForkServerContext:
    """The fork-server context the edge processes are started from (its server starts on first use)."""
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(_PRELOAD)
    return context


@dataclass(frozen=True)
class EdgeSetup:
    """Everything an edge process needs: its spool, its vehicle's files and where the telemetry service is."""

    spool: str
    vehicle_id: str
    key: str
    certificate: str
    ca: str
    target: str
    max_frames: int = 500_000

    @classmethod
    def write(cls, truck: Truck, directory: Path, target: str, **options: int) -> EdgeSetup:
        """Writes the truck's key and certificate (and the CA) into ``directory`` (the CLI's cert dir layout)."""
        cert, key = pki.write_pem_files(directory, f"vehicle-{truck.vehicle_id}", truck.issued, truck.ca_pem)
        return cls(str(directory / "spool.db"), truck.vehicle_id, str(key), str(cert), str(directory / "ca.pem"),
                   target, **options)


def payload(kind: int, rng: random.Random | None = None) -> frame_pb2.FramePayload:
    """A plausible reading of ``kind`` (position always; an alarm or an event where the kind says so)."""
    rng = rng or random.Random(0)
    reading = frame_pb2.FramePayload(kind=kind, vehicle_state="enroute",
                                     position=frame_pb2.Position(lat=30.0 + rng.random(), lon=-94.0 - rng.random()))
    if kind in (KIND.KIND_ALARM, KIND.KIND_FAULT):
        # A warning, not a minimal-risk condition: the frame must count, not start an incident.
        reading.alarm.CopyFrom(frame_pb2.Alarm(code="CHAOS_TEST", severity=frame_pb2.Alarm.SEVERITY_WARNING,
                                               component="chaos", description="a chaos test's alarm"))
    elif kind == KIND.KIND_EVENT:
        reading.event.CopyFrom(frame_pb2.DeviceEvent(code="chaos_test", detail="a chaos test's event"))
    return reading


def edge_process(setup: EdgeSetup, out: multiprocessing.connection.Connection,
                 orders: multiprocessing.connection.Connection | None = None, stop_at: int = 0) -> None:
    """The edge process's body (the target of a fork-server Process).

    Without ``orders``: records POSITION frames as fast as the spool takes them and sends each returned sequence
    on ``out``; with ``stop_at``, stops once a sequence reaches it, waits until the spool is drained (every frame
    acked) and sends ``("drained", stats)``. With ``orders``: see :func:`_driven`.
    """
    asyncio.run(_main(setup, out, orders, stop_at))


async def _main(setup: EdgeSetup, out: multiprocessing.connection.Connection,
                orders: multiprocessing.connection.Connection | None, stop_at: int) -> None:
    spool = Spool(setup.spool, max_frames=setup.max_frames)
    recorder = Recorder(spool, KeyFileSigner.from_files(setup.key, setup.certificate), setup.vehicle_id)
    ca, key, certificate = (Path(p).read_bytes() for p in (setup.ca, setup.key, setup.certificate))  # noqa: ASYNC240
    credentials = grpc.ssl_channel_credentials(root_certificates=ca, private_key=key, certificate_chain=certificate)
    client = StreamClient(setup.target, credentials, spool, vehicle_id=setup.vehicle_id, boot_id=recorder.boot_id,
                          backoff_base=0.05, backoff_cap=0.5, poll_interval=0.2)
    streaming = asyncio.create_task(client.run())
    try:
        out.send(("ready", spool.stats().last_sequence))
        if orders is not None:
            await _driven(client, recorder, out, orders)
            return
        rng = random.Random(setup.vehicle_id)
        while True:
            sequence = await asyncio.to_thread(recorder.record, payload(KIND.KIND_POSITION, rng))
            client.notify()
            out.send(sequence)
            if stop_at and sequence >= stop_at:
                break
        while (await asyncio.to_thread(spool.stats)).depth:  # noqa: ASYNC110 (acks come from the stream client)
            await asyncio.sleep(0.05)
        out.send(("drained", _stats(client, spool)))
    finally:
        streaming.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await streaming
        spool.close()


def _stats(client: StreamClient, spool: Spool) -> dict[str, int]:
    stats = spool.stats()
    return {"depth": stats.depth, "last_sequence": stats.last_sequence, "dropped": stats.dropped,
            "connected": int(client.connected.is_set()), "sessions": client.stats.sessions,
            "acked_through": client.stats.acked_through}


async def _driven(client: StreamClient, recorder: Recorder, out: multiprocessing.connection.Connection,
                  orders: multiprocessing.connection.Connection) -> None:
    """Orders: ``("record", [kind, ...])`` records those readings and answers their sequences; ``("stats",)``
    answers the spool's and the link's state; ``("kinds",)`` the spool's sequence → kind; ``("stop",)`` ends."""
    rng = random.Random(recorder.vehicle_id)
    while True:
        order = await asyncio.to_thread(orders.recv)
        if order[0] == "record":
            sequences = []
            for kind in order[1]:
                sequences.append(await asyncio.to_thread(recorder.record, payload(kind, rng)))
                client.notify()
            out.send(sequences)
        elif order[0] == "stats":
            out.send(await asyncio.to_thread(_stats, client, recorder.spool))
        elif order[0] == "kinds":
            out.send(await asyncio.to_thread(recorder.spool.kinds))
        else:
            return


@dataclass(frozen=True)
class SpoolLook:
    """What a spool file holds, read by the test (not through the edge client's code)."""

    integrity: str
    sequences: list[int]
    last_sequence: int
    dropped: int


def look(path: str | Path) -> SpoolLook:
    """Opens the spool as a next process would (SQLite recovers the WAL a kill left), checks its integrity
    (``PRAGMA integrity_check``) and reads its frames and counters."""
    db = sqlite3.connect(path, isolation_level=None)
    try:
        db.execute("PRAGMA busy_timeout=10000")
        integrity = "; ".join(row[0] for row in db.execute("PRAGMA integrity_check"))
        sequences = [row[0] for row in db.execute("SELECT sequence FROM frames ORDER BY sequence")]
        counters = dict(db.execute("SELECT name, value FROM counters"))
    finally:
        db.close()
    return SpoolLook(integrity, sequences, counters.get("last_sequence", 0), counters.get("dropped", 0))


def last_sequence(path: str | Path) -> int:
    """The spool's sequence counter, only read (the edge process keeps writing); 0 before the spool exists."""
    if not Path(path).exists():
        return 0
    db = sqlite3.connect(path, isolation_level=None)
    try:
        db.execute("PRAGMA busy_timeout=10000")
        row = db.execute("SELECT value FROM counters WHERE name = 'last_sequence'").fetchone()
    except sqlite3.OperationalError:  # created, schema not yet written
        return 0
    finally:
        db.close()
    return int(row[0]) if row else 0


def rss_kib(pid: int) -> tuple[int, int]:
    """(VmRSS, VmHWM) of a process in KiB: its resident memory now and at its peak."""
    fields = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines() if ":" in line)
    return int(fields["VmRSS"].split()[0]), int(fields["VmHWM"].split()[0])
