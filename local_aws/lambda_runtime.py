"""A local Lambda: the real handler under the real runtime client (`awslambdaric`), behind one
loopback port that serves both sides of Lambda's HTTP contract.

- the Runtime API the runtime client polls (`/2018-06-01/runtime/...`), and
- the invoke API (`POST /2015-03-31/functions/<name>/invocations`), what the Runtime Interface
  Emulator in the Lambda base image serves on port 8080, so `curl`, `aws lambda invoke
  --endpoint-url` and boto3's Lambda client all work against it. `<name>` is the function's name
  (or ARN), or `function` as the emulator accepts; any other name gets Lambda's 404
  `ResourceNotFoundException`. With `X-Amz-Log-Type: Tail` (`--log-type Tail`) the answer
  carries the last 4 KB of the invocation's log, base64, in `X-Amz-Log-Result`.

One function process handles one invocation at a time, as one Lambda execution environment
does. The function is initialised when the endpoint starts; if its init fails, or it times out
or crashes, the next invocation starts a fresh process (a new cold start), as Lambda does.
Errors come back in Lambda's shape: HTTP 200, `X-Amz-Function-Error: Unhandled`, and a JSON
body with `errorMessage` and `errorType`. The function's output goes to the log with Lambda's
`START`, `END` and `REPORT` lines around each invocation. Memory size and timeout default to
the CloudFormation template's (`infra/template.yaml`), so the function sees what AWS gives it.
"""

from __future__ import annotations

import base64
import contextlib
import functools
import json
import math
import os
import queue
import re
import select
import subprocess
import sys
import threading
import time
import uuid
from dataclasses import dataclass, field
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, BinaryIO
from urllib.parse import parse_qs, unquote, urlsplit

from local_aws.processes import Spawner, stop_process

RUNTIME_PREFIX = "/2018-06-01/runtime"
INVOKE_PATH = re.compile(r"^/2015-03-31/functions/(?P<name>[^/]+)/invocations$")
PROJECT_ROOT = Path(__file__).resolve().parent.parent
LOG_TAIL_BYTES = 4096  # what Lambda returns as LogResult with --log-type Tail
EMULATOR_FUNCTION_NAME = "function"  # the name the image's Runtime Interface Emulator answers to


@dataclass
class Invocation:
    payload: bytes
    deadline: float
    request_id: str = field(default_factory=lambda: str(uuid.uuid4()))
    done: threading.Event = field(default_factory=threading.Event)
    result: bytes | None = None
    error: dict[str, Any] | None = None
    log: bytearray = field(default_factory=bytearray)

    def finish(self, result: bytes | None = None, error: dict[str, Any] | None = None) -> None:
        if not self.done.is_set():
            self.result, self.error = result, error
            self.done.set()


@dataclass(frozen=True)
class InvokeResult:
    payload: bytes
    function_error: str | None = None
    log: bytes = b""  # what the function wrote during the invocation, with START/END/REPORT


@functools.cache
def template_defaults() -> dict[str, Any]:
    """The function's settings as `infra/template.yaml` deploys them by default."""
    from scripts.stack import load_template  # noqa: PLC0415 - reads YAML, only when needed

    parameters = load_template()["Parameters"]
    return {name: parameters[name]["Default"] for name in ("MemorySize", "Timeout")}


