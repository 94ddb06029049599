from pathlib import Path

import pytest

from stream.ride_events import RideBounds
from stream.settings import ConfigurationError, Settings


def test_defaults() -> None:
    settings = Settings.from_env({"MODEL_URI": "s3://b/m"})
    assert settings.predictions_stream == "ride_predictions"
    assert settings.dead_letter_stream is None
    assert settings.model_cache_dir == Path("/tmp/model-cache")
    assert (settings.put_records_retry.max_attempts, settings.put_records_retry.base_delay) == (5, 0.1)
    assert settings.put_records_retry.max_delay == 2.0
    assert settings.log_level == "INFO"
    assert settings.kinesis_endpoint_url is None
    assert settings.ride_bounds == RideBounds(max_zone_id=265, max_trip_distance=1000)
    assert settings.deadline_safety_margin_s == 1.0
    assert settings.redelivery_memory_size == 20_000


def test_every_variable_is_read() -> None:
    settings = Settings.from_env(
        {
            "MODEL_URI": "models:/ride-duration@champion",
            "MODEL_LOCATION": "/ignored/when/model_uri/is/set",
            "PREDICTIONS_STREAM_NAME": "out",
            "DEAD_LETTER_STREAM_NAME": "dlq",
            "MODEL_CACHE_DIR": "/var/cache/model",
            "PUT_RECORDS_MAX_ATTEMPTS": "3",
            "PUT_RECORDS_BASE_DELAY_MS": "50",
            "PUT_RECORDS_MAX_DELAY_MS": "400",
            "LOG_LEVEL": "debug",
            "KINESIS_ENDPOINT_URL": "http://localhost:4566",
            "MAX_ZONE_ID": "300",
            "MAX_TRIP_DISTANCE_MILES": "250.5",
            "DEADLINE_SAFETY_MARGIN_MS": "2500",
            "REDELIVERY_MEMORY_SIZE": "0",
        }
    )
    assert settings.model_uri == "models:/ride-duration@champion"
    assert (settings.predictions_stream, settings.dead_letter_stream) == ("out", "dlq")
    assert settings.model_cache_dir == Path("/var/cache/model")
    retry = settings.put_records_retry
    assert (retry.max_attempts, retry.base_delay, retry.max_delay) == (3, 0.05, 0.4)
    assert settings.log_level == "DEBUG"
    assert settings.kinesis_endpoint_url == "http://localhost:4566"
    assert settings.ride_bounds == RideBounds(max_zone_id=300, max_trip_distance=250.5)
    assert (settings.deadline_safety_margin_s, settings.redelivery_memory_size) == (2.5, 0)


def test_course_run_id_defaults_to_experiment_1() -> None:
    settings = Settings.from_env({"RUN_ID": "abc", "MODEL_BUCKET": "bucket"})
    assert settings.model_uri == "s3://bucket/1/abc/artifacts/model"


@pytest.mark.parametrize(
    ("name", "value", "message"),
    [
        ("PUT_RECORDS_MAX_ATTEMPTS", "many", "PUT_RECORDS_MAX_ATTEMPTS must be an integer, got 'many'"),
        ("PUT_RECORDS_MAX_ATTEMPTS", "0", "PUT_RECORDS_MAX_ATTEMPTS must be at least 1, got 0"),
        ("PUT_RECORDS_BASE_DELAY_MS", "-5", "PUT_RECORDS_BASE_DELAY_MS must be at least 0, got -5"),
        ("MAX_ZONE_ID", "0", "MAX_ZONE_ID must be at least 1, got 0"),
        ("MAX_TRIP_DISTANCE_MILES", "far", "MAX_TRIP_DISTANCE_MILES must be a number, got 'far'"),
        (
            "MAX_TRIP_DISTANCE_MILES",
            "inf",
            "MAX_TRIP_DISTANCE_MILES must be a finite number above 0, got 'inf'",
        ),
        ("MAX_TRIP_DISTANCE_MILES", "0", "MAX_TRIP_DISTANCE_MILES must be a finite number above 0, got '0'"),
        ("REDELIVERY_MEMORY_SIZE", "-1", "REDELIVERY_MEMORY_SIZE must be at least 0, got -1"),
        ("DEADLINE_SAFETY_MARGIN_MS", "1s", "DEADLINE_SAFETY_MARGIN_MS must be an integer, got '1s'"),
    ],
)
def test_malformed_numbers_name_the_variable(name: str, value: str, message: str) -> None:
    with pytest.raises(ConfigurationError, match=message):
        Settings.from_env({"MODEL_URI": "x", name: value})
