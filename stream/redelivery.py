"""Re-delivery memory: the input records this container already wrote, so that a re-delivered
batch does not write them again.

Lambda re-delivers a Kinesis batch from the lowest failed sequence number (or whole, after a
function error), so records written by the failed invocation come back. Remembering their ids
here turns those re-deliveries into no-ops.

What it promises, and what not:

- Per container, in memory, bounded (least recently used ids are forgotten first). A retry
  that lands on the same warm container (the usual case: Lambda runs one batch per shard at a
  time, and keeps the container) writes nothing twice.
- Nothing across containers: a retry on another container (a crash, a timeout, a scale-out,
  a new deployment) writes again. Nor does it cover a write that succeeded while the writer
  saw an error (a timeout after Kinesis stored the records). Consumers still de-duplicate on
  `source.event_id`.

Keys are plain strings: `source.event_id` (`shardId-...:<sequenceNumber>`) today; a user
record inside an aggregated (KPL) Kinesis record can use `<event_id>:<sub-sequence>`.
Not thread-safe: one container runs one invocation at a time.
"""

from __future__ import annotations

from collections import OrderedDict

# Enough for the largest Kinesis batch (10,000 records) twice over. One id is ~75 characters;
# measured here, 20,000 ids take about 4 MB.
DEFAULT_SIZE = 20_000


class RedeliveryMemory:
    """What this container wrote for each input id ("predicted", "dead_lettered"), least
    recently used first; `size` 0 turns it off."""

    def __init__(self, size: int = DEFAULT_SIZE) -> None:
        if size < 0:
            raise ValueError(f"size must be 0 or more, got {size}")
        self.size = size
        self._written: OrderedDict[str, str] = OrderedDict()

    def recall(self, record_id: str) -> str | None:
        """What was written for this id, or None; a hit counts as a use."""
        written = self._written.get(record_id)
        if written is not None:
            self._written.move_to_end(record_id)
        return written

    def remember(self, record_id: str, written: str) -> None:
        """Note that this id was written as `written`; forgets the oldest past `size`."""
        if not self.size or not record_id:
            return
        self._written[record_id] = written
        self._written.move_to_end(record_id)
        if len(self._written) > self.size:
            self._written.popitem(last=False)

    def clear(self) -> None:
        """Forget everything, e.g. when a snapshot of this container is restored elsewhere."""
        self._written.clear()

    def __len__(self) -> int:
        return len(self._written)
