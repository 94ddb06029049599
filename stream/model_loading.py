"""Load the ride-duration model once per container, from a local directory or `s3://` prefix.

Fast path (the usual case): an MLflow model whose `sklearn` flavour was saved with pickle,
cloudpickle or skops is read directly from its `MLmodel` file and deserialised, and an
`s3://` model is fetched with boto3. `mlflow` is not in the function's runtime set: `runs:/`
and `models:/` URIs are pinned and located by `scripts/deploy.py`, and load here only where
mlflow is installed (the dev environment, `stream/model_registry.py`); other flavours need
`mlflow.pyfunc`. Measured on this project's model (benchmarks/README.md): importing
`mlflow.pyfunc` alone costs about 2 s of cold start, as much again as scikit-learn itself.
Downloaded models are kept under the cache directory, the most recently used few only.

Before anything is deserialised, a model pinned by content (MODEL_SHA256, set by
`scripts/deploy.py`) must be exactly those files (`model_files_sha256`). Then two checks, so
that a model that cannot serve fails the init instead of dead-lettering every ride: its
signature against the features the function can give (`stream/features.py`), and its answers
to known rides (`stream/self_test.py`).
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import os
import pickle
import shutil
import tempfile
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import urlparse

import numpy as np
import numpy.typing as npt
import yaml
from threadpoolctl import threadpool_limits

from stream.features import (
    FeatureArray,
    FeatureChoice,
    FeatureContractError,
    RideColumns,
    choose_features,
    duration_array,
    read_signature,
)
from stream.model_registry import RegistryUnavailableError, is_registry_uri, pin
from stream.ride_events import ModelInfo
from stream.self_test import KnownRides, SelfTestReport, run_self_test

# Downloaded models kept under MODEL_CACHE_DIR, most recently used first: a Lambda container
# loads one, a developer's machine sees a new one per training run (Lambda's /tmp is 512 MB).
MAX_CACHED_MODELS = 3
CACHE_ENTRY_PREFIXES = ("s3-", "mlflow-")


class ModelLoadError(RuntimeError):
    """The model could not be loaded; the message names the URI and the reason."""

    def __init__(self, uri: str, reason: str) -> None:
        super().__init__(f"cannot load model from {uri!r}: {reason}")
        self.uri = uri
        self.reason = reason


class Predictor(Protocol):
    def predict(self, features: Any) -> Any: ...


@dataclass(frozen=True)
class LoadedModel:
    """A model ready to predict, what it is given, what it is, and what loading it cost."""

    predictor: Predictor
    info: ModelInfo
    flavor: str
    local_dir: Path
    features: FeatureChoice
    known_rides: KnownRides
    timings: dict[str, float] = field(default_factory=dict)
    version_mismatch: str | None = None

    def predict(self, features: Any) -> Any:
        """The model's own predict, on input already built (see predict_rides)."""
        return self.predictor.predict(features)

    def predict_rides(self, rides: RideColumns) -> list[float]:
        """Minutes per ride, in ONE model call, with the input built as this model wants it."""
        minutes: list[float] = self.predict_minutes(rides).tolist()
        return minutes

    def predict_minutes(self, rides: RideColumns) -> npt.NDArray[np.float64]:
        """predict_rides as an array (batch scoring: no Python float per row)."""
        shortcut = self.features.shortcut
        # The vectorizer's matrix by column, not from a dict per ride: 5,000 validated rides in
        # ~2 ms against ~9 ms, equal to the bit (measured here; checked at load, and in tests).
        # Only for the pipeline it was made from: a predictor swapped in later (a wrapper) gets
        # the general path, which is what its predict expects.
        if shortcut is not None and shortcut.pipeline is self.predictor:
            return duration_array(shortcut.predict(rides), len(rides))
        builder = self.features.builder
        model_input = builder.build(rides)
        if isinstance(builder, FeatureArray) and builder.fitted_with_names:
            with warnings.catch_warnings():
                # Fitted on a DataFrame, scikit-learn warns on every array; load checked the order.
                warnings.filterwarnings("ignore", "X does not have valid feature names", UserWarning)
                output = self.predictor.predict(model_input)
        else:
            output = self.predictor.predict(model_input)
        return duration_array(output, len(rides))

    def self_test(self) -> SelfTestReport:
        """Predict the known rides again and compare (the load check, and the self-test event)."""
        return run_self_test(self.predict_rides, self.known_rides, self.info.uri, self.info.version)


