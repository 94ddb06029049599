"""infra/ci-role.yaml, CI's roles for one stage: created by scripts.account_stacks on a moto server,
and checked against what AWS documents.

moto's CloudFormation does not create AWS::IAM::OIDCProvider (it skips it with a warning), so
the stacks here reuse a provider made through moto's IAM API (the OidcProviderArn parameter);
the provider the template creates is read statically. moto does not evaluate IAM policies by
resource or condition, so what a role may do is checked on its documents: the deploy role's
actions against the permissions CloudFormation's resource handlers need for every resource type
of infra/template.yaml (their schemas ship with cfn-lint), its resources against the stage's
names, and each policy against IAM's size limits.
"""

from __future__ import annotations

import json
import re
from typing import Any

import pytest
from cfnlint.schema import PROVIDER_SCHEMA_MANAGER

from scripts import account_stacks
from scripts.batch_deploy import BATCH_TEMPLATE as BATCH_TEMPLATE_PATH
from scripts.stack import load_template, run

TEMPLATE = load_template(account_stacks.CI_ROLE_TEMPLATE)
RESOURCES: dict[str, dict[str, Any]] = TEMPLATE["Resources"]
STAGE_TEMPLATE = load_template()
BATCH_TEMPLATE = load_template(BATCH_TEMPLATE_PATH)
REPOSITORY = "octo-org/ride-duration"
ACCOUNT = "123456789012"

# Permissions the handlers list for features infra/template.yaml does not use. Granting them
# would let CI change what the template never sets (encryption keys, networking, replication...).
NOT_USED_BY_THE_STAGE = {
    "customer-managed KMS keys (the stage uses AWS managed keys)": {
        "kms:CreateGrant",
        "kms:Decrypt",
        "kms:DescribeKey",
        "kms:Encrypt",
        "kms:GenerateDataKey",
        "logs:AssociateKmsKey",
        "logs:DisassociateKmsKey",
    },
    "a function in a VPC, with EFS or S3 Files mounts": {
        "ec2:DescribeNetworkInterfaces",
        "ec2:DescribeSecurityGroups",
        "ec2:DescribeSubnets",
        "ec2:DescribeVpcs",
        "elasticfilesystem:DescribeMountTargets",
        "s3files:ListMountTargets",
    },
    "zip packages, layers, code signing, runtime updates, capacity providers (an image function)": {
        "lambda:AssociateRuntimeAlias",
        "lambda:DeleteFunctionCodeSigningConfig",
        "lambda:GetCodeSigningConfig",
        "lambda:GetLayerVersion",
        "lambda:PassCapacityProvider",
        "lambda:PutFunctionCodeSigningConfig",
        "lambda:PutFunctionScalingConfig",
        "lambda:PutRuntimeManagementConfig",
        "s3:GetObject",
        "s3:GetObjectVersion",
    },
    "alias traffic shifting by CodeDeploy, provisioned concurrency (deploy.py moves the alias)": {
        "codedeploy:CreateDeployment",
        "codedeploy:GetDeployment",
        "codedeploy:GetDeploymentConfig",
        "codedeploy:GetDeploymentGroup",
        "codedeploy:StopDeployment",
        "lambda:DeleteProvisionedConcurrencyConfig",
        "lambda:PutProvisionedConcurrencyConfig",
    },
    "managed policies and permission boundaries on the function role (inline policy only)": {
        "iam:AttachRolePolicy",
        "iam:DetachRolePolicy",
        "iam:PutRolePermissionsBoundary",
        "iam:DeleteRolePermissionsBoundary",
    },
    "log group deliveries, data protection, index and resource policies": {
        "firehose:TagDeliveryStream",
        "logs:CreateLogDelivery",
        "logs:DeleteDataProtectionPolicy",
        "logs:DeleteIndexPolicy",
        "logs:DeleteResourcePolicy",
        "logs:PutBearerTokenAuthentication",
        "logs:PutDataProtectionPolicy",
        "logs:PutIndexPolicy",
        "logs:PutLogGroupDeletionProtection",
        "logs:PutResourcePolicy",
        "s3:REST.PUT.OBJECT",
        "sns:PutDataProtectionPolicy",
    },
    "bucket settings the template never sets (ACLs, CORS, website, replication, lifecycle...)": {
        "s3:CreateBucketMetadataTableConfiguration",
        "s3:DeleteBucketAnalyticsConfiguration",
        "s3:DeleteBucketCors",
        "s3:DeleteBucketEncryption",
        "s3:DeleteBucketLifecycle",
        "s3:DeleteBucketMetadataTableConfiguration",
        "s3:DeleteBucketMetricsConfiguration",
        "s3:DeleteBucketReplication",
        "s3:DeleteBucketWebsite",
        "s3:DeleteObject",
        "s3:PutAccelerateConfiguration",
        "s3:PutAnalyticsConfiguration",
        "s3:PutBucketAbac",
        "s3:PutBucketAcl",
        "s3:PutBucketCORS",
        "s3:PutBucketLogging",
        "s3:PutBucketNotification",
        "s3:PutBucketObjectLockConfiguration",
        "s3:PutBucketReplication",
        "s3:PutBucketWebsite",
        "s3:PutIntelligentTieringConfiguration",
        "s3:PutInventoryConfiguration",
        "s3:PutLifecycleConfiguration",
        "s3:PutMetricsConfiguration",
        "s3:PutObjectAcl",
        "s3:PutObjectLockConfiguration",
        "s3:PutReplicationConfiguration",
        "s3:UpdateBucketMetadataAnnotationTableConfiguration",
        "s3:UpdateBucketMetadataInventoryTableConfiguration",
        "s3:UpdateBucketMetadataJournalTableConfiguration",
        "s3tables:CreateNamespace",
        "s3tables:CreateTable",
        "s3tables:CreateTableBucket",
        "s3tables:GetTable",
        "s3tables:GetTableMetadataLocation",
        "s3tables:PutTableBucketPolicy",
        "s3tables:PutTableEncryption",
        "s3tables:PutTablePolicy",
        "s3tables:UpdateTableMetadataLocation",
    },
}


