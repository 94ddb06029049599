"""The load-time self-test: a model predicts its known rides again before it serves, and the
handler's `{"self_test": true}` event answers with the same report (stream/self_test.py)."""

from __future__ import annotations

import importlib
import json
import pickle
import shutil
import sys
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import pytest
import yaml

from local_aws.kinesis_events import event_from_payloads
from stream.model_loading import LoadedModel, ModelLoadError, load_model
from stream.self_test import BUILT_IN_RIDES, TOLERANCE_ABSOLUTE, is_self_test_event
from tests.conftest import FakeLambdaContext, create_stream, read_stream


def copy_model(
    source: Path, target: Path, edit_mlmodel: Callable[[dict[str, Any]], None] | None = None
) -> Path:
    shutil.copytree(source, target)
    if edit_mlmodel:
        mlmodel = yaml.safe_load((target / "MLmodel").read_text())
        edit_mlmodel(mlmodel)
        (target / "MLmodel").write_text(yaml.safe_dump(mlmodel))
    return target


def edit_pipeline(model_dir: Path, edit: Callable[[Any], None]) -> None:
    """Change the pickled pipeline in place, as unpickling under other library code might."""
    with (model_dir / "model.pkl").open("rb") as handle:
        pipeline = pickle.load(handle)  # noqa: S301 - the test's own model
    edit(pipeline)
    with (model_dir / "model.pkl").open("wb") as handle:
        pickle.dump(pipeline, handle)


def test_the_trained_model_passes_on_the_rides_recorded_with_it(model_dir: Path, tmp_path: Path) -> None:
    loaded = load_model(str(model_dir), tmp_path)
    report = loaded.self_test()

    assert report.passed
    assert report.source == "rides recorded with the model"
    assert len(report.rides) == 6
    assert report.got == report.expected  # the same code and library: the same bits
    assert report.max_difference == 0.0
    assert loaded.timings["self_test_s"] > 0
    assert "contract_s" in loaded.timings


def test_a_model_whose_answers_changed_is_refused(model_dir: Path, tmp_path: Path) -> None:
    """The case of a pickle that still runs under another library version, but computes
    something else: here its intercept moved by two minutes."""
    changed = copy_model(model_dir, tmp_path / "changed")
    edit_pipeline(
        changed, lambda pipeline: setattr(pipeline[-1], "intercept_", pipeline[-1].intercept_ + 2.0)
    )

    with pytest.raises(ModelLoadError) as refused:
        load_model(str(changed), tmp_path / "cache")

    message = str(refused.value)
    assert message.startswith(
        f"cannot load model from '{changed}': self-test failed: 6 of 6 predictions differ from those "
        "recorded with the model, by up to 2 min (tolerance 1e-06 min + 1e-06 x |expected|): ride "
    )
    [(was, now)] = [(float(a), float(b)) for a, b in [message.split(" was ")[1].split(", now ")]]
    assert now - was == pytest.approx(2.0)


def test_a_difference_within_the_tolerance_passes(model_dir: Path, tmp_path: Path) -> None:
    def nudge(mlmodel: dict[str, Any]) -> None:
        recorded = mlmodel["metadata"]["known_rides"]["predictions"]
        recorded[0] += TOLERANCE_ABSOLUTE / 2

    report = load_model(str(copy_model(model_dir, tmp_path / "m", nudge)), tmp_path / "c").self_test()
    assert report.passed
    assert 0 < report.max_difference <= TOLERANCE_ABSOLUTE


def test_a_model_that_raises_on_every_ride_is_refused_at_init(own_model_dir: Path, tmp_path: Path) -> None:
    """A column model logged without a signature is given feature dicts, and raises on each."""

    def without_signature(mlmodel: dict[str, Any]) -> None:
        del mlmodel["signature"]

    path = copy_model(own_model_dir, tmp_path / "no-signature", without_signature)

    with pytest.raises(ModelLoadError) as refused:
        load_model(str(path), tmp_path / "cache")

    message = str(refused.value)
    assert message.startswith(
        f"cannot load model from '{path}': self-test failed: the model raised on the 5 rides recorded "
        "with the model: "
    )
    assert message.endswith(
        " (the model has no signature, so it was given the course's features ['PU_DO', 'trip_distance'] "
        "as feature dicts)"
    )