def load_model(
    uri: str,
    cache_dir: Path,
    s3_client_factory: Callable[[], Any] | None = None,
    expected_sha256: str | None = None,
) -> LoadedModel:
    """Fetch (or reuse from the cache) the model directory, check its files against the pinned
    SHA-256 if there is one, deserialise it, and check it: its signature against the features
    the function makes, its answers against its known rides."""
    started = time.perf_counter()
    try:
        local_dir, registry_version = fetch_model_dir(uri, cache_dir, s3_client_factory)
        if expected_sha256:
            verify_model_files(uri, local_dir, expected_sha256)
        fetched = time.perf_counter()
        mlmodel = read_mlmodel(local_dir)
        predictor, flavor = deserialise(local_dir, mlmodel)
        loaded = time.perf_counter()
        features = choose_features(predictor, flavor, read_signature(mlmodel))
        known_rides = KnownRides.from_mlmodel(mlmodel)
    except ModelLoadError as error:
        where = "" if error.uri == uri else f"{error.uri}: "
        raise ModelLoadError(uri, where + error.reason) from error
    except FeatureContractError as error:
        raise ModelLoadError(uri, str(error)) from error
    except Exception as error:  # any failure here must name the URI
        raise ModelLoadError(uri, f"{type(error).__name__}: {error}") from error
    checked = time.perf_counter()
    run_id = mlmodel.get("run_id")
    version = registry_version or run_id or mlmodel.get("model_id") or "unknown"
    model = LoadedModel(
        predictor=predictor,
        info=ModelInfo(uri=uri, version=str(version), run_id=run_id),
        flavor=flavor,
        local_dir=local_dir,
        features=features,
        known_rides=known_rides,
        timings={
            "fetch_s": fetched - started,
            "deserialise_s": loaded - fetched,
            "contract_s": checked - loaded,
        },
        version_mismatch=sklearn_version_mismatch(mlmodel),
    )
    # One thread: gunicorn --preload forks its workers after this, and an OpenMP pool started in
    # the parent hangs them (a HistGradientBoostingRegressor's workers each hit gunicorn's 30 s
    # timeout on their first request). threadpoolctl comes with scikit-learn; ~3 ms here.
    with threadpool_limits(limits=1):
        report = model.self_test()
    model.timings["self_test_s"] = report.seconds
    if not report.passed:
        raise ModelLoadError(uri, f"self-test failed: {report.problem}{_hints(model)}")
    return model


def model_files_sha256(model_dir: Path) -> str:
    """The SHA-256 of a model directory's files: of the `sha256sum` lines (`<hex>  <path>`) of
    every file, paths relative and sorted bytewise. The same as
    `(cd model && find . -type f -printf '%P\\n' | LC_ALL=C sort | xargs -d '\\n' sha256sum) | sha256sum`.
    scripts/deploy.py computes it for the files under an s3:// prefix (what this module fetches)."""
    files = sorted(
        (path.relative_to(model_dir).as_posix(), path) for path in model_dir.rglob("*") if path.is_file()
    )
    listing = hashlib.sha256()
    for relative, path in files:
        with path.open("rb") as handle:
            digest = hashlib.file_digest(handle, "sha256").hexdigest()
        listing.update(f"{digest}  {relative}\n".encode())
    return listing.hexdigest()


def verify_model_files(uri: str, model_dir: Path, expected_sha256: str) -> None:
    """Refuse a model whose files are not the pinned ones, before any of them is unpickled
    (0.8 ms for `make train`'s 144 KB model, measured here; SHA-256 runs at about 1.5 GB/s)."""
    actual = model_files_sha256(model_dir)
    if actual != expected_sha256:
        raise ModelLoadError(
            uri,
            f"its files' SHA-256 is {actual}, not {expected_sha256} (MODEL_SHA256): the model changed "
            "since it was deployed, so it is refused; deploy it again to pin what is there now",
        )


def _hints(model: LoadedModel) -> str:
    """What may explain a failed self-test: the library versions, the features it was given."""
    hints = []
    if model.version_mismatch:
        hints.append(model.version_mismatch)
    if model.features.source == "course default":
        names = list(model.features.builder.names)
        hints.append(
            f"the model has no signature, so it was given the course's features {names} as feature dicts"
        )
    elif model.flavor == "pyfunc":
        hints.append(
            "mlflow.pyfunc turns the feature dicts into a pandas DataFrame for a model with a signature"
        )
    return "".join(f" ({hint})" for hint in hints)