def as_list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else [value]


def statements(logical_id: str) -> list[dict[str, Any]]:
    properties = RESOURCES[logical_id]["Properties"]
    if "PolicyDocument" in properties:
        return properties["PolicyDocument"]["Statement"]
    return [s for policy in properties["Policies"] for s in policy["PolicyDocument"]["Statement"]]


def actions(logical_id: str) -> set[str]:
    return {action for statement in statements(logical_id) for action in as_list(statement["Action"])}


def stage_actions() -> set[str]:
    """What CloudFormation may do for the stage with the deploy role's credentials."""
    return actions("StageStackPolicy") | actions("StageDataPolicy")


def rendered(value: Any, parameters: dict[str, str]) -> Any:
    """A policy document with Fn::Sub done as CloudFormation would (parameters and pseudo ones)."""
    values = {"AWS::Partition": "aws", "AWS::Region": "eu-west-1", "AWS::AccountId": ACCOUNT, **parameters}
    if isinstance(value, dict) and set(value) == {"Fn::Sub"}:
        return re.sub(r"\$\{([\w:]+)\}", lambda match: values[match[1]], value["Fn::Sub"])
    if isinstance(value, dict):
        return {key: rendered(item, parameters) for key, item in value.items()}
    if isinstance(value, list):
        return [rendered(item, parameters) for item in value]
    return value


def handler_permissions(resource_type: str) -> set[str]:
    schema = PROVIDER_SCHEMA_MANAGER.get_resource_schema("us-east-1", resource_type).schema
    handlers = schema.get("handlers", {})
    return {
        p
        for step in ("create", "read", "update", "delete")
        for p in handlers.get(step, {}).get("permissions", [])
    }


@pytest.fixture
def oidc_provider(client: Any) -> str:
    """GitHub's provider, as an account that has one already has it."""
    return client("iam").create_open_id_connect_provider(
        Url="https://token.actions.githubusercontent.com", ClientIDList=["sts.amazonaws.com"]
    )["OpenIDConnectProviderArn"]


def make_ci_role(stage: str, provider: str, *parameters: str) -> None:
    argv = ["ci-role", "--stage", stage, "--parameter", f"GitHubRepository={REPOSITORY}"]
    argv += ["--parameter", f"OidcProviderArn={provider}"]
    for parameter in parameters:
        argv += ["--parameter", parameter]
    assert run(account_stacks.main, argv) == 0


