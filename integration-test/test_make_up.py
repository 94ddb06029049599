"""`make up` as a user runs it in a terminal: MODEL_URI names the model, the version it loaded is
printed, changing the model directory restarts the function, and Ctrl-C ends it quietly."""

from __future__ import annotations

import contextlib
import os
import pty
import re
import select
import shutil
import signal
import time
from pathlib import Path
from typing import Any

from conftest import ROOT, free_port, nothing_listens_on


class Terminal:
    """A command under a pseudo-terminal, as in an interactive shell (Ctrl-C is a keystroke)."""

    def __init__(self, command: list[str], env: dict[str, str]) -> None:
        self.output = b""
        self.pid, self.fd = pty.fork()
        if self.pid == 0:  # the child
            os.chdir(ROOT)
            os.execvpe(command[0], command, env)  # noqa: S606 - make, as a user types it

    def wait_for(self, pattern: str, timeout: float) -> re.Match[str]:
        deadline = time.monotonic() + timeout
        while not (found := re.search(pattern, self.text)):
            if time.monotonic() > deadline:
                raise AssertionError(f"{pattern!r} not printed within {timeout:.0f} s:\n{self.text}")
            self._read(0.2)
        return found

    def _read(self, timeout: float) -> bool:
        if select.select([self.fd], [], [], timeout)[0]:
            try:
                data = os.read(self.fd, 65536)
            except OSError:  # the other side is gone
                return False
            self.output += data
            return bool(data)
        return True

    def press_ctrl_c(self) -> None:
        os.write(self.fd, b"\x03")

    def stop(self) -> None:
        """Ctrl-C, and if that does not end it, SIGKILL for the terminal's foreground and make."""
        self.press_ctrl_c()
        try:
            self.exit_status(timeout=30)
        except AssertionError:
            with contextlib.suppress(OSError):
                os.killpg(os.tcgetpgrp(self.fd), signal.SIGKILL)

    def exit_status(self, timeout: float) -> int:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            pid, status = os.waitpid(self.pid, os.WNOHANG)
            if pid:
                while self._read(0.1):
                    pass
                return os.waitstatus_to_exitcode(status)
            self._read(0.1)
        os.kill(self.pid, signal.SIGKILL)
        raise AssertionError(f"still running after Ctrl-C:\n{self.text}")

    @property
    def text(self) -> str:
        return self.output.decode(errors="replace").replace("\r\n", "\n")


def run_id(model_dir: Path) -> str:
    return re.search(r"^run_id: (\S+)$", (model_dir / "MLmodel").read_text(), re.MULTILINE)[1]  # type: ignore[index]


def test_make_up_serves_model_uri_follows_its_changes_and_stops_quietly_on_ctrl_c(
    stack: dict[str, Any], tmp_path: Path
) -> None:
    model = tmp_path / "my-model"
    shutil.copytree(ROOT / "model", model)  # the session's stack made sure there is one
    ports = [free_port(), free_port()]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MAKE", "MFLAGS", "AWS_ENDPOINT"))}
    args = f"--port {ports[0]} --lambda-port {ports[1]} --log-dir {tmp_path / 'logs'}"
    terminal = Terminal(["make", "--no-print-directory", "up", f"MODEL_URI={model}", f"ARGS={args}"], env)
    try:
        terminal.wait_for("Ctrl-C stops everything", timeout=180)
        assert f"MODEL_URI={model}" in terminal.text
        terminal.wait_for(rf"model      version {run_id(model)} loaded from s3://", timeout=1)
        assert f"The function restarts when {model} changes" in terminal.text

        mlmodel = model / "MLmodel"
        mlmodel.write_text(
            re.sub(r"^run_id: .*$", "run_id: retrained-by-the-test", mlmodel.read_text(), flags=re.M)
        )
        terminal.wait_for(
            r"model      version retrained-by-the-test loaded from s3://.* \(restarted in", timeout=90
        )

        terminal.press_ctrl_c()
        status = terminal.exit_status(timeout=60)
    except BaseException:
        terminal.stop()  # never leave a stack behind
        raise
    assert status == 0, terminal.text
    assert "Stopped moto, the function and the mapping." in terminal.text
    assert "Error" not in terminal.text.split("Ctrl-C stops everything")[-1]
    assert "Traceback" not in terminal.text
    assert all(nothing_listens_on(port) for port in ports)
