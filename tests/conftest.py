"""Shared fixtures: an isolated AWS environment, a real trained model, moto streams."""

from __future__ import annotations

import contextlib
import http.client
import importlib
import json
import logging
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import boto3
import pytest
from moto import mock_aws
from moto.server import ThreadedMotoServer

from local_aws.moto_stack import wait_for_http
from scripts.train import TrainedModel, synthetic_trips, train

AWS_VARIABLES = [
    "AWS_ENDPOINT_URL",
    "AWS_ENDPOINT_URL_KINESIS",
    "AWS_ENDPOINT_URL_S3",
    "KINESIS_ENDPOINT_URL",
    "AWS_PROFILE",
    "MLFLOW_TRACKING_URI",
    "MLFLOW_S3_ENDPOINT_URL",
    "MODEL_URI",
    "MODEL_LOCATION",
    "RUN_ID",
    "MODEL_BUCKET",
    "MLFLOW_EXPERIMENT_ID",
    "PREDICTIONS_STREAM_NAME",
    "DEAD_LETTER_STREAM_NAME",
    "MODEL_SHA256",
]


@pytest.fixture(autouse=True)
def isolated_aws_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """No test may reach a real AWS account or inherit the developer's settings."""
    for name in AWS_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("AWS_REGION", "us-east-1")


@pytest.fixture(scope="session")
def trained_model(tmp_path_factory: pytest.TempPathFactory) -> TrainedModel:
    """The project's own training script, on its synthetic data, logged to a sqlite MLflow."""
    import mlflow

    root = tmp_path_factory.mktemp("mlflow")
    trained = train(
        synthetic_rides=5_000,
        tracking_uri=f"sqlite:///{root / 'mlflow.db'}",
        artifact_location=str(root / "artifacts"),
        export_dir=root / "exported-model",
        log=lambda _message: None,
    )
    # train() points MLflow (and MLFLOW_TRACKING_URI) at its store; tests that need the
    # store say so through the environment, as users do.
    mlflow.set_tracking_uri(None)
    return trained


@pytest.fixture(scope="session")
def model_dir(request: pytest.FixtureRequest) -> Path:
    """The trained model's directory. TEST_MODEL_DIR names one trained before by the same script
    (`make mutation` does): each mutant is tested in a new pytest session, and training takes
    about 15 s of each session here."""
    if pretrained := os.environ.get("TEST_MODEL_DIR"):
        return Path(pretrained)
    trained_model: TrainedModel = request.getfixturevalue("trained_model")
    assert trained_model.export_dir is not None
    return trained_model.export_dir


