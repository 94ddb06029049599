"""The web service under gunicorn, over HTTP; failures of the model itself in-process."""

from __future__ import annotations

import http.client
import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from model_service import predict_durations
from scripts.train import TrainedModel
from stream.model_loading import LoadedModel, load_model
from stream.ride_events import Ride
from tests.conftest import WebServer
from web_service import MAX_BODY_BYTES, MAX_PROBLEMS_LISTED, app_from_env, create_app

COURSE_REQUEST = {"PULocationID": 10, "DOLocationID": 50, "trip_distance": 40}


@pytest.fixture(scope="module")
def model(model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> LoadedModel:
    return load_model(str(model_dir), tmp_path_factory.mktemp("cache"))


def expected_minutes(model: LoadedModel, *rides: dict[str, Any]) -> list[float]:
    return predict_durations(model, [Ride(**ride) for ride in rides])


def test_a_ride_in_the_course_format_gets_its_duration_and_the_model_version(
    web_server: WebServer, model: LoadedModel, trained_model: TrainedModel
) -> None:
    status, body, content_type = web_server.post("/predict", COURSE_REQUEST)

    assert (status, content_type) == (200, "application/json")
    assert body == {
        "duration": expected_minutes(model, COURSE_REQUEST)[0],
        "model_version": trained_model.run_id,
    }


def test_a_list_of_rides_gets_a_list_of_answers_in_order(web_server: WebServer, model: LoadedModel) -> None:
    rides = [
        COURSE_REQUEST,
        {"PULocationID": 130, "DOLocationID": 205, "trip_distance": 3.66},
        {"PULocationID": 1, "DOLocationID": 1, "trip_distance": 0},
    ]

    status, body, _ = web_server.post("/predict", rides)

    assert status == 200
    assert [answer["duration"] for answer in body] == expected_minutes(model, *rides)
    assert len({answer["duration"] for answer in body}) == 3
    assert web_server.post("/predict", [])[:2] == (200, [])


def test_health_reports_the_loaded_model(
    web_server: WebServer, model_dir: Path, trained_model: TrainedModel
) -> None:
    status, body, _ = web_server.call("GET", "/health")

    assert status == 200
    assert body == {
        "status": "ok",
        "model": {
            "uri": str(model_dir),
            "version": trained_model.run_id,
            "run_id": trained_model.run_id,
            "flavor": "sklearn/pickle",
        },
    }


BAD_REQUESTS = {
    "not JSON": (b"PULocationID=10", 400, "body is not JSON: expected value at line 1 column 1"),
    "empty body": (b"", 400, "body is not JSON: EOF while parsing a value at line 1 column 0"),
    "trailing garbage": (b'{"PULocationID": 10} x', 400, "body is not JSON: trailing characters"),
    "nested too deeply": (b"[" * 10_000, 400, "body is not JSON: recursion limit exceeded"),
    "not an object": (b'"ride"', 422, "invalid ride: body: Input should be an object"),
    "zone as text": (
        b'{"PULocationID": "10", "DOLocationID": 50, "trip_distance": 40}',
        422,
        "invalid ride: PULocationID: Input should be a valid integer",
    ),
    "zone not positive": (
        b'{"PULocationID": 0, "DOLocationID": 50, "trip_distance": 40}',
        422,
        "invalid ride: PULocationID: Input should be greater than 0",
    ),
    "zone beyond the zone map": (
        b'{"PULocationID": 10, "DOLocationID": 1000000000000000000000000000000, "trip_distance": 4}',
        422,
        "invalid ride: DOLocationID: Input should be less than or equal to 265",
    ),
    "distance beyond any trip": (
        b'{"PULocationID": 10, "DOLocationID": 50, "trip_distance": 1e308}',
        422,
        "invalid ride: trip_distance: Input should be less than or equal to 1000",
    ),
    "distance negative": (
        b'{"PULocationID": 10, "DOLocationID": 50, "trip_distance": -1}',
        422,
        "invalid ride: trip_distance: Input should be greater than or equal to 0",
    ),
    "distance NaN": (
        b'{"PULocationID": 10, "DOLocationID": 50, "trip_distance": NaN}',
        422,
        "invalid ride: trip_distance: Input should be a finite number",
    ),
    "field missing": (
        b'{"PULocationID": 10, "trip_distance": 4}',
        422,
        "invalid ride: DOLocationID: Field required",
    ),
    "one bad ride in a list": (
        b'[{"PULocationID": 10, "DOLocationID": 50, "trip_distance": 4},'
        b' {"PULocationID": 10, "DOLocationID": 50.5, "trip_distance": 4}]',
        422,
        "invalid ride: 1.DOLocationID: Input should be a valid integer",
    ),
}


@pytest.mark.parametrize(("body", "status", "error"), BAD_REQUESTS.values(), ids=BAD_REQUESTS.keys())
def test_bad_input_is_answered_with_the_field_and_the_reason(
    web_server: WebServer, body: bytes, status: int, error: str
) -> None:
    answer_status, answer, content_type = web_server.call("POST", "/predict", body)

    assert (answer_status, content_type) == (status, "application/json")
    assert answer["error"].startswith(error)
    if status == 422:
        field, reason = error.removeprefix("invalid ride: ").split(": ", 1)
        assert {"field": field, "reason": reason} in answer["problems"]


def test_many_bad_rides_are_counted_but_only_the_first_listed(web_server: WebServer) -> None:
    rides = [{"PULocationID": -1, "DOLocationID": 50, "trip_distance": 4}] * 100

    status, answer, _ = web_server.post("/predict", rides)

    assert status == 422
    assert answer["problem_count"] == 100
    assert len(answer["problems"]) == MAX_PROBLEMS_LISTED
    assert answer["problems"][0] == {"field": "0.PULocationID", "reason": "Input should be greater than 0"}


@pytest.mark.parametrize(
    ("method", "path", "body", "status"),
    [
        ("POST", "/predict", b"[" + b" " * MAX_BODY_BYTES + b"]", 413),
        ("GET", "/predict", None, 405),
        ("POST", "/nowhere", b"{}", 404),
    ],
)
def test_http_errors_are_json_not_html(
    web_server: WebServer, method: str, path: str, body: bytes | None, status: int
) -> None:
    answer_status, answer, content_type = web_server.call(method, path, body)

    assert (answer_status, content_type) == (status, "application/json")
    assert set(answer) == {"error"}


def post_chunked(server: WebServer, body: bytes) -> tuple[int, Any]:
    """POST with Transfer-Encoding: chunked (no Content-Length), in 64 KiB chunks."""
    connection = http.client.HTTPConnection(server.host, server.port, timeout=10)
    try:
        chunks = (body[start : start + 65_536] for start in range(0, len(body), 65_536))
        connection.request("POST", "/predict", body=chunks, headers={"Content-Type": "application/json"})
        response = connection.getresponse()
        return response.status, json.loads(response.read())
    finally:
        connection.close()


def test_a_chunked_body_over_1_mib_is_413_and_one_at_the_limit_is_read_whole(web_server: WebServer) -> None:
    ride = json.dumps(COURSE_REQUEST).encode()
    at_the_limit = b"[" + ride + b" " * (MAX_BODY_BYTES - len(ride) - 2) + b"]"
    assert len(at_the_limit) == MAX_BODY_BYTES

    too_long = post_chunked(web_server, at_the_limit[:-1] + b" ]")
    at_limit = post_chunked(web_server, at_the_limit)

    assert too_long[0] == 413
    assert set(too_long[1]) == {"error"}
    assert at_limit[0] == 200
    assert len(at_limit[1]) == 1


class BrokenPredictor:
    def predict(self, features: list[dict[str, Any]]) -> list[float]:
        raise RuntimeError("secret internals")


class NaNPredictor:
    def predict(self, features: list[dict[str, Any]]) -> list[float]:
        return [float("nan")] * len(features)


@pytest.mark.parametrize(
    ("predictor", "error"),
    [
        (BrokenPredictor(), "internal error (RuntimeError)"),
        (NaNPredictor(), "model returned a non-finite prediction for ride 0"),
    ],
)
def test_a_failing_model_is_a_500_without_a_stack_trace(
    model: LoadedModel, predictor: Any, error: str, caplog: pytest.LogCaptureFixture
) -> None:
    client = create_app(replace(model, predictor=predictor)).test_client()

    response = client.post("/predict", json=COURSE_REQUEST)

    assert (response.status_code, response.json) == (500, {"error": error})
    assert "Traceback" not in response.get_data(as_text=True)


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({}, "web_service: ConfigurationError: no model configured: set MODEL_URI"),
        (
            {"MODEL_URI": "/no/such/model"},
            "cannot load model from '/no/such/model': /no/such/model is not a directory",
        ),
        ({"MODEL_URI": "m", "PUT_RECORDS_MAX_ATTEMPTS": "x"}, "PUT_RECORDS_MAX_ATTEMPTS must be an integer"),
    ],
)
def test_without_a_model_the_app_exits_with_one_line_saying_why(
    env: dict[str, str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exited:
        app_from_env(env)

    assert exited.value.code == 1
    assert message in capsys.readouterr().err


def test_other_zone_maps_set_their_bounds_through_the_environment(model_dir: Path) -> None:
    app = app_from_env({"MODEL_URI": str(model_dir), "MAX_ZONE_ID": "300", "MAX_TRIP_DISTANCE_MILES": "50"})
    client = app.test_client()

    accepted = client.post("/predict", json={"PULocationID": 300, "DOLocationID": 299, "trip_distance": 50})
    refused = client.post("/predict", json={"PULocationID": 301, "DOLocationID": 1, "trip_distance": 50.5})

    assert accepted.status_code == 200
    assert refused.status_code == 422
    assert refused.json is not None
    assert refused.json["problems"] == [
        {"field": "PULocationID", "reason": "Input should be less than or equal to 300"},
        {"field": "trip_distance", "reason": "Input should be less than or equal to 50"},
    ]
