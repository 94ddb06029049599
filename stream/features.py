"""What the function can give a model, and in which shape: chosen once, at load.

The model declares what it wants in its MLflow signature (the `MLmodel` file, read here as
YAML + JSON: no mlflow import on the runtime path). Every name it asks for must be one of
`FEATURES`: the ride's own fields and the features derived from them. Two shapes of model
are served, decided in one place (`choose_features`):

- a pipeline that starts with a `DictVectorizer` (the course's), and any `pyfunc` model, gets
  a list of `{name: value}` dicts, one per ride, with exactly the signature's names;
- any other model (e.g. a regressor over `[PULocationID, DOLocationID, trip_distance]`) gets
  a 2-D numpy array, one column per name, in the signature's order.

For a pipeline that starts with a fitted `DictVectorizer`, the dicts are not even made: the
vectorizer's sparse matrix is built by column from its vocabulary (`VocabularyShortcut`) and
given to the rest of the pipeline, equal to the bit to what the vectorizer makes of the dicts
(checked at load). Other vectorizer settings, and anything else, take the general path.

A model without a signature gets the course's features (`COURSE_FEATURES`) as dicts, with a
warning. Builders take `RideColumns`, the batch by column, so that validated `Ride` objects
and a file's columns reach the model through the same code.
"""

from __future__ import annotations

import dataclasses
import json
import operator
import re
import sys
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, Protocol

import numpy as np
import numpy.typing as npt

if TYPE_CHECKING:  # numpy alone at run time: benchmarks' batch limit builds features without pydantic
    from stream.ride_events import Ride

# A column of one feature for every ride of a batch: a list, or a numpy array from a file.
Column = Sequence[Any] | npt.NDArray[Any]
Kind = Literal["number", "string"]

MODEL_DOCS = "docs/model.md, 'Use your own model'"


@dataclass(frozen=True, slots=True)
class RideColumns:
    """The rides of one model call, by column (TLC names), in the order of the batch."""

    PULocationID: Column
    DOLocationID: Column
    trip_distance: Column

    @classmethod
    def from_rides(cls, rides: Sequence[Ride]) -> RideColumns:
        return cls(
            [ride.PULocationID for ride in rides],
            [ride.DOLocationID for ride in rides],
            [ride.trip_distance for ride in rides],
        )

    def __len__(self) -> int:
        return len(self.trip_distance)


def python_values(column: Column) -> Sequence[Any]:
    """A column as Python values: what a ride's fields are, however the batch was read."""
    return column.tolist() if isinstance(column, np.ndarray) else column


def zone_pair(rides: RideColumns) -> list[str]:
    """`PU_DO`, the course's feature: the pick-up and drop-off zones as one category."""
    return [
        f"{pickup}_{dropoff}"
        for pickup, dropoff in zip(
            python_values(rides.PULocationID), python_values(rides.DOLocationID), strict=True
        )
    ]


@dataclass(frozen=True, slots=True)
class Feature:
    kind: Kind  # what the model receives: a number (int or float) or a string
    column: Callable[[RideColumns], Column]


# Everything a model may ask for. To add a feature, add an entry: its name, its kind, and a
# function of the batch's columns (a new input field also goes into Ride and RideColumns).
FEATURES: dict[str, Feature] = {
    "PULocationID": Feature("number", operator.attrgetter("PULocationID")),
    "DOLocationID": Feature("number", operator.attrgetter("DOLocationID")),
    "trip_distance": Feature("number", operator.attrgetter("trip_distance")),
    "PU_DO": Feature("string", zone_pair),
}
# What `make train` trains on, and what a model without a signature is given.
COURSE_FEATURES = ("PU_DO", "trip_distance")

# MLflow's column types (mlflow.types.DataType), by what the function can give for them.
SIGNATURE_KINDS: dict[str, Kind] = {
    "integer": "number",
    "long": "number",
    "float": "number",
    "double": "number",
    "string": "string",
}


class FeatureContractError(ValueError):
    """The model asks for inputs the function cannot give it; the message names both sides."""


