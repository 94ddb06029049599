"""A TLC-sized month through the batch function's handler, as Lambda would run it: time and memory.

    python -m benchmarks.batch_month                     # 3,000,000 rows, 3 runs, ./model
    python -m benchmarks.batch_month --rows 1000000 --runs 1 --model-dir model

A moto server (its own process) holds the data bucket; the month's file (scripts.train's
synthetic trips, TLC's columns and row groups of a million rows, made once under .bench/batch/)
is put under input/. Each run is a fresh process that does what Lambda does with the image:
awslambdaric resolves `batch.handler.lambda_handler` (the init: imports, the model loaded and
self-tested), then calls it once with the S3 "Object Created" event EventBridge delivers; the
handler reads the file from S3 and writes the month's output to S3 (a multipart upload). The
process is measured from spawn to exit (wall) with its peak resident memory (benchmarks.batch's
`peak`, through wait4), and reports its own init and invoke phases. `--one-cpu` pins it to one
core (taskset), as Lambda gives one vCPU at 1,769 MB; the default lets it use this machine's two.
`--arrow-allocator` keeps Arrow's default allocator (mimalloc) instead of the handler's choice.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
WORK = ROOT / ".bench" / "batch"
BUCKET = "ride-duration-batch-bench"
KEY = "input/green_tripdata_2021-03.parquet"
CREDENTIALS = {
    "AWS_ACCESS_KEY_ID": "test",
    "AWS_SECRET_ACCESS_KEY": "test",
    "AWS_DEFAULT_REGION": "us-east-1",
}


def event() -> dict[str, Any]:
    """What EventBridge hands the function when the file arrives (its documented shape)."""
    return {
        "version": "0",
        "id": "0f1d3a52-6c0e-4c1b-9e55-0d6f0a4a7c11",
        "detail-type": "Object Created",
        "source": "aws.s3",
        "account": "123456789012",
        "time": "2021-04-02T09:15:00Z",
        "region": "us-east-1",
        "resources": [f"arn:aws:s3:::{BUCKET}"],
        "detail": {
            "version": "0",
            "bucket": {"name": BUCKET},
            "object": {"key": KEY, "size": 0, "etag": "0", "sequencer": "0"},
            "request-id": "0",
            "requester": "123456789012",
            "source-ip-address": "127.0.0.1",
            "reason": "PutObject",
        },
    }


def handler_child(keep_arrow_allocator: bool) -> dict[str, Any]:
    """The measured process: Lambda's init, then one invocation."""
    import types  # noqa: PLC0415

    if keep_arrow_allocator:
        import pyarrow  # noqa: PLC0415

        pyarrow.set_memory_pool = lambda pool: None  # the handler's choice is not applied
    from awslambdaric import bootstrap  # noqa: PLC0415 - the runtime client of the base image

    handler = bootstrap._get_handler("batch.handler.lambda_handler")  # as the image resolves its CMD
    initialised = time.perf_counter()
    context = types.SimpleNamespace(
        function_name="ride-duration-batch-bench",
        function_version="$LATEST",
        memory_limit_in_mb=2048,
        invoked_function_arn="arn:aws:lambda:us-east-1:123456789012:function:ride-duration-batch-bench",
        aws_request_id="bench",
        log_group_name="/aws/lambda/ride-duration-batch-bench",
        log_stream_name="bench",
        get_remaining_time_in_millis=lambda: 600_000,
    )
    answer = handler(event(), context)
    [month] = answer["months"]
    return {
        "init_s": initialised - STARTED,
        "invoke_s": time.perf_counter() - initialised,
        "scoring_s": month["seconds"],
        "rows": month["rows"],
    }


def measure(endpoint: str, model_dir: Path, one_cpu: bool, keep_arrow_allocator: bool) -> dict[str, Any]:
    child = [
        sys.executable,
        "-m",
        "benchmarks.batch_month",
        "child",
        *(["--arrow-allocator"] if keep_arrow_allocator else []),
    ]
    if one_cpu:
        child = [shutil.which("taskset") or "taskset", "-c", "0", *child]
    env = {
        **os.environ,
        **CREDENTIALS,
        "PYTHONPATH": str(ROOT),
        "AWS_ENDPOINT_URL": endpoint,
        "MODEL_URI": str(model_dir),
        "MODEL_CACHE_DIR": str(WORK / "cache"),
        "BATCH_INPUT_TEMPLATE": f"s3://{BUCKET}/input/green_tripdata_{{year}}-{{month:02d}}.parquet",
        "BATCH_OUTPUT_TEMPLATE": f"s3://{BUCKET}/output/year={{year}}/month={{month:02d}}/predictions.parquet",
        "LOG_LEVEL": "WARNING",
    }
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks.batch", "peak", *child],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    lines = done.stdout.splitlines()
    if done.returncode != 0:
        raise RuntimeError(
            f"the handler exited with {done.returncode}:\n{done.stdout[-3000:]}{done.stderr[-3000:]}"
        )
    found = {
        prefix: json.loads(line.removeprefix(prefix))
        for line in lines
        for prefix in ("MEASURED ", "RESULT ")
        if line.startswith(prefix)
    }
    return {**found["MEASURED "], **found["RESULT "]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.batch_month", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--rows", type=int, default=3_000_000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--model-dir", type=Path, default=ROOT / "model")
    parser.add_argument("--one-cpu", action="store_true", help="pin the handler to one core (taskset)")
    parser.add_argument("--arrow-allocator", action="store_true", help="keep Arrow's default allocator")
    args = parser.parse_args(argv)

    import boto3  # noqa: PLC0415

    from benchmarks.batch import trips_file  # noqa: PLC0415
    from local_aws.moto_stack import MotoServer, free_port  # noqa: PLC0415

    trips = trips_file(WORK, args.rows)
    moto = MotoServer(free_port())
    moto.start()
    try:
        os.environ.update(CREDENTIALS)  # moto's: any will do
        s3 = boto3.client("s3", endpoint_url=moto.endpoint_url)
        s3.create_bucket(Bucket=BUCKET)
        s3.upload_file(str(trips), BUCKET, KEY)
        samples = []
        for index in range(args.runs):
            sample = measure(moto.endpoint_url, args.model_dir.resolve(), args.one_cpu, args.arrow_allocator)
            samples.append(sample)
            print(
                f"run {index + 1}/{args.runs}: {sample['rows']:,} rows, wall {sample['wall_s']:.2f} s "
                f"(init {sample['init_s']:.2f} s, invoke {sample['invoke_s']:.2f} s, of which scoring "
                f"{sample['scoring_s']:.2f} s), peak RSS {sample['peak_rss_mb']:.0f} MB",
                flush=True,
            )
        medians = {key: statistics.median(s[key] for s in samples) for key in samples[0] if key != "rows"}
        print("median: " + json.dumps({key: round(value, 2) for key, value in medians.items()}))
    finally:
        moto.stop()
    return 0


STARTED = time.perf_counter()

if __name__ == "__main__":
    if sys.argv[1:2] == ["child"]:
        print("RESULT " + json.dumps(handler_child("--arrow-allocator" in sys.argv)), flush=True)
        raise SystemExit(0)
    raise SystemExit(main())
