"""Batch scoring: TLC trip data (parquet) in, one prediction per trip (parquet) out.

`score(model, input_uri, output_uri)` scores one file, a local path or s3:// URI; the command
(`python -m batch INPUT OUTPUT`, batch/cli.py) and the Lambda handler (batch/handler.py) call it.

Reads and writes in chunks (`chunk_rows`), with ONE model call per chunk, its input built
as chosen at load (`stream/features.py`, as for the stream and the web service), and the rules
of `ride_events.Ride` applied by column (`batch/validation.py`), so a trip gets the same
prediction, or the same reason for none, whichever way it is asked for. Memory holds one chunk
and one parquet row group of the input, however many row groups the input has (see
READ_BUFFER_BYTES).

Output, one row per input row, in input order:
  ride_id               the row's position in the input (0-based): TLC files carry no trip id
  pickup_datetime       the input's lpep_/tpep_pickup_datetime
  PULocationID, DOLocationID, trip_distance   as in the input
  predicted_duration    minutes; null when the row cannot be predicted
  actual_duration       minutes from the pick-up and drop-off times, when the input has them
  model_version         the model's registry version or run id
  no_prediction_reason  why predicted_duration is null (e.g. "trip_distance: missing"), else null

Rows that cannot be predicted (a null, non-integer or out-of-range zone, a null, negative,
non-finite or too long distance: the bounds are the stream's, `MAX_ZONE_ID` and
`MAX_TRIP_DISTANCE_MILES`) are kept with a reason, counted, and listed in the summary: never
dropped silently.
S3 is read with pyarrow's own S3 client, pointed at boto3's standard endpoint variables, and
written by `batch.output`, so that the output appears only when the whole run succeeded.
"""

from __future__ import annotations

import functools
import math
import os
import time
from collections import Counter
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from batch.output import OutputError, replaced_on_success, s3_location
from batch.validation import FEATURE_COLUMNS, ColumnValidation
from stream.model_loading import LoadedModel
from stream.ride_events import TLC_BOUNDS, RideBounds

# Green taxi files use lpep_, yellow taxi files tpep_.
PICKUP_COLUMNS = ("lpep_pickup_datetime", "tpep_pickup_datetime")
DROPOFF_COLUMNS = ("lpep_dropoff_datetime", "tpep_dropoff_datetime")
# The range the model was trained on (scripts/train.py): the summary gives RMSE within it too,
# because real files hold trips of 0 minutes or several days that swamp the overall figure.
TRAINED_RANGE_MINUTES = (1.0, 60.0)
DEFAULT_CHUNK_ROWS = 50_000
# Reading: pyarrow's default pre-buffering reads ahead every row group of the file (memory
# grows with the input: measured ~25 bytes a row), so it is off. Unbuffered, a column chunk is
# read whole; through a buffer it streams (a 2M-row file of one row group: 49 MB held
# unbuffered, 11 MB with 1 MiB buffers). Parquet still decodes a row group at a time, so memory
# is one chunk plus at most one row group of the input, whatever the number of row groups.
READ_BUFFER_BYTES = 1 << 20
MINUTE_IN_UNITS = {"s": 60, "ms": 60_000, "us": 60_000_000, "ns": 60_000_000_000}
# Parquet dictionary encoding for the output's few-valued columns only: tried on every column (the
# default), it hashes a million distinct ride ids, times and predictions before giving up on them
# (writing 1,000,000 rows: 0.63 s, against 0.21 s this way, and a 5 % smaller file).
DICTIONARY_COLUMNS = [*FEATURE_COLUMNS, "model_version", "no_prediction_reason"]


class ScoringError(Exception):
    """Bad input or output (missing file, not parquet, missing columns); the message says which."""


