"""A fault-injecting HTTP proxy between the function and the local AWS endpoint (moto).

Every request is forwarded unchanged, except that calls to the operations under test
(PutRecords by default, read from the JSON protocol's `X-Amz-Target`) meet faults at the
rates asked for, as Kinesis and the network produce them:

- throttling: HTTP 400 `ProvisionedThroughputExceededException` for the whole call;
- server errors: HTTP 500 `InternalFailure` or 503 `ServiceUnavailable`;
- rejected entries: a PutRecords call succeeds, but some entries come back with
  `ErrorCode: ProvisionedThroughputExceededException` and were not stored;
- slow answers: the call is carried out, and answered `slow_s` later (an answer later than
  the client's read timeout is the ambiguous case: stored, yet reported as failed);
- hangs: the connection is accepted and never answered (nothing is stored).

`python -m local_aws.fault_proxy --upstream http://127.0.0.1:4566 --port 4567 --throttle 0.1`
runs one by itself; `local_aws.chaos` puts one in front of the local pipeline's moto.
"""

from __future__ import annotations

import argparse
import http.client
import json
import random
import threading
import time
import uuid
from collections import Counter
from dataclasses import dataclass, fields
from http.server import BaseHTTPRequestHandler
from typing import Any
from urllib.parse import urlparse

from local_aws.lambda_runtime import QuietHTTPServer

# Headers that belong to one hop, not to the request (RFC 9110, 7.6.1).
HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "content-length", "proxy-connection", "te"}


@dataclass(frozen=True)
class Faults:
    """Fault rates, each a fraction (0-1) of the calls to `operations` (entries, for
    `reject_entries`)."""

    throttle: float = 0.0
    server_error: float = 0.0
    reject_entries: float = 0.0
    slow: float = 0.0
    slow_s: float = 1.0
    hang: float = 0.0
    hang_s: float = 120.0
    operations: tuple[str, ...] = ("PutRecords",)
    spare_first: int = 0  # calls answered normally before any fault

    def describe(self) -> str:
        parts = [
            f"{name.replace('_', ' ')} {getattr(self, name) * 100:g}%"
            for name in ("throttle", "server_error", "reject_entries", "slow", "hang")
            if getattr(self, name)
        ]
        return ", ".join(parts) + f" of {'/'.join(self.operations)} calls" if parts else "none"


