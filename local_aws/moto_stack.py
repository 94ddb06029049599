"""moto server on loopback, standing in for Kinesis, S3 and SQS, and the resources the pipeline needs."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from local_aws.processes import Spawner, stop_process

DEFAULT_PORT = 4566  # LocalStack's: awslocal and localstack-client work unchanged


class PortInUseError(RuntimeError):
    pass


def ensure_port_free(port: int, what: str, option: str) -> None:
    with socket.socket() as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            raise PortInUseError(
                f"port {port} for {what} is already in use (another local stack or LocalStack?); "
                f"stop it or pass {option} <port>"
            ) from None


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def wait_for_http(url: str, timeout: float, process: subprocess.Popen[bytes] | None = None) -> None:
    """Poll until `url` answers (any HTTP status), the process dies, or the timeout passes."""
    deadline = time.monotonic() + timeout
    delay = 0.02
    while True:
        try:
            with urllib.request.urlopen(url, timeout=1):  # noqa: S310 - loopback URL we built
                return
        except urllib.error.HTTPError:
            return
        except OSError:
            pass
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"{url}: the server exited with status {process.returncode}")
        if time.monotonic() > deadline:
            raise TimeoutError(f"{url} did not answer within {timeout:.0f} s")
        time.sleep(delay)
        delay = min(delay * 2, 0.25)


class MotoServer:
    """`moto_server` in its own process on 127.0.0.1."""

    def __init__(
        self, port: int = DEFAULT_PORT, log: BinaryIO | None = None, steady_gc: bool = False
    ) -> None:
        self.port = port
        self._log = log
        self._steady_gc = steady_gc
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def endpoint_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 30) -> None:
        ensure_port_free(self.port, "moto (local AWS)", "--port")
        # local_aws.moto_server: moto refusing what Kinesis refuses; steady_gc for benchmarks.
        launcher = ["-m", "local_aws.moto_server", *(["--steady-gc"] if self._steady_gc else [])]
        self._process = Spawner().popen(
            [sys.executable, *launcher, "-H", "127.0.0.1", "-p", str(self.port)],
            cwd=Path(__file__).resolve().parent.parent,
            stdin=subprocess.DEVNULL,
            stdout=self._log or subprocess.DEVNULL,
            stderr=subprocess.STDOUT,
        )
        wait_for_http(f"{self.endpoint_url}/moto-api/", timeout, self._process)

    def stop(self) -> None:
        stop_process(self._process)
        self._process = None


@dataclass(frozen=True)
class StreamSpec:
    name: str
    shards: int = 1


def create_streams(kinesis: Any, streams: Iterable[StreamSpec]) -> None:
    existing = set(kinesis.list_streams()["StreamNames"])
    specs = [spec for spec in streams if spec.name not in existing]
    for spec in specs:
        kinesis.create_stream(StreamName=spec.name, ShardCount=spec.shards)
    for spec in specs:
        kinesis.get_waiter("stream_exists").wait(StreamName=spec.name, WaiterConfig={"Delay": 0.1})


def upload_model(s3: Any, model_dir: Path, bucket: str, prefix: str) -> str:
    """Create the bucket if needed, make the prefix a copy of the model directory (files no
    longer in it are deleted), return its s3:// URI."""
    if bucket not in {b["Name"] for b in s3.list_buckets().get("Buckets", [])}:
        s3.create_bucket(Bucket=bucket)
    keys = set()
    for path in sorted(model_dir.rglob("*")):
        if path.is_file():
            key = f"{prefix}/{path.relative_to(model_dir).as_posix()}"
            s3.upload_file(str(path), bucket, key)
            keys.add(key)
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=f"{prefix}/"):
        stale = [{"Key": obj["Key"]} for obj in page.get("Contents", []) if obj["Key"] not in keys]
        if stale:
            s3.delete_objects(Bucket=bucket, Delete={"Objects": stale})
    return f"s3://{bucket}/{prefix}"