def test_without_recorded_rides_the_built_in_rides_catch_a_non_finite_model(
    model_dir: Path, tmp_path: Path
) -> None:
    def without_known_rides(mlmodel: dict[str, Any]) -> None:
        del mlmodel["metadata"]

    plain = copy_model(model_dir, tmp_path / "plain", without_known_rides)
    report = load_model(str(plain), tmp_path / "c").self_test()
    assert report.passed
    assert (report.source, report.expected, len(report.got or [])) == (
        "built-in sample rides",
        None,
        len(BUILT_IN_RIDES),
    )

    broken = copy_model(plain, tmp_path / "nan")
    edit_pipeline(broken, lambda pipeline: setattr(pipeline[-1], "intercept_", np.nan))
    with pytest.raises(ModelLoadError) as refused:
        load_model(str(broken), tmp_path / "c")
    assert str(refused.value) == (
        f"cannot load model from '{broken}': self-test failed: the model returned a non-finite prediction "
        "(nan) for ride 130->205 3.66 mi"
    )


def test_an_answer_that_is_not_numbers_fails_the_report(model_dir: Path, tmp_path: Path) -> None:
    class Words:
        def predict(self, features: list[dict[str, Any]]) -> list[str]:
            return ["soon"] * len(features)

    loaded = load_model(str(model_dir), tmp_path)
    report = replace(loaded, predictor=Words()).self_test()
    assert not report.passed
    assert report.problem == (
        "the model's answer for the 6 rides recorded with the model is unusable: "
        "predictions must be numbers, got str ('soon')"
    )


def test_malformed_known_rides_are_named(model_dir: Path, tmp_path: Path) -> None:
    def malformed(mlmodel: dict[str, Any]) -> None:
        mlmodel["metadata"]["known_rides"]["predictions"].pop()

    with pytest.raises(ModelLoadError, match="known_rides holds 6 rides and 5 predictions"):
        load_model(str(copy_model(model_dir, tmp_path / "m", malformed)), tmp_path / "c")


@pytest.mark.parametrize(
    ("event", "is_self_test"),
    [
        ({"self_test": True}, True),
        ({"self_test": "yes"}, False),
        ({"Records": [], "self_test": True}, False),  # a Kinesis event never is
        ({"Records": []}, False),
        ([{"self_test": True}], False),
    ],
)
def test_only_the_documented_event_is_a_self_test(event: Any, is_self_test: bool) -> None:
    assert is_self_test_event(event) is is_self_test


@pytest.fixture
def function(
    kinesis: Any, model_dir: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> Iterator[ModuleType]:
    """lambda_function imported as a new container's init would, with both streams."""
    create_stream(kinesis, "preds")
    create_stream(kinesis, "dlq")
    for name, value in {
        "MODEL_URI": str(model_dir),
        "MODEL_CACHE_DIR": str(tmp_path / "cache"),
        "PREDICTIONS_STREAM_NAME": "preds",
        "DEAD_LETTER_STREAM_NAME": "dlq",
    }.items():
        monkeypatch.setenv(name, value)
    sys.modules.pop("lambda_function", None)
    yield importlib.import_module("lambda_function")
    sys.modules.pop("lambda_function", None)


def test_the_self_test_event_returns_the_report_and_writes_nothing(
    function: ModuleType, kinesis: Any
) -> None:
    answer = function.lambda_handler({"self_test": True}, FakeLambdaContext())

    assert json.loads(json.dumps(answer)) == answer  # what Lambda serialises for the caller
    assert (answer["self_test"], answer["passed"], answer["problem"]) == ("passed", True, None)
    model: LoadedModel = function.service.model
    assert (answer["model_uri"], answer["model_version"]) == (model.info.uri, model.info.version)
    assert answer["got"] == answer["expected"]
    assert len(answer["rides"]) == 6
    assert read_stream(kinesis, "preds") == read_stream(kinesis, "dlq") == []


def test_a_kinesis_event_is_processed_even_with_a_self_test_key(function: ModuleType, kinesis: Any) -> None:
    ride = {"ride": {"PULocationID": 130, "DOLocationID": 205, "trip_distance": 3.66}, "ride_id": 1}
    event = {**event_from_payloads([json.dumps(ride).encode()]), "self_test": True}

    assert function.lambda_handler(event, FakeLambdaContext()) == {"batchItemFailures": []}
    assert [p["prediction"]["ride_id"] for p in read_stream(kinesis, "preds")] == [1]


def test_a_failing_self_test_is_reported_not_raised(
    function: ModuleType, monkeypatch: pytest.MonkeyPatch
) -> None:
    """After init, the pre-traffic check reads `passed`: a model that went wrong says so."""

    class Broken:
        def predict(self, features: Any) -> Any:
            raise RuntimeError("model server went away")

    monkeypatch.setattr(function.service, "model", replace(function.service.model, predictor=Broken()))
    answer = function.lambda_handler({"self_test": True}, FakeLambdaContext())
    assert (answer["self_test"], answer["passed"], answer["got"]) == ("failed", False, None)
    assert answer["problem"] == (
        "the model raised on the 6 rides recorded with the model: RuntimeError: model server went away"
    )
