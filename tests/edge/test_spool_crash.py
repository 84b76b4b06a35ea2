"""kill -9 of a process in the middle of enqueues: every reading whose enqueue returned is in the spool."""

from __future__ import annotations

import random
import subprocess
import sys
import textwrap
import time
from pathlib import Path

from edge_client.spool import Spool

# The child signs and spools position frames as fast as it can; after each enqueue returns it appends the
# sequence to a side file (flushed: a process kill does not lose what reached the OS).
CHILD = textwrap.dedent("""
    import sys
    from edge_client.recorder import Recorder
    from edge_client.signer import KeyFileSigner
    from edge_client.spool import Spool
    from haulmesh.telemetry.v1 import frame_pb2

    spool_path, key, cert, side = sys.argv[1:5]
    recorder = Recorder(Spool(spool_path, max_frames=1_000_000), KeyFileSigner.from_files(key, cert), "AU-TRK-1001")
    with open(side, "a", buffering=1) as out:
        print("ready", flush=True)
        while True:
            seq = recorder.record(frame_pb2.FramePayload(kind=frame_pb2.FramePayload.KIND_POSITION,
                                                         position=frame_pb2.Position(lat=30.0, lon=-94.0)))
            out.write(f"{seq}\\n")
            out.flush()
""")


def test_kill_9_during_enqueue_loses_no_returned_reading(tmp_path: Path, vehicle_files) -> None:
    spool_path, side = tmp_path / "spool.db", tmp_path / "returned.txt"
    rng = random.Random(20261125)
    kills = 6
    for _ in range(kills):
        child = subprocess.Popen([sys.executable, "-c", CHILD, str(spool_path), *map(str, vehicle_files), str(side)],
                                 stdout=subprocess.PIPE, text=True)
        assert child.stdout.readline().strip() == "ready"
        time.sleep(rng.uniform(0.05, 0.4))  # a random point in the stream of enqueues, not a timing assertion
        child.kill()
        child.wait(timeout=30)
        child.stdout.close()
    returned = [int(line) for line in side.read_text().split()]
    with Spool(spool_path) as spool:
        spooled = set(spool.sequences())
        last = spool.stats().last_sequence
    missing = sorted(set(returned) - spooled)
    print(f"kills={kills} returned={len(returned)} spooled={len(spooled)} last_sequence={last} missing={len(missing)}")
    assert returned, "the child never enqueued"
    assert not missing
    # sequences stay strictly increasing across the restarts: no sequence handed out twice
    assert returned == sorted(set(returned))
    assert spooled == set(range(1, last + 1))  # no acks here: every sequence handed out was committed