def outputs(client: Any, stack: str) -> dict[str, str]:
    [described] = client("cloudformation").describe_stacks(StackName=stack)["Stacks"]
    return {o["OutputKey"]: o["OutputValue"] for o in described.get("Outputs", [])}


def trust(client: Any, role_arn: str) -> dict[str, Any]:
    role = client("iam").get_role(RoleName=role_arn.rsplit("/", maxsplit=1)[-1])["Role"]
    [statement] = role["AssumeRolePolicyDocument"]["Statement"]
    return statement


def attached_policy_documents(client: Any, role_arn: str) -> dict[str, dict[str, Any]]:
    iam = client("iam")
    documents = {}
    for attached in iam.list_attached_role_policies(RoleName=role_arn.rsplit("/", maxsplit=1)[-1])[
        "AttachedPolicies"
    ]:
        policy = iam.get_policy(PolicyArn=attached["PolicyArn"])["Policy"]
        version = iam.get_policy_version(
            PolicyArn=attached["PolicyArn"], VersionId=policy["DefaultVersionId"]
        )
        document = version["PolicyVersion"]["Document"]
        documents[attached["PolicyName"]] = json.loads(document) if isinstance(document, str) else document
    return documents


def test_dev_publish_role_is_assumable_only_by_pushes_to_main_of_this_repository(
    client: Any, oidc_provider: str
) -> None:
    make_ci_role("dev", oidc_provider, "PublishBranch=main")

    roles = outputs(client, "ride-duration-ci-dev")
    statement = trust(client, roles["PublishRoleArn"])
    assert statement["Principal"] == {"Federated": oidc_provider}
    assert statement["Action"] == "sts:AssumeRoleWithWebIdentity"
    assert statement["Condition"] == {
        "StringEquals": {
            "token.actions.githubusercontent.com:aud": "sts.amazonaws.com",
            "token.actions.githubusercontent.com:sub": f"repo:{REPOSITORY}:ref:refs/heads/main",
        }
    }
    assert roles["OidcProviderArn"] == oidc_provider


def test_dev_deploy_role_is_assumable_only_by_jobs_of_the_dev_environment(
    client: Any, oidc_provider: str
) -> None:
    make_ci_role("dev", oidc_provider, "PublishBranch=main")

    roles = outputs(client, "ride-duration-ci-dev")
    condition = trust(client, roles["DeployRoleArn"])["Condition"]["StringEquals"]
    assert condition["token.actions.githubusercontent.com:sub"] == f"repo:{REPOSITORY}:environment:dev"
    attached = sorted(
        name.rsplit("-", 1)[0] for name in attached_policy_documents(client, roles["DeployRoleArn"])
    )
    assert attached == [
        "ride-duration-ci-dev-BatchStackPolicy",
        "ride-duration-ci-dev-PipelinePolicy",
        "ride-duration-ci-dev-StageDataPolicy",
        "ride-duration-ci-dev-StageStackPolicy",
    ]


def test_prod_has_no_publish_role_its_own_environment_and_may_read_what_ran_in_dev(
    client: Any, oidc_provider: str
) -> None:
    make_ci_role("prod", oidc_provider, "GitHubEnvironment=production", "PromoteFromStage=dev")

    roles = outputs(client, "ride-duration-ci-prod")
    assert "PublishRoleArn" not in roles
    condition = trust(client, roles["DeployRoleArn"])["Condition"]["StringEquals"]
    assert condition["token.actions.githubusercontent.com:sub"] == f"repo:{REPOSITORY}:environment:production"
    documents = attached_policy_documents(client, roles["DeployRoleArn"])
    assert len(documents) == 5
    promotion = {s["Sid"]: s for d in documents.values() for s in d["Statement"]}
    assert promotion["ReadThePreviousStack"]["Resource"].endswith(":stack/ride-duration-dev/*")
    assert (
        promotion["CopyThePreviousModels"]["Resource"]
        == "arn:aws:s3:::ride-duration-dev-modelbucket-*/models/*"
    )
    assert promotion["CopyThePreviousModels"]["Action"] == "s3:GetObject"  # read only


