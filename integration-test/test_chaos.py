"""`make chaos`, small: the pipeline under injected faults loses nothing and is never timed out."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

from conftest import ROOT, free_port, nothing_listens_on


def test_under_heavy_faults_and_kills_every_ride_is_accounted_for(tmp_path: Path) -> None:
    ports = [free_port(), free_port()]
    result = subprocess.run(
        [sys.executable, "-m", "local_aws.chaos", "--rides", "1000", "--scenarios", "heavy", "--memory", "on", "--kills", "2",
         "--port", str(ports[0]), "--lambda-port", str(ports[1]), "--log-dir", str(tmp_path)],
        cwd=ROOT, capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    [row] = [line for line in result.stdout.splitlines() if line.startswith("| heavy | on |")]
    cells = [cell.strip() for cell in row.strip("|").split("|")]
    rides, predicted, dead_lettered, lost = (int(c.replace(",", "")) for c in cells[2:6])
    kills, timeouts = int(cells[8]), int(cells[10])
    assert (rides, lost, timeouts) == (1000, 0, 0)
    assert predicted + dead_lettered == 1000
    assert dead_lettered > 0  # the sample holds malformed rides on purpose
    assert kills > 0
    injected = re.search(r"Injected over all runs: (\{.*\})", result.stdout)
    assert injected, output
    for fault in ("throttle", "server_error", "rejected_entries"):
        assert f"'{fault}': " in injected[1], injected[1]
    assert all(nothing_listens_on(port) for port in ports)
