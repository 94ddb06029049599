"""Tiny handlers for testing the local Lambda endpoint under the real runtime client."""

import os
import time

print(f"handlers initialised in process {os.getpid()}")
if os.environ.get("FAIL_INIT"):
    raise RuntimeError(f"init failed on purpose ({os.environ['FAIL_INIT']})")

PROCESS_STARTED = time.time()


def echo(event, context):
    return {
        "event": event,
        "function_name": context.function_name,
        "request_id": context.aws_request_id,
        "remaining_ms": context.get_remaining_time_in_millis(),
        "pid": os.getpid(),
        "model_uri": os.environ.get("MODEL_URI"),
        "memory_mb": context.memory_limit_in_mb,
    }


def chatty(event, context):
    print(f"request {context.aws_request_id} begins")
    for line in range(int(event.get("lines", 1))):
        print(f"line {line:04d} " + "." * 90)
    print("the last line")
    return {"ok": True}


def fail(event, context):
    raise ValueError(f"bad event: {event!r}")


def slow(event, context):
    time.sleep(float(event["seconds"]))
    return {"slept": event["seconds"], "pid": os.getpid()}


def crash(event, context):
    os._exit(3)
