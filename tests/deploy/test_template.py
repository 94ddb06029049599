"""infra/template.yaml: linted, deployed to moto by the deploy script, and read statically where
moto does not model a property (it skips CloudWatch alarms and bucket policies, and ignores
stream encryption, bucket versioning and public-access blocks, and parameter constraints)."""

from __future__ import annotations

import ast
import re
from typing import Any

import pytest

from scripts.deploy import Deployment, deploy
from scripts.stack import PROJECT_ROOT, load_template
from tests.deploy.conftest import STACK, STAGE

TEMPLATE = load_template()
RESOURCES: dict[str, dict[str, Any]] = TEMPLATE["Resources"]
PARAMETERS: dict[str, dict[str, Any]] = TEMPLATE["Parameters"]
NOT_MODELLED_BY_MOTO = {"AWS::CloudWatch::Alarm", "AWS::S3::BucketPolicy"}


def properties(logical_id: str) -> dict[str, Any]:
    return RESOURCES[logical_id]["Properties"]


def of_type(resource_type: str) -> dict[str, dict[str, Any]]:
    return {name: r["Properties"] for name, r in RESOURCES.items() if r["Type"] == resource_type}


SETTINGS = (
    "BatchSize",
    "MaximumBatchingWindowInSeconds",
    "ParallelizationFactor",
    "StartingPosition",
    "BisectBatchOnFunctionError",
    "MaximumRetryAttempts",
    "MaximumRecordAgeInSeconds",
    "FunctionResponseTypes",
)


def accepts(parameter: str, value: str) -> bool:
    """CloudFormation's check of a parameter value against MinValue, MaxValue and AllowedPattern."""
    spec = PARAMETERS[parameter]
    if spec["Type"] == "Number":
        number = float(value)
        return spec.get("MinValue", -float("inf")) <= number <= spec.get("MaxValue", float("inf"))
    return re.fullmatch(spec.get("AllowedPattern", ".*"), value) is not None


def test_templates_pass_cfn_lint_including_informational_rules(cfn_lint_result: tuple[int, str]) -> None:
    assert cfn_lint_result == (0, "")


def test_every_resource_moto_models_is_created(client: Any, stack: dict[str, str]) -> None:
    summaries = client("cloudformation").list_stack_resources(StackName=STACK)["StackResourceSummaries"]
    created = {s["LogicalResourceId"] for s in summaries if s["ResourceStatus"] == "CREATE_COMPLETE"}

    expected = {
        name
        for name, resource in RESOURCES.items()
        if resource["Type"] not in NOT_MODELLED_BY_MOTO and "Condition" not in resource
    }
    assert created - {""} == expected
    assert "AlarmEmailSubscription" not in created  # no AlarmEmail given


def test_streams_have_their_names_and_retention(client: Any, stack: dict[str, str]) -> None:
    kinesis = client("kinesis")
    retention = {
        stack[key]: kinesis.describe_stream_summary(StreamName=stack[key])["StreamDescriptionSummary"][
            "RetentionPeriodHours"
        ]
        for key in ("InputStreamName", "PredictionsStreamName", "DeadLetterStreamName")
    }
    assert retention == {
        f"ride-events-{STAGE}": 24,
        f"ride-predictions-{STAGE}": 24,
        f"ride-dead-letters-{STAGE}": 168,
    }


def test_event_source_mapping_is_bounded_bisects_and_reports_item_failures(
    client: Any, stack: dict[str, str]
) -> None:
    [mapping] = client("lambda").list_event_source_mappings(FunctionName=stack["LiveAliasArn"])[
        "EventSourceMappings"
    ]
    queue_arn = client("sqs").get_queue_attributes(
        QueueUrl=stack["DiscardedBatchesQueueUrl"], AttributeNames=["QueueArn"]
    )["Attributes"]["QueueArn"]

    assert mapping["EventSourceArn"] == stack["InputStreamArn"]
    assert mapping["FunctionArn"].endswith(f":function:{stack['FunctionName']}:live")
    assert {key: mapping[key] for key in SETTINGS} == {
        "BatchSize": 100,
        "MaximumBatchingWindowInSeconds": 1,
        "ParallelizationFactor": 1,
        "StartingPosition": "TRIM_HORIZON",
        "BisectBatchOnFunctionError": True,
        "MaximumRetryAttempts": 10,
        "MaximumRecordAgeInSeconds": 3600,
        "FunctionResponseTypes": ["ReportBatchItemFailures"],
    }
    assert mapping["DestinationConfig"] == {"OnFailure": {"Destination": queue_arn}}


