"""`python -m local_aws demo | up | tail | metrics`: the pipeline on this machine, no AWS account,
no Docker."""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any

import boto3
from botocore.config import Config
from botocore.exceptions import (
    ClientError,
    EndpointConnectionError,
    NoCredentialsError,
    NoRegionError,
    ReadTimeoutError,
)

from local_aws.demo import StreamReader, run_demo
from local_aws.metrics import read_log, table
from local_aws.model_source import configured_model_uri
from local_aws.moto_stack import DEFAULT_PORT, PortInUseError
from local_aws.stack import DEFAULT_MAPPING, LOCAL_CREDENTIALS, REGION, LocalStack, StackConfig, StackError
from local_aws.terminal import own_interrupts
from stream.settings import ConfigurationError

# `--kpl` without a number: rides per aggregated record. A KPL producer packs what it buffered
# for up to 100 ms (its RecordMaxBufferedTime default): at the demo's 250 rides/s, about 25.
KPL_RIDES_PER_RECORD = 25
EXAMPLE_RIDE = '{"ride": {"PULocationID": 130, "DOLocationID": 205, "trip_distance": 3.66}, "ride_id": 256}'


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be 1 or more, got {value}")
    return value


def stop_on_sigterm() -> None:
    """Turn SIGTERM into KeyboardInterrupt so `finally` blocks tear the stack down."""
    signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))


def stack_config(args: argparse.Namespace, watch_model: bool = False) -> StackConfig:
    return StackConfig(
        port=args.port,
        lambda_port=args.lambda_port,
        mapping_file=args.mapping,
        aws_endpoint=args.aws_endpoint,
        function_endpoint=args.function_endpoint,
        function_name=args.function_name,
        model_uri=args.model_uri or configured_model_uri(os.environ),
        watch_model=watch_model,
        **({"log_dir": args.log_dir} if args.log_dir else {}),
    )


def command_demo(args: argparse.Namespace) -> int:
    started = time.monotonic()
    print("Local pipeline (no AWS account, no Docker):")
    with LocalStack(stack_config(args)) as stack:
        ok = run_demo(
            stack, args.rides, bad_ratio=args.bad_ratio, rate=args.rate, timeout=args.timeout, kpl=args.kpl
        )
        log = stack.relative(stack.config.log_dir / "function.log")
        print(
            f"\nLogs: {stack.config.log_dir}/ (function.log: the function's JSON logs and metrics; "
            f"python -m local_aws metrics {log}: the metrics as a table)"
        )
    print(f"Stopped moto, the function and the mapping. Total {time.monotonic() - started:.1f} s.")
    return 0 if ok else 1


def command_up(args: argparse.Namespace) -> int:
    """Runs until Ctrl-C (or SIGTERM), which is how it is meant to end: exit 0, no traceback."""
    with own_interrupts():
        try:
            serve(args)
        except KeyboardInterrupt:
            print("\nStopped moto, the function and the mapping.", flush=True)
    return 0


def serve(args: argparse.Namespace) -> None:
    print("Local pipeline (no AWS account, no Docker):")
    with LocalStack(stack_config(args, watch_model=True)) as stack:
        env = stack.user_environment()
        exports = " ".join(f"{k}={v}" for k, v in env.items())
        c = stack.config
        watched = stack.watched_model()
        watching = (
            f"\nThe function restarts when {watched} changes (make train, or copy a model there)."
            if watched
            else ""
        )
        out = stack.relative(c.log_dir / "out.json")
        print(f"""
Up. In another shell:
  export {exports}
  # put a ride (awscli v1 sends --data as raw text; v2 needs --cli-binary-format raw-in-base64-out)
  aws kinesis put-record --stream-name {c.input_stream} --partition-key 256 --data '{EXAMPLE_RIDE}'
  aws kinesis put-record --stream-name {c.input_stream} --partition-key 256 --cli-binary-format raw-in-base64-out --data '{EXAMPLE_RIDE}'
  # read what came out (--follow keeps reading)
  python -m local_aws tail {c.predictions_stream}      # or {c.dead_letter_stream}
  # invoke the function directly with a Kinesis event and see its log (v2: add --cli-binary-format raw-in-base64-out)
  aws lambda invoke --function-name {c.function_name} --payload file://integration-test/event.json --log-type Tail \\
      --query LogResult --output text {out} | base64 -d
  curl -s -XPOST {stack.lambda_endpoint}/2015-03-31/functions/function/invocations -d @integration-test/event.json
Function logs: {stack.relative(c.log_dir / "function.log")}.{watching} Ctrl-C stops everything.""")
        if args.ready_file:
            args.ready_file.write_text(json.dumps(stack.describe(), indent=2))
        sys.stdout.flush()
        threading.Event().wait()  # until Ctrl-C or SIGTERM


def tail_client(endpoint_url: str | None) -> Any:
    """Kinesis at --endpoint-url, else boto3's endpoint variables, else the local stack's default
    port; the local test credentials when the environment has none (moto accepts any)."""
    session = boto3.Session()
    endpoint = (
        endpoint_url
        or os.environ.get("AWS_ENDPOINT_URL_KINESIS")
        or os.environ.get("AWS_ENDPOINT_URL")
        or f"http://127.0.0.1:{DEFAULT_PORT}"
    )
    local = session.get_credentials() is None
    return session.client(
        "kinesis",
        endpoint_url=endpoint,
        region_name=session.region_name or REGION,
        # An endpoint that does not answer is reported at once, not after botocore's retries.
        config=Config(retries={"mode": "standard", "max_attempts": 1}, connect_timeout=2, read_timeout=10),
        aws_access_key_id=LOCAL_CREDENTIALS["AWS_ACCESS_KEY_ID"] if local else None,
        aws_secret_access_key=LOCAL_CREDENTIALS["AWS_SECRET_ACCESS_KEY"] if local else None,
        aws_session_token=LOCAL_CREDENTIALS["AWS_SESSION_TOKEN"] if local else None,
    )