@dataclass(frozen=True)
class ModelInput:
    name: str
    type: str  # MLflow's type name: long, double, string...


def read_signature(mlmodel: dict[str, Any]) -> list[ModelInput] | None:
    """The signature's inputs from a parsed `MLmodel` file; None when it has no signature."""
    signature = mlmodel.get("signature") or {}
    raw = signature.get("inputs") if isinstance(signature, dict) else None
    if not raw:
        return None
    specs = json.loads(raw) if isinstance(raw, str) else raw
    if not isinstance(specs, list):
        raise FeatureContractError(f"the MLmodel signature's inputs are not a list: {raw!r}")
    unnamed = [spec for spec in specs if not isinstance(spec, dict) or not spec.get("name")]
    if unnamed:
        raise FeatureContractError(
            "the model's signature has unnamed inputs (a tensor spec, as from a numpy example): "
            "the function gives inputs by name, so log the model with a signature of named "
            f"columns, e.g. infer_signature(a pandas DataFrame, ...) ({MODEL_DOCS})"
        )
    return [ModelInput(str(spec["name"]), _type_name(spec.get("type"))) for spec in specs]


def _type_name(value: Any) -> str:
    # Newer MLflow writes nested types (array, object) as dicts: name them by their "type".
    return str(value.get("type") if isinstance(value, dict) else value)


class FeatureBuilder(Protocol):
    """Turns a batch of rides into the one input the model is called with."""

    @property
    def names(self) -> tuple[str, ...]: ...

    @property
    def shape(self) -> str: ...

    def build(self, rides: RideColumns) -> Any: ...


@dataclass(frozen=True)
class FeatureDicts:
    """One `{name: value}` dict per ride: DictVectorizer pipelines and pyfunc models."""

    names: tuple[str, ...]

    @property
    def shape(self) -> str:
        return "feature dicts"

    def build(self, rides: RideColumns) -> list[dict[str, Any]]:
        # Filled column by column: 3.4x faster than dict(zip(names, row)) per ride, and with
        # RideColumns.from_rides 0.8x the time of the former per-ride function (5,000 rides).
        first, *others = self.names
        rows = [{first: value} for value in python_values(FEATURES[first].column(rides))]
        for name in others:
            for row, value in zip(rows, python_values(FEATURES[name].column(rides)), strict=True):
                row[name] = value
        return rows


@dataclass(frozen=True)
class FeatureArray:
    """A 2-D array, one row per ride and one column per name: models over named columns."""

    names: tuple[str, ...]
    # Fitted on a pandas DataFrame: scikit-learn warns on every call with an array, so the
    # caller silences that one warning (the order was checked against the fitted names).
    fitted_with_names: bool = False

    @property
    def shape(self) -> str:
        return "2-D array"

    def build(self, rides: RideColumns) -> npt.NDArray[Any]:
        numeric = all(FEATURES[name].kind == "number" for name in self.names)
        dtype: type = np.float64 if numeric else object
        array: npt.NDArray[Any] = np.empty((len(rides), len(self.names)), dtype=dtype)
        for index, name in enumerate(self.names):
            array[:, index] = FEATURES[name].column(rides)
        return array


# Zone ids up to 2**31 - 1 make one int64 key per pair (pick-up in the high half).
_ZONE_KEY_LIMIT = 1 << 31


# A dense table [pick-up, drop-off] -> column for zone ids this small (TLC's 265: 70,756 cells):
# 1,000,000 rides looked up in ~17 ms, against ~100 ms by binary search (profiled here).
DENSE_PAIR_TABLE_CELLS = 1 << 22


