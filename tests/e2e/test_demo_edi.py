"""`make demo-edi` (issue 15): the seed's flow driven through EDI X12 over SFTP on its own fresh mesh, with the
truck at twice the demo's speed (the drive is what takes time; every other step is the same)."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_demo_edi_runs_end_to_end() -> None:
    result = subprocess.run([sys.executable, str(ROOT / "scripts" / "demo_edi.py"), "--speedup", "2400"],
                            capture_output=True, text=True, timeout=180)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "demo-edi complete" in result.stdout
    summary = json.loads((ROOT / ".haulmesh" / "demo-edi" / "summary.json").read_text())
    # Counted from the EDI service's records. In: the seed load's 204, the second load's original, change and
    # cancel (the duplicate interchange is no 204 received: a TA1 025 answers it).
    assert summary["x12_204_in"] == 4
    assert summary["x12_997_out"] == 4  # one per 204 group, none for the duplicate
    assert summary["x12_990_out"] == 3  # the two originals' and the change's (a cancel gets its 997 alone)
    assert summary["x12_214_out"] >= 5  # X3, AF, at least one X6, X1, D1
    assert summary["x12_210_out"] == 1
    # The TMS answered every 990, 214 and 210 with a 997, and the service matched each one.
    assert summary["x12_997_in"] == summary["x12_990_out"] + summary["x12_214_out"] + summary["x12_210_out"]
    assert summary["unacknowledged"] == 0 and summary["awaiting_997"] == 0
    assert summary["duplicates_in"] == 1
    assert summary["tender"].startswith("tenders/") and summary["mission"].startswith("missions/")
    assert summary["shipment"] != summary["second_shipment"]
    # Printed as it went: one line per document the TMS read, saying what it says.
    out = result.stdout
    assert re.search(r"← 990 \d{9}/\d+/\d{4} +A accepted, shipment " + re.escape(summary["shipment"]), out)
    for code, meaning in (("X3", "arrived at pickup"), ("AF", "departed pickup"), ("X6", "en route"),
                          ("X1", "arrived at delivery"), ("D1", "delivered")):
        assert re.search(rf"← 214 .*{code} {meaning}", out), code
    assert re.search(r"← 210 .*total \$[\d,]+\.\d\d", out)
    assert re.search(r"← TA1 .*interchange 000000001: R note 025", out)