@dataclass(frozen=True)
class FunctionConfig:
    handler: str = "lambda_function.lambda_handler"
    function_name: str = "ride-duration-prediction"
    timeout_s: float = field(default_factory=lambda: float(template_defaults()["Timeout"]))
    memory_mb: int = field(default_factory=lambda: int(template_defaults()["MemorySize"]))
    region: str = "us-east-1"
    environment: dict[str, str] = field(default_factory=dict)
    code_dir: Path = PROJECT_ROOT
    # TracingConfig Active: each invocation's trace header is sampled (Sampled=1), as Lambda's is;
    # PassThrough (False): Sampled=0, so an X-Ray SDK records nothing.
    tracing: bool = False

    @property
    def arn(self) -> str:
        return self.arn_of(self.function_name)

    def arn_of(self, name: str) -> str:
        return f"arn:aws:lambda:{self.region}:123456789012:function:{name}"

    def answers_to(self, name: str, qualifier: str | None) -> bool:
        """Whether an invoke of `name` (a name, an ARN or a partial ARN, maybe `:qualifier`) is
        for this function: only `$LATEST` exists locally."""
        parts = name.split(":")
        if parts[0] == "arn" and len(parts) >= 7:
            parts = parts[6:]
        elif len(parts) >= 3 and parts[1] == "function":
            parts = parts[2:]
        if len(parts) > 2 or (len(parts) == 2 and qualifier not in (None, parts[1])):
            return False
        version = parts[1] if len(parts) == 2 else qualifier
        return parts[0] in (self.function_name, EMULATOR_FUNCTION_NAME) and version in (None, "$LATEST")