@dataclass(frozen=True)
class Trips:
    """An opened TLC trip file and which of its columns hold what."""

    uri: str
    file: pq.ParquetFile
    pickup_column: str
    dropoff_column: str | None

    @property
    def rows(self) -> int:
        return self.file.metadata.num_rows

    def chunks(self, chunk_rows: int) -> Iterator[pa.RecordBatch]:
        columns = [self.pickup_column, *FEATURE_COLUMNS]
        if self.dropoff_column:
            columns.append(self.dropoff_column)
        return self.file.iter_batches(batch_size=chunk_rows, columns=columns)

    @cached_property
    def output_schema(self) -> pa.Schema:
        schema = self.file.schema_arrow
        return pa.schema(
            [
                pa.field("ride_id", pa.int64()),
                pa.field("pickup_datetime", schema.field(self.pickup_column).type),
                *(schema.field(name) for name in FEATURE_COLUMNS),
                pa.field("predicted_duration", pa.float64()),
                pa.field("actual_duration", pa.float64()),
                pa.field("model_version", pa.string()),
                pa.field("no_prediction_reason", pa.string()),
            ]
        )


@dataclass
class ScoringSummary:
    """What a run did: counts, why rows were not predicted, and the error where it is known."""

    input: str
    output: str
    model_version: str
    rows: int = 0
    predicted: int = 0
    model_calls: int = 0
    not_predicted: Counter[str] = field(default_factory=Counter)
    squared_error: float = 0.0
    compared: int = 0
    squared_error_in_range: float = 0.0
    compared_in_range: int = 0
    seconds: float = 0.0

    @property
    def rmse(self) -> float | None:
        return math.sqrt(self.squared_error / self.compared) if self.compared else None

    @property
    def rmse_in_range(self) -> float | None:
        return (
            math.sqrt(self.squared_error_in_range / self.compared_in_range)
            if self.compared_in_range
            else None
        )

    def add_errors(self, predicted: npt.NDArray[np.float64], actual: npt.NDArray[np.float64]) -> None:
        """Running sums, not the rows: memory stays flat however many rows are compared."""
        known = ~np.isnan(predicted) & ~np.isnan(actual)
        error = predicted[known] - actual[known]
        low, high = TRAINED_RANGE_MINUTES
        in_range = (actual[known] >= low) & (actual[known] <= high)
        self.squared_error += float(np.sum(error**2))
        self.compared += int(known.sum())
        self.squared_error_in_range += float(np.sum(error[in_range] ** 2))
        self.compared_in_range += int(in_range.sum())

    def lines(self) -> list[str]:
        rate = self.rows / self.seconds if self.seconds else 0.0
        lines = [
            f"scored {self.rows:,} rows of {self.input} in {self.seconds:.1f} s ({rate:,.0f} rows/s, "
            f"{self.model_calls} model call{'s' if self.model_calls != 1 else ''}), model version {self.model_version}",
            f"predicted {self.predicted:,}; not predicted {self.rows - self.predicted:,}",
        ]
        lines += [f"  {count:,} x {reason}" for reason, count in self.not_predicted.most_common(5)]
        if len(self.not_predicted) > 5:
            lines.append(
                f"  ... and {len(self.not_predicted) - 5} other reasons (no_prediction_reason column)"
            )
        if self.rmse is None:
            lines.append("RMSE: no actual durations in the input (no drop-off times)")
        else:
            low, high = TRAINED_RANGE_MINUTES
            in_range = f"{self.rmse_in_range:.2f}" if self.rmse_in_range is not None else "n/a"
            lines.append(
                f"RMSE {self.rmse:.2f} min over {self.compared:,} rides with an actual duration; "
                f"{in_range} min over the {self.compared_in_range:,} of {low:g}-{high:g} min (the training range)"
            )
        lines.append(f"wrote {self.output}")
        return lines


def filesystem_for(uri: str, env: Mapping[str, str] | None = None) -> tuple[pafs.FileSystem, str]:
    """A local path or s3://bucket/key, as a pyarrow filesystem and the path within it."""
    if uri.startswith("s3://"):
        env = os.environ if env is None else env
        # pyarrow's C++ S3 client is not boto3: hand it boto3's standard endpoint variables
        # (AWS_ENDPOINT_URL_S3, else AWS_ENDPOINT_URL) so moto or LocalStack work unchanged.
        endpoint = env.get("AWS_ENDPOINT_URL_S3") or env.get("AWS_ENDPOINT_URL") or None
        region = env.get("AWS_REGION") or env.get("AWS_DEFAULT_REGION") or None
        bucket, key = _s3_location(uri)
        return pafs.S3FileSystem(endpoint_override=endpoint, region=region), f"{bucket}/{key}"
    _refuse_other_schemes(uri)
    return pafs.LocalFileSystem(), str(Path(uri).expanduser().absolute())


