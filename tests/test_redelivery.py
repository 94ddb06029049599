"""The re-delivery memory: bounded, least recently used first out, renewable."""

from __future__ import annotations

import pytest

from stream.redelivery import RedeliveryMemory


def test_remembers_what_was_written_per_id() -> None:
    memory = RedeliveryMemory(size=10)
    memory.remember(["shardId-000000000000:1"], "predicted")
    memory.remember(["shardId-000000000000:2"], "dead_lettered")
    memory.remember(["shardId-000000000000:2:0"], "predicted")  # a user record of an aggregated one
    assert memory.recall(
        [
            "shardId-000000000000:1",
            "shardId-000000000000:2",
            "shardId-000000000000:2:0",
            "shardId-000000000001:1",
        ]
    ) == ["predicted", "dead_lettered", "predicted", None]
    assert len(memory) == 3


def test_forgets_the_least_recently_used_past_its_size() -> None:
    memory = RedeliveryMemory(size=3)
    memory.remember(["a", "b", "c"], "predicted")
    assert memory.recall(["a"]) == ["predicted"]  # a use: b is now the oldest
    memory.remember(["d"], "predicted")
    assert len(memory) == 3
    assert memory.recall(["b", "a", "c", "d"]) == [None, "predicted", "predicted", "predicted"]
    memory.remember(["e", "f", "g", "h"], "dead_lettered")  # more than its size at once
    assert memory.recall(["d", "e", "f", "g", "h"]) == [
        None,
        None,
        "dead_lettered",
        "dead_lettered",
        "dead_lettered",
    ]


def test_size_zero_remembers_nothing_and_an_empty_id_is_never_remembered() -> None:
    off = RedeliveryMemory(size=0)
    off.remember(["a"], "predicted")
    assert off.recall(["a"]) == [None]
    memory = RedeliveryMemory(size=5)
    memory.remember(["", "x"], "predicted")
    assert len(memory) == 1


def test_clear_forgets_everything() -> None:
    memory = RedeliveryMemory(size=5)
    memory.remember(["a"], "predicted")
    memory.clear()
    assert memory.recall(["a"]) == [None]
    assert len(memory) == 0


@pytest.mark.parametrize("method", ["recall", "remember"])
def test_one_id_as_a_string_is_a_mistake_not_one_id_per_character(method: str) -> None:
    memory = RedeliveryMemory(size=5)
    with pytest.raises(TypeError, match="a collection of ids, not one string"):
        getattr(memory, method)("shardId-000000000000:1", *(["predicted"] if method == "remember" else []))


def test_a_negative_size_is_refused() -> None:
    with pytest.raises(ValueError, match="size must be 0 or more, got -1"):
        RedeliveryMemory(size=-1)
