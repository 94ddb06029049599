"""Batch scoring's ride validation: the stream's rules on whole columns, with the stream's reasons.

A row is predicted when its three feature columns hold a valid `ride_events.Ride` (within the
run's `RideBounds`); otherwise it gets a reason, as the per-row validator (`validate_rows`) gives
it: `trip_distance: missing` for nulls, else pydantic's own message per failing field, e.g.
`PULocationID: Input should be a valid integer` (joined with "; "). `ColumnValidation` applies
those rules with numpy to integer and float columns, which TLC files have, and takes the reason
texts from the `Ride` model itself (one probe ride per rule, at start): a million rows are
checked in tens of milliseconds instead of seconds, and the texts cannot drift from the
stream's. A chunk with a column of any other type (text, booleans, decimals...) goes through
`validate_rows`, ride by ride, so every type gets exactly the stream's answer.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
import pyarrow as pa
import pyarrow.compute as pc
from pydantic import ValidationError

from stream.features import RideColumns
from stream.ride_events import TLC_BOUNDS, Ride, RideBounds, ride_types, validation_problems

FEATURE_COLUMNS = ("PULocationID", "DOLocationID", "trip_distance")
ZONE_COLUMNS = FEATURE_COLUMNS[:2]

# What is wrong with one field of a row, as a small code (0: nothing).
VALID, MISSING, WRONG_TYPE, TOO_SMALL, TOO_LARGE = range(5)
CODES = 5


@dataclass
class RowReasons:
    """Why each row of a chunk is not predicted: a code per row into a short table of texts
    (a million rows share a handful of reasons); code 0 (text None) for a predicted row."""

    codes: npt.NDArray[np.intp]
    texts: list[str | None]

    @classmethod
    def from_list(cls, reasons: list[str | None]) -> RowReasons:
        texts: list[str | None] = [None]
        index: dict[str | None, int] = {None: 0}
        codes = np.array([index.setdefault(reason, len(index)) for reason in reasons], dtype=np.intp)
        texts += [text for text in index if text is not None]
        return cls(codes, texts)

    def add(self, rows: npt.NDArray[np.bool_], text: str) -> None:
        """Give these rows (predicted so far) a reason."""
        if rows.any():
            self.codes[rows] = len(self.texts)
            self.texts.append(text)

    def counts(self) -> Counter[str]:
        found = np.bincount(self.codes, minlength=len(self.texts))
        counts: Counter[str] = Counter()
        for text, count in zip(self.texts, found.tolist(), strict=True):
            if text is not None and count:
                counts[text] += count
        return counts

    def to_arrow(self) -> pa.Array[Any]:
        if not self.codes.any():
            return pa.nulls(len(self.codes), pa.string())
        return pc.take(pa.array(self.texts, pa.string()), pa.array(self.codes, pa.int64()))

    def as_list(self) -> list[str | None]:
        return [self.texts[code] for code in self.codes.tolist()]


@dataclass(frozen=True)
class CheckedRows:
    """One chunk, checked: its valid rides (in order) and a reason for every other row."""

    rides: RideColumns  # zones as int64, distances as float64 (lists from validate_rows)
    valid: npt.NDArray[np.bool_]
    reasons: RowReasons


class ColumnValidation:
    """`Ride`'s rules (with these bounds) on a chunk's columns; built once per run."""

    def __init__(self, bounds: RideBounds = TLC_BOUNDS) -> None:
        self.bounds = bounds
        self.ride_type = ride_types(bounds).ride
        zone_messages = {
            WRONG_TYPE: self._message("PULocationID", 0.5),
            TOO_SMALL: self._message("PULocationID", 0),
            TOO_LARGE: self._message("PULocationID", bounds.max_zone_id + 1),
        }
        distance_messages = {
            WRONG_TYPE: self._message("trip_distance", math.nan),
            TOO_SMALL: self._message("trip_distance", -1.0),
            TOO_LARGE: self._message("trip_distance", math.nextafter(bounds.max_trip_distance, math.inf)),
        }
        messages = {
            "PULocationID": zone_messages,
            "DOLocationID": zone_messages,
            "trip_distance": distance_messages,
        }
        # One text per combination of the three fields' codes: code = (pu * 5 + do) * 5 + distance.
        self.texts: list[str | None] = []
        for combined in range(CODES**3):
            codes = dict(zip(FEATURE_COLUMNS, (combined // 25, combined // 5 % 5, combined % 5), strict=True))
            missing = [name for name, code in codes.items() if code == MISSING]
            if missing:  # as validate_rows: the nulls alone, before any other check
                self.texts.append("; ".join(f"{name}: missing" for name in missing))
            else:
                problems = [f"{name}: {messages[name][code]}" for name, code in codes.items() if code]
                self.texts.append("; ".join(problems) or None)

    def _message(self, field: str, value: float) -> str:
        """Pydantic's text for this value of this field, all other fields valid."""
        ride = {"PULocationID": 1, "DOLocationID": 1, "trip_distance": 0.0, field: value}
        try:
            self.ride_type.model_validate(ride)
        except ValidationError as error:
            problems = validation_problems(error, root="row")
            if [where for where, _ in problems] == [field]:
                return problems[0][1]
        raise RuntimeError(f"{self.ride_type.__name__} does not refuse {field}={value!r} alone")

    def check(self, batch: pa.RecordBatch) -> CheckedRows:
        columns = [batch.column(name) for name in FEATURE_COLUMNS]
        if not all(_numeric(column.type) for column in columns):
            return per_row(batch, self.ride_type)
        (pickup_codes, pickup), (dropoff_codes, dropoff) = (self._zone(column) for column in columns[:2])
        distance_codes, distance = self._distance(columns[2])
        combined = (pickup_codes.astype(np.intp) * CODES + dropoff_codes) * CODES + distance_codes
        valid = combined == 0
        reasons = RowReasons(combined, list(self.texts))
        if valid.all():
            return CheckedRows(RideColumns(pickup, dropoff, distance), valid, reasons)
        return CheckedRows(RideColumns(pickup[valid], dropoff[valid], distance[valid]), valid, reasons)

    def _zone(self, column: pa.Array[Any]) -> tuple[npt.NDArray[np.uint8], npt.NDArray[np.int64]]:
        """Codes, and the zones as int64 (0 where invalid). A whole float is that integer (pandas
        stores an integer column with nulls as float64); any other float is refused, as Ride's
        strict int refuses it."""
        values = _filled(column)
        codes = np.zeros(len(values), dtype=np.uint8)
        if values.dtype.kind == "f":
            # In float64, as Ride sees them: numpy would compare a float32 with the bound
            # rounded to float32 (16,777,219 is 16,777,220 in float32).
            values = values.astype(np.float64, copy=False)
            whole = np.isfinite(values) & (np.floor(values) == values)
            codes[~whole] = WRONG_TYPE
        else:
            whole = np.ones(len(values), dtype=bool)
        codes[whole & (values <= 0)] = TOO_SMALL
        codes[whole & (values > self.bounds.max_zone_id)] = TOO_LARGE
        codes[_nulls(column)] = MISSING
        zones = np.where(codes == VALID, values, 0).astype(np.int64)
        return codes, zones

    def _distance(self, column: pa.Array[Any]) -> tuple[npt.NDArray[np.uint8], npt.NDArray[np.float64]]:
        """Codes, and the distances as float64 (an integer column is read as Ride reads an int)."""
        values = _filled(column).astype(np.float64, copy=False)
        codes = np.zeros(len(values), dtype=np.uint8)
        finite = np.isfinite(values)
        codes[~finite] = WRONG_TYPE
        codes[finite & (values < 0)] = TOO_SMALL
        codes[finite & (values > self.bounds.max_trip_distance)] = TOO_LARGE
        codes[_nulls(column)] = MISSING
        return codes, values


