"""`python -m local_aws demo | up | tail`: the pipeline on this machine, no AWS account, no Docker."""

from __future__ import annotations

import argparse
import json
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any

from local_aws.demo import StreamReader, run_demo
from local_aws.moto_stack import PortInUseError
from local_aws.stack import DEFAULT_MAPPING, LocalStack, StackConfig

EXAMPLE_RIDE = '{"ride": {"PULocationID": 130, "DOLocationID": 205, "trip_distance": 3.66}, "ride_id": 256}'


def stop_on_sigterm() -> None:
    """Turn SIGTERM into KeyboardInterrupt so `finally` blocks tear the stack down."""
    signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))


def stack_config(args: argparse.Namespace) -> StackConfig:
    return StackConfig(
        port=args.port,
        lambda_port=args.lambda_port,
        mapping_file=args.mapping,
        aws_endpoint=args.aws_endpoint,
        function_endpoint=args.function_endpoint,
        function_name=args.function_name,
        **({"log_dir": args.log_dir} if args.log_dir else {}),
    )


def command_demo(args: argparse.Namespace) -> int:
    started = time.monotonic()
    print("Local pipeline (no AWS account, no Docker):")
    with LocalStack(stack_config(args)) as stack:
        ok = run_demo(stack, args.rides, bad_ratio=args.bad_ratio, rate=args.rate, timeout=args.timeout)
        print(f"\nLogs: {stack.config.log_dir}/ (function.log: the function's JSON logs)")
    print(f"Stopped moto, the function and the mapping. Total {time.monotonic() - started:.1f} s.")
    return 0 if ok else 1


def command_up(args: argparse.Namespace) -> int:
    print("Local pipeline (no AWS account, no Docker):")
    with LocalStack(stack_config(args)) as stack:
        env = stack.user_environment()
        exports = " ".join(f"{k}={v}" for k, v in env.items())
        c = stack.config
        print(f"""
Up. In another shell:
  export {exports}
  # put a ride (awscli v1 sends --data as raw text; v2 needs --cli-binary-format raw-in-base64-out)
  aws kinesis put-record --stream-name {c.input_stream} --partition-key 256 --data '{EXAMPLE_RIDE}'
  aws kinesis put-record --stream-name {c.input_stream} --partition-key 256 --cli-binary-format raw-in-base64-out --data '{EXAMPLE_RIDE}'
  # read what came out
  python -m local_aws tail {c.predictions_stream}      # or {c.dead_letter_stream}
  # invoke the function directly with a Kinesis event (v2: add --cli-binary-format raw-in-base64-out)
  aws lambda invoke --function-name {c.function_name} --payload file://integration-test/event.json out.json
  curl -s -XPOST {stack.lambda_endpoint}/2015-03-31/functions/function/invocations -d @integration-test/event.json
Function logs: {c.log_dir}/function.log. Ctrl-C stops everything.""")
        if args.ready_file:
            args.ready_file.write_text(json.dumps(stack.describe(), indent=2))
        sys.stdout.flush()
        threading.Event().wait()  # until Ctrl-C or SIGTERM
    return 0


def command_tail(args: argparse.Namespace) -> int:
    import boto3  # noqa: PLC0415

    kinesis = boto3.client("kinesis")

    def show(record: dict[str, Any], _now: float) -> None:
        print(json.dumps(record), flush=True)

    reader = StreamReader(kinesis, args.stream, show)
    reader.run()
    return 0


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
    demo.set_defaults(run=command_demo)

    up = commands.add_parser("up", help="start the pipeline and keep it running until Ctrl-C")
    stack_options(up)
    up.add_argument("--ready-file", type=Path, help="write the endpoints here (JSON) once everything is up")
    up.set_defaults(run=command_up)

    tail = commands.add_parser("tail", help="print a stream's records as JSON lines (uses AWS_ENDPOINT_URL)")
    tail.add_argument("stream")
    tail.set_defaults(run=command_tail)

    args = parser.parse_args(argv)
    stop_on_sigterm()
    try:
        code: int = args.run(args)
        return code
    except PortInUseError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