class QuietHTTPServer(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A function process that is stopped drops its connection: not worth a traceback."""
        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)


def error_body(error_type: str, message: str) -> dict[str, Any]:
    return {"errorMessage": message, "errorType": error_type, "stackTrace": []}


def peak_memory_mb(pid: int) -> int | None:
    """The process's peak resident memory (what REPORT calls Max Memory Used), on Linux."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    found = re.search(r"^VmHWM:\s+(\d+) kB", status, re.MULTILINE)
    return math.ceil(int(found[1]) / 1024) if found else None


class LocalLambda:
    """Serves the Runtime and invoke APIs on 127.0.0.1:`port` and runs the function process."""

    def __init__(self, config: FunctionConfig, port: int = 9000, log: BinaryIO | None = None) -> None:
        self.config = config
        self._log = log
        self._pending: queue.Queue[Invocation] = queue.Queue()
        self._current: Invocation | None = None
        self._invoke_lock = threading.Lock()  # one invocation at a time per environment
        self._process: subprocess.Popen[bytes] | None = None
        self._spawner = Spawner()
        self._init_error: dict[str, Any] | None = None
        self._init_done = threading.Event()
        self._stopping = threading.Event()
        self._output_lock = threading.Lock()  # the function's output: read, logged, captured
        self._capture: bytearray | None = None  # where the output goes besides the log
        self._init_log = bytearray()
        self._started_at = 0.0
        self._init_duration_ms: float | None = None  # reported once, after a cold start
        self._pump: threading.Thread | None = None
        self.cold_starts = 0
        self._generation = 0  # which function process is current: a stopped one's /next is stale
        self.server = QuietHTTPServer(("127.0.0.1", port), self._handler_class())
        self._thread = threading.Thread(
            target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, name="local-lambda", daemon=True
        )

    @property
    def port(self) -> int:
        return self.server.server_address[1]

    @property
    def endpoint_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, wait_for_init: bool = True) -> None:
        self._thread.start()
        self._start_function()
        if wait_for_init:
            self.wait_until_initialised(self.config.timeout_s + 30)

    def wait_until_initialised(self, timeout: float) -> dict[str, Any] | None:
        """Block until the function has asked for its first event or reported an init error."""
        if not self._init_done.wait(timeout):
            raise TimeoutError(f"function did not finish its init within {timeout:.0f} s")
        return self._init_error

    def stop(self) -> None:
        self._stopping.set()
        self._stop_function()
        if self._pump is not None:
            self._pump.join(5)  # its last output reaches the log before the log is closed
        self.server.shutdown()
        self.server.server_close()

    def restart(self, timeout: float | None = None) -> dict[str, Any] | None:
        """A fresh execution environment (a cold start), e.g. for a changed model; waits for its
        init and returns the init error, if any. An invocation in progress finishes first."""
        with self._invoke_lock:
            self._stop_function()
            self._start_function()
            return self.wait_until_initialised(timeout or self.config.timeout_s + 30)

    def init_log(self) -> bytes:
        """What the current function process wrote during its init."""
        self._sync_output()
        with self._output_lock:
            return bytes(self._init_log)

    # -- the function process -------------------------------------------------------------

    def _start_function(self) -> None:
        self._init_error = None
        self._init_done.clear()
        self.cold_starts += 1
        self._generation += 1
        env = {
            **os.environ,
            **self.config.environment,
            "AWS_LAMBDA_RUNTIME_API": f"127.0.0.1:{self.port}",
            "AWS_LAMBDA_FUNCTION_NAME": self.config.function_name,
            "AWS_LAMBDA_FUNCTION_VERSION": "$LATEST",
            "AWS_LAMBDA_FUNCTION_MEMORY_SIZE": str(self.config.memory_mb),
            "AWS_LAMBDA_LOG_GROUP_NAME": f"/aws/lambda/{self.config.function_name}",
            "AWS_LAMBDA_LOG_STREAM_NAME": "local",
            "AWS_REGION": self.config.region,
            "AWS_DEFAULT_REGION": self.config.region,
            "LAMBDA_TASK_ROOT": str(self.config.code_dir),
            "_HANDLER": self.config.handler,
            "PYTHONUNBUFFERED": "1",
        }
        with self._output_lock:
            self._init_log = bytearray()
            self._capture = self._init_log
        self._started_at = time.monotonic()
        self._init_duration_ms = None
        self._process = self._spawner.popen(
            [sys.executable, "-m", "awslambdaric", self.config.handler],
            cwd=self.config.code_dir,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        threading.Thread(target=self._watch_function, args=(self._process,), daemon=True).start()
        self._pump = threading.Thread(target=self._pump_output, args=(self._process,), daemon=True)
        self._pump.start()

    def _watch_function(self, process: subprocess.Popen[bytes]) -> None:
        """A process that exits ends its invocation (or its init) with Lambda's exit error."""
        code = process.wait()
        if self._stopping.is_set() or process is not self._process:
            return
        if not self._init_done.is_set():
            self._init_error = self._init_error or error_body(
                "Runtime.ExitError", f"function exited during init with status {code}"
            )
            self._init_done.set()
        if self._current is not None:
            self._current.finish(
                error=self._init_error or error_body("Runtime.ExitError", f"exit status {code}")
            )

    def _stop_function(self) -> None:
        process, self._process = self._process, None
        stop_process(process)

    @property
    def busy(self) -> bool:
        """An invocation is in progress."""
        return self._current is not None

    def crash(self) -> bool:
        """SIGKILL the function process if it is running an invocation, as a crash or an
        out-of-memory kill would (fault injection); the next invocation is a cold start."""
        process = self._process
        if not self.busy or process is None or process.poll() is not None:
            return False
        process.kill()
        return True

    # -- the function's output ------------------------------------------------------------

    def _pump_output(self, process: subprocess.Popen[bytes]) -> None:
        """Copy the process's output to the log (and the current capture) until it exits.
        Reads happen under the output lock, so `_sync_output` can be sure nothing is in flight."""
        if process.stdout is None:
            return
        fd = process.stdout.fileno()
        while True:
            if not select.select([fd], [], [], 0.5)[0]:
                continue
            with self._output_lock:
                # Looked again under the lock: _sync_output may have taken the data meanwhile,
                # and a read that blocks here would hold the lock until the function writes.
                if not select.select([fd], [], [], 0)[0]:
                    continue
                data = os.read(fd, 65536)
                if not data:
                    process.stdout.close()
                    return
                self._write_output(data)

    def _sync_output(self) -> None:
        """Take in whatever the function has written so far (it writes before it answers)."""
        process = self._process
        if process is None or process.stdout is None or process.stdout.closed:
            return
        with self._output_lock, contextlib.suppress(OSError, ValueError):
            fd = process.stdout.fileno()
            while select.select([fd], [], [], 0)[0]:
                data = os.read(fd, 65536)
                if not data:
                    break
                self._write_output(data)

    def _write_output(self, data: bytes) -> None:
        """With the output lock held."""
        if self._log is not None:
            self._log.write(data)
            self._log.flush()
        if self._capture is not None:
            self._capture.extend(data)

    def _begin_capture(self, invocation: Invocation) -> None:
        self._sync_output()
        with self._output_lock:
            self._capture = invocation.log
            self._write_output(f"START RequestId: {invocation.request_id} Version: $LATEST\n".encode())

    def _end_capture(self, invocation: Invocation, started: float, timed_out: bool) -> None:
        self._sync_output()
        duration_ms = (time.monotonic() - started) * 1000
        process = self._process
        peak = peak_memory_mb(process.pid) if process is not None else None
        report = [
            f"REPORT RequestId: {invocation.request_id}",
            f"Duration: {duration_ms:.2f} ms",
            f"Billed Duration: {math.ceil(duration_ms)} ms",
            f"Memory Size: {self.config.memory_mb} MB",
            f"Max Memory Used: {peak if peak is not None else '-'} MB",
        ]
        if self._init_duration_ms is not None:
            report.append(f"Init Duration: {self._init_duration_ms:.2f} ms")
            self._init_duration_ms = None
        lines = []
        if timed_out:
            stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime())
            lines.append(
                f"{stamp} {invocation.request_id} Task timed out after {self.config.timeout_s:.2f} seconds"
            )
        lines += [f"END RequestId: {invocation.request_id}", "\t".join(report)]
        with self._output_lock:
            self._write_output(("\n".join(lines) + "\n").encode())
            self._capture = None

    def _function_is_healthy(self) -> bool:
        return self._process is not None and self._process.poll() is None and self._init_error is None

    # -- the invoke API ---------------------------------------------------------------------

    def invoke(self, payload: bytes) -> InvokeResult:
        """Run one invocation to completion, as a synchronous (RequestResponse) invoke does."""
        with self._invoke_lock:
            if not self._function_is_healthy():
                self._stop_function()
                self._start_function()
            init_error = self.wait_until_initialised(self.config.timeout_s + 30)
            if init_error is not None:
                return InvokeResult(json.dumps(init_error).encode(), "Unhandled")
            invocation = Invocation(payload, deadline=time.time() + self.config.timeout_s)
            self._current = invocation
            self._begin_capture(invocation)
            started = time.monotonic()
            self._pending.put(invocation)
            timed_out = not invocation.done.wait(self.config.timeout_s)
            if timed_out:
                message = f"Task timed out after {self.config.timeout_s:.2f} seconds"
                invocation.finish(error=error_body("Sandbox.Timedout", message))
            self._end_capture(invocation, started, timed_out)
            if timed_out:
                self._stop_function()  # a timed-out environment is not reused
            self._current = None
        log = bytes(invocation.log)
        if invocation.error is not None:
            return InvokeResult(json.dumps(invocation.error).encode(), "Unhandled", log)
        return InvokeResult(invocation.result or b"null", log=log)

    # -- HTTP -------------------------------------------------------------------------------

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        runtime = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                """Quiet: the function's own logs are what matters."""

            def _body(self) -> bytes:
                return self.rfile.read(int(self.headers.get("Content-Length") or 0))

            def _send(self, status: int, body: bytes = b"", headers: dict[str, str] | None = None) -> None:
                self.send_response(status)
                for name, value in (headers or {}).items():
                    self.send_header(name, value)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_GET(self) -> None:
                if self.path == f"{RUNTIME_PREFIX}/invocation/next":
                    runtime._next_invocation(self)
                else:
                    self._send(404, json.dumps(error_body("ResourceNotFound", self.path)).encode())

            def do_POST(self) -> None:
                body = self._body()
                if match := INVOKE_PATH.match(urlsplit(self.path).path):
                    runtime._serve_invoke(self, unquote(match["name"]), body)
                elif self.path == f"{RUNTIME_PREFIX}/init/error":
                    runtime._init_failed(body)
                    self._send(HTTPStatus.ACCEPTED, b'{"status":"OK"}')
                elif m := re.match(rf"^{RUNTIME_PREFIX}/invocation/([^/]+)/(response|error)$", self.path):
                    runtime._invocation_finished(m[1], m[2], body)
                    self._send(HTTPStatus.ACCEPTED, b'{"status":"OK"}')
                else:
                    self._send(404, json.dumps(error_body("ResourceNotFound", self.path)).encode())

        return Handler

    def _next_invocation(self, request: Any) -> None:
        if not self._init_done.is_set():
            self._init_duration_ms = (time.monotonic() - self._started_at) * 1000
        self._init_done.set()  # asking for work means the init succeeded
        generation = self._generation
        while not self._stopping.is_set() and generation == self._generation:
            try:
                invocation = self._pending.get(timeout=0.1)
            except queue.Empty:
                continue
            if invocation.done.is_set():
                continue
            if generation != self._generation:
                # Asked by a process that was replaced (restart): the work is the new one's.
                self._pending.put(invocation)
                return
            request._send(
                200,
                invocation.payload,
                {
                    "Lambda-Runtime-Aws-Request-Id": invocation.request_id,
                    "Lambda-Runtime-Deadline-Ms": str(int(invocation.deadline * 1000)),
                    "Lambda-Runtime-Invoked-Function-Arn": self.config.arn,
                    "Lambda-Runtime-Trace-Id": self.trace_header(),
                },
            )
            return

    def trace_header(self) -> str:
        """An invocation's X-Ray trace header, as Lambda passes it to the runtime."""
        root = f"1-{int(time.time()):08x}-{uuid.uuid4().hex[:24]}"
        return f"Root={root};Parent={uuid.uuid4().hex[:16]};Sampled={int(self.config.tracing)}"

    def _init_failed(self, body: bytes) -> None:
        try:
            self._init_error = json.loads(body)
        except ValueError:
            self._init_error = error_body("Runtime.InitError", body.decode(errors="replace"))
        self._init_done.set()

    def _invocation_finished(self, request_id: str, kind: str, body: bytes) -> None:
        invocation = self._current
        if invocation is None or invocation.request_id != request_id:
            return
        if kind == "response":
            invocation.finish(result=body)
        else:
            try:
                invocation.finish(error=json.loads(body))
            except ValueError:
                invocation.finish(error=error_body("Runtime.Unknown", body.decode(errors="replace")))

    def _serve_invoke(self, request: Any, name: str, body: bytes) -> None:
        qualifier = (parse_qs(urlsplit(request.path).query).get("Qualifier") or [None])[0]
        if not self.config.answers_to(name, qualifier):
            # Lambda's answer for a function that does not exist: boto3 raises ResourceNotFoundException.
            arn = name if name.startswith("arn:") else self.config.arn_of(name)
            message = {"Type": "User", "message": f"Function not found: {arn}"}
            request._send(
                HTTPStatus.NOT_FOUND,
                json.dumps(message).encode(),
                {"x-amzn-ErrorType": "ResourceNotFoundException"},
            )
            return
        invocation_type = request.headers.get("X-Amz-Invocation-Type", "RequestResponse")
        if invocation_type == "DryRun":
            request._send(HTTPStatus.NO_CONTENT)
            return
        if invocation_type == "Event":
            threading.Thread(target=self.invoke, args=(body,), daemon=True).start()
            request._send(HTTPStatus.ACCEPTED)
            return
        result = self.invoke(body)
        headers = {"X-Amz-Executed-Version": "$LATEST"}
        if result.function_error:
            headers["X-Amz-Function-Error"] = result.function_error
        if request.headers.get("X-Amz-Log-Type") == "Tail":
            headers["X-Amz-Log-Result"] = base64.b64encode(result.log[-LOG_TAIL_BYTES:]).decode()
        request._send(HTTPStatus.OK, result.payload, headers)


def main() -> None:
    """`python -m local_aws.lambda_runtime [PORT]`: serve the function with the current environment."""
    port = int(sys.argv[1]) if len(sys.argv) > 1 else 9000
    function = LocalLambda(FunctionConfig(), port=port, log=sys.stdout.buffer)
    function.start(wait_for_init=False)
    print(
        f"invoke: curl -XPOST {function.endpoint_url}/2015-03-31/functions/function/invocations -d @event.json"
    )
    with contextlib.suppress(KeyboardInterrupt):
        threading.Event().wait()
    function.stop()


if __name__ == "__main__":
    main()