def test_mapping_settings_follow_the_stack_parameters(client: Any, stack: dict[str, str]) -> None:
    overrides = (("BatchSize", "500"), ("ParallelizationFactor", "4"), ("MaximumRetryAttempts", "3"))
    deploy(client("cloudformation"), STACK, STAGE, Deployment(overrides=overrides))

    [mapping] = client("lambda").list_event_source_mappings(FunctionName=stack["LiveAliasArn"])[
        "EventSourceMappings"
    ]
    assert (mapping["BatchSize"], mapping["ParallelizationFactor"], mapping["MaximumRetryAttempts"]) == (
        500,
        4,
        3,
    )


@pytest.mark.parametrize(
    ("parameter", "value", "accepted"),
    [
        ("MaximumRetryAttempts", "-1", False),  # -1 = retry until the record expires
        ("MaximumRetryAttempts", "0", True),
        ("MaximumRecordAgeInSeconds", "-1", False),  # -1 = keep retrying for up to a week
        ("MaximumRecordAgeInSeconds", "86400", True),
        ("MaximumRecordAgeInSeconds", "86401", False),  # beyond the input stream's 24 h retention
        ("BatchSize", "10001", False),
        ("MaximumBatchingWindowInSeconds", "301", False),
        ("ParallelizationFactor", "11", False),
        ("ImageUri", f"123456789012.dkr.ecr.eu-west-1.amazonaws.com/ride-duration@sha256:{'ab' * 32}", True),
        ("ImageUri", "123456789012.dkr.ecr.eu-west-1.amazonaws.com/ride-duration:latest", False),
        ("ImageUri", f"public.ecr.aws/x/ride-duration@sha256:{'ab' * 32}", False),
        ("Stage", "prod", True),
        ("Stage", "Prod_1", False),
        ("AlarmEmail", "", True),
        ("AlarmEmail", "ops@example.com", True),
        ("AlarmEmail", "not an address", False),
    ],
)
def test_parameter_constraints_reject_unbounded_or_mutable_values(
    parameter: str, value: str, accepted: bool
) -> None:
    assert accepts(parameter, value) is accepted


def test_mapping_takes_its_bounds_from_the_constrained_parameters() -> None:
    mapping = properties("EventSourceMapping")
    for setting in ("BatchSize", "MaximumBatchingWindowInSeconds", "ParallelizationFactor"):
        assert mapping[setting] == {"Ref": setting}
    assert mapping["MaximumRetryAttempts"] == {"Ref": "MaximumRetryAttempts"}
    assert mapping["MaximumRecordAgeInSeconds"] == {"Ref": "MaximumRecordAgeInSeconds"}
    assert mapping["BisectBatchOnFunctionError"] is True
    assert mapping["DestinationConfig"] == {
        "OnFailure": {"Destination": {"Fn::GetAtt": ["DiscardedBatchesQueue", "Arn"]}}
    }


def test_function_runs_the_image_with_memory_timeout_and_the_stack_streams(
    client: Any, stack: dict[str, str], image_uri: str
) -> None:
    function = client("lambda").get_function(FunctionName=stack["FunctionName"])
    config = function["Configuration"]

    assert function["Code"]["ImageUri"] == image_uri
    assert (config["MemorySize"], config["Timeout"]) == (1024, 60)
    assert config["Environment"]["Variables"] == {
        "MODEL_URI": "/opt/ml/model",
        "MODEL_VERSION": "",
        "MODEL_RUN_ID": "",
        "MODEL_SHA256": "",
        "PREDICTIONS_STREAM_NAME": stack["PredictionsStreamName"],
        "DEAD_LETTER_STREAM_NAME": stack["DeadLetterStreamName"],
        "LOG_LEVEL": "INFO",
        "POWERTOOLS_METRICS_NAMESPACE": "RideDuration",
        "POWERTOOLS_SERVICE_NAME": stack["FunctionName"],
        "TRACING_ENABLED": "false",
    }
    # moto reports every function as a zip package: the template says what AWS will see.
    assert properties("Function")["PackageType"] == {"Ref": "PackageType"}
    assert PARAMETERS["PackageType"]["Default"] == "Image"
    assert properties("Function")["Code"]["Fn::If"][2] == {"ImageUri": {"Ref": "ImageUri"}}


