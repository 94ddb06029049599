"""MLflow `runs:/` and `models:/` URIs, pinned to what they name now.

`models:/name@alias`, `models:/name/latest` and `models:/name/<stage>` move whenever the registry
changes; `models:/name/<version>`, `models:/<model id>` and `runs:/<run id>/<path>` never do. A
cache keyed by a moving URI serves the old model after the registry moved on, so every URI is
pinned (to `models:/name/<version>`) before the cache or a deployment sees it.

This needs the tracking server and `mlflow`, which the function's runtime set leaves out (it
would add 33 packages to the image): `scripts/deploy.py` pins and locates the model where the
registry is reachable, and the function loads the `s3://` location it was given. Local runs
(web service, batch scoring, the stream handler in the dev environment) pin here, through the
`mlflow` of the dev environment.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any
from urllib.parse import urlparse

REGISTRY_SCHEMES = ("runs", "models")


class RegistryUnavailableError(RuntimeError):
    """A runs:/ or models:/ URI, but no mlflow to resolve it with."""


def is_registry_uri(uri: str) -> bool:
    return urlparse(uri).scheme in REGISTRY_SCHEMES


@dataclass(frozen=True)
class PinnedModel:
    """A runs:/ or models:/ URI, and the immutable URI it named when it was resolved."""

    uri: str
    pinned_uri: str
    version: str | None  # the registry version; None for a run's or a logged model's URI
    run_id: str | None


def mlflow_client() -> Any:
    """MLflow's client for MLFLOW_TRACKING_URI; a clear error where mlflow is not installed."""
    try:
        from mlflow import MlflowClient  # noqa: PLC0415 - mlflow is not in the function's runtime set
    except ImportError:
        raise RegistryUnavailableError(
            "runs:/ and models:/ URIs need mlflow, which the function's runtime set leaves out: "
            "deploy with `make deploy MODEL_URI=<this uri>` (it resolves the URI to the model's "
            "s3:// location), or run in the dev environment (make setup)"
        ) from None
    return MlflowClient()


def pin(uri: str, client: Any | None = None) -> PinnedModel:
    """The immutable URI (and registry version, run id) that `uri` names now."""
    client = client if client is not None else mlflow_client()
    if urlparse(uri).scheme == "runs":
        run_id = urlparse(uri).path.lstrip("/").split("/", 1)[0]
        return PinnedModel(uri, uri, None, run_id or None)
    # MLflow's own reading of models:/ URIs: an alias, 'latest' (the highest version of any stage)
    # or a stage name is looked up; a version or a logged model's id is returned as it is.
    from mlflow.store.artifact.utils.models import get_model_name_and_version  # noqa: PLC0415

    resolved = get_model_name_and_version(client, uri)  # type: ignore[no-untyped-call,unused-ignore]
    if len(resolved) == 1:  # models:/<model id>: a logged model, immutable
        return PinnedModel(uri, uri, None, client.get_logged_model(resolved[0]).source_run_id)
    name, version = resolved
    run_id = client.get_model_version(name, str(version)).run_id
    return PinnedModel(uri, f"models:/{name}/{version}", str(version), run_id or None)


def artifact_location(pinned: PinnedModel, client: Any | None = None) -> str:
    """Where the pinned model's files are stored (s3://..., a folder): what the function loads."""
    client = client if client is not None else mlflow_client()
    if urlparse(pinned.pinned_uri).scheme == "runs":
        from mlflow.store.artifact.runs_artifact_repo import RunsArtifactRepository  # noqa: PLC0415

        return str(RunsArtifactRepository.get_underlying_uri(pinned.pinned_uri))
    if pinned.version is None:
        model_id = urlparse(pinned.pinned_uri).path.strip("/")
        return str(client.get_logged_model(model_id).artifact_location)
    name = urlparse(pinned.pinned_uri).path.strip("/").split("/")[0]
    return str(client.get_model_version_download_uri(name, pinned.version))
