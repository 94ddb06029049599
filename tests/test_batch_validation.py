"""Batch scoring's column validation agrees with the per-row validator (one `Ride` per row, the
stream's model) on which rows are valid, what they hold, and why the others are not, for a
file full of edge cases in every column type a parquet file may bring."""

from __future__ import annotations

import itertools
import math
from decimal import Decimal
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from batch import validation as batch_validation
from batch.validation import ColumnValidation, RowReasons, validate_rows
from stream.ride_events import TLC_BOUNDS, RideBounds, ride_types

BIG = 2**62
# Per column type, the values a zone may hold in a column of that type.
ZONES: dict[str, tuple[pa.DataType, list[Any]]] = {
    "int64": (pa.int64(), [None, -1, 0, 1, 130, 265, 266, 300, 301, BIG]),
    "uint8": (pa.uint8(), [None, 0, 1, 130, 255]),
    "uint64": (pa.uint64(), [None, 0, 265, 2**64 - 1]),
    "float64": (
        pa.float64(),
        [
            None,
            130.0,
            130.5,
            0.5,
            -0.0,
            0.0,
            1.0,
            265.0,
            265.5,
            266.0,
            300.0,
            math.nan,
            math.inf,
            -math.inf,
            1e30,
        ],
    ),
    "float32": (
        pa.float32(),
        [None, 130.0, 130.5, -0.0, 265.0, 266.0, 16_777_220.0, math.nan, -math.inf, 1e30],
    ),
    "string": (pa.string(), [None, "130", "abc", ""]),
    "bool": (pa.bool_(), [None, True, False]),
    "all null": (pa.null(), [None]),
}
DISTANCES: dict[str, tuple[pa.DataType, list[Any]]] = {
    "float64": (
        pa.float64(),
        [
            None,
            -1.0,
            -0.0,
            0.0,
            5e-324,
            3.66,
            50.0,
            50.5,
            50.6,
            1000.0,
            math.nextafter(1000.0, math.inf),
            1e308,
            math.nan,
            math.inf,
            -math.inf,
        ],
    ),
    "float32": (pa.float32(), [None, -0.0, 3.66, 1000.0, 1000.0001, math.nan, math.inf]),
    "float16": (pa.float16(), [None, 0.0, 3.66, 999.5, 1000.0, 1001.0, math.inf]),
    "int64": (pa.int64(), [None, -1, 0, 5, 50, 51, 1000, 1001, BIG]),
    "string": (pa.string(), [None, "3.66", "far"]),
    "decimal": (pa.decimal128(10, 2), [None, Decimal(0), Decimal("3.66"), Decimal("1000.01")]),
}
COMBINATIONS = [
    ("int64", "int64", "float64"),
    ("float64", "float64", "float64"),
    ("float32", "int64", "float32"),
    ("uint8", "float64", "int64"),
    ("uint64", "float32", "float16"),
    ("int64", "float64", "float64"),
    ("string", "int64", "float64"),  # the per-row path, for a type numpy cannot hold as numbers
    ("int64", "bool", "float64"),
    ("all null", "int64", "int64"),
    ("int64", "int64", "string"),
    ("float64", "int64", "decimal"),
]


def edge_case_file(path: Path, pickup: str, dropoff: str, distance: str) -> pa.RecordBatch:
    """Every combination of the three columns' edge values, one row each, written and read back."""
    types = [ZONES[pickup], ZONES[dropoff], DISTANCES[distance]]
    rows = list(itertools.product(*(values for _, values in types)))
    columns = [pa.array([row[i] for row in rows], kind) for i, (kind, _) in enumerate(types)]
    table = pa.table(columns, names=["PULocationID", "DOLocationID", "trip_distance"])
    pq.write_table(table, path)
    [batch] = pq.read_table(path).to_batches(max_chunksize=len(rows))
    return batch


# Bounds of other zone maps, and bounds that float32 cannot hold: the float32 nearest to 3.66 is
# above it (a float32 3.66 is too long), the one nearest to 16,777,219 is 16,777,220.
BOUNDS = [
    TLC_BOUNDS,
    RideBounds(max_zone_id=300, max_trip_distance=50.5),
    RideBounds(max_zone_id=16_777_219, max_trip_distance=3.66),
]


@pytest.mark.parametrize("bounds", BOUNDS, ids=["TLC", "300-50.5", "float32-edges"])
@pytest.mark.parametrize("types", COMBINATIONS, ids=["-".join(c) for c in COMBINATIONS])
def test_columns_get_the_per_row_validators_answer(
    types: tuple[str, str, str], bounds: RideBounds, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pickup, dropoff, distance = types
    batch = edge_case_file(tmp_path / "edge-cases.parquet", pickup, dropoff, distance)
    rides, positions, reasons = validate_rows(batch, ride_types(bounds).ride)
    if all(kind.startswith(("int", "uint", "float")) for kind in (pickup, dropoff, distance)):
        # Numbers are checked by column, never ride by ride.
        monkeypatch.setattr(batch_validation, "validate_rows", None)

    checked = ColumnValidation(bounds).check(batch)

    assert checked.reasons.as_list() == reasons
    assert np.flatnonzero(checked.valid).tolist() == positions
    assert list(checked.rides.PULocationID) == [ride.PULocationID for ride in rides]
    assert list(checked.rides.DOLocationID) == [ride.DOLocationID for ride in rides]
    # The same float64 values, to the bit (-0.0 included).
    expected_distances = np.array([ride.trip_distance for ride in rides], dtype=np.float64)
    assert np.asarray(checked.rides.trip_distance, dtype=np.float64).tobytes() == expected_distances.tobytes()
    assert checked.reasons.counts() == {r: reasons.count(r) for r in set(reasons) if r is not None}
    assert checked.reasons.to_arrow().to_pylist() == reasons


def test_the_file_holds_every_kind_of_reason(tmp_path: Path) -> None:
    """The edge cases reach every rule: without it, agreement could be agreement on little."""
    batch = edge_case_file(tmp_path / "edge-cases.parquet", "float64", "int64", "float64")
    reasons = {reason for reason in validate_rows(batch)[2] if reason is not None}
    for expected in [
        "PULocationID: missing",
        "PULocationID: Input should be a valid integer",
        "PULocationID: Input should be greater than 0",
        "PULocationID: Input should be less than or equal to 265",
        "DOLocationID: Input should be less than or equal to 265",
        "trip_distance: Input should be a finite number",
        "trip_distance: Input should be greater than or equal to 0",
        "trip_distance: Input should be less than or equal to 1000",
        "PULocationID: Input should be a valid integer; DOLocationID: Input should be greater than 0; "
        "trip_distance: Input should be a finite number",
        "PULocationID: missing; trip_distance: missing",
    ]:
        assert expected in reasons


def test_a_reason_added_after_the_model_call_is_counted_and_written() -> None:
    reasons = RowReasons.from_list([None, "trip_distance: missing", None, None])
    reasons.add(np.array([True, False, False, True]), "model returned a non-finite prediction")

    assert reasons.as_list() == [
        "model returned a non-finite prediction",
        "trip_distance: missing",
        None,
        "model returned a non-finite prediction",
    ]
    assert reasons.counts() == {"model returned a non-finite prediction": 2, "trip_distance: missing": 1}
    assert reasons.to_arrow().to_pylist() == reasons.as_list()
