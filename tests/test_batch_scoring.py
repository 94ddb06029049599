"""Batch scoring of TLC parquet files: locally, on S3 (a real moto server), in flat memory."""

from __future__ import annotations

import io
import math
import re
import tracemalloc
import uuid
from dataclasses import replace
from pathlib import Path
from typing import Any

import boto3
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from batch import scoring
from batch.cli import main
from batch.output import MIN_PART_BYTES, S3Upload
from batch.scoring import open_trips, score
from model_service import predict_durations
from scripts.train import synthetic_trips
from stream.model_loading import LoadedModel, load_model
from stream.ride_events import Ride
from tests.test_model_service import CountingPredictor


@pytest.fixture(scope="module")
def model(model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> LoadedModel:
    return load_model(str(model_dir), tmp_path_factory.mktemp("cache"))


def write_trips(path: Path, rows: int, seed: int = 7) -> pd.DataFrame:
    trips = synthetic_trips(rows, month=3, seed=seed)
    trips.to_parquet(path)
    return trips


def expected_minutes(model: LoadedModel, trips: pd.DataFrame) -> list[float]:
    rides = [
        Ride(PULocationID=int(pu), DOLocationID=int(do), trip_distance=float(d))
        for pu, do, d in zip(trips.PULocationID, trips.DOLocationID, trips.trip_distance, strict=True)
    ]
    return predict_durations(model, rides)


def test_every_row_is_scored_in_chunks_with_one_model_call_each(model: LoadedModel, tmp_path: Path) -> None:
    trips = write_trips(tmp_path / "trips.parquet", 2_500)
    counting = CountingPredictor(model.predictor)

    summary = score(
        replace(model, predictor=counting),
        open_trips(str(tmp_path / "trips.parquet")),
        str(tmp_path / "out.parquet"),
        chunk_rows=1_000,
    )

    out = pd.read_parquet(tmp_path / "out.parquet")
    assert counting.calls == [1_000, 1_000, 500]
    assert (summary.rows, summary.predicted, summary.model_calls) == (2_500, 2_500, 3)
    assert out.ride_id.tolist() == list(range(2_500))
    assert out.pickup_datetime.equals(trips.lpep_pickup_datetime.rename("pickup_datetime"))
    assert out[["PULocationID", "DOLocationID", "trip_distance"]].equals(
        trips[["PULocationID", "DOLocationID", "trip_distance"]]
    )
    assert out.predicted_duration.tolist() == expected_minutes(model, trips)
    actual = (trips.lpep_dropoff_datetime - trips.lpep_pickup_datetime).dt.total_seconds() / 60
    np.testing.assert_allclose(out.actual_duration, actual, rtol=1e-12)
    assert set(out.model_version) == {model.info.version}
    assert out.no_prediction_reason.isna().all()


def test_rows_that_cannot_be_predicted_are_kept_with_a_reason_and_counted(
    model: LoadedModel, tmp_path: Path
) -> None:
    # As pandas writes an integer column with nulls: float64 zone ids.
    rows = [
        (130.0, 205.0, 3.66, None),
        (None, 205.0, 3.66, "PULocationID: missing"),
        (130.0, None, None, "DOLocationID: missing; trip_distance: missing"),
        (130.0, 205.0, -0.5, "trip_distance: Input should be greater than or equal to 0"),
        (130.5, 205.0, 3.66, "PULocationID: Input should be a valid integer"),
        (130.0, 0.0, 3.66, "DOLocationID: Input should be greater than 0"),
        (130.0, 205.0, math.inf, "trip_distance: Input should be a finite number"),
        (130.0, 205.0, math.nan, "trip_distance: Input should be a finite number"),
        (130.0, 205.0, 0.0, None),
        (
            266.0,
            1e30,
            3.66,
            "PULocationID: Input should be less than or equal to 265; DOLocationID: Input should be less than or equal to 265",
        ),
        (265.0, 205.0, 1e308, "trip_distance: Input should be less than or equal to 1000"),
    ]
    pickup = pd.Timestamp("2021-01-01 10:00")
    columns = {
        "lpep_pickup_datetime": pa.array([pickup] * len(rows), pa.timestamp("us")),
        "lpep_dropoff_datetime": pa.array(
            [pickup + pd.Timedelta(minutes=20)] * len(rows), pa.timestamp("us")
        ),
        **{
            name: pa.array([r[i] for r in rows], pa.float64())
            for i, name in enumerate(scoring.FEATURE_COLUMNS)
        },
    }
    pq.write_table(pa.table(columns), tmp_path / "dirty.parquet")  # NaN stays NaN, None is null

    summary = score(
        model, open_trips(str(tmp_path / "dirty.parquet")), str(tmp_path / "out.parquet"), chunk_rows=4
    )

    out = pq.read_table(tmp_path / "out.parquet").to_pylist()
    assert [row["no_prediction_reason"] for row in out] == [r[3] for r in rows]
    predicted = [row["predicted_duration"] for row in out]
    assert (
        predicted[0]
        == predict_durations(model, [Ride(PULocationID=130, DOLocationID=205, trip_distance=3.66)])[0]
    )
    assert [p is None for p in predicted] == [r[3] is not None for r in rows]
    assert (summary.rows, summary.predicted) == (11, 2)
    assert summary.not_predicted["trip_distance: Input should be a finite number"] == 2
    assert sum(summary.not_predicted.values()) == 9
    assert all(row["actual_duration"] == 20.0 for row in out)


def test_a_non_finite_prediction_is_stored_as_null_with_the_reason(
    model: LoadedModel, tmp_path: Path
) -> None:
    write_trips(tmp_path / "trips.parquet", 3)

    class InfiniteOnFirstRide:
        def predict(self, features: list[dict[str, Any]]) -> list[float]:
            return [math.inf] + [12.5] * (len(features) - 1)

    summary = score(
        replace(model, predictor=InfiniteOnFirstRide()),
        open_trips(str(tmp_path / "trips.parquet")),
        str(tmp_path / "out.parquet"),
    )

    out = pq.read_table(tmp_path / "out.parquet")
    assert out["predicted_duration"].to_pylist() == [None, 12.5, 12.5]
    assert out["no_prediction_reason"].to_pylist() == ["model returned a non-finite prediction", None, None]
    assert (summary.predicted, summary.compared) == (2, 2)


def test_other_zone_maps_set_their_bounds_through_the_environment(
    model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    trips = synthetic_trips(4, month=3, seed=1)
    trips["PULocationID"] = [300, 301, 300, 300]
    trips["trip_distance"] = [1.0, 1.0, 50.0, 50.5]
    trips.to_parquet(tmp_path / "trips.parquet")
    monkeypatch.setenv("MAX_ZONE_ID", "300")
    monkeypatch.setenv("MAX_TRIP_DISTANCE_MILES", "50")

    code = main(
        [str(tmp_path / "trips.parquet"), str(tmp_path / "out.parquet"), "--model-uri", str(model_dir)]
    )

    assert code == 0
    assert pq.read_table(tmp_path / "out.parquet")["no_prediction_reason"].to_pylist() == [
        None,
        "PULocationID: Input should be less than or equal to 300",
        None,
        "trip_distance: Input should be less than or equal to 50",
    ]
    assert "predicted 2; not predicted 2" in capsys.readouterr().out


def rmse_line(output: str) -> str:
    return next(line for line in output.splitlines() if line.startswith("RMSE"))


def test_the_command_prints_a_summary_with_rmse_against_actual_durations(
    model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    write_trips(tmp_path / "trips.parquet", 3_000)
    monkeypatch.setenv("MODEL_URI", str(model_dir))
    monkeypatch.setenv("MODEL_CACHE_DIR", str(tmp_path / "cache"))

    assert (
        main(
            [
                str(tmp_path / "trips.parquet"),
                str(tmp_path / "out" / "predictions.parquet"),
                "--chunk-rows",
                "1000",
            ]
        )
        == 0
    )

    out = pd.read_parquet(tmp_path / "out" / "predictions.parquet")
    error = out.predicted_duration - out.actual_duration
    in_range = out.actual_duration.between(1, 60)
    printed = capsys.readouterr()
    assert rmse_line(printed.out) == (
        f"RMSE {np.sqrt(np.mean(error**2)):.2f} min over 3,000 rides with an actual duration; "
        f"{np.sqrt(np.mean(error[in_range] ** 2)):.2f} min over the {in_range.sum():,} of 1-60 min (the training range)"
    )
    assert "scored 3,000 rows" in printed.out
    assert "3 model calls" in printed.out
    assert "3.00k/3.00k" in printed.err  # the progress bar


def test_yellow_taxi_files_without_drop_off_times_are_scored_without_rmse(
    model: LoadedModel, tmp_path: Path
) -> None:
    trips = synthetic_trips(50, month=3, seed=1).drop(columns="lpep_dropoff_datetime")
    trips.rename(columns={"lpep_pickup_datetime": "tpep_pickup_datetime"}).to_parquet(
        tmp_path / "yellow.parquet"
    )

    summary = score(model, open_trips(str(tmp_path / "yellow.parquet")), str(tmp_path / "out.parquet"))

    out = pd.read_parquet(tmp_path / "out.parquet")
    assert out.actual_duration.isna().all()
    assert out.predicted_duration.tolist() == expected_minutes(model, trips)
    assert summary.rmse is None
    assert "RMSE: no actual durations in the input (no drop-off times)" in summary.lines()


BAD_INPUTS = {
    "no such file": (lambda d: d / "missing.parquet", "missing.parquet: no such file"),
    "a directory": (lambda d: d, "is a directory; give one parquet file"),
    "not parquet": (lambda d: _write(d / "trips.csv", b"a,b\n1,2\n"), "trips.csv: cannot read as parquet"),
    "missing columns": (
        lambda d: _parquet(
            d / "t.parquet", synthetic_trips(5, 1, 1).drop(columns=["trip_distance", "lpep_pickup_datetime"])
        ),
        "t.parquet: missing columns ['lpep_pickup_datetime or tpep_pickup_datetime', 'trip_distance']",
    ),
    "pick-up time as text": (
        lambda d: _parquet(d / "t.parquet", synthetic_trips(5, 1, 1).astype({"lpep_pickup_datetime": str})),
        "t.parquet: column lpep_pickup_datetime is large_string, not a timestamp",
    ),
    "unsupported scheme": (
        lambda d: "gs://bucket/trips.parquet",
        "only local paths and s3:// URIs are supported",
    ),
}


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def _parquet(path: Path, frame: pd.DataFrame) -> Path:
    frame.to_parquet(path)
    return path


@pytest.mark.parametrize(("make_input", "message"), BAD_INPUTS.values(), ids=BAD_INPUTS.keys())
def test_bad_input_exits_2_with_a_clear_message_and_writes_nothing(
    make_input: Any, message: str, tmp_path: Path, model_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    source = make_input(tmp_path)

    code = main([str(source), str(tmp_path / "out.parquet"), "--model-uri", str(model_dir)])

    assert code == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "out.parquet").exists()


def test_a_model_that_cannot_load_exits_2_naming_the_uri(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    write_trips(tmp_path / "trips.parquet", 5)

    code = main([str(tmp_path / "trips.parquet"), str(tmp_path / "out.parquet"), "--model-uri", "/no/model"])

    assert code == 2
    assert (
        "error: cannot load model from '/no/model': /no/model is not a directory" in capsys.readouterr().err
    )


def test_a_failure_half_way_leaves_no_partial_output(model: LoadedModel, tmp_path: Path) -> None:
    write_trips(tmp_path / "trips.parquet", 300)

    class FailsOnSecondChunk(CountingPredictor):
        def predict(self, features: list[dict[str, Any]]) -> Any:
            if self.calls:
                raise RuntimeError("model server went away")
            return super().predict(features)

    with pytest.raises(RuntimeError, match="model server went away"):
        score(
            replace(model, predictor=FailsOnSecondChunk(model.predictor)),
            open_trips(str(tmp_path / "trips.parquet")),
            str(tmp_path / "out.parquet"),
            chunk_rows=100,
        )

    assert not (tmp_path / "out.parquet").exists()


def test_a_failed_run_leaves_an_older_output_as_it_was(model: LoadedModel, tmp_path: Path) -> None:
    write_trips(tmp_path / "trips.parquet", 300)
    output = tmp_path / "out.parquet"
    output.write_bytes(b"yesterday's predictions")
    seen_during_the_run: list[bytes] = []

    class FailsOnThirdChunk(CountingPredictor):
        def predict(self, features: list[dict[str, Any]]) -> Any:
            if len(self.calls) == 2:
                raise RuntimeError("model server went away")
            return super().predict(features)

    with pytest.raises(RuntimeError, match="model server went away"):
        score(
            replace(model, predictor=FailsOnThirdChunk(model.predictor)),
            open_trips(str(tmp_path / "trips.parquet")),
            str(output),
            chunk_rows=100,
            on_chunk=lambda _rows: seen_during_the_run.append(output.read_bytes()),
        )

    assert output.read_bytes() == b"yesterday's predictions"
    assert seen_during_the_run == [b"yesterday's predictions"] * 2  # never a partial file
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.parquet", "trips.parquet"]


def test_a_successful_run_replaces_the_output_only_at_the_end(model: LoadedModel, tmp_path: Path) -> None:
    write_trips(tmp_path / "trips.parquet", 300)
    output = tmp_path / "out.parquet"
    output.write_bytes(b"yesterday's predictions")
    seen_during_the_run: list[bytes] = []

    score(
        model,
        open_trips(str(tmp_path / "trips.parquet")),
        str(output),
        chunk_rows=100,
        on_chunk=lambda _rows: seen_during_the_run.append(output.read_bytes()),
    )

    assert seen_during_the_run == [b"yesterday's predictions"] * 3
    assert pq.read_table(output).num_rows == 300
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.parquet", "trips.parquet"]


SAME_FILE = {
    "./ prefix": lambda d: "./trips.parquet",
    "absolute path": lambda d: str(d / "trips.parquet"),
    "through ..": lambda d: "sub/../trips.parquet",
    "symbolic link": lambda d: _link(d / "link.parquet", d / "trips.parquet", symbolic=True),
    "hard link": lambda d: _link(d / "link.parquet", d / "trips.parquet", symbolic=False),
}


def _link(link: Path, target: Path, symbolic: bool) -> str:
    if symbolic:
        link.symlink_to(target)
    else:
        link.hardlink_to(target)
    return link.name


@pytest.mark.parametrize("other_name", SAME_FILE.values(), ids=SAME_FILE.keys())
def test_the_input_is_never_the_output_under_another_name(
    other_name: Any,
    tmp_path: Path,
    model_dir: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "sub").mkdir()
    write_trips(tmp_path / "trips.parquet", 200)
    before = (tmp_path / "trips.parquet").read_bytes()
    output = other_name(tmp_path)

    code = main(["trips.parquet", output, "--model-uri", str(model_dir)])

    assert code == 2
    assert (
        f"error: {output}: is the input file (trips.parquet); give another output" in capsys.readouterr().err
    )
    assert (tmp_path / "trips.parquet").read_bytes() == before


def peak_memory(model: LoadedModel, source: Path, output: Path) -> int:
    """Peak Python heap (tracemalloc, numpy included) plus the most Arrow held at a chunk's end."""
    arrow_peak = 0

    def sample(_rows: int) -> None:
        nonlocal arrow_peak
        arrow_peak = max(arrow_peak, pa.total_allocated_bytes())

    tracemalloc.start()
    try:
        score(model, open_trips(str(source)), str(output), chunk_rows=500, on_chunk=sample)
        python_peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    return python_peak + arrow_peak


def test_memory_stays_flat_as_the_input_grows(model: LoadedModel, tmp_path: Path) -> None:
    # Row groups of 1,000 rows, as parquet writers cut long files. Reading the whole input
    # (pyarrow's default pre-buffering does) or keeping the results would make the 20,000-row
    # run hold about 1 MB more than the 5,000-row run; one chunk at a time, both hold the same.
    for rows, name in [(1_000, "warm-up"), (5_000, "small"), (20_000, "large")]:
        synthetic_trips(rows, month=3, seed=3).to_parquet(tmp_path / f"{name}.parquet", row_group_size=1_000)
    peak_memory(model, tmp_path / "warm-up.parquet", tmp_path / "warm-up-out.parquet")  # imports, caches

    small = peak_memory(model, tmp_path / "small.parquet", tmp_path / "small-out.parquet")
    large = peak_memory(model, tmp_path / "large.parquet", tmp_path / "large-out.parquet")

    assert large < 1.2 * small, f"peak memory {small:,} B for 5,000 rows but {large:,} B for 20,000"


# --- S3, through a real moto server: pyarrow's own S3 client cannot be mocked in-process ---


@pytest.fixture
def s3(moto_server: str, monkeypatch: pytest.MonkeyPatch) -> Any:
    """A fresh bucket (a new name each time: an object's id can be reused, so no hash of one);
    boto3's standard endpoint variable points every client at moto."""
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", moto_server)
    client = boto3.client("s3")
    bucket = f"trips-{uuid.uuid4().hex[:12]}"
    client.create_bucket(Bucket=bucket)
    return client, bucket


def test_scores_from_s3_to_s3_as_it_does_locally(
    s3: Any, model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    client, bucket = s3
    write_trips(tmp_path / "trips.parquet", 1_200)
    client.upload_file(str(tmp_path / "trips.parquet"), bucket, "in/trips.parquet")
    model_args = ["--model-uri", str(model_dir), "--chunk-rows", "500"]

    assert (
        main([f"s3://{bucket}/in/trips.parquet", f"s3://{bucket}/out/predictions.parquet", *model_args]) == 0
    )
    assert main([str(tmp_path / "trips.parquet"), str(tmp_path / "local.parquet"), *model_args]) == 0

    body = client.get_object(Bucket=bucket, Key="out/predictions.parquet")["Body"].read()
    from_s3 = pq.read_table(io.BytesIO(body))
    assert from_s3.num_rows == 1_200
    assert from_s3.equals(pq.read_table(tmp_path / "local.parquet"))
    assert f"wrote s3://{bucket}/out/predictions.parquet" in capsys.readouterr().out


def test_a_missing_s3_object_exits_2_naming_it(
    s3: Any, model_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _, bucket = s3

    code = main(
        [f"s3://{bucket}/nothing.parquet", f"s3://{bucket}/out.parquet", "--model-uri", str(model_dir)]
    )

    assert code == 2
    assert re.search(rf"s3://{bucket}/nothing.parquet: no such file", capsys.readouterr().err)


def test_an_s3_output_naming_the_input_object_another_way_is_refused(
    s3: Any, model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    client, bucket = s3
    write_trips(tmp_path / "trips.parquet", 200)
    client.upload_file(str(tmp_path / "trips.parquet"), bucket, "in/trips.parquet")
    before = client.get_object(Bucket=bucket, Key="in/trips.parquet")["Body"].read()
    model_args = ["--model-uri", str(model_dir)]

    # pyarrow reads "in/./trips.parquet" as "in/trips.parquet": the same object, another name.
    for output in (f"s3://{bucket}/in/./trips.parquet", f"s3://{bucket}/in/trips.parquet"):
        assert main([f"s3://{bucket}/in/trips.parquet", output, *model_args]) == 2

    errors = capsys.readouterr().err
    assert "in/./trips.parquet: expected s3://bucket/key, without empty, '.' or '..' path segments" in errors
    assert f"s3://{bucket}/in/trips.parquet: is the input file" in errors
    assert client.get_object(Bucket=bucket, Key="in/trips.parquet")["Body"].read() == before


def test_a_failed_run_to_s3_leaves_the_older_object_and_no_upload_behind(
    s3: Any, model: LoadedModel, tmp_path: Path
) -> None:
    client, bucket = s3
    write_trips(tmp_path / "trips.parquet", 300)
    client.put_object(Bucket=bucket, Key="out/predictions.parquet", Body=b"yesterday's predictions")

    def current() -> bytes:
        return bytes(client.get_object(Bucket=bucket, Key="out/predictions.parquet")["Body"].read())

    seen_during_the_run: list[bytes] = []

    class FailsOnThirdChunk(CountingPredictor):
        def predict(self, features: list[dict[str, Any]]) -> Any:
            if len(self.calls) == 2:
                raise RuntimeError("model server went away")
            return super().predict(features)

    with pytest.raises(RuntimeError, match="model server went away"):
        score(
            replace(model, predictor=FailsOnThirdChunk(model.predictor)),
            open_trips(str(tmp_path / "trips.parquet")),
            f"s3://{bucket}/out/predictions.parquet",
            chunk_rows=100,
            on_chunk=lambda _rows: seen_during_the_run.append(current()),
        )

    assert current() == b"yesterday's predictions"
    assert seen_during_the_run == [b"yesterday's predictions"] * 2
    assert client.list_multipart_uploads(Bucket=bucket).get("Uploads", []) == []
    assert [o["Key"] for o in client.list_objects_v2(Bucket=bucket)["Contents"]] == [
        "out/predictions.parquet"
    ]


@pytest.mark.parametrize(
    ("output", "message"),
    [
        ("s3://no-such-bucket-here/out.parquet", "s3://no-such-bucket-here/out.parquet: cannot write: "),
        ("{tmp}/trips.parquet/out.parquet", "/trips.parquet/out.parquet: cannot write: "),
    ],
)
@pytest.mark.usefixtures("s3")  # the S3 endpoint variable: no AWS account is reached
def test_an_output_that_cannot_be_written_exits_2_naming_it(
    output: str, message: str, model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    write_trips(tmp_path / "trips.parquet", 20)

    code = main([str(tmp_path / "trips.parquet"), output.format(tmp=tmp_path), "--model-uri", str(model_dir)])

    assert code == 2
    assert message in capsys.readouterr().err


def test_s3_upload_sends_parts_and_the_object_appears_only_when_completed(s3: Any) -> None:
    client, bucket = s3
    data = np.random.default_rng(1).bytes(12 * 1024 * 1024 + 123)
    upload = S3Upload(client, bucket, "big.bin", part_bytes=MIN_PART_BYTES)
    for start in range(0, len(data), 1_000_003):  # writes of any size, as pyarrow makes them
        upload.write(data[start : start + 1_000_003])

    assert upload.tell() == len(data)
    assert len(upload.parts) == 2  # two full 5 MiB parts sent; the rest waits for complete()
    assert "Contents" not in client.list_objects_v2(Bucket=bucket)
    upload.complete()
    assert client.get_object(Bucket=bucket, Key="big.bin")["Body"].read() == data

    empty = S3Upload(client, bucket, "empty.bin")
    empty.complete()
    assert client.get_object(Bucket=bucket, Key="empty.bin")["Body"].read() == b""
