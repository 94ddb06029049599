"""Ctrl-C for a command that runs until it is stopped, started from `make`.

A terminal sends Ctrl-C's SIGINT to its whole foreground process group, `make` included. GNU
make then reports the target as interrupted (`make: *** [...] Error 130`, or `Interrupt`) and
dies of the signal itself, whatever the command returns. While `own_interrupts()` is active,
this process runs in a process group of its own that holds the terminal's foreground, so
Ctrl-C reaches it (and the processes it starts) but not `make`, which just sees the command
exit 0. This is what a shell's job control does for every job.
"""

from __future__ import annotations

import contextlib
import os
import signal
from collections.abc import Iterator


def _set_foreground(terminal: int, group: int) -> None:
    # A background group that changes the foreground gets SIGTTOU unless it is ignored.
    previous = signal.signal(signal.SIGTTOU, signal.SIG_IGN)
    try:
        os.tcsetpgrp(terminal, group)
    finally:
        signal.signal(signal.SIGTTOU, previous)


@contextlib.contextmanager
def own_interrupts() -> Iterator[bool]:
    """Yields whether it took the foreground: not without a terminal, nor when this process
    is not in the foreground (started with `&`), nor when it already leads its group."""
    try:
        terminal = os.open("/dev/tty", os.O_RDWR)
    except OSError:
        yield False
        return
    try:
        parent_group = os.getpgrp()
        if os.tcgetpgrp(terminal) != parent_group or parent_group == os.getpid():
            yield False
            return
        os.setpgid(0, 0)
        _set_foreground(terminal, os.getpgrp())
        # Ctrl-Z would stop this group while make waits in the other one, leaving the terminal
        # to a stopped job: ignored (and so by the children, which inherit an ignored signal).
        suspend = signal.signal(signal.SIGTSTP, signal.SIG_IGN)
        try:
            yield True
        finally:
            signal.signal(signal.SIGTSTP, suspend)
            with contextlib.suppress(OSError):
                _set_foreground(terminal, parent_group)
    finally:
        os.close(terminal)