@pytest.fixture(scope="session")
def own_model_dir(trained_model: TrainedModel, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A model of the other common shape, made as docs/model.md's worked example makes it: a
    regressor over [PULocationID, DOLocationID, trip_distance], logged with a signature."""
    import mlflow

    from scripts.own_model_example import train_and_log

    root = tmp_path_factory.mktemp("own-model")
    mlflow.set_tracking_uri(trained_model.tracking_uri)
    try:
        mlflow.set_experiment(
            experiment_id=mlflow.create_experiment("own-model", artifact_location=str(root / "a"))
        )
        train_and_log(synthetic_trips(5_000, month=1, seed=7), export_dir=root / "model")
    finally:
        mlflow.set_tracking_uri(None)
    return root / "model"


@pytest.fixture(scope="session")
def moto_server() -> Iterator[str]:
    """A moto server on a free loopback port, for what must reach AWS over real HTTP (another
    process, pyarrow's own S3 client, CloudFormation); each user makes its own resources."""
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


@pytest.fixture(scope="session")
def boto_session() -> boto3.Session:
    return boto3.Session()


@pytest.fixture
def aws(boto_session: boto3.Session) -> Iterator[None]:
    with mock_aws():
        # moto starts each mock with no default session, and every new session parses
        # botocore's service JSON again (~0.4 s a test); one shared session parses it once.
        boto3.DEFAULT_SESSION = boto_session
        yield


@pytest.fixture
def kinesis(aws: None) -> Any:
    return boto3.client("kinesis", region_name="us-east-1")


def create_stream(client: Any, name: str, shards: int = 1) -> None:
    client.create_stream(StreamName=name, ShardCount=shards)
    client.get_waiter("stream_exists").wait(StreamName=name, WaiterConfig={"Delay": 0.01})


def read_stream(client: Any, name: str) -> list[dict[str, Any]]:
    """Every record on every shard of the stream, decoded from JSON."""
    records = []
    for shard in client.list_shards(StreamName=name)["Shards"]:
        iterator = client.get_shard_iterator(
            StreamName=name, ShardId=shard["ShardId"], ShardIteratorType="TRIM_HORIZON"
        )["ShardIterator"]
        while iterator:
            page = client.get_records(ShardIterator=iterator, Limit=10_000)
            records.extend(json.loads(r["Data"]) for r in page["Records"])
            if not page["Records"]:
                break
            iterator = page.get("NextShardIterator")
    return records


class RecordingLog:
    """Collects what the service logs, with the structured fields it passed."""

    def __init__(self) -> None:
        self.entries: list[tuple[str, str, dict[str, Any]]] = []

    def _add(self, level: str, msg: str, extra: dict[str, Any] | None = None, **_: Any) -> None:
        self.entries.append((level, msg, extra or {}))
        logging.getLogger("tests").log(getattr(logging, level), "%s %s", msg, extra)

    def info(self, msg: str, *args: Any, **kwargs: Any) -> None:
        self._add("INFO", msg, **kwargs)

    def warning(self, msg: str, *args: Any, **kwargs: Any) -> None:
        self._add("WARNING", msg, **kwargs)

    def error(self, msg: str, *args: Any, **kwargs: Any) -> None:
        self._add("ERROR", msg, **kwargs)

    def exception(self, msg: str, *args: Any, **kwargs: Any) -> None:
        self._add("ERROR", msg, **kwargs)

    def find(self, msg: str) -> list[dict[str, Any]]:
        return [extra for _, message, extra in self.entries if message == msg]


@dataclass
class FakeLambdaContext:
    """The attributes of Lambda's context object that the handler's logger reads."""

    function_name: str = "ride-duration-prediction"
    function_version: str = "$LATEST"
    invoked_function_arn: str = "arn:aws:lambda:us-east-1:123456789012:function:ride-duration-prediction"
    memory_limit_in_mb: int = 512
    aws_request_id: str = "00000000-0000-0000-0000-000000000000"
    log_group_name: str = "/aws/lambda/ride-duration-prediction"
    log_stream_name: str = "local"

    def get_remaining_time_in_millis(self) -> int:
        return 60_000


# --- The web service under gunicorn, over real HTTP -------------------------------------------

PROJECT_ROOT = Path(__file__).resolve().parent.parent
# gunicorn's boot is mostly importing scikit-learn: ~8 s on this cold, shared machine.
GUNICORN_START_TIMEOUT_S = 60


@dataclass
class WebServer:
    """A running gunicorn, its address, and its log (attached to any failing test's report)."""

    host: str
    port: int
    log_path: Path

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def call(self, method: str, path: str, body: bytes | None = None) -> tuple[int, Any, str]:
        """Status, the body decoded from JSON (text if it is not JSON), and the content type."""
        connection = http.client.HTTPConnection(self.host, self.port, timeout=10)
        try:
            headers = {"Content-Type": "application/json"} if body is not None else {}
            connection.request(method, path, body=body, headers=headers)
            response = connection.getresponse()
            raw = response.read().decode()
            content_type = response.getheader("Content-Type", "")
        finally:
            connection.close()
        try:
            return response.status, json.loads(raw), content_type
        except ValueError:
            return response.status, raw, content_type

    def post(self, path: str, payload: Any) -> tuple[int, Any, str]:
        return self.call("POST", path, json.dumps(payload).encode())

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


def gunicorn_command(*options: str) -> list[str]:
    """The command `make serve` runs, on a port the OS picks (no race for a 'free' port)."""
    return [
        sys.executable,
        "-m",
        "gunicorn",
        "--bind",
        "127.0.0.1:0",
        "--preload",
        "--no-control-socket",
        "--access-logfile",
        "-",
        *options,
        "web_service:app_from_env()",
    ]


def service_environment(**variables: str) -> dict[str, str]:
    """This process's environment without the developer's AWS and model settings, plus these."""
    env = {name: value for name, value in os.environ.items() if name not in AWS_VARIABLES}
    return {**env, **variables}


class GunicornProcess:
    """gunicorn started in its own process group, so that stopping it stops its workers too."""

    def __init__(self, env: dict[str, str], log_path: Path, workers: int = 1) -> None:
        self.log_path = log_path
        with log_path.open("wb") as log:
            self.process = subprocess.Popen(
                gunicorn_command("--workers", str(workers)),
                cwd=PROJECT_ROOT,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.server: WebServer | None = None

    def wait_until_healthy(self) -> WebServer:
        """The port from gunicorn's log, then /health until it answers (never a fixed sleep)."""
        deadline = time.monotonic() + GUNICORN_START_TIMEOUT_S
        try:
            while self.server is None:
                if self.process.poll() is not None:
                    raise RuntimeError(f"gunicorn exited with {self.process.returncode}")
                if found := re.search(r"Listening at: http://([\d.]+):(\d+)", self.log_path.read_text()):
                    self.server = WebServer(found[1], int(found[2]), self.log_path)
                elif time.monotonic() > deadline:
                    raise TimeoutError(f"gunicorn not listening after {GUNICORN_START_TIMEOUT_S} s")
                else:
                    time.sleep(0.05)
            wait_for_http(f"{self.server.url}/health", deadline - time.monotonic(), self.process)
        except (RuntimeError, TimeoutError) as error:
            raise RuntimeError(f"{error}:\n{self.log_path.read_text()}") from None
        return self.server

    def stop(self) -> None:
        # The whole group at once: a graceful shutdown costs ~2 s and there is no state to save.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(timeout=10)


@pytest.fixture(scope="session")
def web_server_process(
    model_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[GunicornProcess]:
    """One gunicorn for the session, serving the trained model, configured as the function is."""
    root = tmp_path_factory.mktemp("web")
    env = service_environment(MODEL_URI=str(model_dir), MODEL_CACHE_DIR=str(root / "cache"))
    process = GunicornProcess(env, root / "gunicorn.log")
    yield process
    process.stop()


@pytest.fixture(scope="session", autouse=True)
def start_web_server_early(request: pytest.FixtureRequest) -> None:
    """When some selected test needs the server, start it before the first test: it then boots
    on the other core while the suite runs, instead of holding up the first test that needs it."""
    if any("web_server" in getattr(item, "fixturenames", ()) for item in request.session.items):
        request.getfixturevalue("web_server_process")


@pytest.fixture(scope="session")
def web_server(web_server_process: GunicornProcess) -> WebServer:
    return web_server_process.wait_until_healthy()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    """A failing test that used the server shows the server's log."""
    outcome = yield
    report = outcome.get_result()
    server = getattr(item, "funcargs", {}).get("web_server")
    if report.failed and isinstance(server, WebServer):
        report.sections.append(("gunicorn log", server.log()[-10_000:]))


@pytest.fixture
def import_function(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[Callable[..., ModuleType]]:
    """Import lambda_function afresh, as a new container's init would, with these variables."""

    def do_import(**env: str) -> ModuleType:
        monkeypatch.setenv("MODEL_CACHE_DIR", str(tmp_path / "cache"))
        for name, value in env.items():
            monkeypatch.setenv(name, value)
        sys.modules.pop("lambda_function", None)
        # A new container has no logger yet. Powertools keeps one per service name, writing to
        # the stdout of when it was made: an earlier test's captured output, in any order.
        logging.Logger.manager.loggerDict.pop("ride-duration-prediction", None)
        return importlib.import_module("lambda_function")

    yield do_import
    sys.modules.pop("lambda_function", None)
