"""HTTP predictions on the stream's model path: `POST /predict`, `GET /health`.

    MODEL_URI=model gunicorn --preload 'web_service:app_from_env()'      # or: make serve

A ride in the course's request format, `{"PULocationID": 10, "DOLocationID": 50,
"trip_distance": 40}`, gets `{"duration": <minutes>, "model_version": "..."}`; a JSON list of
rides gets a list of answers, from ONE model call. Rides are validated by `ride_events.Ride`
and predicted by `model_service.predict_durations`, exactly as on the stream. Every error is
JSON naming the problem: 400 for a body that is not JSON, 422 for rides that fail validation
(field and reason), 413 for a body over 1 MiB; never an HTML page or a stack trace.

Not part of the Lambda image: Flask and gunicorn are in the `web` dependency group.
"""

from __future__ import annotations

import functools
import logging
import math
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from flask import Flask, Response, jsonify, request
from pydantic import TypeAdapter, ValidationError
from werkzeug.exceptions import HTTPException, RequestEntityTooLarge

from model_service import load_configured_model, predict_durations
from stream.model_loading import LoadedModel, ModelLoadError
from stream.ride_events import (
    TLC_BOUNDS,
    Ride,
    RideBounds,
    invalid_json_reason,
    ride_types,
    validation_problems,
)
from stream.settings import ConfigurationError, Settings

# About 16,000 rides in one list: well past any interactive use, small enough that one
# request cannot hold a worker for long (a 10,000-ride list is predicted in ~0.1 s here).
MAX_BODY_BYTES = 1024 * 1024
# An answer names at most this many problems (and counts them all): a 10,000-ride list of
# bad rides should not come back as a 1 MiB error.
MAX_PROBLEMS_LISTED = 20

log = logging.getLogger("web_service")


@dataclass
class RequestError(Exception):
    """A request the service answers with an error status and a JSON reason."""

    status: int
    error: str
    problems: list[tuple[str, str]] = field(default_factory=list)

    def to_response(self) -> tuple[Response, int]:
        body: dict[str, Any] = {"error": self.error}
        if self.problems:
            body["problems"] = [{"field": f, "reason": r} for f, r in self.problems[:MAX_PROBLEMS_LISTED]]
            body["problem_count"] = len(self.problems)
        return jsonify(body), self.status


@functools.cache
def list_of(ride: type[Ride]) -> TypeAdapter[list[Ride]]:
    """Validates a JSON list of rides in one pass; built once per ride model."""
    return TypeAdapter(list[ride])  # type: ignore[valid-type]  # a model chosen at run time (its bounds)


def parse_rides(body: bytes, ride: type[Ride] = Ride) -> tuple[list[Ride], bool]:
    """The rides in a request body, and whether it was a list (the answer mirrors the shape).

    Parsed and validated from JSON by pydantic, as the stream decodes its records, so the
    same ride is accepted, or refused with the same reason, whichever way it arrives.
    `ride`: Ride, or `ride_types(bounds).ride` for other bounds.
    """
    if len(body) > MAX_BODY_BYTES:
        # A chunked body has no Content-Length for Werkzeug to refuse: it reads one byte past
        # the limit (create_app), and a body that long is refused here.
        raise RequestEntityTooLarge()
    many = body.lstrip()[:1] == b"["
    try:
        rides = list_of(ride).validate_json(body) if many else [ride.model_validate_json(body)]
    except ValidationError as error:
        if (reason := invalid_json_reason(error)) is not None:
            raise RequestError(400, f"body is not JSON: {reason}") from None
        problems = validation_problems(error, root="body")
        summary = "; ".join(f"{f}: {r}" for f, r in problems[:MAX_PROBLEMS_LISTED])
        raise RequestError(422, f"invalid ride: {summary}", problems) from None
    return rides, many


def create_app(model: LoadedModel, bounds: RideBounds = TLC_BOUNDS) -> Flask:
    """The Flask app around one loaded model (tests hand in theirs; gunicorn uses app_from_env)."""
    app = Flask(__name__)
    # One byte more than allowed: a longer body, chunked or not, is then told from one at the limit.
    app.config["MAX_CONTENT_LENGTH"] = MAX_BODY_BYTES + 1
    ride = ride_types(bounds).ride
    app.json.sort_keys = False  # type: ignore[attr-defined]

    @app.get("/health")
    def health() -> Response:
        info = model.info
        return jsonify(
            status="ok",
            model={"uri": info.uri, "version": info.version, "run_id": info.run_id, "flavor": model.flavor},
        )

    @app.post("/predict")
    def predict() -> Response:
        rides, many = parse_rides(request.get_data(cache=False), ride)
        durations = predict_durations(model, rides) if rides else []
        for position, duration in enumerate(durations):
            if not math.isfinite(duration):
                # The stream dead-letters such a ride; here it is the service's fault, not the caller's.
                raise RequestError(500, f"model returned a non-finite prediction for ride {position}")
        answers = [{"duration": duration, "model_version": model.info.version} for duration in durations]
        return jsonify(answers if many else answers[0])

    @app.errorhandler(RequestError)
    def invalid_request(error: RequestError) -> tuple[Response, int]:
        return error.to_response()

    @app.errorhandler(HTTPException)
    def http_error(error: HTTPException) -> tuple[Response, int]:
        """404, 405, 413...: JSON like every other answer, instead of Werkzeug's HTML page."""
        return jsonify(error=f"{error.name}: {error.description}"), error.code or 500

    @app.errorhandler(Exception)
    def unexpected(error: Exception) -> tuple[Response, int]:
        # The traceback goes to the server's log, never to the caller.
        log.exception("prediction failed")
        return jsonify(error=f"internal error ({type(error).__name__})"), 500

    return app


def app_from_env(env: Mapping[str, str] | None = None) -> Flask:
    """gunicorn's entry point: the model named by the function's own variables (MODEL_URI, ...).

    With `--preload` the model is loaded once, in gunicorn's master, before workers fork.
    """
    try:
        settings = Settings.from_env(env)
        logging.basicConfig(level=settings.log_level, format="%(asctime)s %(levelname)s %(name)s %(message)s")
        model = load_configured_model(settings)
    except (ConfigurationError, ModelLoadError) as error:
        # One clear line and a non-zero exit, rather than a traceback per worker boot.
        print(f"web_service: {type(error).__name__}: {error}", file=sys.stderr)
        raise SystemExit(1) from None
    log.info(
        "model loaded: %s (version %s, %s), given %s",
        model.info.uri,
        model.info.version,
        model.flavor,
        model.features.describe(),
    )
    if model.features.warning:
        log.warning("%s", model.features.warning)
    return create_app(model, settings.ride_bounds)