def _s3_location(uri: str) -> tuple[str, str]:
    try:
        return s3_location(uri)
    except ValueError as error:
        raise ScoringError(str(error)) from None


def _refuse_other_schemes(uri: str) -> None:
    if "://" in uri and not uri.startswith("s3://"):
        raise ScoringError(f"{uri}: only local paths and s3:// URIs are supported")


def refuse_same_file(input_uri: str, output_uri: str) -> None:
    """Writing the output over the input would destroy it: refuse any two names for one file
    (`trips.parquet` and `./trips.parquet`, a symbolic or hard link) or one S3 object."""
    input_s3, output_s3 = input_uri.startswith("s3://"), output_uri.startswith("s3://")
    if input_s3 and output_s3:
        same = _s3_location(input_uri) == _s3_location(output_uri)
    elif input_s3 or output_s3 or "://" in input_uri or "://" in output_uri:
        same = False
    else:
        source, target = (Path(uri).expanduser() for uri in (input_uri, output_uri))
        same = source.resolve() == target.resolve() or (
            source.exists() and target.exists() and source.samefile(target)
        )
    if same:
        raise ScoringError(f"{output_uri}: is the input file ({input_uri}); give another output")


def open_trips(uri: str) -> Trips:
    """Open the input and check it holds TLC trip columns; ScoringError names what is wrong."""
    filesystem, path = filesystem_for(uri)
    try:
        kind = filesystem.get_file_info(path).type
        if kind == pafs.FileType.NotFound:
            raise ScoringError(f"{uri}: no such file")
        if kind == pafs.FileType.Directory:
            raise ScoringError(f"{uri}: is a directory; give one parquet file")
        file = pq.ParquetFile(
            filesystem.open_input_file(path), pre_buffer=False, buffer_size=READ_BUFFER_BYTES
        )
    except (pa.ArrowInvalid, OSError) as error:  # not parquet, access denied, no bucket...
        raise ScoringError(f"{uri}: cannot read as parquet: {error}") from None
    names = file.schema_arrow.names
    pickup = next((name for name in PICKUP_COLUMNS if name in names), None)
    missing = [name for name in FEATURE_COLUMNS if name not in names]
    if pickup is None:
        missing.insert(0, " or ".join(PICKUP_COLUMNS))
    if missing or pickup is None:
        raise ScoringError(f"{uri}: missing columns {missing}: expected NYC TLC trip data (green or yellow)")
    dropoff = next((name for name in DROPOFF_COLUMNS if name in names), None)
    for column in filter(None, (pickup, dropoff)):
        if not pa.types.is_timestamp(file.schema_arrow.field(column).type):
            raise ScoringError(
                f"{uri}: column {column} is {file.schema_arrow.field(column).type}, not a timestamp"
            )
    return Trips(uri, file, pickup, dropoff)


def actual_minutes(batch: pa.RecordBatch, trips: Trips) -> pa.Array[Any]:
    """Drop-off minus pick-up in minutes (null where either is null, or without drop-off times)."""
    if trips.dropoff_column is None:
        return pa.nulls(batch.num_rows, pa.float64())
    pickup = batch.column(trips.pickup_column)
    dropoff = batch.column(trips.dropoff_column).cast(pickup.type)
    elapsed = pc.subtract(dropoff, pickup).cast(pa.int64())
    return pc.divide(elapsed.cast(pa.float64()), float(MINUTE_IN_UNITS[pickup.type.unit]))