@dataclass(frozen=True)
class ZonePairColumns:
    """The vectorizer's column for each zone pair it saw (`PU_DO=<pu>_<do>`), looked up by the
    zones' numbers, without a string per ride: in a dense table when the zone ids are small,
    else by binary search over the pairs' keys."""

    keys: npt.NDArray[np.int64]  # pick-up * 2**31 + drop-off, sorted
    columns: npt.NDArray[np.intp]  # the vectorizer's column of each key
    table: npt.NDArray[np.int32] | None  # [pick-up, drop-off] -> column or -1, or None

    @classmethod
    def from_vocabulary(
        cls, vocabulary: dict[str, int], prefix: str, dense_cells: int = DENSE_PAIR_TABLE_CELLS
    ) -> ZonePairColumns:
        """Only the keys `zone_pair` can make: two decimal integers as Python writes them. Any
        other key (`PU_DO=130.0_205.0`, `PU_DO=007_1`) matches no ride on the general path either."""
        key_pattern = re.compile(re.escape(prefix) + r"(0|[1-9][0-9]*)_(0|[1-9][0-9]*)")
        pairs: dict[tuple[int, int], int] = {}
        for key, column in vocabulary.items():
            if found := key_pattern.fullmatch(key):
                pickup, dropoff = int(found[1]), int(found[2])
                if pickup < _ZONE_KEY_LIMIT and dropoff < _ZONE_KEY_LIMIT:
                    pairs[pickup, dropoff] = column
        ordered = sorted(pairs)
        keys = np.array([pickup * _ZONE_KEY_LIMIT + dropoff for pickup, dropoff in ordered], dtype=np.int64)
        columns = np.array([pairs[pair] for pair in ordered], dtype=np.intp)
        table = None
        shape = (max((p for p, _ in ordered), default=0) + 1, max((d for _, d in ordered), default=0) + 1)
        if shape[0] * shape[1] <= dense_cells and columns.max(initial=0) < np.iinfo(np.int32).max:
            table = np.full(shape, -1, dtype=np.int32)
            table[tuple(np.array(ordered, dtype=np.intp).reshape(-1, 2).T)] = columns
        return cls(keys, columns, table)

    def lookup(self, pickup: npt.NDArray[np.int64], dropoff: npt.NDArray[np.int64]) -> npt.NDArray[np.intp]:
        """The column of each ride's pair; -1 for a pair the vectorizer never saw. For zone ids
        of validated rides (1 and up); a negative id is taken for an unseen one."""
        if self.table is not None:
            rows, columns = self.table.shape
            inside = (pickup >= 0) & (pickup < rows) & (dropoff >= 0) & (dropoff < columns)
            found = self.table[np.where(inside, pickup, 0), np.where(inside, dropoff, 0)]
            return np.where(inside, found, -1).astype(np.intp, copy=False)
        known = (pickup >= 0) & (pickup < _ZONE_KEY_LIMIT) & (dropoff >= 0) & (dropoff < _ZONE_KEY_LIMIT)
        wanted = np.where(known, pickup, 0) * _ZONE_KEY_LIMIT + np.where(known, dropoff, 0)
        if not len(self.keys):
            return np.full(len(wanted), -1, dtype=np.intp)
        position = np.minimum(np.searchsorted(self.keys, wanted), len(self.keys) - 1)
        found = known & (self.keys[position] == wanted)
        return np.where(found, self.columns[position], -1)


