"""integration-test/docker-compose.yaml, checked without Docker: what LocalStack needs to start,
and the docs saying which LocalStack it runs."""

from __future__ import annotations

from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
COMPOSE = yaml.safe_load((ROOT / "integration-test" / "docker-compose.yaml").read_text())


def test_localstack_gets_the_auth_token_from_the_environment() -> None:
    environment = COMPOSE["services"]["localstack"]["environment"]
    assert (
        environment["LOCALSTACK_AUTH_TOKEN"] == "${LOCALSTACK_AUTH_TOKEN:-}"
    )  # unset: empty, pinned tag still starts


def test_the_docs_name_the_pinned_localstack_version() -> None:
    image = COMPOSE["services"]["localstack"]["image"]
    assert image.startswith("localstack/localstack:")
    docs = (ROOT / "docs" / "local.md").read_text()
    assert f"`{image}`" in docs
    assert "LOCALSTACK_AUTH_TOKEN" in docs
