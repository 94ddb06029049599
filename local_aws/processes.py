"""Child processes that never outlive the local stack, even if it is killed with SIGKILL."""

from __future__ import annotations

import ctypes
import queue
import signal
import subprocess
import sys
import threading
from collections.abc import Callable
from typing import Any

PR_SET_PDEATHSIG = 1


def kill_with_parent() -> None:
    """In the child, before exec: ask Linux to SIGTERM us when our parent goes away."""
    if sys.platform.startswith("linux"):
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


class Spawner:
    """Starts processes from one long-lived thread.

    Linux sends the parent-death signal when the *thread* that forked the child exits, so
    children started from short-lived threads (HTTP request handlers) would be killed early.
    """

    def __init__(self) -> None:
        self._requests: queue.Queue[tuple[Callable[[], Any], queue.Queue[Any]]] = queue.Queue()
        threading.Thread(target=self._serve, name="spawner", daemon=True).start()

    def _serve(self) -> None:
        while True:
            start, reply = self._requests.get()
            try:
                reply.put(start())
            except BaseException as error:  # noqa: BLE001 - handed back to the caller
                reply.put(error)

    def popen(self, args: list[str], **kwargs: Any) -> subprocess.Popen[bytes]:
        reply: queue.Queue[subprocess.Popen[bytes] | BaseException] = queue.Queue(maxsize=1)
        self._requests.put(
            (lambda: subprocess.Popen(args, preexec_fn=kill_with_parent, **kwargs), reply)  # noqa: S603, PLW1509
        )
        result = reply.get()
        if isinstance(result, BaseException):
            raise result
        return result


def stop_process(process: subprocess.Popen[bytes] | None, timeout: float = 5) -> None:
    """SIGTERM, then SIGKILL if it has not exited within `timeout` seconds."""
    if process is None or process.poll() is not None:
        return
    process.terminate()
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