@dataclass(frozen=True)
class VocabularyShortcut:
    """The course pipeline's input without a dict per ride: the sparse matrix its fitted
    `DictVectorizer` would make of the feature dicts, built by column from its vocabulary
    (`PU_DO=<pu>_<do>` -> column, a number -> its column; an unseen pair has no entry, as
    DictVectorizer ignores it), then the rest of the pipeline on it. Made by `choose_features`
    only for settings it handles, and only when it matches the vectorizer on probe rides."""

    names: tuple[str, ...]
    pipeline: Any  # the model it was made for: the shortcut holds for that object alone
    rest: Any  # the pipeline after its vectorizer: what the matrix is given to
    numbers: tuple[tuple[str, int], ...]  # (feature, its column) for the numbers it was fitted on
    zone_pairs: ZonePairColumns | None  # None when it was not fitted on PU_DO
    width: int  # the vectorizer's number of columns
    dtype: npt.DTypeLike
    matrix_type: Callable[..., Any]  # scipy's csr_matrix or csr_array, as the vectorizer returns
    csr_array: Callable[..., Any]  # scipy.sparse.csr_array

    def build(self, rides: RideColumns) -> Any:
        """The vectorizer's matrix: per row, its entries in the order the dicts list them, then
        sorted by column (DictVectorizer's own sort_indices); explicit zeros kept, as it keeps them."""
        count = len(rides)
        columns: list[npt.NDArray[np.intp]] = []
        values: list[npt.NDArray[Any]] = []
        for name in self.names:
            if name == "PU_DO" and self.zone_pairs is not None:
                pickup = np.asarray(rides.PULocationID, dtype=np.int64)
                dropoff = np.asarray(rides.DOLocationID, dtype=np.int64)
                columns.append(self.zone_pairs.lookup(pickup, dropoff))
                values.append(np.ones(count, dtype=self.dtype))
            elif (column := dict(self.numbers).get(name)) is not None:
                columns.append(np.full(count, column, dtype=np.intp))
                values.append(np.asarray(FEATURES[name].column(rides), dtype=self.dtype))
        index = np.stack(columns, axis=1) if columns else np.empty((count, 0), dtype=np.intp)
        data = np.stack(values, axis=1) if values else np.empty((count, 0), dtype=self.dtype)
        present = index >= 0
        indptr = np.zeros(count + 1, dtype=np.int64)
        np.cumsum(present.sum(axis=1), out=indptr[1:])
        # As DictVectorizer builds it (a csr_array, whose index arrays scipy sizes its own way),
        # then in the type it returns; the probe at load compares the two, dtypes included.
        matrix = self.csr_array(
            (data[present], index[present].astype(np.intc), indptr),
            shape=(count, self.width),
            dtype=self.dtype,
        )
        matrix.sort_indices()
        return matrix if self.matrix_type is self.csr_array else self.matrix_type(matrix)

    def predict(self, rides: RideColumns) -> Any:
        return self.rest.predict(self.build(rides))


def vocabulary_shortcut(predictor: Any, vectorizer: Any, names: tuple[str, ...]) -> VocabularyShortcut | None:
    """The shortcut for a Pipeline whose first step is this fitted DictVectorizer, or None (the
    general path): nested pipelines, a dense output (`sparse=False`), a non-float dtype, or a
    string feature other than PU_DO are not handled; nor is anything the probe finds different."""
    pipeline_module = sys.modules.get("sklearn.pipeline")
    steps = getattr(predictor, "steps", None)
    if (
        pipeline_module is None
        or not isinstance(predictor, pipeline_module.Pipeline)
        or not isinstance(steps, list)
        or len(steps) < 2
        or steps[0][1] is not vectorizer
        or not getattr(vectorizer, "sparse", False)
        or np.dtype(vectorizer.dtype).kind != "f"
        or not isinstance(getattr(vectorizer, "vocabulary_", None), dict)
        or any(FEATURES[name].kind == "string" and name != "PU_DO" for name in names)
    ):
        return None
    from scipy import sparse  # noqa: PLC0415 - loaded already: scikit-learn imports it

    vocabulary: dict[str, int] = vectorizer.vocabulary_
    prefix = f"PU_DO{vectorizer.separator}"
    fitted_on_pairs = "PU_DO" in names and any(key.startswith(prefix) for key in vocabulary)
    shortcut = VocabularyShortcut(
        names=names,
        pipeline=predictor,
        rest=predictor[1:],
        numbers=tuple(
            (name, vocabulary[name])
            for name in names
            if FEATURES[name].kind == "number" and name in vocabulary
        ),
        zone_pairs=ZonePairColumns.from_vocabulary(vocabulary, prefix) if fitted_on_pairs else None,
        width=len(vocabulary),
        dtype=vectorizer.dtype,
        matrix_type=type(vectorizer.transform([{}])),
        csr_array=sparse.csr_array,
    )
    probe = _probe_rides(shortcut.zone_pairs)
    expected = vectorizer.transform(FeatureDicts(names).build(probe))
    return shortcut if _same_matrix(shortcut.build(probe), expected) else None


