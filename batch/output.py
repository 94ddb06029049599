"""Where batch scoring writes: a file or an S3 object that appears only when the run succeeds.

A run that fails half-way (a model error, Ctrl-C, a lost connection) leaves the output as it
was before, never truncated: the previous run's output, or nothing.

- A local output is written to a hidden temporary file beside it (`.<name>.<random>.partial`)
  and renamed over it on success: one atomic rename on the same filesystem.
- An S3 output is written as a multipart upload, completed on success and aborted on failure.
  Until it is completed no object exists at the key (an older object stays as it was), and an
  aborted upload leaves nothing, not even a temporary object in the bucket's listing. Writing
  to a temporary key and copying it over the output on success would do the same with a
  visible leftover object, twice the writes, and CopyObject's 5 GB limit; pyarrow's own S3
  stream cannot abort its upload (closing it completes the upload), hence boto3 here.
  A process that is killed outright leaves an incomplete upload, invisible but billed: a
  bucket lifecycle rule `AbortIncompleteMultipartUpload` removes those.
"""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pyarrow as pa
from botocore.exceptions import BotoCoreError, ClientError

from model_service import aws_client

if TYPE_CHECKING:
    from mypy_boto3_s3.client import S3Client
    from mypy_boto3_s3.type_defs import CompletedPartTypeDef

# S3 multipart limits: every part but the last at least 5 MiB, at most 10,000 parts. 8 MiB
# parts (s3transfer's default) allow outputs up to ~80 GB and hold at most 8 MiB in memory.
PART_BYTES = 8 * 1024 * 1024
MIN_PART_BYTES = 5 * 1024 * 1024


class OutputError(Exception):
    """The output could not be opened, written or put in place (the message says why)."""


def s3_location(uri: str) -> tuple[str, str]:
    """(bucket, key) of an s3:// URI, taken literally: a key with an empty, `.` or `..` segment
    is refused, since pyarrow (which reads) and S3 (which stores) would name different objects."""
    bucket, _, key = uri.removeprefix("s3://").partition("/")
    if not bucket or any(part in ("", ".", "..") for part in key.split("/")):
        raise ValueError(f"{uri}: expected s3://bucket/key, without empty, '.' or '..' path segments")
    return bucket, key


class S3Upload:
    """A write-only file that becomes the S3 object at `key` only when `complete()` is called."""

    def __init__(
        self,
        client: S3Client,
        bucket: str,
        key: str,
        part_bytes: int = PART_BYTES,
        metadata: Mapping[str, str] | None = None,
    ) -> None:
        if part_bytes < MIN_PART_BYTES:
            raise ValueError(f"S3 parts must be at least {MIN_PART_BYTES} bytes, got {part_bytes}")
        self.client = client
        self.bucket = bucket
        self.key = key
        self.part_bytes = part_bytes
        try:
            # The object's user metadata is fixed when the upload starts (x-amz-meta-*).
            self.upload_id = client.create_multipart_upload(
                Bucket=bucket, Key=key, Metadata=dict(metadata or {})
            )["UploadId"]
        except (BotoCoreError, ClientError) as error:
            raise OutputError(str(error)) from error
        self.parts: list[CompletedPartTypeDef] = []
        self.buffer = bytearray()
        self.position = 0
        self.closed = False

    def write(self, data: bytes | bytearray | memoryview) -> int:
        self.buffer += data
        self.position += len(data)
        while len(self.buffer) >= self.part_bytes:
            self._upload_part(bytes(self.buffer[: self.part_bytes]))
            del self.buffer[: self.part_bytes]
        return len(data)

    def tell(self) -> int:
        return self.position

    def writable(self) -> bool:
        return True

    def flush(self) -> None:
        """Parts go out as they fill: S3 takes no part smaller than 5 MiB but the last."""

    def close(self) -> None:
        self.closed = True

    def complete(self) -> None:
        """Send what is buffered as the last part and make the object appear, all at once."""
        if self.buffer or not self.parts:  # an empty object is one empty part
            self._upload_part(bytes(self.buffer))
            self.buffer.clear()
        try:
            self.client.complete_multipart_upload(
                Bucket=self.bucket,
                Key=self.key,
                UploadId=self.upload_id,
                MultipartUpload={"Parts": self.parts},
            )
        except (BotoCoreError, ClientError) as error:
            raise OutputError(str(error)) from error

    def abort(self) -> None:
        """Drop the parts sent so far; the key keeps whatever object it had."""
        self.client.abort_multipart_upload(Bucket=self.bucket, Key=self.key, UploadId=self.upload_id)

    def _upload_part(self, data: bytes) -> None:
        number = len(self.parts) + 1
        try:
            answer = self.client.upload_part(
                Bucket=self.bucket, Key=self.key, UploadId=self.upload_id, PartNumber=number, Body=data
            )
        except (BotoCoreError, ClientError) as error:
            raise OutputError(f"part {number}: {error}") from error
        self.parts.append({"PartNumber": number, "ETag": answer["ETag"]})


@contextmanager
def replaced_on_success(uri: str, metadata: Mapping[str, str] | None = None) -> Iterator[Any]:
    """A writable file for `uri` (a path or s3://bucket/key) whose content replaces the output
    only if the block succeeds; on any failure the output is left as it was, and the error
    re-raised. Opening, writing and putting the output in place raise OutputError. `metadata`
    becomes an S3 object's user metadata (a local file has none)."""
    if uri.startswith("s3://"):
        bucket, key = s3_location(uri)
        # boto3's own endpoint variables (AWS_ENDPOINT_URL_S3, AWS_ENDPOINT_URL) apply.
        upload = S3Upload(aws_client("s3"), bucket, key, metadata=metadata)
        try:
            yield upload
            upload.complete()
        except BaseException as error:
            try:
                upload.abort()
            except Exception as abort_error:  # noqa: BLE001 - the first error is the one to report
                error.add_note(
                    f"the incomplete upload {upload.upload_id} could not be aborted: {abort_error}"
                )
            raise
        return
    path = Path(uri).expanduser().absolute()
    partial = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.partial")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        sink = pa.OSFile(str(partial), "wb")
    except OSError as error:
        raise OutputError(str(error)) from error
    try:
        with sink:
            yield sink
        try:
            os.replace(partial, path)
        except OSError as error:
            raise OutputError(str(error)) from error
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            partial.unlink()
        raise
