"""SnapStart's after-restore hooks, called as the runtime calls them: each renews its concern."""

from __future__ import annotations

import random
import sys
from collections import OrderedDict
from pathlib import Path
from typing import Any

import boto3
import pytest
import snapshot_restore_py

from model_service import build_service, register_restore_hooks
from stream import restore_hooks
from stream.deadline import BoundedClients
from stream.kinesis_output import KinesisStreamWriter, RetryPolicy
from stream.settings import Settings
from tests.conftest import RecordingLog


def kinesis() -> Any:
    return boto3.client("kinesis", region_name="us-east-1")


def jitter(writer: KinesisStreamWriter, draws: int = 5) -> list[float]:
    return [writer.policy.delay(4, writer._rng) for _ in range(draws)]


def test_restored_copies_no_longer_back_off_in_step() -> None:
    """Two copies restored from one snapshot start with the same random state: after the hook,
    neither draws what the snapshot would have drawn."""
    snapshot = random.Random(42).getstate()
    writers = [KinesisStreamWriter(kinesis(), "out", RetryPolicy(), rng=random.Random()) for _ in range(2)]
    for writer in writers:
        writer._rng.setstate(snapshot)
    random.seed(7)
    global_state = random.getstate()
    in_step = jitter(KinesisStreamWriter(kinesis(), "out", rng=random.Random(42)))

    restore_hooks.renew_backoff_jitter(writers)

    first, second = jitter(writers[0]), jitter(writers[1])
    assert first != in_step
    assert second != in_step
    assert first != second
    assert random.getstate() != global_state  # botocore's own retry jitter draws from `random`


def test_restored_copies_get_new_kinesis_clients_and_close_the_old_ones() -> None:
    made: list[Any] = []
    closed: list[Any] = []

    def make(config: Any) -> Any:
        client = kinesis()
        client.close = lambda: closed.append(client)  # type: ignore[method-assign]
        made.append(client)
        return client

    pool = BoundedClients(make)
    shared, short = pool.default, pool.within(1.0)
    writers = [
        KinesisStreamWriter(shared, "out", clients=pool),
        KinesisStreamWriter(shared, "dead", clients=pool),
    ]

    restore_hooks.renew_aws_clients(writers)

    new = made[-1]
    assert new not in (shared, short)
    assert [writer.client for writer in writers] == [new, new]
    assert closed == [shared, short]
    assert pool.default is new


def test_restored_copies_forget_the_deliveries_seen_before_the_snapshot() -> None:
    memories = [OrderedDict([("shardId-0:1", True), ("shardId-0:2", True)]), OrderedDict([("x", True)])]

    restore_hooks.forget_deliveries(memories)

    assert memories == [OrderedDict(), OrderedDict()]


@pytest.fixture
def after_restore_registry() -> Any:
    """The runtime library's registry, emptied around the test (it is process-wide)."""
    registry = snapshot_restore_py.get_after_restore()
    saved = list(registry)
    registry.clear()
    yield registry
    registry[:] = saved


def test_the_function_registers_its_hooks_and_the_runtime_runs_them(
    aws: None, model_dir: Path, tmp_path: Path, after_restore_registry: list[Any]
) -> None:
    settings = Settings.from_env(
        {"MODEL_URI": str(model_dir), "MODEL_CACHE_DIR": str(tmp_path), "DEAD_LETTER_STREAM_NAME": "dead"}
    )
    service = build_service(settings, RecordingLog())
    before = service.predictions.client
    assert service.dead_letters.writer.client is before  # type: ignore[attr-defined]

    service.memory.remember(["shardId-0:1"], "predicted")
    assert register_restore_hooks(service) is True
    assert [func for func, _, _ in after_restore_registry] == [
        restore_hooks.renew_backoff_jitter,
        restore_hooks.renew_aws_clients,
        restore_hooks.forget_deliveries,
    ]
    for func, args, kwargs in after_restore_registry:  # what the runtime does after a restore
        func(*args, **kwargs)

    after = service.predictions.client
    assert after is not before
    assert service.dead_letters.writer.client is after  # type: ignore[attr-defined]
    assert len(service.memory) == 0


def test_without_the_runtime_library_nothing_is_registered(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "snapshot_restore_py", None)
    assert restore_hooks.register([]) is False
