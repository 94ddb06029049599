"""Which model the local pipeline serves, and noticing when it changes.

`MODEL_URI` (or the course's `MODEL_LOCATION` / `RUN_ID` forms, read as the function reads
them) in any form the function accepts; without one, `./model`. A local directory is uploaded
to the local S3 and the function loads it from there, as in AWS; any other URI (`s3://`,
`runs:/`, `models:/`) is fetched here first, with this shell's credentials and tracking server
(the function's own fetching code), because the local function only sees the local stack.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

import boto3

from stream.model_loading import fetch_model_dir
from stream.settings import model_uri_from_env

MODEL_VARIABLES = ("MODEL_URI", "MODEL_LOCATION", "RUN_ID")
log = logging.getLogger("local_aws.model_source")


def configured_model_uri(env: Mapping[str, str]) -> str | None:
    """The model the environment names, as the function would resolve it; None when it names none."""
    if not any(env.get(name) for name in MODEL_VARIABLES):
        return None
    return model_uri_from_env(env)


def local_model_dir(uri: str) -> Path | None:
    """The directory a local URI (a path or file://) names; None for a remote one."""
    parsed = urlparse(uri)
    if parsed.scheme == "file":
        return Path(parsed.path).expanduser().resolve()
    if parsed.scheme == "":
        return Path(uri).expanduser().resolve()
    return None


def fetch_remote_model(uri: str, cache_dir: Path) -> Path:
    """A local copy of a remote model, fetched with this process's AWS and MLflow settings."""
    local_dir, _version = fetch_model_dir(uri, cache_dir, s3_client_factory=lambda: boto3.client("s3"))
    return local_dir


@dataclass(frozen=True)
class LoadedModel:
    """What the function says it loaded (its `model loaded` log line)."""

    uri: str
    version: str


def loaded_model(init_log: bytes) -> LoadedModel | None:
    """The last `model loaded` line of the function's init output, if it wrote one."""
    for line in reversed(init_log.splitlines()):
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        if isinstance(entry, dict) and entry.get("message") == "model loaded":
            return LoadedModel(str(entry.get("model_uri")), str(entry.get("model_version")))
    return None


Fingerprint = tuple[tuple[str, int, int], ...]


def fingerprint(model_dir: Path) -> Fingerprint:
    """Every file's path, size and modification time: changes when any file does."""
    files = []
    for path in model_dir.rglob("*"):
        try:
            if path.is_file():
                stat = path.stat()
                files.append((path.relative_to(model_dir).as_posix(), stat.st_size, stat.st_mtime_ns))
        except OSError:  # removed while we looked: the next look sees the change
            continue
    return tuple(sorted(files))


class ModelWatcher(threading.Thread):
    """Calls `on_change` when the model directory's files change and then stay unchanged for one
    more interval (training writes several files), holding a model (an MLmodel file) again."""

    def __init__(self, model_dir: Path, on_change: Callable[[], None], interval: float = 1.0) -> None:
        super().__init__(name="model-watcher", daemon=True)
        self.model_dir = model_dir
        self.on_change = on_change
        self.interval = interval
        self.stopped = threading.Event()
        self._seen = fingerprint(model_dir)

    def run(self) -> None:
        while not self.stopped.wait(self.interval):
            current = fingerprint(self.model_dir)
            if current == self._seen:
                continue
            while not self.stopped.wait(self.interval):  # until it holds still
                settled = fingerprint(self.model_dir)
                if settled == current:
                    break
                current = settled
            if self.stopped.is_set() or not (self.model_dir / "MLmodel").is_file():
                continue  # half-written or removed: wait for the next change
            self._seen = current
            try:
                self.on_change()
            except Exception:
                log.exception("reloading the model from %s failed", self.model_dir)

    def stop(self) -> None:
        self.stopped.set()
        if self.is_alive():
            self.join(10)


def describe_loaded(loaded: LoadedModel | None, wanted: str) -> str:
    if loaded is None:
        return f"loaded from {wanted} (no `model loaded` line in the function's log)"
    return f"version {loaded.version} loaded from {loaded.uri}"
