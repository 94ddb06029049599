"""The local mapping's handling of shards and iterators, against a fake Kinesis client
(tests/fake_kinesis.py): moto never expires an iterator, keeps writing to a split shard's
closed parent, and gives a closed shard a NextShardIterator forever."""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest

from local_aws.event_source_mapping import (
    EventSourceMapping,
    FailureDestination,
    InvokeResult,
    MappingConfig,
    MappingStats,
    ShardPoller,
)
from tests.fake_kinesis import FakeKinesis
from tests.test_event_source_mapping import ScriptedFunction, drain, fail_once_at

SHARD = "shardId-000000000000"


def poller(kinesis: FakeKinesis, function: ScriptedFunction, **settings: Any) -> ShardPoller:
    return ShardPoller(
        kinesis,
        "rides",
        SHARD,
        config=MappingConfig.from_dict({"StartingPosition": "TRIM_HORIZON", **settings}),
        invoke=function,
        destination=FailureDestination(None, lambda _s: None),
        stats=MappingStats(),
        stop=threading.Event(),
        retry_delay=0,
    )


def iterators_requested(kinesis: FakeKinesis) -> list[tuple[str, str | None]]:
    return [(call["Type"], call["At"]) for name, call in kinesis.calls if name == "GetShardIterator"]


# -- expired iterators -------------------------------------------------------------------------


def test_an_expired_iterator_is_renewed_from_the_last_checkpoint() -> None:
    kinesis = FakeKinesis()
    sequence_numbers = [kinesis.put(SHARD, payload) for payload in "abc"]
    function = ScriptedFunction()
    p = poller(kinesis, function, BatchSize=2)
    p.step()  # reads a, b, c; delivers a and b; c is read but not checkpointed
    kinesis.expire_iterators()
    kinesis.put(SHARD, "d")
    drain(p)
    assert function.batches == [["a", "b"], ["c", "d"]]  # c once, d delivered: nothing lost or doubled
    assert iterators_requested(kinesis)[-1] == ("AT_SEQUENCE_NUMBER", sequence_numbers[2])
    assert p.stats.iterators_renewed == 1


def test_records_put_after_an_expiry_during_retries_are_delivered() -> None:
    kinesis = FakeKinesis()
    kinesis.put(SHARD, "a")
    function = ScriptedFunction(fail_once_at("a"))
    p = poller(kinesis, function, FunctionResponseTypes=["ReportBatchItemFailures"])
    p.step()  # a fails
    kinesis.expire_iterators()  # the retries outlived the iterator
    kinesis.put(SHARD, "b")
    drain(p)
    assert function.batches == [["a"], ["a", "b"]]


def test_an_idle_shards_iterator_is_renewed_after_the_last_record_read() -> None:
    kinesis = FakeKinesis()
    [first] = [kinesis.put(SHARD, "a")]
    function = ScriptedFunction()
    p = poller(kinesis, function)
    drain(p)
    kinesis.expire_iterators()
    kinesis.put(SHARD, "b")
    drain(p)
    assert function.batches == [["a"], ["b"]]
    assert iterators_requested(kinesis)[-1] == ("AFTER_SEQUENCE_NUMBER", first)


def test_after_a_renewal_lanes_ahead_of_the_checkpoint_get_no_record_twice() -> None:
    kinesis = FakeKinesis()
    function = ScriptedFunction(fail_once_at("slow/0"))
    p = poller(kinesis, function, ParallelizationFactor=2, FunctionResponseTypes=["ReportBatchItemFailures"])
    slow = "slow"
    fast = next(f"fast-{i}" for i in range(100) if p.lane_of(f"fast-{i}") != p.lane_of(slow))
    kinesis.put(SHARD, "slow/0", key=slow)
    for n in range(3):
        kinesis.put(SHARD, f"fast/{n}", key=fast)
    p.step()  # slow/0 fails, fast/0-2 are done: the shard's checkpoint stays before slow/0
    kinesis.expire_iterators()
    kinesis.put(SHARD, "fast/3", key=fast)
    drain(p)
    delivered = [payload for batch in function.batches for payload in batch]
    assert [d for d in delivered if d.startswith("fast/")] == ["fast/0", "fast/1", "fast/2", "fast/3"]
    assert [d for d in delivered if d.startswith("slow/")] == ["slow/0", "slow/0"]


# -- closed shards and resharding -------------------------------------------------------------


def test_a_closed_shard_ends_cleanly_after_its_last_record() -> None:
    kinesis = FakeKinesis()
    kinesis.put(SHARD, "a")
    kinesis.put(SHARD, "b")
    kinesis.split(SHARD)
    function = ScriptedFunction()
    p = poller(kinesis, function)
    drain(p)
    assert function.batches == [["a", "b"]]
    assert p.finished
    reads = kinesis.count("GetRecords")
    assert not p.step()
    assert kinesis.count("GetRecords") == reads  # no read past the end
    runner = threading.Thread(target=p.run)
    runner.start()
    runner.join(5)
    assert not runner.is_alive()  # run() returns once the shard is done
    assert p.stats.shards_finished == 1