def test_the_zip_option_runs_python_3_13_with_snapstart_on_published_versions() -> None:
    function = properties("Function")
    assert TEMPLATE["Conditions"]["IsZip"] == {"Fn::Equals": [{"Ref": "PackageType"}, "Zip"]}
    condition, code, _ = function["Code"]["Fn::If"]
    assert (condition, code) == ("IsZip", {"S3Bucket": {"Ref": "ZipBucket"}, "S3Key": {"Ref": "ZipKey"}})
    assert function["Runtime"]["Fn::If"][:2] == ["IsZip", "python3.13"]
    assert function["Handler"]["Fn::If"][:2] == ["IsZip", "lambda_function.lambda_handler"]
    assert function["SnapStart"]["Fn::If"][:2] == ["IsZip", {"ApplyOn": "PublishedVersions"}]
    # Image functions take none of the three (Lambda refuses Runtime/Handler with an image).
    for key in ("Runtime", "Handler", "SnapStart"):
        assert function[key]["Fn::If"][2] == {"Ref": "AWS::NoValue"}


@pytest.mark.parametrize(("value", "accepted"), [("arm64", True), ("x86_64", True), ("amd64", False)])
def test_architecture_is_a_parameter_defaulting_to_arm64(value: str, accepted: bool) -> None:
    assert PARAMETERS["Architecture"]["Default"] == "arm64"
    assert properties("Function")["Architectures"] == [{"Ref": "Architecture"}]
    assert (value in PARAMETERS["Architecture"]["AllowedValues"]) is accepted


def test_role_allows_only_what_the_function_does_on_this_stacks_resources(
    client: Any, stack: dict[str, str]
) -> None:
    iam, kinesis = client("iam"), client("kinesis")
    role = (
        client("lambda").get_function_configuration(FunctionName=stack["FunctionName"])["Role"].split("/")[-1]
    )
    [policy_name] = iam.list_role_policies(RoleName=role)["PolicyNames"]
    document = iam.get_role_policy(RoleName=role, PolicyName=policy_name)["PolicyDocument"]
    if isinstance(document, str):  # moto stores a policy created by CloudFormation as a Python repr
        document = ast.literal_eval(document)
    # moto keeps a list item that is `!Ref AWS::NoValue` as null; CloudFormation drops it.
    document["Statement"] = [statement for statement in document["Statement"] if statement is not None]

    def arn(stream_key: str) -> str:
        return kinesis.describe_stream_summary(StreamName=stack[stream_key])["StreamDescriptionSummary"][
            "StreamARN"
        ]

    bucket_arn = f"arn:aws:s3:::{stack['ModelBucketName']}"
    queue_arn = client("sqs").get_queue_attributes(
        QueueUrl=stack["DiscardedBatchesQueueUrl"], AttributeNames=["QueueArn"]
    )["Attributes"]["QueueArn"]
    [log_group] = client("logs").describe_log_groups(logGroupNamePrefix=stack["FunctionLogGroupName"])[
        "logGroups"
    ]

    granted = {
        statement["Sid"]: (sorted(as_list(statement["Action"])), sorted(as_list(statement["Resource"])))
        for statement in document["Statement"]
    }
    assert all(statement["Effect"] == "Allow" for statement in document["Statement"])
    assert granted == {
        "ReadInputStream": (
            sorted(
                f"kinesis:{action}"
                for action in (
                    "DescribeStream",
                    "DescribeStreamSummary",
                    "GetRecords",
                    "GetShardIterator",
                    "ListShards",
                )
            ),
            [arn("InputStreamName")],
        ),
        "WriteOutputStreams": (
            ["kinesis:PutRecords"],
            sorted([arn("PredictionsStreamName"), arn("DeadLetterStreamName")]),
        ),
        "ReportDiscardedBatches": (["sqs:SendMessage"], [queue_arn]),
        "ListModelPrefix": (["s3:ListBucket"], [bucket_arn]),
        "ReadModels": (["s3:GetObject"], [f"{bucket_arn}/models/*"]),
        # AWS's GetAtt gives the group's ARN with ":*" (its streams), moto's without.
        "WriteLogs": (["logs:CreateLogStream", "logs:PutLogEvents"], [log_group["arn"].removesuffix(":*")]),
    }
    [listing] = [s for s in document["Statement"] if s["Sid"] == "ListModelPrefix"]
    assert listing["Condition"] == {"StringLike": {"s3:prefix": "models/*"}}


