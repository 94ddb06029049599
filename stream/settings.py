"""Configuration, read once from environment variables (the README's table lists them all)."""

from __future__ import annotations

import math
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from stream.kinesis_output import RetryPolicy
from stream.metrics import DEFAULT_NAMESPACE, DEFAULT_SERVICE
from stream.redelivery import DEFAULT_SIZE as DEFAULT_REDELIVERY_MEMORY_SIZE
from stream.ride_events import MAX_TRIP_DISTANCE_MILES, MAX_ZONE_ID, TLC_BOUNDS, RideBounds


class ConfigurationError(ValueError):
    """An environment variable is missing or malformed; the message names it."""


@dataclass(frozen=True)
class Settings:
    predictions_stream: str
    dead_letter_stream: str | None
    model_uri: str
    model_cache_dir: Path
    # The registry version and run of MODEL_URI's model, for prediction events; scripts/deploy.py
    # sets them when it resolves a runs:/ or models:/ URI to the model's s3:// location.
    model_version: str | None
    model_run_id: str | None
    # The SHA-256 of the model's files, pinned by scripts/deploy.py: other files are refused.
    model_sha256: str | None
    put_records_retry: RetryPolicy
    log_level: str
    kinesis_endpoint_url: str | None
    deadline_safety_margin_s: float
    redelivery_memory_size: int
    ride_bounds: RideBounds = TLC_BOUNDS
    # Powertools' own variable names: its Metrics would read the same ones.
    metrics_namespace: str = DEFAULT_NAMESPACE
    service_name: str = DEFAULT_SERVICE
    tracing: bool = False  # X-Ray subsegments (stream/tracing.py): off unless asked for

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        env = os.environ if env is None else env
        return cls(
            predictions_stream=env.get("PREDICTIONS_STREAM_NAME") or "ride_predictions",
            dead_letter_stream=env.get("DEAD_LETTER_STREAM_NAME") or None,
            model_uri=model_uri_from_env(env),
            model_cache_dir=Path(env.get("MODEL_CACHE_DIR") or "/tmp/model-cache"),  # noqa: S108
            model_version=env.get("MODEL_VERSION") or None,
            model_run_id=env.get("MODEL_RUN_ID") or None,
            model_sha256=_sha256(env, "MODEL_SHA256"),
            put_records_retry=RetryPolicy(
                max_attempts=_int(env, "PUT_RECORDS_MAX_ATTEMPTS", 5, minimum=1),
                base_delay=_int(env, "PUT_RECORDS_BASE_DELAY_MS", 100, minimum=0) / 1000,
                max_delay=_int(env, "PUT_RECORDS_MAX_DELAY_MS", 2000, minimum=0) / 1000,
            ),
            log_level=(env.get("LOG_LEVEL") or "INFO").upper(),
            kinesis_endpoint_url=kinesis_endpoint_url(env),
            ride_bounds=RideBounds(
                max_zone_id=_int(env, "MAX_ZONE_ID", MAX_ZONE_ID, minimum=1),
                max_trip_distance=_positive_float(env, "MAX_TRIP_DISTANCE_MILES", MAX_TRIP_DISTANCE_MILES),
            ),
            deadline_safety_margin_s=_int(env, "DEADLINE_SAFETY_MARGIN_MS", 1000, minimum=0) / 1000,
            redelivery_memory_size=_int(
                env, "REDELIVERY_MEMORY_SIZE", DEFAULT_REDELIVERY_MEMORY_SIZE, minimum=0
            ),
            metrics_namespace=env.get("POWERTOOLS_METRICS_NAMESPACE") or DEFAULT_NAMESPACE,
            service_name=env.get("POWERTOOLS_SERVICE_NAME") or DEFAULT_SERVICE,
            tracing=_flag(env, "TRACING_ENABLED"),
        )


def model_uri_from_env(env: Mapping[str, str]) -> str:
    """MODEL_URI, else the course's MODEL_LOCATION, else its RUN_ID + bucket + experiment."""
    if uri := env.get("MODEL_URI"):
        return uri
    if location := env.get("MODEL_LOCATION"):
        return location
    if run_id := env.get("RUN_ID"):
        bucket = env.get("MODEL_BUCKET")
        if not bucket:
            raise ConfigurationError("RUN_ID is set but MODEL_BUCKET is not: set both, or MODEL_URI")
        experiment = env.get("MLFLOW_EXPERIMENT_ID") or "1"
        return f"s3://{bucket}/{experiment}/{run_id}/artifacts/model"
    raise ConfigurationError(
        "no model configured: set MODEL_URI (a directory, s3://..., runs:/..., models:/...)"
    )


def kinesis_endpoint_url(env: Mapping[str, str]) -> str | None:
    """The course's KINESIS_ENDPOINT_URL, used only when boto3's own variables are unset.

    boto3 reads AWS_ENDPOINT_URL_KINESIS and AWS_ENDPOINT_URL by itself.
    """
    if env.get("AWS_ENDPOINT_URL_KINESIS") or env.get("AWS_ENDPOINT_URL"):
        return None
    return env.get("KINESIS_ENDPOINT_URL") or None


def _sha256(env: Mapping[str, str], name: str) -> str | None:
    raw = (env.get(name) or "").strip()
    if not raw:
        return None
    if not re.fullmatch(r"[0-9a-fA-F]{64}", raw):
        raise ConfigurationError(f"{name} must be a SHA-256 in hex (64 digits), got {raw!r}")
    return raw.lower()


def _int(env: Mapping[str, str], name: str, default: int, minimum: int) -> int:
    raw = env.get(name)
    if raw in (None, ""):
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ConfigurationError(f"{name} must be an integer, got {raw!r}") from None
    if value < minimum:
        raise ConfigurationError(f"{name} must be at least {minimum}, got {value}")
    return value


def _flag(env: Mapping[str, str], name: str) -> bool:
    raw = (env.get(name) or "false").strip().lower()
    if raw not in ("true", "false"):
        raise ConfigurationError(f"{name} must be true or false, got {env.get(name)!r}")
    return raw == "true"


def _positive_float(env: Mapping[str, str], name: str, default: float) -> float:
    raw = env.get(name)
    if raw in (None, ""):
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ConfigurationError(f"{name} must be a number, got {raw!r}") from None
    if not (math.isfinite(value) and value > 0):
        raise ConfigurationError(f"{name} must be a finite number above 0, got {raw!r}")
    return value
