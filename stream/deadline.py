"""The time one invocation may spend, and AWS clients whose timeouts fit in what is left.

Lambda kills an invocation at its timeout: nothing is reported, the whole batch comes back,
and everything already written is written again. So each invocation works within
`context.get_remaining_time_in_millis()` minus a safety margin (`DEADLINE_SAFETY_MARGIN_MS`,
the time kept to answer, log and leave), and no AWS call or retry sleep is started that
could run past that budget.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from botocore.config import Config


@dataclass(frozen=True, slots=True)
class Deadline:
    """When the invocation's budget ends, on a monotonic clock."""

    ends_at: float
    clock: Callable[[], float] = time.monotonic

    @classmethod
    def from_context(
        cls, context: Any, safety_margin_s: float, clock: Callable[[], float] = time.monotonic
    ) -> Deadline:
        """Lambda's remaining time minus the margin; no deadline without a Lambda context."""
        remaining_ms = getattr(context, "get_remaining_time_in_millis", None)
        if remaining_ms is None:
            return cls.none(clock)
        return cls(clock() + remaining_ms() / 1000 - safety_margin_s, clock)

    @classmethod
    def none(cls, clock: Callable[[], float] = time.monotonic) -> Deadline:
        return cls(math.inf, clock)

    def remaining(self) -> float:
        """Seconds left of the budget (negative once it is spent)."""
        return self.ends_at - self.clock()

    def describe(self) -> str:
        return f"{max(0.0, self.remaining()) * 1000:.0f} ms of the invocation's time budget left"


# A call's worst case is connect + read timeout (botocore applies each per socket operation;
# a response that trickles in byte by byte could take longer, which no endpoint of AWS does).
# Read timeouts to choose from, longest first: the first is the normal one, well under a
# function timeout of a minute (botocore's own default is 60 s); the others serve a budget
# that is running out. A PutRecords call answers in tens of milliseconds when Kinesis is well.
READ_TIMEOUTS_S = (20.0, 10.0, 5.0, 2.0, 1.0, 0.5, 0.25)
CONNECT_TIMEOUT_S = 3.0


def worst_case_s(read_timeout: float) -> float:
    return min(CONNECT_TIMEOUT_S, read_timeout) + read_timeout


# The shortest call worth starting: below this, the budget is spent.
MIN_CALL_S = worst_case_s(READ_TIMEOUTS_S[-1])


class BoundedClients:
    """One client per read timeout of READ_TIMEOUTS_S, built on first use and kept, with
    botocore's own retries off (the caller retries, within the deadline): `within(seconds)`
    returns the one with the longest timeouts whose worst case fits in `seconds`.

    Why clients per timeout: botocore's timeouts belong to the client (its Config, applied to
    its connection pool), and botocore has no per-call timeout. Building a client per call
    costs ~5 ms here (a batch of 500 takes ~60 ms), and changing a client's pool timeouts
    means touching botocore's private attributes. Kept clients cost one dictionary look-up per
    call and ~250 KB each; usually only the first is ever built.
    """

    def __init__(self, make_client: Callable[[Config], Any]) -> None:
        self._make_client = make_client
        self._clients: dict[float, Any] = {}

    @staticmethod
    def config(read_timeout: float) -> Config:
        return Config(
            connect_timeout=min(CONNECT_TIMEOUT_S, read_timeout),
            read_timeout=read_timeout,
            retries={"mode": "standard", "total_max_attempts": 1},
        )

    def within(self, seconds: float) -> Any | None:
        """The client for a call that must end within `seconds`, or None if none can."""
        for read_timeout in READ_TIMEOUTS_S:
            if worst_case_s(read_timeout) <= seconds:
                return self._client(read_timeout)
        return None

    @property
    def default(self) -> Any:
        """The client with the normal timeouts (what a call with time to spare gets)."""
        return self._client(READ_TIMEOUTS_S[0])

    def renew(self) -> None:
        """Close every client built so far; the next call builds new ones (SnapStart: the pooled
        connections of a snapshot are not valid in the copies restored from it)."""
        built, self._clients = self._clients, {}
        for client in built.values():
            client.close()

    def _client(self, read_timeout: float) -> Any:
        client = self._clients.get(read_timeout)
        if client is None:
            client = self._clients[read_timeout] = self._make_client(self.config(read_timeout))
        return client
