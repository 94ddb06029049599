"""The GitHub Actions workflow, read as GitHub reads it: what runs when, with which credentials.

actionlint (make lint) checks the syntax, expressions and shell; these tests check the release
rules it cannot know: pinned actions, OIDC only where AWS is used, no input spliced into a
script, and one image digest flowing from the build through dev to an approved prod.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from scripts.stack import PROJECT_ROOT

WORKFLOWS = sorted((PROJECT_ROOT / ".github" / "workflows").glob("*.yml"))
PIPELINE = PROJECT_ROOT / ".github" / "workflows" / "pipeline.yml"
USES = re.compile(r"^\s*(?:-\s+)?uses:\s*(?P<action>[^@\s]+)@(?P<ref>\S+)(?:\s+#\s*(?P<comment>.*))?$")
CONFIGURE_AWS = "aws-actions/configure-aws-credentials"


def load(path: Path) -> dict[Any, Any]:
    # PyYAML reads the key `on` as True (YAML 1.1); GitHub reads it as "on".
    workflow = yaml.safe_load(path.read_text())
    workflow["on"] = workflow.pop(True)
    return workflow


WORKFLOW = load(PIPELINE)
JOBS: dict[str, dict[str, Any]] = WORKFLOW["jobs"]


def steps(job: str) -> list[dict[str, Any]]:
    return JOBS[job]["steps"]


def step_using(job: str, action: str) -> dict[str, Any]:
    [step] = [s for s in steps(job) if s.get("uses", "").startswith(f"{action}@")]
    return step


def test_there_is_one_workflow() -> None:
    assert WORKFLOWS == [PIPELINE]


@pytest.mark.parametrize("path", WORKFLOWS, ids=lambda p: p.name)
def test_every_action_is_pinned_by_full_commit_with_its_release_named(path: Path) -> None:
    pins: dict[str, set[str]] = {}
    for line in path.read_text().splitlines():
        if found := USES.match(line):
            assert re.fullmatch(r"[0-9a-f]{40}", found["ref"]), line
            assert re.fullmatch(r"v\d+\.\d+\.\d+", found["comment"] or ""), line
            pins.setdefault(found["action"], set()).add(found["ref"])
    assert pins
    assert all(len(refs) == 1 for refs in pins.values()), pins  # one version of each action


def test_pull_requests_and_pushes_are_tested_with_make_test_and_uvs_cache() -> None:
    assert set(WORKFLOW["on"]) == {"pull_request", "push", "workflow_dispatch"}
    assert WORKFLOW["on"]["push"] is None  # every branch
    runs = [s.get("run") for s in steps("test")]
    assert "make test" in runs
    cache = step_using("test", "actions/cache")["with"]
    assert cache["path"] == "~/.cache/uv"
    assert "hashFiles('uv.lock', 'tools/*.txt')" in cache["key"]
    assert "if" not in JOBS["test"]


def test_credentials_come_from_oidc_only_in_the_jobs_that_reach_aws() -> None:
    assert WORKFLOW["permissions"] == {"contents": "read"}
    text = PIPELINE.read_text()
    assert "secrets." not in text
    assert "aws-access-key-id" not in text
    for name, job in JOBS.items():
        uses_aws = any(s.get("uses", "").startswith(f"{CONFIGURE_AWS}@") for s in job["steps"])
        assert (job.get("permissions", {}).get("id-token") == "write") is uses_aws, name
        if uses_aws:
            assert job["permissions"] == {"contents": "read", "id-token": "write"}
    assert (
        step_using("publish", CONFIGURE_AWS)["with"]["role-to-assume"] == "${{ vars.AWS_PUBLISH_ROLE_ARN }}"
    )
    for job in ("deploy-dev", "deploy-prod"):
        assert step_using(job, CONFIGURE_AWS)["with"]["role-to-assume"] == "${{ vars.AWS_DEPLOY_ROLE_ARN }}"


def test_main_builds_once_deploys_to_dev_smoke_tests_then_waits_for_prods_approval() -> None:
    assert JOBS["publish"]["needs"] == "test"
    assert "github.ref == 'refs/heads/main'" in JOBS["publish"]["if"]
    assert JOBS["deploy-dev"]["needs"] == "publish"
    assert JOBS["deploy-dev"]["environment"] == "dev"
    assert JOBS["deploy-prod"]["needs"] == ["publish", "deploy-dev"]
    assert JOBS["deploy-prod"]["environment"] == "prod"
    for job, stage in (("deploy-dev", "dev"), ("deploy-prod", "prod")):
        runs = [s.get("run", "") for s in steps(job)]
        assert runs.index(f"make deploy STAGE={stage}") < runs.index(f"make smoke STAGE={stage}")
        assert JOBS[job]["concurrency"] == {"group": f"deploy-{stage}", "cancel-in-progress": False}


def test_prod_runs_the_digest_that_was_built_and_passed_dev() -> None:
    assert JOBS["publish"]["outputs"] == {"image": "${{ steps.publish.outputs.image }}"}
    [publish] = [s for s in steps("publish") if s.get("id") == "publish"]
    assert "make -s publish ARCH=arm64" in publish["run"]  # prints the image by digest
    [dev_deploy] = [s for s in steps("deploy-dev") if s.get("run") == "make deploy STAGE=dev"]
    assert dev_deploy["env"]["IMAGE"] == "${{ needs.publish.outputs.image }}"
    [promote] = [s for s in steps("deploy-prod") if s.get("id") == "promote"]
    assert promote["env"]["IMAGE"] == "${{ needs.publish.outputs.image }}"
    assert 'ARGS="--image-uri ${IMAGE}"' in promote["run"]  # refused unless dev runs it
    [prod_deploy] = [s for s in steps("deploy-prod") if s.get("run") == "make deploy STAGE=prod"]
    assert prod_deploy["env"] == {
        "IMAGE": "${{ steps.promote.outputs.IMAGE }}",
        "MODEL_URI": "${{ steps.promote.outputs.MODEL_URI }}",
    }


def test_only_pull_request_runs_cancel_each_other() -> None:
    """A run on main may wait days for prod's approval: it must not hold up the next one."""
    assert WORKFLOW["concurrency"] == {
        "group": "pipeline-${{ github.event_name == 'pull_request' && github.ref || github.run_id }}",
        "cancel-in-progress": True,
    }


def test_no_expression_is_spliced_into_a_script() -> None:
    """Inputs, outputs and event fields reach scripts as environment variables, never as text."""
    for name, job in JOBS.items():
        for step in job["steps"]:
            assert "${{" not in step.get("run", ""), (name, step)


def test_the_scan_gate_and_the_checkout_leave_nothing_behind() -> None:
    [publish] = [s for s in steps("publish") if s.get("id") == "publish"]
    assert "--fail-on critical" in publish["run"]
    for name in JOBS:
        assert step_using(name, "actions/checkout")["with"] == {"persist-credentials": False}
