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

Keys are plain strings: `source.event_id`, `shardId-...:<sequenceNumber>` for a plain record and
`shardId-...:<sequenceNumber>:<subSequenceNumber>` for a user record of a KPL aggregate
(stream/deaggregation.py), so an aggregate that comes back skips the user records written.
Not thread-safe: one container runs one invocation at a time.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable, Sequence

# Enough for the largest Kinesis batch (10,000 records) twice over. One id is ~75 characters;
# measured here, 20,000 ids take about 4 MB (the ids 2.5 MB, the ordered dict 1.3 MB). Whole
# batches go in and out at once: per record, a look-up costs ~0.1 us and an insertion with
# eviction ~0.3 us here.
DEFAULT_SIZE = 20_000


class RedeliveryMemory:
    """What this container wrote for each input id ("predicted", "dead_lettered"), least
    recently used first; `size` 0 turns it off."""

    def __init__(self, size: int = DEFAULT_SIZE) -> None:
        if size < 0:
            raise ValueError(f"size must be 0 or more, got {size}")
        self.size = size
        self._written: OrderedDict[str, str] = OrderedDict()

    def recall(self, record_ids: Sequence[str]) -> list[str | None]:
        """What was written for each id (None: nothing); a hit counts as a use."""
        _not_one_string(record_ids)
        written = self._written
        found = [written.get(record_id) for record_id in record_ids]
        for record_id, what in zip(record_ids, found, strict=True):
            if what is not None:
                written.move_to_end(record_id)
        return found

    def remember(self, record_ids: Iterable[str], what: str) -> None:
        """Note that these ids were written as `what`; forgets the least recently used past
        `size`. Ids that are empty strings are not remembered."""
        _not_one_string(record_ids)
        if not self.size:
            return
        written = self._written
        for record_id in record_ids:
            if record_id:
                if record_id in written:
                    written.move_to_end(record_id)
                written[record_id] = what
        while len(written) > self.size:
            written.popitem(last=False)

    def clear(self) -> None:
        """Forget everything, e.g. when a snapshot of this container is restored elsewhere."""
        self._written.clear()

    def __len__(self) -> int:
        return len(self._written)


def _not_one_string(record_ids: Iterable[str]) -> None:
    if isinstance(record_ids, str):
        raise TypeError("pass a collection of ids, not one string")
