"""The local Lambda endpoint, with the real runtime client (awslambdaric) running real handlers."""

from __future__ import annotations

import base64
import json
import os
import select
import threading
import time
import types
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest

from local_aws.lambda_runtime import FunctionConfig, LocalLambda
from local_aws.moto_stack import free_port
from scripts.stack import load_template

FIXTURES = Path(__file__).parent / "lambda_fixtures"


@pytest.fixture
def start_function(tmp_path: Path) -> Iterator[Any]:
    started: list[LocalLambda] = []

    def start(handler: str, timeout_s: float = 30, **environment: str) -> LocalLambda:
        log = (tmp_path / "function.log").open("ab")
        config = FunctionConfig(
            handler=f"handlers.{handler}", timeout_s=timeout_s, environment=environment, code_dir=FIXTURES
        )
        function = LocalLambda(config, port=free_port(), log=log)
        started.append(function)
        function.start()
        return function

    yield start
    for function in started:
        process = function._process
        function.stop()
        assert process is None or process.poll() is not None, "function process left running"


def lambda_client(function: LocalLambda) -> Any:
    return boto3.client("lambda", endpoint_url=function.endpoint_url, region_name="us-east-1")


def invoke(function: LocalLambda, payload: Any) -> tuple[dict[str, Any], Any]:
    response = lambda_client(function).invoke(FunctionName="function", Payload=json.dumps(payload).encode())
    return response, json.loads(response["Payload"].read())


def test_invoke_runs_the_handler_with_a_real_context(start_function: Any) -> None:
    function = start_function("echo", MODEL_URI="s3://models/m")
    response, body = invoke(function, {"Records": []})
    assert response["StatusCode"] == 200
    assert "FunctionError" not in response
    assert body["event"] == {"Records": []}
    assert body["function_name"] == "ride-duration-prediction"
    assert 0 < body["remaining_ms"] <= 30_000
    assert body["model_uri"] == "s3://models/m"  # configuration through the environment, as in AWS
    _, again = invoke(function, {})
    assert again["pid"] == body["pid"]  # warm: the same execution environment
    assert again["request_id"] != body["request_id"]


def test_handler_errors_come_back_in_lambdas_error_shape(start_function: Any) -> None:
    function = start_function("fail")
    response, body = invoke(function, {"x": 1})
    assert response["FunctionError"] == "Unhandled"
    assert body["errorType"] == "ValueError"
    assert body["errorMessage"] == "bad event: {'x': 1}"
    request = urllib.request.Request(
        f"{function.endpoint_url}/2015-03-31/functions/function/invocations", data=b"{}", method="POST"
    )
    with urllib.request.urlopen(request) as raw:  # what curl sees
        assert raw.status == 200
        assert raw.headers["X-Amz-Function-Error"] == "Unhandled"
        assert json.loads(raw.read())["errorType"] == "ValueError"


def test_an_init_failure_is_the_invoke_error_and_init_is_retried(start_function: Any) -> None:
    function = start_function("echo", FAIL_INIT="model missing")
    response, body = invoke(function, {})
    assert response["FunctionError"] == "Unhandled"
    assert body["errorType"] == "RuntimeError"
    assert "init failed on purpose (model missing)" in body["errorMessage"]
    invoke(function, {})
    assert function.cold_starts == 3  # Lambda tries a fresh init on each invoke after a failed one


def test_a_timed_out_invocation_is_reported_and_the_environment_replaced(start_function: Any) -> None:
    function = start_function("slow", timeout_s=1)
    response, body = invoke(function, {"seconds": 5})
    assert response["FunctionError"] == "Unhandled"
    assert body == {
        "errorMessage": "Task timed out after 1.00 seconds",
        "errorType": "Sandbox.Timedout",
        "stackTrace": [],
    }
    _, ok = invoke(function, {"seconds": 0})
    assert ok["slept"] == 0
    assert function.cold_starts == 2


def test_a_crashing_function_is_reported_and_restarted(start_function: Any) -> None:
    function = start_function("crash")
    response, body = invoke(function, {})
    assert response["FunctionError"] == "Unhandled"
    assert body["errorType"] == "Runtime.ExitError"


@pytest.mark.parametrize(("invocation_type", "status"), [("DryRun", 204), ("Event", 202)])
def test_invocation_types(start_function: Any, invocation_type: str, status: int) -> None:
    function = start_function("echo")
    response = lambda_client(function).invoke(
        FunctionName="function", InvocationType=invocation_type, Payload=b"{}"
    )
    assert response["StatusCode"] == status


@pytest.mark.parametrize(
    ("name", "qualifier"),
    [
        ("ride-duration-prediction", None),
        ("function", None),  # what the image's emulator answers to
        ("arn:aws:lambda:us-east-1:123456789012:function:ride-duration-prediction", None),
        ("ride-duration-prediction", "$LATEST"),
        ("ride-duration-prediction:$LATEST", None),
    ],
)
def test_the_function_answers_to_its_name_arn_and_latest(
    start_function: Any, name: str, qualifier: str | None
) -> None:
    function = start_function("echo")
    response = lambda_client(function).invoke(
        FunctionName=name, Payload=b"{}", **({"Qualifier": qualifier} if qualifier else {})
    )
    assert response["StatusCode"] == 200


