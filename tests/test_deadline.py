"""The invocation's time budget, and the clients whose timeouts fit in what is left of it."""

from __future__ import annotations

import math
from typing import Any

from botocore.config import Config

from stream.deadline import MIN_CALL_S, READ_TIMEOUTS_S, BoundedClients, Deadline


class Context:
    def __init__(self, remaining_ms: int) -> None:
        self.remaining_ms = remaining_ms

    def get_remaining_time_in_millis(self) -> int:
        return self.remaining_ms


def test_the_budget_is_lambdas_remaining_time_minus_the_margin() -> None:
    now = [500.0]
    deadline = Deadline.from_context(Context(4000), safety_margin_s=1.0, clock=lambda: now[0])
    assert deadline.remaining() == 3.0
    now[0] += 3.5
    assert deadline.remaining() == -0.5
    assert deadline.describe() == "0 ms of the invocation's time budget left"


def test_without_a_lambda_context_there_is_no_deadline() -> None:
    assert Deadline.from_context(None, safety_margin_s=1.0).remaining() == math.inf


def test_each_call_gets_the_longest_timeouts_that_fit_and_clients_are_kept() -> None:
    made: list[Config] = []

    def make(config: Config) -> Any:
        made.append(config)
        return object()

    clients = BoundedClients(make)
    default = clients.within(600)
    assert made[0].read_timeout == READ_TIMEOUTS_S[0] == 20
    assert made[0].connect_timeout == 3
    assert made[0].retries == {"mode": "standard", "total_max_attempts": 1}  # the writer retries
    assert clients.within(23) is default  # 3 s to connect + 20 s to read fit exactly
    assert clients.default is default
    assert clients.within(22.9) is not default
    assert made[-1].read_timeout == 10
    assert clients.within(2.0) is not None
    assert (made[-1].connect_timeout, made[-1].read_timeout) == (1.0, 1.0)
    clients.within(1.99)
    assert (made[-1].connect_timeout, made[-1].read_timeout) == (0.5, 0.5)
    assert clients.within(MIN_CALL_S) is not None
    assert clients.within(MIN_CALL_S - 0.01) is None
    calls_before = len(made)
    for seconds in (600, 22.9, 2.0, 1.99, MIN_CALL_S):
        clients.within(seconds)
    assert len(made) == calls_before