def _numeric(kind: pa.DataType) -> bool:
    return bool(pa.types.is_integer(kind) or pa.types.is_floating(kind))


def _filled(column: pa.Array[Any]) -> npt.NDArray[Any]:
    """The column's values, nulls replaced by 0 (their code says missing anyway)."""
    filled = column.fill_null(0) if column.null_count else column
    values: npt.NDArray[Any] = filled.to_numpy(zero_copy_only=False)
    return values


def _nulls(column: pa.Array[Any]) -> npt.NDArray[np.bool_]:
    if not column.null_count:
        return np.zeros(len(column), dtype=bool)
    nulls: npt.NDArray[np.bool_] = column.is_null().to_numpy(zero_copy_only=False)
    return nulls


def _zone_value(value: Any) -> Any:
    # pandas stores an integer column that holds nulls as float64: 130.0 is zone 130. Other
    # floats (130.5, NaN) are left for Ride's validation to refuse.
    return int(value) if isinstance(value, float) and value.is_integer() else value


def validate_rows(
    batch: pa.RecordBatch, ride_type: type[Ride] = Ride
) -> tuple[list[Ride], list[int], list[str | None]]:
    """The valid rides, their positions in the batch, and a reason per row that is not one,
    one `Ride` at a time (`ride_type`: Ride, or `ride_types(bounds).ride` for other bounds)."""
    pickup_zones, dropoff_zones, distances = (batch.column(name).to_pylist() for name in FEATURE_COLUMNS)
    rides: list[Ride] = []
    positions: list[int] = []
    reasons: list[str | None] = [None] * batch.num_rows
    for row, values in enumerate(zip(pickup_zones, dropoff_zones, distances, strict=True)):
        pickup_zone, dropoff_zone, distance = values
        if pickup_zone is None or dropoff_zone is None or distance is None:
            nulls = [name for name, value in zip(FEATURE_COLUMNS, values, strict=True) if value is None]
            reasons[row] = "; ".join(f"{name}: missing" for name in nulls)
            continue
        try:
            ride = ride_type(
                PULocationID=_zone_value(pickup_zone),
                DOLocationID=_zone_value(dropoff_zone),
                trip_distance=distance,
            )
        except ValidationError as error:
            reasons[row] = "; ".join(f"{f}: {r}" for f, r in validation_problems(error, root="row"))
            continue
        rides.append(ride)
        positions.append(row)
    return rides, positions, reasons


def per_row(batch: pa.RecordBatch, ride_type: type[Ride] = Ride) -> CheckedRows:
    """validate_rows' answer as CheckedRows."""
    rides, positions, reasons = validate_rows(batch, ride_type)
    valid = np.zeros(batch.num_rows, dtype=bool)
    valid[positions] = True
    return CheckedRows(RideColumns.from_rides(rides), valid, RowReasons.from_list(reasons))
