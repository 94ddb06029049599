"""infra/ecr.yaml, the image repository's stack: created by scripts.account_stacks on a moto server,
and read statically where moto's CloudFormation does not apply a property (it skips the
lifecycle policy and the repository policy, and misreads scan on push and encryption; the lifecycle policy is
then put through moto's ECR API, which validates it as ECR does)."""

from __future__ import annotations

import json
import re
from typing import Any

import pytest

from scripts import account_stacks
from scripts.stack import load_template, run

TEMPLATE = load_template(account_stacks.ECR_TEMPLATE)
REPOSITORY = TEMPLATE["Resources"]["Repository"]


def rendered_lifecycle_policy(**parameters: int) -> dict[str, Any]:
    """The lifecycle policy as CloudFormation's Fn::Sub makes it, from the parameters' defaults."""
    values = {name: spec["Default"] for name, spec in TEMPLATE["Parameters"].items()} | parameters
    text = REPOSITORY["Properties"]["LifecyclePolicy"]["LifecyclePolicyText"]["Fn::Sub"]
    return json.loads(re.sub(r"\$\{(\w+)\}", lambda match: str(values[match[1]]), text))


def test_make_ecr_creates_the_repository_with_immutable_tags_and_scan_on_push(
    client: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run(account_stacks.main, ["ecr"]) == 0

    [repository] = client("ecr").describe_repositories()["repositories"]
    assert repository["repositoryName"] == "ride-duration"
    assert repository["imageTagMutability"] == "IMMUTABLE"
    # moto keeps CloudFormation's capitalised spellings (ScanOnPush, EncryptionType) and so
    # reports neither: read the template.
    assert REPOSITORY["Properties"]["ImageScanningConfiguration"] == {"ScanOnPush": True}
    assert REPOSITORY["Properties"]["EncryptionConfiguration"] == {"EncryptionType": "AES256"}
    outputs = dict(line.split("\t") for line in capsys.readouterr().out.splitlines())
    assert outputs["RepositoryUri"] == repository["repositoryUri"]
    [stack] = client("cloudformation").describe_stacks(StackName="ride-duration-ecr")["Stacks"]
    assert stack["StackStatus"] == "CREATE_COMPLETE"


def test_a_second_run_changes_nothing_and_keeps_the_parameters(
    client: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run(account_stacks.main, ["ecr", "--parameter", "KeepImages=80"]) == 0
    assert run(account_stacks.main, ["ecr"]) == 0

    [stack] = client("cloudformation").describe_stacks(StackName="ride-duration-ecr")["Stacks"]
    assert {p["ParameterKey"]: p["ParameterValue"] for p in stack["Parameters"]}["KeepImages"] == "80"


def test_lifecycle_policy_is_one_ecr_accepts_expiring_untagged_first_then_beyond_the_newest(
    client: Any,
) -> None:
    policy = rendered_lifecycle_policy()
    ecr = client("ecr")
    ecr.create_repository(repositoryName="lifecycle-check")

    ecr.put_lifecycle_policy(repositoryName="lifecycle-check", lifecyclePolicyText=json.dumps(policy))

    untagged, by_count = sorted(policy["rules"], key=lambda rule: rule["rulePriority"])
    assert untagged["selection"] == {
        "tagStatus": "untagged",
        "countType": "sinceImagePushed",
        "countUnit": "days",
        "countNumber": 3,
    }
    assert by_count["selection"] == {"tagStatus": "any", "countType": "imageCountMoreThan", "countNumber": 50}
    assert {rule["action"]["type"] for rule in policy["rules"]} == {"expire"}
    assert rendered_lifecycle_policy(KeepImages=200)["rules"][1]["selection"]["countNumber"] == 200


def test_repository_and_images_outlive_the_stack() -> None:
    assert REPOSITORY["DeletionPolicy"] == REPOSITORY["UpdateReplacePolicy"] == "Retain"


def test_only_lambda_may_pull_and_only_for_this_accounts_stage_functions() -> None:
    [statement] = REPOSITORY["Properties"]["RepositoryPolicyText"]["Statement"]
    assert statement["Effect"] == "Allow"
    assert statement["Principal"] == {"Service": "lambda.amazonaws.com"}
    assert sorted(statement["Action"]) == ["ecr:BatchGetImage", "ecr:GetDownloadUrlForLayer"]
    assert statement["Condition"] == {
        "StringLike": {
            "aws:sourceArn": {
                "Fn::Sub": "arn:${AWS::Partition}:lambda:${AWS::Region}:${AWS::AccountId}:function:ride-duration-*"
            }
        }
    }
