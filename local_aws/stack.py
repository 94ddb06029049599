"""The whole pipeline on one machine: moto (Kinesis, S3, SQS), the function under the real
runtime client, and the event source mapping between them. No AWS account, no Docker.

With `aws_endpoint` set, an AWS-compatible endpoint that is already running (LocalStack) is
used instead of starting moto; with `function_endpoint` set, a function that is already served
(the Lambda image's emulator) is invoked instead of starting one here.

The model is `model_uri` (local_aws.model_source), else `./model`, trained if missing; with
`watch_model`, a local model directory that changes is uploaded again and the function restarted.
"""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

import boto3
from botocore.config import Config

from local_aws.event_source_mapping import EventSourceMapping, MappingConfig, lambda_invoker
from local_aws.lambda_runtime import PROJECT_ROOT, FunctionConfig, LocalLambda
from local_aws.model_source import (
    ModelWatcher,
    describe_loaded,
    fetch_remote_model,
    loaded_model,
    local_model_dir,
)
from local_aws.moto_stack import (
    DEFAULT_PORT,
    MotoServer,
    StreamSpec,
    create_streams,
    upload_model,
    wait_for_http,
)

REGION = "us-east-1"
# moto and LocalStack accept any credentials; fixed ones make sure a real account is never used.
LOCAL_CREDENTIALS = {
    "AWS_ACCESS_KEY_ID": "test",
    "AWS_SECRET_ACCESS_KEY": "test",
    "AWS_SESSION_TOKEN": "test",
}
DEFAULT_MAPPING = PROJECT_ROOT / "integration-test" / "event-source-mapping.json"


@dataclass
class StackConfig:
    port: int = DEFAULT_PORT
    lambda_port: int = 9000
    function_name: str = "ride-duration-prediction"
    input_stream: str = "ride_events"
    input_shards: int = 2
    predictions_stream: str = "ride_predictions"
    dead_letter_stream: str = "ride_dead_letters"
    failure_queue: str = "ride_mapping_failures"
    bucket: str = "ride-models"
    model_prefix: str = "ride-duration/model"
    model_dir: Path = PROJECT_ROOT / "model"
    mapping_file: Path = DEFAULT_MAPPING
    log_dir: Path = PROJECT_ROOT / ".local-aws"
    aws_endpoint: str | None = None
    function_endpoint: str | None = None
    function_environment: dict[str, str] = field(default_factory=dict)
    model_uri: str | None = None  # MODEL_URI in any form the function accepts; None: model_dir
    watch_model: bool = False  # restart the function when a local model directory changes
    function_timeout_s: float | None = None  # None: the template's Timeout, as deployed


class StackError(RuntimeError):
    """The stack cannot start; the message says why (one line)."""