class Recorder(ScriptedFunction):
    """Waits until `expected` records were delivered; `delay` per invocation."""

    def __init__(self, expected: int, delay: float = 0.0) -> None:
        super().__init__(self._answer)
        self.expected = expected
        self.delay = delay
        self.all_delivered = threading.Event()
        self._lock = threading.Lock()

    def _answer(self, _payloads: list[str], _sequence_numbers: list[str]) -> InvokeResult:
        time.sleep(self.delay)
        with self._lock:
            if sum(len(batch) for batch in self.batches) >= self.expected:
                self.all_delivered.set()
        return InvokeResult(None)

    @property
    def delivered(self) -> list[str]:
        return [payload for batch in self.batches for payload in batch]


def run_mapping(
    kinesis: FakeKinesis, function: Recorder, timeout: float = 10, **settings: Any
) -> EventSourceMapping:
    mapping = EventSourceMapping(
        kinesis,
        "rides",
        function,
        MappingConfig.from_dict({"StartingPosition": "TRIM_HORIZON", **settings}),
        poll_interval=0.01,
        retry_delay=0,
        shard_refresh_interval=0.05,
    )
    mapping.start()
    try:
        assert function.all_delivered.wait(timeout), f"delivered only {function.delivered}"
    finally:
        mapping.stop()
    assert not any(thread.is_alive() for thread in mapping.threads)
    return mapping


def test_children_of_a_split_are_read_only_after_the_parent_is_drained() -> None:
    kinesis = FakeKinesis()
    for n in range(5):
        kinesis.put(SHARD, f"parent/{n}", key=f"k{n % 2}")
    left, right = kinesis.split(SHARD)
    for n in range(3):
        kinesis.put(left, f"left/{n}", key="k0")
        kinesis.put(right, f"right/{n}", key="k1")
    function = Recorder(expected=11, delay=0.01)
    mapping = run_mapping(kinesis, function, BatchSize=1)
    delivered = function.delivered
    last_of_parent = max(i for i, d in enumerate(delivered) if d.startswith("parent/"))
    first_of_children = min(i for i, d in enumerate(delivered) if not d.startswith("parent/"))
    assert last_of_parent < first_of_children
    assert [d for d in delivered if d.startswith("left/")] == ["left/0", "left/1", "left/2"]
    assert sorted(mapping.pollers) == [SHARD, left, right]
    assert mapping.pollers[SHARD].finished


def test_a_merged_child_waits_for_both_parents() -> None:
    kinesis = FakeKinesis(shards=2)
    first, second = sorted(kinesis.shards)
    for n in range(3):
        kinesis.put(first, f"first/{n}")
    for n in range(20):  # the adjacent parent ends long after the first one
        kinesis.put(second, f"second/{n}")
    child = kinesis.merge(first, second)
    kinesis.put(child, "child/0")
    function = Recorder(expected=24, delay=0.01)
    run_mapping(kinesis, function, BatchSize=1)
    assert function.delivered[-1] == "child/0"


def test_shards_are_listed_again_and_new_ones_read_from_their_start() -> None:
    kinesis = FakeKinesis()
    kinesis.put(SHARD, "before")
    function = Recorder(expected=4)
    mapping = EventSourceMapping(
        kinesis,
        "rides",
        function,
        MappingConfig(StartingPosition="TRIM_HORIZON"),
        poll_interval=0.01,
        shard_refresh_interval=0.05,
    )
    mapping.start()
    try:
        left, right = kinesis.split(SHARD)  # while it runs
        kinesis.put(left, "left")
        kinesis.put(right, "right")
        added = kinesis.add_shard()  # a shard with no parent, seen at the next listing
        kinesis.put(added, "added")
        assert function.all_delivered.wait(10), function.delivered
    finally:
        mapping.stop()
    assert sorted(function.delivered) == ["added", "before", "left", "right"]
    assert kinesis.count("ListShards") > 1


def test_latest_children_waiting_at_the_start_skip_what_was_there_before() -> None:
    kinesis = FakeKinesis()
    kinesis.put(SHARD, "old parent")
    (left, _right) = kinesis.split(SHARD)
    kinesis.put(left, "old child")
    function = Recorder(expected=1)
    mapping = EventSourceMapping(
        kinesis,
        "rides",
        function,
        MappingConfig(StartingPosition="LATEST"),
        poll_interval=0.01,
        shard_refresh_interval=0.05,
    )
    time.sleep(0.01)
    kinesis.put(left, "new child")
    mapping.start()
    try:
        assert function.all_delivered.wait(10)
        time.sleep(0.1)
    finally:
        mapping.stop()
    assert function.delivered == ["new child"]


def test_every_page_of_list_shards_is_read() -> None:
    kinesis = FakeKinesis(shards=5, page_size=2)
    mapping = EventSourceMapping(kinesis, "rides", ScriptedFunction(), MappingConfig())
    assert sorted(mapping.pollers) == sorted(kinesis.shards)


@pytest.mark.parametrize("factor", [1, 3])
def test_a_closed_shard_with_lanes_finishes_once_every_lane_is_done(factor: int) -> None:
    kinesis = FakeKinesis()
    for n in range(6):
        kinesis.put(SHARD, f"r{n}", key=f"key-{n}")
    kinesis.split(SHARD)
    function = ScriptedFunction()
    p = poller(kinesis, function, ParallelizationFactor=factor, BatchSize=2)
    drain(p)
    assert p.finished
    assert sorted(payload for batch in function.batches for payload in batch) == [f"r{n}" for n in range(6)]