def command_tail(args: argparse.Namespace) -> int:
    kinesis = tail_client(args.endpoint_url)
    endpoint = kinesis.meta.endpoint_url

    def show(data: bytes, _now: float) -> None:
        try:
            print(json.dumps(json.loads(data)), flush=True)
        except ValueError:  # not JSON (a producer's raw text, bytes that are not UTF-8)
            print(data.decode("utf-8", errors="backslashreplace"), flush=True)

    reader = StreamReader(kinesis, args.stream, show)
    try:
        if args.follow:
            reader.run()
        else:
            reader.read_available()
    except KeyboardInterrupt:
        return 0
    except (EndpointConnectionError, ReadTimeoutError):
        return fail(
            f"nothing answers at {endpoint}: is the local pipeline up (make up)? Or set AWS_ENDPOINT_URL."
        )
    except ClientError as error:
        if error.response.get("Error", {}).get("Code") == "ResourceNotFoundException":
            return fail(f"no stream {args.stream!r} at {endpoint}")
        return fail(f"{endpoint}: {error}")
    except (NoCredentialsError, NoRegionError) as error:
        return fail(str(error))
    return 0


def command_metrics(args: argparse.Namespace) -> int:
    """The metric sums of a function log; exit 1 if a document is not valid EMF."""
    path: Path = args.log
    if not path.is_file():
        return fail(f"no function log at {path}: run `make demo` (or make up), or name a log")
    summary = read_log(path)
    print(table(summary, LocalStack.relative(path)), end="")
    if not summary.documents:
        print("(no metrics: is this the function's log, from this version of the function?)")
    return 1 if summary.invalid else 0


def fail(message: str) -> int:
    print(f"error: {message}", file=sys.stderr)
    return 2


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m local_aws", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    def stack_options(command: argparse.ArgumentParser) -> None:
        command.add_argument(
            "--port", type=int, default=4566, help="moto (Kinesis, S3, SQS) port (default 4566)"
        )
        command.add_argument(
            "--lambda-port", type=int, default=9000, help="function endpoint port (default 9000)"
        )
        command.add_argument(
            "--mapping", type=Path, default=DEFAULT_MAPPING, help="event source mapping settings (JSON)"
        )
        command.add_argument(
            "--aws-endpoint", help="use this running AWS endpoint (e.g. LocalStack) instead of moto"
        )
        command.add_argument(
            "--function-endpoint", help="invoke this running function (e.g. the image's emulator)"
        )
        command.add_argument("--function-name", default="ride-duration-prediction", help="name to invoke")
        command.add_argument("--log-dir", type=Path, help="where logs go (default ./.local-aws)")
        command.add_argument(
            "--model-uri",
            help="the model, in any form MODEL_URI takes (default: $MODEL_URI, the course's "
            "MODEL_LOCATION or RUN_ID forms, else ./model, trained if missing)",
        )

    demo = commands.add_parser("demo", help="stream sample rides through the pipeline, print a summary, stop")
    stack_options(demo)
    demo.add_argument("--rides", type=int, default=1000)
    demo.add_argument(
        "--bad-ratio", type=float, default=0.02, help="share of malformed records (default 0.02)"
    )
    demo.add_argument("--rate", type=float, default=250, help="rides put per second (default 250)")
    demo.add_argument(
        "--timeout", type=float, default=60, help="seconds to wait for the outputs after the last put"
    )
    demo.add_argument(
        "--kpl",
        type=positive_int,
        nargs="?",
        const=KPL_RIDES_PER_RECORD,
        metavar="N",
        help="put the rides as KPL-aggregated records of up to N rides each "
        f"(default {KPL_RIDES_PER_RECORD}), built by AWS's reference aggregator",
    )
    demo.set_defaults(run=command_demo)

    up = commands.add_parser("up", help="start the pipeline and keep it running until Ctrl-C")
    stack_options(up)
    up.add_argument("--ready-file", type=Path, help="write the endpoints here (JSON) once everything is up")
    up.set_defaults(run=command_up)

    tail = commands.add_parser(
        "tail", help="print the records on a stream as JSON lines, then exit (--follow: keep reading)"
    )
    tail.add_argument("stream")
    tail.add_argument("-f", "--follow", action="store_true", help="keep reading new records until Ctrl-C")
    tail.add_argument(
        "--endpoint-url",
        help=f"Kinesis endpoint (default: AWS_ENDPOINT_URL_KINESIS, AWS_ENDPOINT_URL, else http://127.0.0.1:{DEFAULT_PORT})",
    )
    tail.set_defaults(run=command_tail)

    metrics = commands.add_parser(
        "metrics", help="the metric sums of a function log (its EMF documents, as CloudWatch would see them)"
    )
    metrics.add_argument(
        "log", nargs="?", type=Path, default=StackConfig.log_dir / "function.log",
        help="the function's log (default: .local-aws/function.log, what make demo and make up write)",
    )  # fmt: skip
    metrics.set_defaults(run=command_metrics)

    args = parser.parse_args(argv)
    stop_on_sigterm()
    try:
        result: int = args.run(args)
    except (PortInUseError, StackError, ConfigurationError) as error:
        return fail(str(error))
    except KeyboardInterrupt:
        return 130
    return result


if __name__ == "__main__":
    raise SystemExit(main())
