"""Measurements that need a fresh process: cold start and peak memory.

    python -m benchmarks.children cold-ours     # import lambda_function (init) + first batch
    python -m benchmarks.children cold-pyfunc   # mlflow.pyfunc.load_model + the same first batch
    python -m benchmarks.children memory        # warm container: batches of 1,000, peak RSS
    python -m benchmarks.children observability # what metrics and tracing add to the imports

Deliberately imports nothing at module level beyond the standard library: the imports are
part of what is measured. Prints one JSON line (prefixed RESULT) with wall-clock timestamps;
the parent subtracts the time it spawned the process.
"""

from __future__ import annotations

import json
import os
import resource
import sys
import time
from pathlib import Path

STARTED = time.time()


# Where the benchmark's sequence numbers start (a real one's length, as on AWS).
FIRST_SEQUENCE_NUMBER = 49590338271490256608559692538361571095921575989136588898


def event(size: int, offset: int = 0, sequence_offset: int | None = None) -> dict:
    """A Kinesis event of course-format rides (the parent uses the same builder). Successive
    batches of a stream are different records (sequence numbers, by default also ride ids):
    the same batch twice would be a re-delivery, which the function skips."""
    from local_aws.kinesis_events import event_from_payloads  # noqa: PLC0415

    rides = [
        json.dumps(
            {
                "ride": {
                    "PULocationID": 1 + i % 265,
                    "DOLocationID": 1 + (i * 7) % 265,
                    "trip_distance": 0.5 + i % 20,
                },
                "ride_id": offset + i,
            }
        ).encode()
        for i in range(size)
    ]
    return event_from_payloads(
        rides,
        stream_name="ride_events",
        first_sequence_number=FIRST_SEQUENCE_NUMBER
        + (offset if sequence_offset is None else sequence_offset),
    )


class Context:
    function_name = "ride-duration-prediction"
    function_version = "$LATEST"
    invoked_function_arn = "arn:aws:lambda:us-east-1:123456789012:function:ride-duration-prediction"
    memory_limit_in_mb = 512
    aws_request_id = "bench"
    log_group_name = "/aws/lambda/bench"
    log_stream_name = "bench"

    @staticmethod
    def get_remaining_time_in_millis() -> int:
        return 60_000


def cold_ours() -> dict:
    import lambda_function  # noqa: PLC0415 - the init phase: imports, model download, deserialise

    initialised = time.time()
    first_batch = event(100)
    built = time.time()
    response = lambda_function.lambda_handler(first_batch, Context())
    assert response == {"batchItemFailures": []}, response
    return {
        "initialised": initialised,
        "answered": time.time() - (built - initialised),  # building the test event is not the function's
        "fetch_s": lambda_function.service.model.timings["fetch_s"],
        "deserialise_s": lambda_function.service.model.timings["deserialise_s"],
        # The signature check and the self-test (stream/features.py, stream/self_test.py).
        "checks_s": lambda_function.service.model.timings["contract_s"]
        + lambda_function.service.model.timings["self_test_s"],
    }


def cold_pyfunc() -> dict:
    import boto3  # noqa: PLC0415
    import mlflow.pyfunc  # noqa: PLC0415

    imported = time.time()
    model = mlflow.pyfunc.load_model(os.environ["MODEL_URI"])
    loaded = time.time()
    first_batch = event(100)
    built = time.time()
    import base64  # noqa: PLC0415

    from stream.features import ride_features  # noqa: PLC0415 - the same features, no other service code

    rides = [json.loads(base64.b64decode(r["kinesis"]["data"])) for r in first_batch["Records"]]
    features = [
        ride_features(r["ride"]["PULocationID"], r["ride"]["DOLocationID"], r["ride"]["trip_distance"])
        for r in rides
    ]
    # Through pyfunc's own predict, a model with a signature gets a pandas DataFrame, which the
    # DictVectorizer cannot read: the course's feature dicts go to the scikit-learn model itself.
    predictions = model.get_raw_model().predict(features)
    kinesis = boto3.client("kinesis")
    kinesis.put_records(
        StreamName=os.environ["PREDICTIONS_STREAM_NAME"],
        Records=[
            {
                "Data": json.dumps({"prediction": {"ride_duration": float(p), "ride_id": r["ride_id"]}}),
                "PartitionKey": str(r["ride_id"]),
            }
            for p, r in zip(predictions, rides, strict=True)
        ],
    )
    return {"imported": imported, "loaded": loaded, "answered": time.time() - (built - loaded)}


def peak_rss_mb() -> float:
    """This process's peak RSS. ru_maxrss would do, but Linux carries the high-water mark across
    exec: spawned by `benchmarks.run` (which holds the model and boto3 by then), a child would
    report the parent's RSS when larger. /proc's VmHWM is this process's own."""
    try:
        status = Path("/proc/self/status").read_text()  # Linux
    except OSError:
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return int(status.split("VmHWM:")[1].split()[0]) / 1024


def memory(batches: int = 20, size: int = 1000) -> dict:
    import lambda_function  # noqa: PLC0415

    after_init = peak_rss_mb()
    for index in range(batches):
        response = lambda_function.lambda_handler(event(size, offset=index * size), Context())
        assert response == {"batchItemFailures": []}, response
    return {
        "rss_after_init_mb": after_init,
        "peak_rss_mb": peak_rss_mb(),
        "batches": batches,
        "batch_size": size,
    }


def observability() -> dict:
    """After what the function imported before it had metrics (boto3, Powertools' Logger): the
    metrics module, then tracing's setup (the X-Ray SDK, botocore patched; LAMBDA_TASK_ROOT set)."""
    import boto3  # noqa: F401, PLC0415
    from aws_lambda_powertools import Logger  # noqa: F401, PLC0415

    started = time.perf_counter()
    import stream.metrics  # noqa: F401, PLC0415

    metrics = time.perf_counter()
    from stream.tracing import XRayTracing  # noqa: PLC0415

    XRayTracing("bench")
    return {"metrics_import_s": metrics - started, "tracing_setup_s": time.perf_counter() - metrics}


def main() -> None:
    kind = sys.argv[1]
    kinds = {
        "cold-ours": cold_ours,
        "cold-pyfunc": cold_pyfunc,
        "memory": memory,
        "observability": observability,
    }
    result = kinds[kind]()
    print("RESULT " + json.dumps({"started": STARTED, **result}), flush=True)


if __name__ == "__main__":
    main()
