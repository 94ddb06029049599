"""X-Ray tracing, opt-in: TRACING_ENABLED=true (the stack's `Tracing=Active` sets it with the
function's TracingConfig). Then Powertools' `Tracer` records the handler (cold start, errors),
one subsegment per step of a batch (decode, predict, write, dead_letter) and, by patching
botocore, every AWS call an invocation makes (PutRecords; the model's S3 reads happen at init,
outside any trace).

Off (the default), nothing of X-Ray is imported: the SDK builds a botocore client for its
sampling rules as it is imported, which measured ~20 ms of cold start here after the function's
other imports (~150 ms in a bare interpreter; docs/benchmarks.md). A step then costs one no-op
context manager (~0.3 us).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from typing import Any, Concatenate, ParamSpec, Protocol, TypeVar

P = ParamSpec("P")
R = TypeVar("R")
Handler = TypeVar("Handler", bound=Callable[..., Any])


class StepTracer(Protocol):
    def step(self, name: str) -> AbstractContextManager[Any]:
        """A subsegment named `## <name>` around one step of the batch."""
        ...

    def capture_handler(self, handler: Handler) -> Handler:
        """The Lambda handler, traced."""
        ...


class NoTracing:
    def step(self, name: str) -> AbstractContextManager[Any]:
        return nullcontext()

    def capture_handler(self, handler: Handler) -> Handler:
        return handler


class XRayTracing:
    """Powertools' Tracer, which also obeys its own POWERTOOLS_TRACE_DISABLED and stays off
    outside Lambda (no LAMBDA_TASK_ROOT): no daemon would listen there."""

    def __init__(self, service: str) -> None:
        from aws_lambda_powertools.tracing import Tracer  # noqa: PLC0415 - X-Ray only when tracing

        # botocore alone: patching every library Powertools knows (requests, httplib, sqlite3)
        # would trace the model's imports too.
        self.tracer = Tracer(service=service, patch_modules=["botocore"])

    def step(self, name: str) -> AbstractContextManager[Any]:
        return self.tracer.provider.in_subsegment(name=f"## {name}")

    def capture_handler(self, handler: Handler) -> Handler:
        # The response (batchItemFailures) is not copied into the trace: up to 10,000 ids.
        return self.tracer.capture_lambda_handler(handler, capture_response=False)  # type: ignore[return-value]


def tracer_for(enabled: bool, service: str) -> StepTracer:
    return XRayTracing(service) if enabled else NoTracing()


class Traced(Protocol):
    tracing: StepTracer


T = TypeVar("T", bound=Traced)


def traced_step(name: str) -> Callable[[Callable[Concatenate[T, P], R]], Callable[Concatenate[T, P], R]]:
    """A method of a service with a `tracing` attribute, run inside the step `name`."""

    def decorate(method: Callable[Concatenate[T, P], R]) -> Callable[Concatenate[T, P], R]:
        def traced(self: T, /, *args: P.args, **kwargs: P.kwargs) -> R:
            with self.tracing.step(name):
                return method(self, *args, **kwargs)

        functools.update_wrapper(traced, method)
        return traced

    return decorate
