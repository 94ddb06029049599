"""What metrics and tracing cost the function (`make bench`, parts `throughput` and `cold`).

- per invocation: writing the metrics document (stream/metrics.py: Powertools' EMF provider,
  eleven metrics, JSON, one print), and a batch's four traced steps with tracing off;
- at cold start: the child `observability` (benchmarks/children.py) times importing the metrics
  module and setting up tracing; `cold` runs the whole cold start with tracing on as well.
"""

from __future__ import annotations

import contextlib
import io
import statistics
import time
import uuid
from typing import Any

from local_aws.moto_stack import free_port
from stream.metrics import BatchFigures, InvocationMetrics
from stream.tracing import NoTracing

# What Lambda gives a function with TracingConfig Active, for a cold start measured with
# tracing on: a sampled trace header, and a daemon address (nothing listens: UDP is fire-and-forget).
TRACING_ENV = {
    "TRACING_ENABLED": "true",
    "LAMBDA_TASK_ROOT": "/var/task",
    "_X_AMZN_TRACE_ID": f"Root=1-{int(time.time()):08x}-{uuid.uuid4().hex[:24]};Parent={uuid.uuid4().hex[:16]};Sampled=1",
    "AWS_XRAY_DAEMON_ADDRESS": f"127.0.0.1:{free_port()}",
}
FIGURES = BatchFigures(100, 98, 2, 0, 0, 1, 0, 24.0, 2.0, 17.3)


def per_invocation_cost_us(invocations: int = 5000, repeat: int = 5) -> dict[str, float]:
    """Median microseconds per invocation: the metrics document written (to a buffer instead of
    stdout: what Lambda's log pipeline then does is not the function's time), and four steps
    through the tracing hook when tracing is off."""
    metrics = InvocationMetrics("Bench", "bench", "1")
    tracing = NoTracing()
    emit, steps = [], []
    sink = io.StringIO()
    for _ in range(repeat):
        with contextlib.redirect_stdout(sink):
            started = time.perf_counter()
            for _ in range(invocations):
                with metrics.invocation() as invocation:
                    invocation.kinesis_records = 100
                    invocation.figures = FIGURES
            emit.append((time.perf_counter() - started) / invocations * 1e6)
        sink.seek(0)
        sink.truncate()
        started = time.perf_counter()
        for _ in range(invocations):
            for name in ("decode", "predict", "write", "dead_letter"):
                with tracing.step(name):
                    pass
        steps.append((time.perf_counter() - started) / invocations * 1e6)
    return {"metrics_us": statistics.median(emit), "tracing_off_steps_us": statistics.median(steps)}


def summary_line(observability: dict[str, Any], handler_100_ms: float | None) -> str:
    """One line for results.md, from what the run measured (throughput, cold, or both)."""
    parts = []
    if "metrics_us" in observability:
        part = f"writing an invocation's metrics document costs **{observability['metrics_us']:.0f} µs**"
        if handler_100_ms:
            part += f" ({observability['metrics_us'] / 1000 / handler_100_ms:.2%} of a 100-record batch)"
        parts.append(
            part + f", four traced steps with tracing off {observability['tracing_off_steps_us']:.1f} µs"
        )
    if "metrics_import_s" in observability:
        parts.append(
            f"at cold start, importing the metrics module takes {observability['metrics_import_s'] * 1000:.1f} ms "
            "(Powertools' package, imported for its Logger, already holds the EMF provider) and setting up "
            f"tracing (the X-Ray SDK, botocore patched) {observability['tracing_setup_s'] * 1000:.0f} ms after "
            "the function's other imports, paid only with tracing on"
        )
    return "Metrics and tracing: " + "; ".join(parts) + "." if parts else ""