@pytest.mark.parametrize(
    ("name", "qualifier"), [("no-such-function", None), ("ride-duration-prediction", "7")]
)
def test_an_unknown_function_gets_lambdas_resource_not_found(
    start_function: Any, name: str, qualifier: str | None
) -> None:
    function = start_function("echo")
    client = lambda_client(function)
    with pytest.raises(
        client.exceptions.ResourceNotFoundException, match="Function not found: arn:aws:lambda:"
    ):
        client.invoke(FunctionName=name, Payload=b"{}", **({"Qualifier": qualifier} if qualifier else {}))
    request = urllib.request.Request(
        f"{function.endpoint_url}/2015-03-31/functions/{name}/invocations", data=b"{}", method="POST"
    )
    if qualifier is None:
        with pytest.raises(urllib.error.HTTPError) as raised:
            urllib.request.urlopen(request)
        assert raised.value.code == 404


def tail_of(response: dict[str, Any]) -> str:
    return base64.b64decode(response["LogResult"]).decode()


def test_log_type_tail_returns_the_invocations_log_with_lambdas_report(start_function: Any) -> None:
    function = start_function("chatty")
    response = lambda_client(function).invoke(FunctionName="function", Payload=b"{}", LogType="Tail")
    log = tail_of(response)
    lines = log.splitlines()
    assert lines[0].startswith("START RequestId: ")
    invocation_id = lines[0].split()[2]
    assert f"request {invocation_id} begins" in lines
    assert "the last line" in lines
    assert lines[-2] == f"END RequestId: {invocation_id}"
    assert lines[-1].startswith(f"REPORT RequestId: {invocation_id}\tDuration: ")
    memory = load_template()["Parameters"]["MemorySize"]["Default"]
    assert f"Memory Size: {memory} MB" in lines[-1]
    assert "Init Duration: " in lines[-1]  # the first invocation after a cold start
    again = tail_of(lambda_client(function).invoke(FunctionName="function", Payload=b"{}", LogType="Tail"))
    assert "Init Duration" not in again
    assert f"request {invocation_id} begins" not in again  # each invocation's own log
    without = lambda_client(function).invoke(FunctionName="function", Payload=b"{}")
    assert "LogResult" not in without


def test_log_result_is_the_last_4_kb(start_function: Any) -> None:
    function = start_function("chatty")
    response = lambda_client(function).invoke(
        FunctionName="function", Payload=json.dumps({"lines": 200}).encode(), LogType="Tail"
    )
    log = base64.b64decode(response["LogResult"])
    assert len(log) == 4096
    assert b"the last line\nEND RequestId: " in log
    assert b"begins" not in log  # the start of a 20 KB log is cut


def test_the_function_gets_the_templates_memory_size(start_function: Any) -> None:
    _, body = invoke(start_function("echo"), {})
    assert int(body["memory_mb"]) == int(load_template()["Parameters"]["MemorySize"]["Default"])


def test_restart_starts_a_fresh_environment_and_keeps_its_init_log(start_function: Any) -> None:
    function = start_function("echo", timeout_s=5)
    _, before = invoke(function, {})
    assert f"handlers initialised in process {before['pid']}".encode() in function.init_log()
    time.sleep(0.5)  # idle: its runtime client is waiting for work in /next, as after a while in `make up`
    assert function.restart() is None
    for _ in range(3):  # the stopped process's pending /next must not take the work
        response, after = invoke(function, {})
        assert "FunctionError" not in response, after
    assert after["pid"] != before["pid"]
    assert function.cold_starts == 2
    assert f"handlers initialised in process {after['pid']}".encode() in function.init_log()


def test_the_output_pump_never_waits_for_the_function_while_holding_the_output_lock(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The race that hung the demo with ParallelizationFactor 4: the pump sees output ready, an
    invocation's capture takes it first, and a read by the pump would then wait for the
    function's next output with the lock held, so no invocation could finish its log."""
    function = LocalLambda(FunctionConfig(code_dir=FIXTURES), port=free_port())
    read_end, write_end = os.pipe()
    process = types.SimpleNamespace(stdout=os.fdopen(read_end, "rb", buffering=0))
    function._process = process  # type: ignore[assignment]
    real_select = select.select
    pump = threading.Thread(target=function._pump_output, args=(process,), daemon=True)

    def select_losing_the_race(*args: Any) -> Any:
        ready = real_select(*args)
        if ready[0] and args[3] != 0 and threading.current_thread() is pump:
            function._sync_output()  # the capture takes the data between the pump's look and read
        return ready

    monkeypatch.setattr(select, "select", select_losing_the_race)
    try:
        pump.start()
        os.write(write_end, b"the function's last line\n")  # and then it waits for work
        time.sleep(0.2)
        assert function._output_lock.acquire(timeout=2), "the pump holds the lock in a blocked read"
        function._output_lock.release()
    finally:
        os.close(write_end)  # the pump sees the end and stops
        pump.join(5)
        function.server.server_close()