def _probe_rides(pairs: ZonePairColumns | None) -> RideColumns:
    """Rides of seen and unseen zone pairs, zero and fractional distances."""
    keys = np.empty(0, dtype=np.int64) if pairs is None else pairs.keys
    seen = [divmod(key, _ZONE_KEY_LIMIT) for key in keys[:3].tolist()]
    unseen = (int(keys.max(initial=0)) // _ZONE_KEY_LIMIT + 1, 1)  # past every pick-up zone it saw
    zones = [*seen, unseen, (1, 2)]
    distances = [0.0, 3.66, 1e3, 0.1, 25.0][: len(zones)]
    return RideColumns([pu for pu, _ in zones], [do for _, do in zones], distances)


def _same_matrix(got: Any, expected: Any) -> bool:
    """The same type, shape, index and value arrays, to the bit (-0.0 is not 0.0)."""
    return (
        type(got) is type(expected)
        and got.shape == expected.shape
        and all(
            getattr(got, part).dtype == getattr(expected, part).dtype
            and getattr(got, part).tobytes() == getattr(expected, part).tobytes()
            for part in ("data", "indices", "indptr")
        )
    )


def ride_features(pickup_zone: int, dropoff_zone: int, trip_distance: float) -> dict[str, Any]:
    """The course's features for one ride, as a signature-less model gets them (a reference for
    baselines and tests; the service builds a whole batch at once)."""
    return FeatureDicts(COURSE_FEATURES).build(RideColumns([pickup_zone], [dropoff_zone], [trip_distance]))[0]


@dataclass(frozen=True)
class FeatureChoice:
    """The builder chosen for a model, and what a user should hear about the choice."""

    builder: FeatureBuilder
    source: Literal["signature", "course default"]
    warning: str | None = None
    # For a DictVectorizer pipeline: the same input built by column, and the rest of the pipeline.
    shortcut: VocabularyShortcut | None = None

    def describe(self) -> str:
        how = "; built by column from the DictVectorizer's vocabulary" if self.shortcut else ""
        return f"{self.builder.shape} of {list(self.builder.names)} (from the {self.source}{how})"


def choose_features(predictor: Any, flavor: str, inputs: list[ModelInput] | None) -> FeatureChoice:
    """The one place that decides what the model is given; FeatureContractError if it cannot be."""
    vectorizer = _dict_vectorizer(predictor)
    if inputs is None:
        builder: FeatureBuilder = FeatureDicts(COURSE_FEATURES)
        choice = FeatureChoice(
            builder,
            "course default",
            f"the model has no signature: it is given the course's features {list(COURSE_FEATURES)} as "
            f"feature dicts, unchecked; log it with a signature to have its inputs checked at load ({MODEL_DOCS})",
        )
    else:
        check_available(inputs)
        names = tuple(spec.name for spec in inputs)
        if vectorizer is not None or flavor == "pyfunc":
            builder = FeatureDicts(names)
        else:
            fitted = _fitted_names(predictor)
            if fitted is not None and list(fitted) != list(names):
                raise FeatureContractError(
                    f"the signature lists the columns {list(names)} but the model was fitted on "
                    f"{list(fitted)}: the function gives them in the signature's order"
                )
            builder = FeatureArray(names, fitted_with_names=fitted is not None)
        choice = FeatureChoice(builder, "signature")
    if vectorizer is not None:
        check_vocabulary(vectorizer, builder.names)
        shortcut = vocabulary_shortcut(predictor, vectorizer, builder.names)
        choice = dataclasses.replace(choice, shortcut=shortcut)
    return choice


def check_available(inputs: list[ModelInput]) -> None:
    """Every input the signature names must be a feature the function makes, of the right kind."""
    asked = [spec.name for spec in inputs]
    missing = [name for name in asked if name not in FEATURES]
    if missing:
        raise FeatureContractError(
            f"the model asks for {_names(missing)}, which the function cannot provide. "
            f"It asks for {_names(asked)}; available: {_names(FEATURES)} ({MODEL_DOCS})"
        )
    wrong = [
        f"{spec.name} as {spec.type} (the function gives a {FEATURES[spec.name].kind})"
        for spec in inputs
        if SIGNATURE_KINDS.get(spec.type) != FEATURES[spec.name].kind
    ]
    if wrong:
        raise FeatureContractError(f"the model's signature asks for {'; '.join(wrong)} ({MODEL_DOCS})")


def check_vocabulary(vectorizer: Any, given: Sequence[str]) -> None:
    """A fitted DictVectorizer silently ignores keys it never saw: every key it was fitted on
    must be among those it is given, as a string (one-hot) or a number as it was fitted."""
    fitted = getattr(vectorizer, "feature_names_", None)
    if fitted is None:
        return
    separator = getattr(vectorizer, "separator", "=")
    kinds: dict[str, Kind] = {}
    for column in fitted:
        name, one_hot, _ = str(column).partition(separator)
        kinds.setdefault(name, "string" if one_hot else "number")
    if missing := [name for name in kinds if name not in given]:
        raise FeatureContractError(
            f"the model's DictVectorizer was fitted on {_names(kinds)} but is given {_names(given)}: "
            f"{_names(missing)} would be silently missing. Available: {_names(FEATURES)} ({MODEL_DOCS})"
        )
    if wrong := [name for name, kind in kinds.items() if FEATURES[name].kind != kind]:
        raise FeatureContractError(
            "the model's DictVectorizer was fitted on "
            + "; ".join(
                f"{name} as a {kinds[name]}, the function gives a {FEATURES[name].kind}" for name in wrong
            )
        )


def _names(names: Iterable[str]) -> str:
    return "[" + ", ".join(names) + "]"


def _first_step(predictor: Any) -> Any:
    steps = getattr(predictor, "steps", None)
    if isinstance(steps, list) and steps and isinstance(steps[0], tuple):
        return _first_step(steps[0][1])
    return predictor


def _dict_vectorizer(predictor: Any) -> Any:
    """The DictVectorizer the model starts with, or None. Never imports scikit-learn itself:
    if its module is not loaded, unpickling the model did not need it."""
    module = sys.modules.get("sklearn.feature_extraction")
    first = _first_step(predictor)
    return first if module is not None and isinstance(first, module.DictVectorizer) else None


def _fitted_names(predictor: Any) -> Sequence[str] | None:
    """The column names a scikit-learn model was fitted on (from a pandas DataFrame), if any."""
    names = getattr(_first_step(predictor), "feature_names_in_", None)
    return None if names is None else [str(name) for name in names]


class ModelOutputError(ValueError):
    """The model answered with something that is not one number per ride."""


def as_durations(output: Any, count: int) -> list[float]:
    """The model's answer as one float per ride: a 1-D sequence of real numbers (a single
    column, shape (n, 1), is accepted too). NaN and inf pass: the caller decides about them."""
    result: list[float] = duration_array(output, count).tolist()
    return result


def duration_array(output: Any, count: int) -> npt.NDArray[np.float64]:
    """as_durations, as a float64 array."""
    values = np.asarray(output)
    if values.ndim == 2 and values.shape[1] == 1:
        values = values[:, 0]
    if values.shape != (count,):
        raise ModelOutputError(
            f"expected {count} predictions (one per ride), got an array of shape {values.shape}"
        )
    if values.dtype.kind in "iuf":
        return values.astype(np.float64, copy=False)
    if values.dtype.kind == "O" and all(_is_number(value) for value in values.tolist()):
        return np.array([float(value) for value in values.tolist()], dtype=np.float64)
    sample = next((v for v in values.tolist() if not _is_number(v)), values.dtype)
    raise ModelOutputError(f"predictions must be numbers, got {type(sample).__name__} ({sample!r:.40})")


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float | np.integer | np.floating) and not isinstance(value, bool)