class FaultProxy:
    """Serves on 127.0.0.1:`port` (0 = any free port), forwarding to `upstream`."""

    def __init__(self, upstream: str, faults: Faults, port: int = 0, seed: int = 7) -> None:
        parsed = urlparse(upstream)
        self.upstream = (parsed.hostname or "127.0.0.1", parsed.port or 80)
        self.faults = faults
        self.injected: Counter[str] = Counter()  # fault -> how often
        self._rng = random.Random(seed)
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        # Quiet about clients that hang up: one that timed out waiting for a slow answer does.
        self.server = QuietHTTPServer(("127.0.0.1", port), self._handler_class())
        self._thread = threading.Thread(target=self.server.serve_forever, name="fault-proxy", daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def start(self) -> FaultProxy:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stopping.set()  # ends held (hanging) requests
        self.server.shutdown()
        self.server.server_close()

    def __enter__(self) -> FaultProxy:
        return self.start()

    def __exit__(self, *_: object) -> None:
        self.stop()

    # -- deciding -------------------------------------------------------------------------

    def _draw(self) -> float:
        with self._lock:
            return self._rng.random()

    def _count(self, fault: str, n: int = 1) -> None:
        with self._lock:
            self.injected[fault] += n

    def call_fault(self) -> str | None:
        """The fault for one call, if any: one draw, so the rates add up as asked."""
        with self._lock:
            self.injected["calls"] += 1
            if self.injected["calls"] <= self.faults.spare_first:
                return None
        draw = self._draw()
        for fault in ("hang", "throttle", "server_error", "slow"):
            rate = float(getattr(self.faults, fault))
            if draw < rate:
                return fault
            draw -= rate
        return None

    # -- HTTP -----------------------------------------------------------------------------

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                """Quiet: the counts tell what was injected."""

            def _send(self, status: int, headers: dict[str, str], body: bytes) -> None:
                self.send_response(status)
                for name, value in headers.items():
                    if name.lower() not in HOP_BY_HOP:
                        self.send_header(name, value)
                if self.command == "HEAD":  # no body, and the length of the one GET would send
                    self.send_header("Content-Length", headers.get("Content-Length", "0"))
                    self.end_headers()
                    return
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def _error(self, status: int, code: str, message: str) -> None:
                body = json.dumps({"__type": code, "message": f"{message} (injected)"}).encode()
                headers = {
                    "Content-Type": "application/x-amz-json-1.1",
                    "x-amzn-RequestId": str(uuid.uuid4()),
                }
                self._send(status, headers, body)

            def _proxy(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                target = self.headers.get("X-Amz-Target", "")
                operation = target.rsplit(".", 1)[-1] if target else ""
                if operation not in proxy.faults.operations:
                    self._send(*proxy.forward(self.command, self.path, dict(self.headers), body))
                    return
                fault = proxy.call_fault()
                if fault:
                    proxy._count(fault)
                if fault == "hang":
                    proxy._stopping.wait(proxy.faults.hang_s)
                    self.close_connection = True
                elif fault == "throttle":
                    self._error(400, "ProvisionedThroughputExceededException", "Rate exceeded for stream")
                elif fault == "server_error":
                    if proxy._draw() < 0.5:
                        self._error(500, "InternalFailure", "Internal service failure")
                    else:
                        self._error(503, "ServiceUnavailable", "Service unavailable")
                else:
                    status, headers, answer = (
                        proxy.put_records_with_rejections(self.path, dict(self.headers), body)
                        if operation == "PutRecords" and proxy.faults.reject_entries
                        else proxy.forward(self.command, self.path, dict(self.headers), body)
                    )
                    if fault == "slow":
                        proxy._stopping.wait(proxy.faults.slow_s)
                    self._send(status, headers, answer)

            do_GET = do_POST = do_PUT = do_DELETE = do_HEAD = _proxy

        return Handler

    def forward(
        self, method: str, path: str, headers: dict[str, str], body: bytes
    ) -> tuple[int, dict[str, str], bytes]:
        connection = http.client.HTTPConnection(*self.upstream, timeout=120)
        try:
            sent = {k: v for k, v in headers.items() if k.lower() not in HOP_BY_HOP}
            connection.request(method, path, body=body, headers=sent)
            response = connection.getresponse()
            return response.status, dict(response.getheaders()), response.read()
        finally:
            connection.close()

    def put_records_with_rejections(
        self, path: str, headers: dict[str, str], body: bytes
    ) -> tuple[int, dict[str, str], bytes]:
        """Forward only the entries not picked for rejection; answer for all, in request order."""
        request = json.loads(body)
        entries = request.get("Records", [])
        rejected = {i for i in range(len(entries)) if self._draw() < self.faults.reject_entries}
        if not rejected:
            return self.forward("POST", path, headers, body)
        self._count("rejected_entries", len(rejected))
        kept = [entry for i, entry in enumerate(entries) if i not in rejected]
        stored: list[dict[str, Any]] = []
        status, response_headers = 200, {"Content-Type": "application/x-amz-json-1.1"}
        if kept:
            status, response_headers, answer = self.forward(
                "POST", path, headers, json.dumps({**request, "Records": kept}).encode()
            )
            if status != 200:
                return status, response_headers, answer
            stored = json.loads(answer)["Records"]
        answers = iter(stored)
        records = [
            {
                "ErrorCode": "ProvisionedThroughputExceededException",
                "ErrorMessage": "Rate exceeded for shard (injected)",
            }
            if i in rejected
            else next(answers)
            for i in range(len(entries))
        ]
        failed = sum(1 for r in records if "ErrorCode" in r)
        return (
            status,
            response_headers,
            json.dumps({"FailedRecordCount": failed, "Records": records}).encode(),
        )


def main() -> None:
    parser = argparse.ArgumentParser(
        prog="python -m local_aws.fault_proxy", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--upstream", required=True, help="the AWS endpoint to forward to, e.g. moto")
    parser.add_argument("--port", type=int, default=0)
    for spec in fields(Faults):
        if spec.type == "float":
            parser.add_argument(f"--{spec.name.replace('_', '-')}", type=float, default=spec.default)
    args = parser.parse_args()
    faults = Faults(**{f.name: getattr(args, f.name) for f in fields(Faults) if f.type == "float"})
    with FaultProxy(args.upstream, faults, args.port) as proxy:
        print(
            f"fault proxy at {proxy.url} -> {args.upstream}: {faults.describe()} (Ctrl-C stops)", flush=True
        )
        try:
            while True:
                time.sleep(5)
                print(f"  injected so far: {dict(proxy.injected)}", flush=True)
        except KeyboardInterrupt:
            pass


if __name__ == "__main__":
    main()