def test_without_a_provider_arn_the_stack_makes_githubs_provider_and_trusts_it() -> None:
    provider = RESOURCES["GitHubOidcProvider"]
    assert provider["Condition"] == "CreateOidcProvider"
    assert provider["Properties"] == {
        "Url": "https://token.actions.githubusercontent.com",
        "ClientIdList": ["sts.amazonaws.com"],
    }
    for role in ("PublishRole", "DeployRole"):
        [statement] = RESOURCES[role]["Properties"]["AssumeRolePolicyDocument"]["Statement"]
        assert statement["Principal"]["Federated"] == {
            "Fn::If": ["CreateOidcProvider", {"Ref": "GitHubOidcProvider"}, {"Ref": "OidcProviderArn"}]
        }
    assert TEMPLATE["Conditions"]["CreateOidcProvider"] == {"Fn::Equals": [{"Ref": "OidcProviderArn"}, ""]}


@pytest.mark.parametrize(
    "resource_type", sorted({resource["Type"] for resource in STAGE_TEMPLATE["Resources"].values()})
)
def test_deploy_role_may_do_what_cloudformation_does_for_each_resource_type_of_the_stage(
    resource_type: str,
) -> None:
    """A resource type added to infra/template.yaml (a version, an alias...) fails here until
    the deploy role may manage it."""
    excluded = set().union(*NOT_USED_BY_THE_STAGE.values())
    missing = handler_permissions(resource_type) - stage_actions() - excluded
    assert not missing, f"{resource_type}: add to infra/ci-role.yaml's StageStackPolicy: {sorted(missing)}"


# What the batch stack uses that the stream stack does not: its bucket's EventBridge notifications
# and lifecycle rules.
USED_BY_BATCH = {"s3:PutBucketNotification", "s3:PutLifecycleConfiguration"}


@pytest.mark.parametrize(
    "resource_type", sorted({resource["Type"] for resource in BATCH_TEMPLATE["Resources"].values()})
)
def test_deploy_role_may_do_what_cloudformation_does_for_each_resource_type_of_the_batch_stack(
    resource_type: str,
) -> None:
    """A resource type added to infra/batch.yaml fails here until the deploy role may manage it,
    on the batch stack's names (BatchStackPolicy), or on names both stacks share (the image's
    repository, the log-group listing)."""
    excluded = set().union(*NOT_USED_BY_THE_STAGE.values()) - USED_BY_BATCH
    shared = actions("StageStackPolicy") & {"ecr:BatchGetImage", "ecr:GetDownloadUrlForLayer"}
    granted = actions("BatchStackPolicy") | shared | {"logs:DescribeLogGroups"}
    missing = handler_permissions(resource_type) - granted - excluded
    assert not missing, f"{resource_type}: add to infra/ci-role.yaml's BatchStackPolicy: {sorted(missing)}"


def test_batch_policy_grants_nothing_the_batch_stack_does_not_need() -> None:
    needed = set().union(*(handler_permissions(r["Type"]) for r in BATCH_TEMPLATE["Resources"].values()))
    # Beyond the handlers: the stack itself, and the self-test invocation after an update.
    pipeline = {
        "cloudformation:CreateStack",
        "cloudformation:DescribeStackEvents",
        "cloudformation:DescribeStacks",
        "cloudformation:UpdateStack",
        "lambda:InvokeFunction",
    }
    assert actions("BatchStackPolicy") - needed == pipeline


def test_deploy_role_grants_nothing_the_stage_does_not_need() -> None:
    needed = set().union(*(handler_permissions(r["Type"]) for r in STAGE_TEMPLATE["Resources"].values()))
    # Beyond the handlers: the stack itself, the function's image, and reads deploy.py makes.
    pipeline = {
        "cloudformation:CreateStack",
        "cloudformation:DescribeStackEvents",
        "cloudformation:DescribeStackResources",
        "cloudformation:DescribeStacks",
        "cloudformation:GetTemplate",
        "cloudformation:ListStackResources",
        "cloudformation:UpdateStack",
        "ecr:BatchGetImage",
        "ecr:DescribeImages",
        "ecr:GetDownloadUrlForLayer",
        "ecr:GetRepositoryPolicy",
    }
    # deploy.py's release (publish, check, alias, watch) uses what the version's and the alias's
    # handlers use, and the pipeline policy's invoke.
    assert stage_actions() - needed == pipeline


