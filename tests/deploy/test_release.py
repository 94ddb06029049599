"""Releasing a version against moto: publish, pre-traffic self-test, alias move, alarm watch and
automatic rollback, `make rollback`, --preview, the model pin.

moto cannot run the function: its Lambda answers each invocation with a configured response
(answer_invocations), here a self-test report as the handler makes it (the real handler's answer
is tested in test_pre_traffic_check.py). moto's CloudFormation does not create the template's
alarms: tests that watch them create them from the template's own properties
(put_metric_alarm), and fire one with SetAlarmState, as CloudWatch would.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore.stub import Stubber

from scripts import deploy as deploy_script
from scripts import rollback as rollback_script
from scripts.deploy import Deployment, ReleaseError, Watch, deploy, go_live, live_before
from scripts.live_alias import description, publish
from scripts.stack import PrerequisiteError, load_template, run
from stream.model_loading import model_files_sha256
from tests.deploy.conftest import STACK, STAGE, answer_invocations, publish_fake_image, self_test_report

FUNCTION = f"ride-duration-{STAGE}"
NO_WATCH = ["--watch-minutes", "0"]


def alias_version(client: Any) -> str:
    version: str = client("lambda").get_alias(FunctionName=FUNCTION, Name="live")["FunctionVersion"]
    return version


def versions(client: Any) -> dict[str, str]:
    listed = client("lambda").list_versions_by_function(FunctionName=FUNCTION)["Versions"]
    return {v["Version"]: v.get("Description", "") for v in listed if v["Version"] != "$LATEST"}


def deploy_image(client: Any, endpoint: str, tag: str, *answers: str, extra: tuple[str, ...] = ()) -> int:
    """`make deploy IMAGE=<a new image>`, the function answering the self-test with `answers`."""
    image = publish_fake_image(client("ecr"), tag=tag * 40)
    answer_invocations(endpoint, *(answers or (self_test_report(),)))
    return run(deploy_script.main, ["--stage", STAGE, "--image-uri", image, *NO_WATCH, *extra])


def resolve(value: Any, refs: dict[str, Any]) -> Any:
    """The template's few intrinsic forms in alarm properties, with this stack's values."""
    if isinstance(value, dict) and "Ref" in value:
        return refs[value["Ref"]]
    if isinstance(value, dict) and "Fn::GetAtt" in value:
        return refs[".".join(value["Fn::GetAtt"])]
    if isinstance(value, dict) and "Fn::Sub" in value:
        text = value["Fn::Sub"]
        for name, resolved in refs.items():
            text = text.replace("${" + name + "}", str(resolved))
        return text
    if isinstance(value, dict):
        return {key: resolve(item, refs) for key, item in value.items()}
    if isinstance(value, list):
        return [resolve(item, refs) for item in value]
    return value


def create_template_alarms(client: Any, stack: dict[str, str]) -> dict[str, str]:
    """The template's alarms, as CloudFormation would create them: logical id -> alarm name."""
    refs: dict[str, Any] = {
        **{name: p["Default"] for name, p in load_template()["Parameters"].items() if "Default" in p},
        "Stage": STAGE,
        "Function": stack["FunctionName"],
        "AlarmTopic": stack["AlarmTopicArn"],
        "DiscardedBatchesQueue.QueueName": stack["DiscardedBatchesQueueUrl"].rsplit("/", 1)[1],
    }
    names = {}
    for logical_id, resource in load_template()["Resources"].items():
        if resource["Type"] == "AWS::CloudWatch::Alarm":
            properties = resolve(resource["Properties"], refs)
            client("cloudwatch").put_metric_alarm(**properties)
            names[logical_id] = properties["AlarmName"]
    return names


def fire(client: Any, alarm: str) -> None:
    client("cloudwatch").set_alarm_state(
        AlarmName=alarm, StateValue="ALARM", StateReason="Threshold Crossed: 1 datapoint [3.0] > 0.0"
    )


def test_the_stack_creates_a_version_and_the_mapping_invokes_the_alias(
    client: Any, stack: dict[str, str]
) -> None:
    lambda_client = client("lambda")

    assert list(versions(client)) == ["1"]
    alias = lambda_client.get_alias(FunctionName=FUNCTION, Name="live")
    assert (alias["AliasArn"], alias["FunctionVersion"]) == (stack["LiveAliasArn"], "1")
    [mapping] = lambda_client.list_event_source_mappings(FunctionName=stack["LiveAliasArn"])[
        "EventSourceMappings"
    ]
    assert mapping["FunctionArn"] == stack["LiveAliasArn"]
    assert mapping["EventSourceArn"] == stack["InputStreamArn"]


