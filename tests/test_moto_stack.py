"""The local stack's moto server refuses what Kinesis refuses."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import boto3
import pytest
from botocore.exceptions import ClientError

from local_aws.moto_server import MAX_RECORD_BYTES
from local_aws.moto_stack import MotoServer, StreamSpec, create_streams, free_port


@pytest.fixture(scope="module")
def local_kinesis() -> Iterator[Any]:
    server = MotoServer(free_port())
    server.start()
    try:
        kinesis = boto3.client(
            "kinesis",
            endpoint_url=server.endpoint_url,
            region_name="us-east-1",
            aws_access_key_id="test",
            aws_secret_access_key="test",
        )
        create_streams(kinesis, [StreamSpec("big")])
        yield kinesis
    finally:
        server.stop()


def test_a_record_over_1_mib_is_refused_by_put_record(local_kinesis: Any) -> None:
    key = "k"
    with pytest.raises(ClientError) as refused:
        local_kinesis.put_record(
            StreamName="big", PartitionKey=key, Data=b"x" * (MAX_RECORD_BYTES - len(key) + 1)
        )
    assert refused.value.response["Error"]["Code"] == "ValidationException"
    assert "less than or equal to 1048576" in refused.value.response["Error"]["Message"]
    at_the_limit = local_kinesis.put_record(
        StreamName="big", PartitionKey=key, Data=b"x" * (MAX_RECORD_BYTES - len(key))
    )
    assert at_the_limit["SequenceNumber"]


def test_a_record_over_1_mib_is_refused_by_put_records(local_kinesis: Any) -> None:
    with pytest.raises(ClientError, match="less than or equal to 1048576"):
        local_kinesis.put_records(
            StreamName="big", Records=[{"PartitionKey": "k", "Data": b"x" * MAX_RECORD_BYTES}]
        )
