"""The whole pipeline on one machine: moto (Kinesis, S3, SQS), the function under the real
runtime client, and the event source mapping between them. No AWS account, no Docker.

With `aws_endpoint` set, an AWS-compatible endpoint that is already running (LocalStack) is
used instead of starting moto; with `function_endpoint` set, a function that is already served
(the Lambda image's emulator) is invoked instead of starting one here.
"""

from __future__ import annotations

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
    function_timeout_s: float = 60.0


class LocalStack:
    """Start with `start()` (or `with`), stop with `stop()`; nothing is left running after."""

    def __init__(self, config: StackConfig, say: Callable[[str], None] = print) -> None:
        self.config = config
        self.say = say
        self.moto: MotoServer | None = None
        self.function: LocalLambda | None = None
        self.mapping: EventSourceMapping | None = None
        self.model_uri = ""
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
        return boto3.client(
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

    def stop(self) -> None:
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
        if (self.config.model_dir / "MLmodel").is_file():
            self.say(f"  model      {self._relative(self.config.model_dir)} (trained earlier)")
            return
        started = time.monotonic()
        self.say(
            f"  model      none in {self._relative(self.config.model_dir)}: training one (synthetic data) ..."
        )
        subprocess.run(  # noqa: S603 - our own training script
            [sys.executable, "-m", "scripts.train", "--export-dir", str(self.config.model_dir)],
            cwd=PROJECT_ROOT,
            check=True,
            stdout=self._log("train.log"),
            stderr=subprocess.STDOUT,
        )
        self.say(
            f"  model      trained in {time.monotonic() - started:.1f} s -> {self._relative(self.config.model_dir)}"
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
        self.model_uri = upload_model(self.client("s3"), c.model_dir, c.bucket, c.model_prefix)
        self.say(
            f"  streams    {c.input_stream} ({c.input_shards} shards) -> {c.predictions_stream}, "
            f"dead letters -> {c.dead_letter_stream}"
        )
        self.say(f"  model URI  {self.model_uri}")

    def _start_function(self) -> None:
        if self.config.function_endpoint:
            self.say(f"  function   {self.lambda_endpoint} (already running)")
            return
        started = time.monotonic()
        self.function = LocalLambda(
            FunctionConfig(
                function_name=self.config.function_name,
                environment=self.function_environment(),
                timeout_s=self.config.function_timeout_s,
            ),
            port=self.config.lambda_port,
            log=self._log("function.log"),
        )
        self.function.start(wait_for_init=False)
        init_error = self.function.wait_until_initialised(timeout=120)
        if init_error:
            raise RuntimeError(
                f"the function's init failed: {init_error.get('errorType')}: {init_error.get('errorMessage')} "
                f"(log: {self._relative(self.config.log_dir / 'function.log')})"
            )
        self.say(
            f"  function   lambda_function.lambda_handler under awslambdaric at {self.lambda_endpoint} "
            f"(init {time.monotonic() - started:.1f} s)"
        )

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

    @staticmethod
    def _relative(path: Path) -> str:
        try:
            return f"./{path.resolve().relative_to(Path.cwd())}"
        except ValueError:
            return str(path)