def as_list(value: str | list[str]) -> list[str]:
    return [value] if isinstance(value, str) else list(value)


def either_branch(item: dict[str, Any]) -> list[dict[str, Any]]:
    """A policy statement, or both branches of a conditional one (`!If`), without AWS::NoValue."""
    if "Fn::If" not in item:
        return [item]
    _, *branches = item["Fn::If"]
    return [branch for branch in branches if branch != {"Ref": "AWS::NoValue"}]


def test_no_policy_statement_uses_a_wildcard_action_or_resource() -> None:
    """Wildcards only where AWS needs them: objects under the model prefix (and the log group
    ARN's own ':*' suffix, which comes from GetAtt, not from the template), and X-Ray's two
    write actions, which take no resource, with Tracing=Active only."""
    statements = [
        statement
        for resource in RESOURCES.values()
        for policy in resource.get("Properties", {}).get("Policies", [])
        for item in policy["PolicyDocument"]["Statement"]
        for statement in either_branch(item)
    ]
    assert statements
    [traces] = [statement for statement in statements if statement["Sid"] == "WriteTraces"]
    assert traces["Resource"] == "*"
    assert sorted(traces["Action"]) == ["xray:PutTelemetryRecords", "xray:PutTraceSegments"]
    statements.remove(traces)
    for statement in statements:
        assert all("*" not in action for action in as_list(statement["Action"]))
        for resource in as_list(statement["Resource"]):
            assert resource == {"Fn::Sub": "${ModelBucket.Arn}/models/*"} or "*" not in str(resource)


def test_streams_are_encrypted_with_the_aws_managed_key() -> None:
    streams = of_type("AWS::Kinesis::Stream")
    assert len(streams) == 3
    for stream in streams.values():
        assert stream["StreamEncryption"] == {"EncryptionType": "KMS", "KeyId": "alias/aws/kinesis"}


def test_model_bucket_is_encrypted_versioned_private_and_tls_only(client: Any, stack: dict[str, str]) -> None:
    encryption = client("s3").get_bucket_encryption(Bucket=stack["ModelBucketName"])
    [rule] = encryption["ServerSideEncryptionConfiguration"]["Rules"]
    assert rule["ApplyServerSideEncryptionByDefault"]["SSEAlgorithm"] == "AES256"

    bucket = RESOURCES["ModelBucket"]
    assert bucket["DeletionPolicy"] == bucket["UpdateReplacePolicy"] == "Retain"
    assert bucket["Properties"]["VersioningConfiguration"] == {"Status": "Enabled"}
    assert set(bucket["Properties"]["PublicAccessBlockConfiguration"].values()) == {True}
    assert len(bucket["Properties"]["PublicAccessBlockConfiguration"]) == 4
    deny = properties("ModelBucketPolicy")["PolicyDocument"]["Statement"][0]
    assert (deny["Effect"], deny["Condition"]) == ("Deny", {"Bool": {"aws:SecureTransport": "false"}})


def watched_resource(alarm: dict[str, Any]) -> str:
    """The logical id of the resource the alarm's dimension names."""
    value = alarm["Dimensions"][0]["Value"]
    return value["Ref"] if "Ref" in value else value["Fn::GetAtt"][0]


