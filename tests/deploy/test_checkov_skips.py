"""checkov runs in `make deploy-checks`; every check a template skips says why, where it skips it."""

from __future__ import annotations

from pathlib import Path

import pytest

from scripts.stack import load_template
from tests.deploy.conftest import TEMPLATES


@pytest.mark.parametrize("path", TEMPLATES, ids=lambda p: p.name)
def test_every_skipped_check_is_one_resources_with_its_reason(path: Path) -> None:
    for name, resource in load_template(path)["Resources"].items():
        skips = resource.get("Metadata", {}).get("checkov", {}).get("skip", [])
        ids = [skip["id"] for skip in skips]
        assert len(ids) == len(set(ids)), name
        for skip in skips:
            assert skip["id"].startswith("CKV_AWS_"), (name, skip)
            # A reason, not a shrug: what protects the resource instead, or why it is accepted.
            assert len(skip.get("comment", "").split()) >= 15, (name, skip["id"])
