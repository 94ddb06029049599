"""Known rides and the model's answers to them: checked at load, and on request.

`make train` records a handful of rides and the predictions the model gave them in the model's
own `MLmodel` file (MLflow's `metadata`, key `known_rides`), so they travel with the model to
S3, the registry and the image:

    metadata:
      known_rides:
        rides: [{PULocationID: 130, DOLocationID: 205, trip_distance: 3.66}, ...]
        predictions: [17.63, ...]

At load the model predicts them again: if it raises, returns something that is not a finite
number, or (when predictions are recorded) differs from them by more than `TOLERANCE`, the
model is refused. This is what catches a model pickled by another library version that still
runs. Without recorded rides, `BUILT_IN_RIDES` are predicted (only the raise/non-finite check).
The same check answers the handler's self-test event `{"self_test": true}`.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from pydantic import TypeAdapter, ValidationError

from stream.features import ModelOutputError, RideColumns
from stream.ride_events import Ride

# |got - expected| <= ABSOLUTE + RELATIVE * |expected| (minutes). The same scikit-learn gives
# the same bits on the same machine; another CPU or BLAS may differ in the last digits (1e-12
# relative), never by a millionth of a minute. A model unpickled by another library version
# that still runs typically differs by seconds or minutes.
TOLERANCE_ABSOLUTE = 1e-6
TOLERANCE_RELATIVE = 1e-6

# Short, long, zero-distance and unusual zone pairs: enough to make a broken model raise.
BUILT_IN_RIDES: tuple[Ride, ...] = (
    Ride(PULocationID=130, DOLocationID=205, trip_distance=3.66),
    Ride(PULocationID=43, DOLocationID=151, trip_distance=1.2),
    Ride(PULocationID=1, DOLocationID=265, trip_distance=0.0),
    Ride(PULocationID=74, DOLocationID=75, trip_distance=25.0),
)

SELF_TEST_EVENT = {"self_test": True}

_RIDES = TypeAdapter(list[Ride])


def is_self_test_event(event: Any) -> bool:
    """`{"self_test": true}`; never a Kinesis event (one with `Records` is always a batch)."""
    return isinstance(event, dict) and event.get("self_test") is True and "Records" not in event


@dataclass(frozen=True)
class KnownRides:
    """Rides to predict at load, and the predictions recorded for them (None: built-in rides)."""

    rides: tuple[Ride, ...]
    predictions: tuple[float, ...] | None
    source: Literal["rides recorded with the model", "built-in sample rides"]

    @classmethod
    def from_mlmodel(cls, mlmodel: dict[str, Any]) -> KnownRides:
        """The `known_rides` of the MLmodel's metadata; ValueError when they are malformed."""
        recorded = (mlmodel.get("metadata") or {}).get("known_rides")
        if recorded is None:
            return cls(BUILT_IN_RIDES, None, "built-in sample rides")
        try:
            rides = tuple(_RIDES.validate_python(recorded["rides"]))
            predictions = tuple(float(value) for value in recorded["predictions"])
        except (KeyError, TypeError, ValueError, ValidationError) as error:
            raise ValueError(f"MLmodel metadata known_rides is malformed: {error}") from None
        if not rides or len(rides) != len(predictions):
            raise ValueError(
                f"MLmodel metadata known_rides holds {len(rides)} rides and {len(predictions)} predictions"
            )
        return cls(rides, predictions, "rides recorded with the model")


def known_rides_metadata(rides: Sequence[Ride], predictions: Sequence[float]) -> dict[str, Any]:
    """What training passes as `mlflow.sklearn.log_model(..., metadata=...)`."""
    return {
        "known_rides": {
            "rides": [ride.model_dump() for ride in rides],
            "predictions": [float(value) for value in predictions],
        }
    }


@dataclass(frozen=True)
class SelfTestReport:
    """What the model answered for the known rides, and whether that is what it should."""

    model_uri: str
    model_version: str
    source: str
    rides: list[dict[str, Any]]
    expected: list[float] | None
    got: list[float] | None
    max_difference: float | None
    problem: str | None
    seconds: float
    tolerance: dict[str, float] = field(
        default_factory=lambda: {"absolute": TOLERANCE_ABSOLUTE, "relative": TOLERANCE_RELATIVE}
    )

    @property
    def passed(self) -> bool:
        return self.problem is None

    def to_dict(self) -> dict[str, Any]:
        """The self-test event's answer (JSON-ready)."""
        return {
            "self_test": "passed" if self.passed else "failed",
            "passed": self.passed,
            "problem": self.problem,
            "model_uri": self.model_uri,
            "model_version": self.model_version,
            "source": self.source,
            "rides": self.rides,
            "expected": self.expected,
            "got": self.got,
            "max_difference": self.max_difference,
            "tolerance": self.tolerance,
            "seconds": round(self.seconds, 6),
        }


def run_self_test(
    predict: Callable[[RideColumns], list[float]],
    known: KnownRides,
    model_uri: str,
    model_version: str,
) -> SelfTestReport:
    """Predict the known rides in one call (the same path as a batch) and compare."""
    started = time.perf_counter()
    got: list[float] | None = None
    max_difference: float | None = None
    try:
        got = predict(RideColumns.from_rides(known.rides))
        problem = _check(known.rides, got)
        if known.predictions is not None and problem is None:
            max_difference = max(abs(g - e) for g, e in zip(got, known.predictions, strict=True))
            problem = _compare(known.rides, known.predictions, got)
    except ModelOutputError as error:
        problem = f"the model's answer for the {len(known.rides)} {known.source} is unusable: {error}"
    except Exception as error:  # noqa: BLE001 - any failure of the model is the finding
        problem = (
            f"the model raised on the {len(known.rides)} {known.source}: {type(error).__name__}: {error}"
        )
    return SelfTestReport(
        model_uri=model_uri,
        model_version=model_version,
        source=known.source,
        rides=[ride.model_dump() for ride in known.rides],
        expected=list(known.predictions) if known.predictions is not None else None,
        got=got,
        max_difference=max_difference,
        problem=problem,
        seconds=time.perf_counter() - started,
    )


def _check(rides: Sequence[Ride], got: list[float]) -> str | None:
    for ride, value in zip(rides, got, strict=True):
        if not math.isfinite(value):
            return f"the model returned a non-finite prediction ({value}) for {_ride(ride)}"
    return None


def _within(expected: float, got: float) -> bool:
    return abs(got - expected) <= TOLERANCE_ABSOLUTE + TOLERANCE_RELATIVE * abs(expected)


def _compare(rides: Sequence[Ride], expected: Sequence[float], got: list[float]) -> str | None:
    differing = [(r, e, g) for r, e, g in zip(rides, expected, got, strict=True) if not _within(e, g)]
    if not differing:
        return None
    ride, was, now = max(differing, key=lambda item: abs(item[2] - item[1]))
    return (
        f"{len(differing)} of {len(got)} predictions differ from those recorded with the model, by up to "
        f"{abs(now - was):.6g} min (tolerance {TOLERANCE_ABSOLUTE:g} min + {TOLERANCE_RELATIVE:g} x "
        f"|expected|): {_ride(ride)} was {was!r}, now {now!r}"
    )


def _ride(ride: Ride) -> str:
    return f"ride {ride.PULocationID}->{ride.DOLocationID} {ride.trip_distance} mi"