def test_alarms_watch_iterator_age_function_errors_and_discarded_batches() -> None:
    """The first three alarms; the ones on the function's own metrics: tests/deploy/test_operate.py."""
    alarms = of_type("AWS::CloudWatch::Alarm")
    watched = {
        (a["Namespace"], a["MetricName"], watched_resource(a))
        for a in alarms.values()
        if a.get("Namespace") in ("AWS/Lambda", "AWS/SQS")
    }
    assert watched >= {
        ("AWS/Lambda", "IteratorAge", "Function"),
        ("AWS/Lambda", "Errors", "Function"),
        ("AWS/SQS", "ApproximateNumberOfMessagesVisible", "DiscardedBatchesQueue"),
    }
    for alarm in alarms.values():
        assert alarm["AlarmActions"] == alarm["OKActions"] == [{"Ref": "AlarmTopic"}]
    [iterator_age] = [a for a in alarms.values() if a.get("MetricName") == "IteratorAge"]
    assert (iterator_age["Statistic"], iterator_age["Threshold"]) == ("Maximum", 60000)


def test_default_model_uri_is_where_the_dockerfile_bakes_the_model() -> None:
    dockerfile = (PROJECT_ROOT / "Dockerfile").read_text()
    assert f"ENV MODEL_URI={PARAMETERS['ModelUri']['Default']}\n" in dockerfile


def test_the_mapping_invokes_the_alias_of_a_published_version_never_latest() -> None:
    assert properties("EventSourceMapping")["FunctionName"] == {"Ref": "LiveAlias"}
    alias = properties("LiveAlias")
    assert alias["Name"] == "live"
    # CloudFormation only creates it on the first version; afterwards deploy.py passes the version
    # the alias points to, so no stack update ever moves the stream's traffic.
    assert alias["FunctionVersion"] == {
        "Fn::If": ["HasLiveVersion", {"Ref": "LiveVersion"}, {"Fn::GetAtt": ["InitialVersion", "Version"]}]
    }
    assert TEMPLATE["Conditions"]["HasLiveVersion"] == {
        "Fn::Not": [{"Fn::Equals": [{"Ref": "LiveVersion"}, ""]}]
    }
    assert (accepts("LiveVersion", "12"), accepts("LiveVersion", "$LATEST")) == (True, False)
    # A replaced first version may still be live: kept.
    assert RESOURCES["InitialVersion"]["UpdateReplacePolicy"] == "Retain"
    assert set(of_type("AWS::Lambda::Version")) == {"InitialVersion"}


def test_the_dead_letter_stream_is_on_demand() -> None:
    dead_letters = properties("DeadLetterStream")
    assert dead_letters["StreamModeDetails"] == {"StreamMode": "ON_DEMAND"}
    assert "ShardCount" not in dead_letters  # CloudFormation refuses one with ON_DEMAND
    for name in ("InputStream", "PredictionsStream"):
        assert properties(name)["StreamModeDetails"] == {"StreamMode": "PROVISIONED"}


def test_only_the_listed_writers_may_write_or_delete_models_and_the_policy_stays_editable() -> None:
    statements = properties("ModelBucketPolicy")["PolicyDocument"]["Statement"]
    [conditional] = [s for s in statements if "Fn::If" in s]
    condition, writers_only, otherwise = conditional["Fn::If"]
    assert (condition, otherwise) == ("HasModelWriters", {"Ref": "AWS::NoValue"})
    assert writers_only == {
        "Sid": "OnlyModelWritersWriteModels",
        "Effect": "Deny",
        "Principal": "*",
        "Action": ["s3:PutObject", "s3:DeleteObject", "s3:DeleteObjectVersion"],
        "Resource": {"Fn::Sub": "${ModelBucket.Arn}/models/*"},
        "Condition": {"ArnNotLike": {"aws:PrincipalArn": {"Ref": "ModelWriterRoleArns"}}},
    }
    # Nothing denies changing the policy itself: an administrator can always replace the list.
    denied = [action for s in statements if "Effect" in s for action in as_list(s["Action"])]
    assert not [action for action in denied if "Policy" in action]
    assert PARAMETERS["ModelWriterRoleArns"]["Type"] == "CommaDelimitedList"


def test_the_model_is_pinned_by_a_sha256_the_function_receives() -> None:
    assert properties("Function")["Environment"]["Variables"]["MODEL_SHA256"] == {"Ref": "ModelSha256"}
    assert accepts("ModelSha256", "")
    assert accepts("ModelSha256", "ab" * 32)
    assert not accepts("ModelSha256", "AB" * 32)
    assert not accepts("ModelSha256", "ab" * 31)