class LocalStack:
    """Start with `start()` (or `with`), stop with `stop()`; nothing is left running after."""

    def __init__(self, config: StackConfig, say: Callable[[str], None] = print) -> None:
        self.config = config
        self.say = say
        self.moto: MotoServer | None = None
        self.function: LocalLambda | None = None
        self.mapping: EventSourceMapping | None = None
        self.model_uri = ""  # what the function gets as MODEL_URI
        self.model_dir: Path | None = None  # the local directory served, if the model is local
        self.watcher: ModelWatcher | None = None
        self._logs: list[BinaryIO] = []

    # -- endpoints and clients ----------------------------------------------------------------

    @property
    def aws_endpoint(self) -> str:
        return self.config.aws_endpoint or f"http://127.0.0.1:{self.config.port}"

    @property
    def lambda_endpoint(self) -> str:
        return self.config.function_endpoint or f"http://127.0.0.1:{self.config.lambda_port}"

    def client(self, service: str) -> Any:
        endpoint = self.lambda_endpoint if service == "lambda" else self.aws_endpoint
        return boto3.client(  # type: ignore[call-overload]  # the stubs type only literal service names
            service,
            endpoint_url=endpoint,
            region_name=REGION,
            aws_access_key_id=LOCAL_CREDENTIALS["AWS_ACCESS_KEY_ID"],
            aws_secret_access_key=LOCAL_CREDENTIALS["AWS_SECRET_ACCESS_KEY"],
            aws_session_token=LOCAL_CREDENTIALS["AWS_SESSION_TOKEN"],
            config=Config(retries={"mode": "standard"}, read_timeout=120),
        )

    def user_environment(self) -> dict[str, str]:
        """What a shell needs for `aws`, boto3 and the tests to reach this stack."""
        return {
            "AWS_ENDPOINT_URL": self.aws_endpoint,
            "AWS_ENDPOINT_URL_LAMBDA": self.lambda_endpoint,
            "AWS_DEFAULT_REGION": REGION,
            **LOCAL_CREDENTIALS,
        }

    def function_environment(self) -> dict[str, str]:
        """The function's configuration: the same variables as in AWS, pointed at this stack."""
        return {
            **LOCAL_CREDENTIALS,
            "AWS_ENDPOINT_URL": self.aws_endpoint,
            "MODEL_URI": self.model_uri,
            "PREDICTIONS_STREAM_NAME": self.config.predictions_stream,
            "DEAD_LETTER_STREAM_NAME": self.config.dead_letter_stream,
            "MODEL_CACHE_DIR": str(self.config.log_dir / "model-cache"),
            "LOG_LEVEL": "INFO",
            **self.config.function_environment,
        }

    def describe(self) -> dict[str, Any]:
        return {
            **self.user_environment(),
            "function_name": self.config.function_name,
            "input_stream": self.config.input_stream,
            "predictions_stream": self.config.predictions_stream,
            "dead_letter_stream": self.config.dead_letter_stream,
            "failure_queue": self.config.failure_queue,
            "model_uri": self.model_uri,
            "log_dir": str(self.config.log_dir),
        }

    # -- lifecycle ----------------------------------------------------------------------------

    def __enter__(self) -> LocalStack:
        self.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.stop()

    def start(self) -> None:
        try:
            self._start()
        except BaseException:
            self.stop()
            raise

    def _start(self) -> None:
        self.config.log_dir.mkdir(parents=True, exist_ok=True)
        self._ensure_model()
        self._start_aws()
        self._create_resources()
        self._start_function()
        self._start_mapping()
        self._watch_model()

    def stop(self) -> None:
        if self.watcher is not None:
            self.watcher.stop()
            self.watcher = None
        for part in (self.mapping, self.function, self.moto):
            if part is not None:
                part.stop()
        self.mapping = self.function = self.moto = None
        for handle in self._logs:
            handle.close()
        self._logs.clear()

    def _log(self, name: str) -> BinaryIO:
        handle = (self.config.log_dir / name).open("ab")
        self._logs.append(handle)
        return handle

    def _ensure_model(self) -> None:
        uri = self.config.model_uri
        if uri is None:
            self._ensure_default_model()
            self.model_dir = self.config.model_dir
            return
        self.model_dir = local_model_dir(uri)
        if self.model_dir is not None:
            if not (self.model_dir / "MLmodel").is_file():
                raise StackError(f"MODEL_URI={uri}: no MLflow model in {self.model_dir} (no MLmodel file)")
            self.say(f"  model      MODEL_URI={uri}")
            return
        started = time.monotonic()
        try:
            fetched = fetch_remote_model(uri, self.config.log_dir / "fetched-models")
        except Exception as error:  # whatever stops the fetch (credentials, tracking server) ends the start
            raise StackError(f"MODEL_URI={uri}: {error}") from error
        self.model_uri = str(fetched)
        self.say(
            f"  model      MODEL_URI={uri}: fetched with this shell's credentials to "
            f"{self.relative(fetched)} ({time.monotonic() - started:.1f} s)"
        )

    def _ensure_default_model(self) -> None:
        if (self.config.model_dir / "MLmodel").is_file():
            self.say(f"  model      {self.relative(self.config.model_dir)} (trained earlier)")
            return
        started = time.monotonic()
        self.say(
            f"  model      none in {self.relative(self.config.model_dir)}: training one (synthetic data) ..."
        )
        subprocess.run(  # noqa: S603 - our own training script
            [sys.executable, "-m", "scripts.train", "--export-dir", str(self.config.model_dir)],
            cwd=PROJECT_ROOT,
            check=True,
            stdout=self._log("train.log"),
            stderr=subprocess.STDOUT,
        )
        self.say(
            f"  model      trained in {time.monotonic() - started:.1f} s -> {self.relative(self.config.model_dir)}"
        )

    def _start_aws(self) -> None:
        started = time.monotonic()
        if self.config.aws_endpoint:
            wait_for_http(self.config.aws_endpoint, timeout=60)
            self.say(f"  AWS        {self.aws_endpoint} (already running)")
            return
        self.moto = MotoServer(self.config.port, log=self._log("moto.log"))
        self.moto.start()
        self.say(
            f"  AWS        moto server at {self.aws_endpoint} (up in {time.monotonic() - started:.1f} s)"
        )

    def _create_resources(self) -> None:
        c = self.config
        create_streams(
            self.client("kinesis"),
            [
                StreamSpec(c.input_stream, c.input_shards),
                StreamSpec(c.predictions_stream),
                StreamSpec(c.dead_letter_stream),
            ],
        )
        self.client("sqs").create_queue(QueueName=c.failure_queue)
        self.say(
            f"  streams    {c.input_stream} ({c.input_shards} shards) -> {c.predictions_stream}, "
            f"dead letters -> {c.dead_letter_stream}"
        )
        if self.model_dir is not None:  # served from the local S3, as the function reads it in AWS
            self.model_uri = upload_model(self.client("s3"), self.model_dir, c.bucket, c.model_prefix)
            self.say(f"  model URI  {self.model_uri} (uploaded from {self.relative(self.model_dir)})")
        else:
            self.say(f"  model URI  {self.model_uri}")

    def _start_function(self) -> None:
        if self.config.function_endpoint:
            self.say(f"  function   {self.lambda_endpoint} (already running)")
            return
        started = time.monotonic()
        environment = self.function_environment()
        function = FunctionConfig(
            function_name=self.config.function_name,
            environment=environment,
            tracing=environment.get("TRACING_ENABLED") == "true",  # as the stack's Tracing=Active
        )
        if self.config.function_timeout_s is not None:
            function = dataclasses.replace(function, timeout_s=self.config.function_timeout_s)
        self.function = LocalLambda(
            function,
            port=self.config.lambda_port,
            log=self._log("function.log"),
        )
        self.function.start(wait_for_init=False)
        init_error = self.function.wait_until_initialised(timeout=120)
        if init_error:
            raise StackError(self._init_failure(init_error))
        self.say(
            f"  function   lambda_function.lambda_handler under awslambdaric at {self.lambda_endpoint} "
            f"(init {time.monotonic() - started:.1f} s)"
        )
        self.say(f"  model      {describe_loaded(loaded_model(self.function.init_log()), self.model_uri)}")

    def _init_failure(self, init_error: dict[str, Any]) -> str:
        return (
            f"the function's init failed: {init_error.get('errorType')}: {init_error.get('errorMessage')} "
            f"(log: {self.relative(self.config.log_dir / 'function.log')})"
        )

    def _watch_model(self) -> None:
        if not self.config.watch_model or self.model_dir is None or self.function is None:
            return
        self.watcher = ModelWatcher(self.model_dir, self.reload_model)
        self.watcher.start()

    def reload_model(self) -> None:
        """The model directory changed: upload it again and start a fresh function (a cold start)."""
        if self.model_dir is None or self.function is None:
            return
        started = time.monotonic()
        self.say(
            f"  model      {self.relative(self.model_dir)} changed: uploading it and restarting the function"
        )
        c = self.config
        upload_model(self.client("s3"), self.model_dir, c.bucket, c.model_prefix)
        init_error = self.function.restart()
        if init_error:
            self.say(f"  function   {self._init_failure(init_error)}; fix the model, it is watched")
            return
        loaded = describe_loaded(loaded_model(self.function.init_log()), self.model_uri)
        self.say(f"  model      {loaded} (restarted in {time.monotonic() - started:.1f} s)")

    def mapping_config(self) -> MappingConfig:
        settings = json.loads(self.config.mapping_file.read_text())
        destination = f"arn:aws:sqs:{REGION}:123456789012:{self.config.failure_queue}"
        settings.setdefault("DestinationConfig", {"OnFailure": {"Destination": destination}})
        return MappingConfig.from_dict(settings)

    def _start_mapping(self) -> None:
        config = self.mapping_config()
        invoke = lambda_invoker(self.client("lambda"), self.config.function_name)
        self.mapping = EventSourceMapping(
            self.client("kinesis"), self.config.input_stream, invoke, config, clients=self.client
        )
        self.mapping.start()
        settings = ", ".join(
            f"{k} {v}" for k, v in self.mapping.describe().items() if k != "DestinationConfig"
        )
        self.say(f"  mapping    {self.config.input_stream} -> function: {settings}")

    def function_log(self) -> Path | None:
        """The function's log (its stdout: JSON logs and metrics), if this stack runs the function."""
        path = self.config.log_dir / "function.log"
        return path if self.function is not None and path.is_file() else None

    def watched_model(self) -> str | None:
        """The model directory whose changes restart the function, if one is watched."""
        return self.relative(self.model_dir) if self.watcher is not None and self.model_dir else None

    @staticmethod
    def relative(path: Path) -> str:
        try:
            return f"./{path.resolve().relative_to(Path.cwd())}"
        except ValueError:
            return str(path)
