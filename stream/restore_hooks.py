"""SnapStart: what copies restored from one snapshot must not share, renewed after each restore.

With SnapStart (the zip package, `PackageType: Zip`), Lambda runs the init phase once, snapshots
the memory, and starts every later execution environment from that snapshot. Each copy then
begins with the same random state, the same (dead) pooled connections and whatever the service
remembered before the snapshot. One function per concern, registered with the runtime's
`snapshot_restore_py` (in Lambda's Python runtimes; a dev dependency here, for the tests):

- backoff jitter: copies retrying in step would hit a throttled shard together, the very thing
  full jitter exists to avoid;
- AWS clients: their pooled connections were opened before the snapshot and are not valid in
  a restored copy;
- the re-delivery memory: event ids seen before the snapshot were not seen by this copy.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import Protocol

from stream.kinesis_output import KinesisStreamWriter


class Forgettable(Protocol):
    """A memory of deliveries (an LRU keyed by event id) that can be emptied."""

    def clear(self) -> None: ...


def renew_backoff_jitter(writers: Sequence[KinesisStreamWriter]) -> None:
    """New seeds from the OS for each writer's jitter and for `random` (botocore's retry jitter)."""
    random.seed()
    for writer in writers:
        writer.renew_jitter()


def renew_aws_clients(writers: Sequence[KinesisStreamWriter]) -> None:
    """New Kinesis clients for the writers: each pool of clients (stream/deadline.py, shared by
    the writers) closes what it built, and builds anew on the next call."""
    pools = {id(writer.clients): writer.clients for writer in writers if writer.clients is not None}
    for pool in pools.values():
        pool.renew()
    for writer in writers:
        if writer.clients is not None:
            writer.client = writer.clients.default


def forget_deliveries(memories: Sequence[Forgettable]) -> None:
    """Empty the re-delivery memories: this copy has processed nothing yet."""
    for memory in memories:
        memory.clear()


def register(writers: Sequence[KinesisStreamWriter], memories: Sequence[Forgettable] = ()) -> bool:
    """Register the three renewals to run after a restore; False where no runtime restores."""
    try:
        # Lambda's runtime has it; it ships no type information.
        from snapshot_restore_py import register_after_restore  # type: ignore[import-untyped,unused-ignore]  # noqa: PLC0415
    except ImportError:  # a container image or a local run: nothing is ever restored
        return False
    register_after_restore(renew_backoff_jitter, writers)
    register_after_restore(renew_aws_clients, writers)
    register_after_restore(forget_deliveries, memories)
    return True