def fetch_model_dir(
    uri: str, cache_dir: Path, s3_client_factory: Callable[[], Any] | None
) -> tuple[Path, str | None]:
    """A local directory holding the model, and its registry version when the URI has one."""
    scheme = urlparse(uri).scheme
    if scheme in ("", "file"):
        path = Path(urlparse(uri).path if scheme == "file" else uri).expanduser()
        if not path.is_dir():
            raise ModelLoadError(uri, f"{path} is not a directory")
        return path, read_registry_version(path)
    if scheme == "s3":
        if s3_client_factory is None:
            raise ModelLoadError(uri, "no S3 client available")
        return keep_in_cache(download_s3_model(s3_client_factory(), uri, cache_dir), cache_dir), None
    local_dir, version = download_with_mlflow(uri, cache_dir)
    return keep_in_cache(local_dir, cache_dir), version


def download_s3_model(client: Any, uri: str, cache_dir: Path) -> Path:
    """Copy every object under the s3:// prefix; reuse the copy when nothing changed."""
    parsed = urlparse(uri)
    bucket, prefix = parsed.netloc, parsed.path.lstrip("/").rstrip("/") + "/"
    objects = []
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        objects.extend(model_files(uri, prefix, page.get("Contents", [])))
    if not objects:
        raise ModelLoadError(uri, f"no objects under s3://{bucket}/{prefix}")
    manifest = "\n".join(f"{o['Key']} {o.get('ETag', '')} {o['Size']}" for o in objects)
    target = cache_dir / ("s3-" + hashlib.sha256(f"{bucket}/{prefix}\n{manifest}".encode()).hexdigest()[:24])
    if target.is_dir():
        return target

    def download(staging: Path) -> None:
        # Plain GetObject: s3transfer's download_file sets up a transfer manager per file,
        # 166 ms against 60 ms for this model's six files (measured on moto).
        for obj in objects:
            destination = staging / obj["Key"][len(prefix) :]
            destination.parent.mkdir(parents=True, exist_ok=True)
            body = client.get_object(Bucket=bucket, Key=obj["Key"])["Body"]
            with destination.open("wb") as handle:
                shutil.copyfileobj(body, handle, 1024 * 1024)

    return _populate(target, download)


