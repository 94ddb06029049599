"""`python -m local_aws.moto_server [--steady-gc] -H HOST -p PORT`: moto's server, refusing
what Kinesis refuses that moto lets through.

Kinesis refuses a record whose data and partition key exceed 1 MiB; moto checks that in
PutRecords only, so a PutRecord of 2 MiB would succeed locally and fail in AWS.
"""

from __future__ import annotations

import base64
import gc
import sys
from typing import Any

from moto.core.exceptions import JsonRESTError

MAX_RECORD_BYTES = 1024 * 1024  # data + partition key, per record (Kinesis quotas)


class RecordTooLargeError(JsonRESTError):
    def __init__(self, size: int) -> None:
        super().__init__(
            error_type="ValidationException",
            message=(
                "1 validation error detected: Value at 'data' failed to satisfy constraint: Member must "
                f"have length less than or equal to {MAX_RECORD_BYTES} (data and partition key: {size} bytes)"
            ),
        )


def refuse_large_records() -> None:
    """PutRecord checks the record's size as Kinesis does, before moto stores it."""
    from moto.kinesis.models import KinesisBackend  # noqa: PLC0415 - patched before the server starts

    put_record = KinesisBackend.put_record

    def checked_put_record(  # noqa: PLR0917 - moto's own signature
        self: KinesisBackend,
        stream_arn: str,
        stream_name: str,
        partition_key: str,
        explicit_hash_key: str,
        data: str,
    ) -> Any:
        size = len(base64.b64decode(data)) + len(partition_key.encode())
        if size > MAX_RECORD_BYTES:
            raise RecordTooLargeError(size)
        return put_record(self, stream_arn, stream_name, partition_key, explicit_hash_key, data)

    KinesisBackend.put_record = checked_put_record  # type: ignore[method-assign]


def main(argv: list[str]) -> None:
    if "--steady-gc" in argv:
        argv = [arg for arg in argv if arg != "--steady-gc"]
        # For benchmarks: a full collection in moto, which holds every stored record, pauses a
        # request for 100 ms or more at random; rare young collections keep the endpoint's
        # noise off whichever design happens to be measured.
        gc.set_threshold(100_000, 50, 1000)
    refuse_large_records()
    from moto.server import main as moto_main  # noqa: PLC0415

    moto_main(argv)


if __name__ == "__main__":
    main(sys.argv[1:])
