"""The README's first command, on a small scale: it must finish, account for every ride, and stop."""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import ROOT, free_port, nothing_listens_on


@pytest.mark.parametrize("kpl", [[], ["--kpl", "20"]], ids=["plain", "kpl"])
def test_the_demo_streams_rides_and_accounts_for_every_one(tmp_path: Path, kpl: list[str]) -> None:
    ports = [free_port(), free_port()]
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "local_aws",
            "demo",
            "--rides",
            "120",
            "--rate",
            "400",
            "--port",
            str(ports[0]),
            "--lambda-port",
            str(ports[1]),
            "--log-dir",
            str(tmp_path),
            *kpl,
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "every ride accounted yes" in result.stdout
    assert "end-to-end latency   p50" in result.stdout
    if kpl:  # 120 rides, 20 to a Kinesis record
        assert "Kinesis records            6  (KPL aggregates of up to 20 rides" in result.stdout
    # The summary is the function's own metrics, and they agree with what the streams hold.
    assert "Summary: the function's metrics, as CloudWatch would show them" in result.stdout
    assert "dead letters read back: as the metrics say" in result.stdout
    assert all(nothing_listens_on(port) for port in ports)
    metrics = subprocess.run(
        [sys.executable, "-m", "local_aws", "metrics", str(tmp_path / "function.log")],
        cwd=ROOT, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert metrics.returncode == 0, metrics.stdout + metrics.stderr
    assert "all valid" in metrics.stdout
    [received] = [line.split() for line in metrics.stdout.splitlines() if line.startswith("RecordsReceived ")]
    assert received[2] == "120"  # every ride, once: no retries in a run without faults


def test_a_busy_port_is_named_with_the_option_to_change_it(tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = subprocess.run(
            [sys.executable, "-m", "local_aws", "demo", "--port", str(port), "--log-dir", str(tmp_path)],
            cwd=ROOT, capture_output=True, text=True, timeout=120, check=False,
        )  # fmt: skip
    assert result.returncode == 2
    assert f"port {port} for moto (local AWS) is already in use" in result.stderr
    assert "--port <port>" in result.stderr