def model_files(uri: str, prefix: str, objects: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The objects that are files of the model. Folder markers (empty `prefix/`, `prefix/sub/`
    objects, as the S3 console makes) are skipped. A key with a `..`, `.` or empty segment is
    refused: `..` and a leading `/` would write outside the model's directory. The bucket is
    trusted to hold a model, not to choose where this process writes (skops models exist so
    that even its content cannot run code)."""
    files = []
    for obj in objects:
        key: str = obj["Key"]
        if key.endswith("/") and obj.get("Size", 0) == 0:
            continue
        parts = key[len(prefix) :].split("/")
        if any(part in ("", ".", "..") for part in parts):
            raise ModelLoadError(
                uri,
                f"object key {key!r} has an empty, '.' or '..' segment: it could be written "
                "outside the model directory, so the model is refused",
            )
        files.append(obj)
    return files


def download_with_mlflow(uri: str, cache_dir: Path) -> tuple[Path, str | None]:
    """runs:/, models:/ and any other scheme MLflow knows, pinned first: a cache entry is named by
    what never changes (models:/name/<version>), never by an alias, 'latest' or a stage."""
    try:
        pinned = pin(uri) if is_registry_uri(uri) else None
        from mlflow.artifacts import download_artifacts  # noqa: PLC0415 - mlflow is dev-only
    except RegistryUnavailableError as error:
        raise ModelLoadError(uri, str(error)) from None
    except ImportError as error:
        raise ModelLoadError(uri, f"only directories and s3:// load without mlflow ({error})") from None
    # A progress bar per file is noise in CloudWatch logs.
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    immutable = pinned.pinned_uri if pinned else uri
    target = cache_dir / ("mlflow-" + hashlib.sha256(immutable.encode()).hexdigest()[:24])
    if not target.is_dir():
        _populate(target, lambda staging: _download_into(download_artifacts, immutable, staging))
    version = pinned.version if pinned else None
    return target, version or read_registry_version(target) or _version_in_uri(immutable)


def _download_into(download_artifacts: Callable[..., str], uri: str, staging: Path) -> None:
    downloaded = Path(download_artifacts(artifact_uri=uri, dst_path=str(staging)))
    if downloaded != staging:  # runs:/<id>/model lands in staging/model
        for item in downloaded.iterdir():
            shutil.move(str(item), staging / item.name)
        downloaded.rmdir()


def keep_in_cache(entry: Path, cache_dir: Path, limit: int = MAX_CACHED_MODELS) -> Path:
    """Mark the entry as just used; remove the least recently used entries beyond the limit."""
    os.utime(entry)
    # Only this module's entries: MODEL_CACHE_DIR may be a folder other things live in (/tmp).
    entries = [p for p in cache_dir.iterdir() if p.is_dir() and p.name.startswith(CACHE_ENTRY_PREFIXES)]
    entries.sort(key=_last_used, reverse=True)
    for stale in entries[limit:]:
        if stale != entry:
            shutil.rmtree(stale, ignore_errors=True)
    return entry


def _last_used(entry: Path) -> float:
    try:
        return entry.stat().st_mtime
    except OSError:  # removed meanwhile by another process sharing the cache
        return 0.0


def _version_in_uri(uri: str) -> str | None:
    if uri.startswith("models:/"):
        parts = uri.removeprefix("models:/").strip("/").split("/")
        if len(parts) == 2 and parts[1].isdigit():
            return parts[1]
    return None


def _populate(target: Path, fill: Callable[[Path], None]) -> Path:
    """Fill a staging folder, then move it into place, so a cache entry is never half-written."""
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=target.parent, prefix=".staging-"))
    try:
        fill(staging)
        os.replace(staging, target)
    except OSError:
        if not target.is_dir():
            raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def read_mlmodel(local_dir: Path) -> dict[str, Any]:
    path = local_dir / "MLmodel"
    if not path.is_file():
        raise ModelLoadError(str(local_dir), "no MLmodel file: is this an MLflow model directory?")
    mlmodel = yaml.safe_load(path.read_text())
    if not isinstance(mlmodel, dict) or not isinstance(mlmodel.get("flavors"), dict):
        raise ModelLoadError(str(local_dir), "MLmodel has no flavors section")
    return mlmodel


def sklearn_version_mismatch(mlmodel: dict[str, Any]) -> str | None:
    """A pickled pipeline is only safe under the scikit-learn that saved it: say when it is not."""
    trained = (mlmodel["flavors"].get("sklearn") or {}).get("sklearn_version")
    if not trained:
        return None
    installed = importlib.metadata.version("scikit-learn")
    return None if trained == installed else f"trained with scikit-learn {trained}, running {installed}"


def local_model_problem(model_dir: Path) -> str | None:
    """Why a local model directory should be (re)trained before use, or None when it is fine."""
    if not (model_dir / "MLmodel").is_file():
        return f"no model in {model_dir}"
    return sklearn_version_mismatch(read_mlmodel(model_dir))


def read_registry_version(local_dir: Path) -> str | None:
    """The registry version MLflow records when it downloads a models:/ URI."""
    path = local_dir / "registered_model_meta"
    if not path.is_file():
        return None
    version = (yaml.safe_load(path.read_text()) or {}).get("model_version")
    return str(version) if version is not None else None


def deserialise(local_dir: Path, mlmodel: dict[str, Any]) -> tuple[Predictor, str]:
    sklearn_flavor = mlmodel["flavors"].get("sklearn")
    if sklearn_flavor and sklearn_flavor.get("pickled_model"):
        model_file = local_dir / sklearn_flavor["pickled_model"]
        serialization = sklearn_flavor.get("serialization_format", "cloudpickle")
        if serialization in ("pickle", "cloudpickle"):
            # Executes code from the file: trust boundary is whoever can write the model
            # bucket. ~0.1 ms for the course pipeline (skops: ~1 s more, see load_skops).
            with model_file.open("rb") as handle:
                return pickle.load(handle), f"sklearn/{serialization}"  # noqa: S301
        if serialization == "skops":
            return load_skops(model_file, sklearn_flavor.get("skops_trusted_types") or []), "sklearn/skops"
    return load_pyfunc(local_dir), "pyfunc"


def load_skops(model_file: Path, trusted: list[str]) -> Predictor:
    """skops never runs code from the file, but `import skops.io` alone adds ~0.9 s to cold start."""
    import skops.io  # noqa: PLC0415

    untrusted = [t for t in skops.io.get_untrusted_types(file=model_file) if t not in trusted]
    if untrusted:
        raise ModelLoadError(str(model_file), f"skops file holds untrusted types {untrusted}")
    model: Predictor = skops.io.load(model_file, trusted=trusted)
    return model


def load_pyfunc(local_dir: Path) -> Predictor:
    """Any other MLflow flavour, through mlflow.pyfunc (which needs pandas and full mlflow)."""
    try:
        import mlflow.pyfunc  # noqa: PLC0415
    except ImportError as error:
        raise ModelLoadError(
            str(local_dir),
            f"not an sklearn model, and mlflow.pyfunc cannot be imported ({error}); "
            "add mlflow's pyfunc dependencies (pandas) to the runtime set",
        ) from error
    # Given the same list of feature dicts as the sklearn path, as the course's pyfunc call was.
    model: Predictor = mlflow.pyfunc.load_model(str(local_dir))
    return model