def score_chunk(
    model: LoadedModel,
    trips: Trips,
    batch: pa.RecordBatch,
    first_ride_id: int,
    summary: ScoringSummary,
    *,
    validation: ColumnValidation,
) -> pa.Table:
    """One chunk: validate by column, ONE model call for its valid rides, the output rows."""
    checked = validation.check(batch)
    predicted = np.full(batch.num_rows, np.nan)
    if len(checked.rides):
        # The model's shape decided at load (stream/features.py), as for the stream and the web.
        predicted[checked.valid] = model.predict_minutes(checked.rides)
        summary.model_calls += 1
    non_finite = checked.valid & ~np.isfinite(predicted)
    predicted[non_finite] = np.nan  # +-inf, stored as null like every row without a prediction
    checked.reasons.add(non_finite, "model returned a non-finite prediction")
    actual = actual_minutes(batch, trips)
    summary.rows += batch.num_rows
    summary.predicted += int(np.count_nonzero(checked.valid & ~non_finite))
    summary.not_predicted.update(checked.reasons.counts())
    summary.add_errors(predicted, actual.to_numpy(zero_copy_only=False))
    return pa.table(
        [
            pa.array(np.arange(first_ride_id, first_ride_id + batch.num_rows), pa.int64()),
            batch.column(trips.pickup_column),
            *(batch.column(name) for name in FEATURE_COLUMNS),
            pa.array(predicted, pa.float64(), from_pandas=True),  # NaN -> null
            actual,
            repeated(model.info.version, batch.num_rows),
            checked.reasons.to_arrow(),
        ],
        schema=trips.output_schema,
    )


@functools.lru_cache(maxsize=2)  # every chunk but the last has the same length
def repeated(text: str, count: int) -> pa.Array[Any]:
    """One string `count` times, made from its buffers: 0.1 ms for 50,000 rows, against 1.5 ms
    from a list of references (pyarrow.repeat is slower still; measured here)."""
    data = text.encode()
    offsets = (np.arange(count + 1, dtype=np.int64) * len(data)).tobytes()
    array = pa.LargeStringArray.from_buffers(count, pa.py_buffer(offsets), pa.py_buffer(data * count))
    return array.cast(pa.string())


def score(
    model: LoadedModel,
    source: str | Trips,
    output_uri: str,
    chunk_rows: int = DEFAULT_CHUNK_ROWS,
    on_chunk: Callable[[int], object] | None = None,
    *,
    bounds: RideBounds = TLC_BOUNDS,
    metadata: Mapping[str, str] | None = None,
) -> ScoringSummary:
    """Score every row of `source` (a path or s3:// URI, or a file opened with `open_trips`)
    into `output_uri`; `on_chunk(rows)` after each chunk is written. ScoringError for bad input
    or output. The output appears (or replaces an older one) only once every row is written.
    `metadata`: the S3 output object's user metadata (x-amz-meta-*); ignored for a local path."""
    if isinstance(source, str):
        trips = open_trips(source)
        with trips.file:
            return score(model, trips, output_uri, chunk_rows, on_chunk, bounds=bounds, metadata=metadata)
    trips = source
    refuse_same_file(trips.uri, output_uri)
    validation = ColumnValidation(bounds)
    summary = ScoringSummary(trips.uri, output_uri, model.info.version)
    started = time.perf_counter()
    with _parquet_writer(output_uri, trips.output_schema, metadata) as writer:
        for batch in trips.chunks(chunk_rows):
            # summary.rows counts the rows before this chunk: the first ride id in it.
            writer.write_table(score_chunk(model, trips, batch, summary.rows, summary, validation=validation))
            if on_chunk:
                on_chunk(batch.num_rows)
    summary.seconds = time.perf_counter() - started
    return summary


@contextmanager
def _parquet_writer(
    uri: str, schema: pa.Schema, metadata: Mapping[str, str] | None = None
) -> Iterator[pq.ParquetWriter]:
    """A writer whose output appears only if scoring succeeds (batch.output): a run that fails
    half-way leaves no half-written results, and an older output as it was."""
    if uri.startswith("s3://"):
        _s3_location(uri)
    _refuse_other_schemes(uri)
    try:
        with replaced_on_success(uri, metadata) as sink:
            # pyarrow takes a list of columns for use_dictionary; its stubs know only a bool.
            writer = pq.ParquetWriter(sink, schema, use_dictionary=DICTIONARY_COLUMNS)  # type: ignore[arg-type]
            try:
                yield writer
            finally:
                writer.close()
    except OutputError as error:  # no such bucket or directory, access denied...
        raise ScoringError(f"{uri}: cannot write: {error}") from None