STAGE_NAMED = re.compile(
    r"(stack/ride-duration-\$\{Stage\}/\*|ride-events-\$\{Stage\}|ride-predictions-\$\{Stage\}"
    r"|ride-dead-letters-\$\{Stage\}|ride-events-discarded-\$\{Stage\}|ride-duration-\$\{Stage\}-"
    r"|/aws/lambda/ride-duration-\$\{Stage\}|function:ride-duration-\$\{Stage\}|ride-duration-alarms-\$\{Stage\}"
    r"|dashboard/ride-duration-\$\{Stage\}$"
    r"|repository/\$\{RepositoryName\}|stack/ride-duration-\$\{PromoteFromStage\}/\*"
    r"|ride-duration-batch-\$\{Stage\}|ride-duration-batch-(arrivals|failed)-\$\{Stage\}"
    r"|ride-duration-\$\{PromoteFromStage\}-modelbucket-)"
)
# Where AWS offers no resource to name: each is bounded otherwise (see the template's comments).
UNSCOPED = {
    "RegistryLogin": "ecr:GetAuthorizationToken",
    "CreateTheMapping": "lambda:CreateEventSourceMapping",
    "FindLogGroups": "logs:DescribeLogGroups",
    "TheMapping": None,
    "TagTheMapping": None,
}


@pytest.mark.parametrize(
    "logical_id", ["PublishRole", "StageStackPolicy", "PipelinePolicy", "PromotionPolicy", "BatchStackPolicy"]
)
def test_every_statement_names_this_stages_resources_and_no_action_wildcard(logical_id: str) -> None:
    for statement in statements(logical_id):
        assert statement["Effect"] == "Allow"
        assert all("*" not in action for action in as_list(statement["Action"]))
        if statement["Sid"] in UNSCOPED:
            continue
        for resource in as_list(statement["Resource"]):
            assert STAGE_NAMED.search(resource["Fn::Sub"]), (statement["Sid"], resource)


def test_unscoped_statements_are_the_ones_aws_cannot_scope_and_are_bounded() -> None:
    by_sid = {
        s["Sid"]: s for r in ("PublishRole", "StageStackPolicy", "StageDataPolicy") for s in statements(r)
    }
    assert by_sid["RegistryLogin"]["Resource"] == "*"
    assert by_sid["RegistryLogin"]["Action"] == "ecr:GetAuthorizationToken"
    create = by_sid["CreateTheMapping"]
    assert (create["Resource"], create["Action"]) == ("*", "lambda:CreateEventSourceMapping")
    assert list(create["Condition"]["ArnLike"]) == ["lambda:FunctionArn"]
    assert by_sid["FindLogGroups"]["Action"] == "logs:DescribeLogGroups"
    for sid in ("TheMapping", "TagTheMapping"):
        assert by_sid[sid]["Resource"]["Fn::Sub"].endswith(":event-source-mapping:*")
    pass_role = by_sid["PassTheFunctionRoleToLambdaOnly"]
    assert pass_role["Condition"] == {"StringEquals": {"iam:PassedToService": "lambda.amazonaws.com"}}


@pytest.mark.parametrize(
    ("logical_id", "limit"),
    # IAM's quotas, counted without whitespace: a managed policy 6,144 characters, a role's inline
    # policies 10,240 together.
    [
        ("StageStackPolicy", 6144),
        ("StageDataPolicy", 6144),
        ("PipelinePolicy", 6144),
        ("PromotionPolicy", 6144),
        ("BatchStackPolicy", 6144),
        ("PublishRole", 10240),
    ],
)
def test_each_policy_fits_iams_size_limit(logical_id: str, limit: int) -> None:
    parameters = {
        "Stage": "staging-eu-west-1a",
        "RepositoryName": "ride-duration",
        "PromoteFromStage": "staging",
    }
    document = {"Version": "2012-10-17", "Statement": rendered(statements(logical_id), parameters)}
    assert len(json.dumps(document, separators=(",", ":"))) < limit


def test_every_parameter_is_described_and_the_outputs_say_where_they_go() -> None:
    for name, spec in TEMPLATE["Parameters"].items():
        assert spec.get("Description"), name
    assert set(TEMPLATE["Outputs"]) == {"DeployRoleArn", "PublishRoleArn", "OidcProviderArn"}


def test_ci_role_needs_a_stage(capsys: pytest.CaptureFixture[str]) -> None:
    assert run(account_stacks.main, ["ci-role", "--parameter", f"GitHubRepository={REPOSITORY}"]) == 1
    assert "ci-role needs --stage (STAGE=dev)" in capsys.readouterr().err
