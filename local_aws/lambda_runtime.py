"""A local Lambda: the real handler under the real runtime client (`awslambdaric`), behind one
loopback port that serves both sides of Lambda's HTTP contract.

- the Runtime API the runtime client polls (`/2018-06-01/runtime/...`), and
- the invoke API (`POST /2015-03-31/functions/<name>/invocations`), what the Runtime Interface
  Emulator in the Lambda base image serves on port 8080, so `curl`, `aws lambda invoke
  --endpoint-url` and boto3's Lambda client all work against it.

One function process handles one invocation at a time, as one Lambda execution environment
does. The function is initialised when the endpoint starts; if its init fails, or it times out
or crashes, the next invocation starts a fresh process (a new cold start), as Lambda does.
Errors come back in Lambda's shape: HTTP 200, `X-Amz-Function-Error: Unhandled`, and a JSON
body with `errorMessage` and `errorType`.
"""

from __future__ import annotations

import contextlib
import json
import os
import queue
import re
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

from local_aws.processes import Spawner, stop_process

RUNTIME_PREFIX = "/2018-06-01/runtime"
INVOKE_PATH = re.compile(r"^/2015-03-31/functions/(?P<name>[^/]+)/invocations$")
PROJECT_ROOT = Path(__file__).resolve().parent.parent


@dataclass
class Invocation:
    payload: bytes
    deadline: float
    request_id: str = field(default_factory=lambda: str(uuid.uuid4()))
    done: threading.Event = field(default_factory=threading.Event)
    result: bytes | None = None
    error: dict[str, Any] | None = None

    def finish(self, result: bytes | None = None, error: dict[str, Any] | None = None) -> None:
        if not self.done.is_set():
            self.result, self.error = result, error
            self.done.set()


@dataclass(frozen=True)
class InvokeResult:
    payload: bytes
    function_error: str | None = None


@dataclass(frozen=True)
class FunctionConfig:
    handler: str = "lambda_function.lambda_handler"
    function_name: str = "ride-duration-prediction"
    timeout_s: float = 60.0
    memory_mb: int = 512
    region: str = "us-east-1"
    environment: dict[str, str] = field(default_factory=dict)
    code_dir: Path = PROJECT_ROOT

    @property
    def arn(self) -> str:
        return f"arn:aws:lambda:{self.region}:123456789012:function:{self.function_name}"


class QuietHTTPServer(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A function process that is stopped drops its connection: not worth a traceback."""
        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)


def error_body(error_type: str, message: str) -> dict[str, Any]:
    return {"errorMessage": message, "errorType": error_type, "stackTrace": []}


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
        self.cold_starts = 0
        self.server = QuietHTTPServer(("127.0.0.1", port), self._handler_class())
        self._thread = threading.Thread(target=self.server.serve_forever, name="local-lambda", daemon=True)

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
        self.server.shutdown()
        self.server.server_close()

    # -- the function process -------------------------------------------------------------

    def _start_function(self) -> None:
        self._init_error = None
        self._init_done.clear()
        self.cold_starts += 1
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
        self._process = self._spawner.popen(
            [sys.executable, "-m", "awslambdaric", self.config.handler],
            cwd=self.config.code_dir,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=self._log or subprocess.DEVNULL,
            stderr=subprocess.STDOUT,
        )
        threading.Thread(target=self._watch_function, args=(self._process,), daemon=True).start()

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
            self._pending.put(invocation)
            if not invocation.done.wait(self.config.timeout_s):
                self._stop_function()  # a timed-out environment is not reused
                message = f"Task timed out after {self.config.timeout_s:.2f} seconds"
                invocation.finish(error=error_body("Sandbox.Timedout", message))
            self._current = None
        if invocation.error is not None:
            return InvokeResult(json.dumps(invocation.error).encode(), "Unhandled")
        return InvokeResult(invocation.result or b"null")

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
                if match := INVOKE_PATH.match(self.path.split("?")[0]):
                    runtime._serve_invoke(self, match["name"], body)
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
        self._init_done.set()  # asking for work means the init succeeded
        while not self._stopping.is_set():
            try:
                invocation = self._pending.get(timeout=0.5)
            except queue.Empty:
                continue
            if invocation.done.is_set():
                continue
            request._send(
                200,
                invocation.payload,
                {
                    "Lambda-Runtime-Aws-Request-Id": invocation.request_id,
                    "Lambda-Runtime-Deadline-Ms": str(int(invocation.deadline * 1000)),
                    "Lambda-Runtime-Invoked-Function-Arn": self.config.arn,
                    "Lambda-Runtime-Trace-Id": f"Root=1-{int(time.time()):08x}-{uuid.uuid4().hex[:24]}",
                },
            )
            return

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

    def _serve_invoke(self, request: Any, _name: str, body: bytes) -> None:
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