def test_a_stack_update_keeps_the_alias_where_the_deploy_moved_it(client: Any, stack: dict[str, str]) -> None:
    """LiveVersion: CloudFormation never moves the alias back to the version it created."""
    lambda_client = client("lambda")
    deploy(client("cloudformation"), STACK, STAGE, Deployment(model_uri="/opt/ml/model/v2"))
    published = lambda_client.publish_version(FunctionName=FUNCTION)["Version"]
    lambda_client.update_alias(FunctionName=FUNCTION, Name="live", FunctionVersion=published)

    deploy(
        client("cloudformation"),
        STACK,
        STAGE,
        Deployment(overrides=(("BatchSize", "10"),), live_version=published),
    )

    assert alias_version(client) == published == "2"


def test_a_new_image_is_published_self_tested_then_made_live(
    client: Any, stack: dict[str, str], aws_endpoint: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert deploy_image(client, aws_endpoint, "2") == 0

    assert alias_version(client) == "2"
    assert versions(client)["2"].startswith("replaces 1; code sha256:")
    err = capsys.readouterr().err
    assert "version 2: invoking it with the self-test event" in err
    assert f"self-test of {FUNCTION}:2: passed" in err
    assert "alias live: version 1 -> 2" in err
    assert err.index("self-test of") < err.index("alias live: version 1 -> 2")


def test_the_deploy_watches_the_alarms_for_the_minutes_asked(
    client: Any, stack: dict[str, str], aws_endpoint: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert deploy_image(client, aws_endpoint, "2", extra=("--watch-minutes", "0.002")) == 0

    err = capsys.readouterr().err
    assert "watching 0 alarm(s) for 0.002 minute(s): none found" in err  # moto's stack has none
    assert "no alarm fired in 0.002 minute(s): version 2 stays live" in err
    assert deploy_script.parser().parse_args(["--stage", "x"]).watch_minutes == 10


def test_a_version_failing_its_self_test_gets_no_traffic_and_is_deleted(
    client: Any, stack: dict[str, str], aws_endpoint: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert deploy_image(client, aws_endpoint, "2", self_test_report(drift=2.0)) == 1

    assert alias_version(client) == "1"
    assert list(versions(client)) == ["1"]
    err = capsys.readouterr().err
    assert f"self-test of {FUNCTION}:2: FAILED" in err
    assert ["130->205", "3.66", "mi", "10", "12", "2"] in [line.split() for line in err.splitlines()]
    last = err.splitlines()[-1]
    assert last.startswith("error: version 2 failed its pre-traffic check (the model failed its self-test: ")
    assert "alias live stays on version 1, version 2 was deleted" in last


def test_a_function_that_does_not_answer_a_report_fails_the_check(
    client: Any, stack: dict[str, str], aws_endpoint: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert deploy_image(client, aws_endpoint, "2", '{"batchItemFailures": []}') == 1

    assert alias_version(client) == "1"
    assert "did not answer with a self-test report" in capsys.readouterr().err


def test_an_unchanged_function_keeps_its_live_version(
    client: Any, stack: dict[str, str], aws_endpoint: str, capsys: pytest.CaptureFixture[str]
) -> None:
    # moto updates every resource on the first update after a create (it compares the parameters
    # with those given at create, without their defaults), so the function changes once here.
    answer_invocations(aws_endpoint, self_test_report())
    assert run(deploy_script.main, ["--stage", STAGE, "--parameter", "BatchSize=20", *NO_WATCH]) == 0
    assert alias_version(client) == "2"
    capsys.readouterr()

    # No answer is configured: had it invoked anything, the check would have failed.
    assert run(deploy_script.main, ["--stage", STAGE, "--parameter", "BatchSize=30", *NO_WATCH]) == 0

    assert alias_version(client) == "2"
    assert (
        "the function's code and configuration are unchanged: version 2 stays live" in capsys.readouterr().err
    )
    [mapping] = client("lambda").list_event_source_mappings(FunctionName=stack["LiveAliasArn"])[
        "EventSourceMappings"
    ]
    assert (mapping["FunctionArn"], mapping["BatchSize"]) == (stack["LiveAliasArn"], 30)


def release_after_update(client: Any, tag: str, sleep: Any, minutes: float = 1.0) -> str:
    """go_live on a stack updated with a new image, watching the alarms with `sleep` between polls."""
    image = publish_fake_image(client("ecr"), tag=tag * 40)
    _, after = deploy(client("cloudformation"), STACK, STAGE, Deployment(image_uri=image, live_version="1"))
    return go_live(
        client("lambda"),
        client("cloudwatch"),
        STAGE,
        after,
        created=False,
        watch=Watch(minutes=minutes, poll_seconds=0, sleep=sleep),
    )


def test_an_alarm_firing_after_the_move_rolls_back(
    client: Any, stack: dict[str, str], aws_endpoint: str, capsys: pytest.CaptureFixture[str]
) -> None:
    alarms = create_template_alarms(client, stack)
    answer_invocations(aws_endpoint, self_test_report())
    seen_live = []

    def errors_appear(_seconds: float) -> None:
        seen_live.append(alias_version(client))
        fire(client, alarms["FunctionErrorsAlarm"])

    with pytest.raises(ReleaseError) as raised:
        release_after_update(client, "2", errors_appear)

    assert seen_live == ["2"]  # the alarm fired while version 2 was live
    assert alias_version(client) == "1"
    assert str(raised.value).startswith(f"alarm {alarms['FunctionErrorsAlarm']} went to ALARM at ")
    assert str(raised.value).endswith("rolled back: alias live: version 2 -> 1")
    assert "Threshold Crossed" in str(raised.value)
    assert (
        f"watching {len(alarms)} alarm(s) for 1 minute(s): {', '.join(sorted(alarms.values()))}"
        in capsys.readouterr().err
    )


def test_an_alarm_already_firing_counts_only_if_it_fires_again(
    client: Any, stack: dict[str, str], aws_endpoint: str, capsys: pytest.CaptureFixture[str]
) -> None:
    alarms = create_template_alarms(client, stack)
    fire(client, alarms["DiscardedBatchesAlarm"])  # a batch discarded before this deploy
    answer_invocations(aws_endpoint, self_test_report())

    live = release_after_update(client, "2", lambda _seconds: None, minutes=0.002)

    assert live == alias_version(client) == "2"
    err = capsys.readouterr().err
    assert (
        f"already in ALARM before the alias moved (counted only if they fire again): {alarms['DiscardedBatchesAlarm']}"
        in err
    )
    assert "no alarm fired in 0.002 minute(s): version 2 stays live" in err


def test_stopping_the_watch_leaves_the_new_version_live_and_says_how_to_go_back(
    client: Any, stack: dict[str, str], aws_endpoint: str
) -> None:
    answer_invocations(aws_endpoint, self_test_report())

    def ctrl_c(_seconds: float) -> None:
        raise KeyboardInterrupt

    with pytest.raises(
        ReleaseError, match=f"version 2 stays live; roll back with: make rollback STAGE={STAGE}"
    ):
        release_after_update(client, "2", ctrl_c)
    assert alias_version(client) == "2"


def test_alarms_of_another_stage_are_not_watched(
    client: Any, stack: dict[str, str], aws_endpoint: str
) -> None:
    """Stage test-2's alarm names and topic ARN start with stage test's: its topic is told apart."""
    client("cloudwatch").put_metric_alarm(
        AlarmName="ride-duration-test-2-errors",
        MetricName="Errors",
        Namespace="AWS/Lambda",
        Statistic="Sum",
        Period=60,
        EvaluationPeriods=1,
        Threshold=0,
        ComparisonOperator="GreaterThanThreshold",
        AlarmActions=[stack["AlarmTopicArn"] + "-2"],
    )
    answer_invocations(aws_endpoint, self_test_report())

    def other_stage_fails(_seconds: float) -> None:
        fire(client, "ride-duration-test-2-errors")

    assert release_after_update(client, "2", other_stage_fails, minutes=0.002) == "2"


def rollback(*argv: str) -> int:
    return run(rollback_script.main, ["--stage", STAGE, *argv])


def test_rollback_goes_back_one_version_at_a_time(
    client: Any, stack: dict[str, str], aws_endpoint: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert deploy_image(client, aws_endpoint, "2") == 0
    assert deploy_image(client, aws_endpoint, "3") == 0
    capsys.readouterr()
    answer_invocations(aws_endpoint, self_test_report(), self_test_report())

    assert rollback() == 0
    out, err = capsys.readouterr()
    assert out == "2\n"
    assert f"rolling back {FUNCTION}: alias live from version 3 to version 2 (replaces 1; code sha256:" in err
    assert "alias live: version 3 -> 2" in err
    assert rollback() == 0
    assert alias_version(client) == "1"

    assert rollback() == 1
    assert capsys.readouterr().err.endswith(
        f"error: version 1 of {FUNCTION} records no version before it (it was published with the stack): "
        "name one with --to-version\n"
    )


def test_rollback_to_a_named_version_checks_it_first(
    client: Any, stack: dict[str, str], aws_endpoint: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert deploy_image(client, aws_endpoint, "2") == 0
    assert rollback("--to-version", "7") == 1
    assert capsys.readouterr().err.endswith(
        f"error: {FUNCTION} has no version 7 (published versions: 1, 2)\n"
    )

    answer_invocations(aws_endpoint, self_test_report(drift=1.5))
    assert rollback("--to-version", "1") == 1
    assert alias_version(client) == "2"
    assert "error: version 1 fails its self-test now; alias live left on version 2" in capsys.readouterr().err

    assert rollback("--to-version", "1", "--no-check") == 0
    assert alias_version(client) == "1"


def test_a_rolled_back_version_is_not_made_live_again_by_accident(
    client: Any, stack: dict[str, str], aws_endpoint: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert deploy_image(client, aws_endpoint, "2") == 0
    answer_invocations(aws_endpoint, self_test_report())
    assert rollback() == 0
    capsys.readouterr()

    assert run(deploy_script.main, ["--stage", STAGE, "--parameter", "BatchSize=20", *NO_WATCH]) == 1
    assert "version 2 (replaces 1; code sha256:" in capsys.readouterr().err
    assert alias_version(client) == "1"

    answer_invocations(aws_endpoint, self_test_report())
    assert run(deploy_script.main, ["--stage", STAGE, "--redeploy", *NO_WATCH]) == 0
    assert alias_version(client) == "2"


def test_live_version_is_not_a_parameter_to_set_by_hand(
    stack: dict[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    assert run(deploy_script.main, ["--stage", STAGE, "--parameter", "LiveVersion=1"]) == 1
    assert "LiveVersion is kept by the deploy itself" in capsys.readouterr().err


def test_preview_prints_the_change_set_and_changes_nothing(
    client: Any, stack: dict[str, str], image_uri: str, capsys: pytest.CaptureFixture[str]
) -> None:
    newer = publish_fake_image(client("ecr"), tag="2" * 40)

    assert run(deploy_script.main, ["--stage", STAGE, "--image-uri", newer, "--preview"]) == 0

    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("change set preview-")
    assert out[0].endswith(f"of stack {STACK} (UPDATE), not executed:")
    # moto lists no change for a new parameter value (what AWS lists: the stubbed test below).
    assert client("lambda").get_function(FunctionName=FUNCTION)["Code"]["ImageUri"] == image_uri
    assert client("cloudformation").list_change_sets(StackName=STACK)["Summaries"] == []
    assert alias_version(client) == "1"


def test_preview_of_a_new_stack_leaves_no_stack_behind(
    client: Any, image_uri: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run(deploy_script.main, ["--stage", STAGE, "--image-uri", image_uri, "--preview"]) == 0

    out = capsys.readouterr().out.splitlines()
    assert out[0].endswith(f"of stack {STACK} (CREATE), not executed:")
    added = {line.split()[1] for line in out[1:] if line.split()[0] == "Add"}
    assert {"Function", "InitialVersion", "LiveAlias", "EventSourceMapping"} <= added
    assert [s["StackName"] for s in client("cloudformation").describe_stacks()["Stacks"]] == []


def change(action: str, logical_id: str, resource_type: str, *names: str, replacement: str = "False") -> Any:
    details = [
        {"Target": {"Attribute": "Properties", "Name": name, "RequiresRecreation": "Never"}} for name in names
    ]
    return {
        "Type": "Resource",
        "ResourceChange": {
            "Action": action,
            "LogicalResourceId": logical_id,
            "ResourceType": resource_type,
            "Replacement": replacement,
            "Scope": ["Properties"],
            "Details": details,
        },
    }


@pytest.fixture
def stubbed_cloudformation() -> Any:
    cloudformation = boto3.client("cloudformation", region_name="us-east-1")
    with Stubber(cloudformation) as stubber:
        stubber.add_response(
            "describe_stacks",
            {
                "Stacks": [
                    {
                        "StackName": STACK,
                        "CreationTime": "2026-01-01T00:00:00Z",
                        "StackStatus": "UPDATE_COMPLETE",
                    }
                ]
            },
        )
        stubber.add_response("create_change_set", {"Id": "arn:cs", "StackId": "arn:stack"})
        yield cloudformation, stubber
        stubber.assert_no_pending_responses()


def test_preview_lists_what_cloudformation_would_change(stubbed_cloudformation: Any) -> None:
    """AWS's answer for a new image: the function's Code and the alias (LiveVersion) modified."""
    cloudformation, stubber = stubbed_cloudformation
    described = {
        "Status": "CREATE_COMPLETE",
        "ExecutionStatus": "AVAILABLE",
        "Changes": [
            change("Modify", "Function", "AWS::Lambda::Function", "Code"),
            change(
                "Modify",
                "DeadLetterStream",
                "AWS::Kinesis::Stream",
                "StreamModeDetails",
                "ShardCount",
                replacement="Conditional",
            ),
        ],
    }
    stubber.add_response("describe_change_set", described)  # the waiter's look
    stubber.add_response("describe_change_set", described)
    stubber.add_response("delete_change_set", {})

    lines = deploy_script.preview(cloudformation, STACK, STAGE, Deployment(image_uri="new"))

    assert [line.split() for line in lines[1:]] == [
        ["Modify", "Function", "AWS::Lambda::Function", "Code"],
        [
            "Modify",
            "DeadLetterStream",
            "AWS::Kinesis::Stream",
            "ShardCount,",
            "StreamModeDetails",
            "(replacement:",
            "Conditional)",
        ],
    ]


def test_preview_of_nothing_to_change_says_so(stubbed_cloudformation: Any) -> None:
    cloudformation, stubber = stubbed_cloudformation
    failed = {
        "Status": "FAILED",
        "StatusReason": "The submitted information didn't contain changes. Submit different information to create a change set.",
        "Changes": [],
    }
    stubber.add_response("describe_change_set", failed)
    stubber.add_response("describe_change_set", failed)
    stubber.add_response("delete_change_set", {})

    [line] = deploy_script.preview(cloudformation, STACK, STAGE, Deployment(image_uri="same"))

    assert line.endswith(f"of stack {STACK}: no changes")


def test_an_s3_model_is_pinned_by_the_sha256_of_its_files(
    client: Any, stack: dict[str, str], aws_endpoint: str, tmp_path: Path, model_dir: Path
) -> None:
    prefix = f"{stack['ModelPrefixUri']}run-9/"
    for path in model_dir.rglob("*"):
        if path.is_file():
            key = f"models/run-9/{path.relative_to(model_dir).as_posix()}"
            client("s3").upload_file(str(path), stack["ModelBucketName"], key)
    answer_invocations(aws_endpoint, self_test_report(prefix))

    assert run(deploy_script.main, ["--stage", STAGE, "--model-uri", prefix, *NO_WATCH]) == 0

    variables = client("lambda").get_function(FunctionName=FUNCTION)["Configuration"]["Environment"][
        "Variables"
    ]
    assert variables["MODEL_SHA256"] == model_files_sha256(model_dir)
    assert alias_version(client) == "2"


def test_a_stack_from_before_the_alias_takes_it_before_new_code() -> None:
    cloudformation = boto3.client("cloudformation", region_name="us-east-1")
    old_stack = {
        "StackName": STACK,
        "CreationTime": "2026-01-01T00:00:00Z",
        "StackStatus": "UPDATE_COMPLETE",
        "Outputs": [{"OutputKey": "FunctionName", "OutputValue": FUNCTION}],
    }
    with Stubber(cloudformation) as stubber:
        stubber.add_response("describe_stacks", {"Stacks": [old_stack]})
        stubber.add_response("describe_stacks", {"Stacks": [old_stack]})

        with pytest.raises(
            PrerequisiteError, match="predates the alias 'live': deploy once without --image-uri"
        ):
            live_before(cloudformation, None, STACK, changes_code=True)
        assert live_before(cloudformation, None, STACK, changes_code=False) is None


def test_a_version_is_published_only_of_the_code_the_stack_deployed() -> None:
    """CodeSha256: if another deploy changed $LATEST meanwhile, Lambda refuses to publish."""
    lambda_client = boto3.client("lambda", region_name="us-east-1")
    with Stubber(lambda_client) as stubber:
        stubber.add_response(
            "list_versions_by_function", {"Versions": [{"Version": "$LATEST"}, {"Version": "1"}]}
        )
        stubber.add_response("get_function_configuration", {"CodeSha256": "abc="}, {"FunctionName": FUNCTION})
        stubber.add_response(
            "publish_version",
            {"Version": "2", "Description": "replaces 1; code x; model y"},
            {"FunctionName": FUNCTION, "CodeSha256": "abc=", "Description": "replaces 1; code x; model y"},
        )
        stubber.add_response(
            "get_function_configuration", {"State": "Active"}, {"FunctionName": FUNCTION, "Qualifier": "2"}
        )

        version = publish(lambda_client, FUNCTION, description("1", "x", "y"))

    assert (version.number, version.new, version.replaces) == ("2", True, "1")
