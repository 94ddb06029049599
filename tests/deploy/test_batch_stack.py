"""infra/batch.yaml, deployed by `make batch-deploy` (scripts/batch_deploy.py) on a moto server, and
`make backfill STAGE=...` (scripts/backfill.py) against it.

moto's CloudFormation creates the data bucket, the queue, the roles, the function, the arrival
rule with its target and the function's permission for it. It skips (with a warning) what it
does not model: the bucket's EventBridge notifications, versioning and lifecycle rules, the bucket
and queue policies, AWS::Lambda::EventInvokeConfig, AWS::Scheduler::Schedule and the alarms. The
tests apply the bucket's notification setting from the template itself, as CloudFormation would,
and check the others on the template: the schedule's input read by the function's own trigger
code, the on-failure destination, the queue policy's source, the alarms' metrics. moto cannot run
the image: its Lambda answers invocations with configured responses (the self-test report), and
the job that the function runs is run here, in-process, with the function's deployed environment.
"""

from __future__ import annotations

import ast
import io
import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import boto3
import pyarrow.parquet as pq
import pytest

from batch.job import MonthlyScoring
from batch.months import Month
from batch.settings import BatchSettings
from batch.triggers import runs_for
from scripts import backfill, batch_deploy
from scripts.deploy import ModelSource
from scripts.stack import load_template, run
from scripts.train import synthetic_trips
from stream.model_loading import load_model
from tests.conftest import RecordingLog
from tests.deploy.conftest import REGION, STAGE, answer_invocations, publish_fake_image, self_test_report

TEMPLATE = load_template(batch_deploy.BATCH_TEMPLATE)
RESOURCES: dict[str, dict[str, Any]] = TEMPLATE["Resources"]
BATCH_STACK = f"ride-duration-batch-{STAGE}"
FUNCTION = f"ride-duration-batch-{STAGE}"


def deploy_batch(
    client: Any, endpoint: str, *arguments: str, answer: str | None = None, tag: str = "b"
) -> int:
    """`make batch-deploy IMAGE=<a new image>`, the function answering the self-test with `answer`."""
    image = publish_fake_image(client("ecr"), tag=tag * 40)
    answer_invocations(endpoint, answer or self_test_report())
    return run(batch_deploy.main, ["--stage", STAGE, "--image-uri", image, *arguments])


def batch_outputs(client: Any) -> dict[str, str]:
    [stack] = client("cloudformation").describe_stacks(StackName=BATCH_STACK)["Stacks"]
    return {o["OutputKey"]: o["OutputValue"] for o in stack["Outputs"]}


def batch_parameters(client: Any) -> dict[str, str]:
    [stack] = client("cloudformation").describe_stacks(StackName=BATCH_STACK)["Stacks"]
    return {p["ParameterKey"]: p["ParameterValue"] for p in stack["Parameters"]}


def role_statements(client: Any, function_name: str) -> dict[str, dict[str, Any]]:
    iam = client("iam")
    role = client("lambda").get_function_configuration(FunctionName=function_name)["Role"].rsplit("/", 1)[1]
    statements = {}
    for name in iam.list_role_policies(RoleName=role)["PolicyNames"]:
        document = iam.get_role_policy(RoleName=role, PolicyName=name)["PolicyDocument"]
        # moto's CloudFormation stores the document as Python's repr, with AWS::NoValue as None
        # (CloudFormation drops it from the list).
        document = ast.literal_eval(document) if isinstance(document, str) else document
        statements |= {s["Sid"]: s for s in document["Statement"] if s is not None}
    return statements


def test_the_batch_stack_is_made_beside_the_stage_with_its_model_bucket_and_alarm_topic(
    client: Any, stack: dict[str, str], aws_endpoint: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert deploy_batch(client, aws_endpoint) == 0

    outputs, parameters = batch_outputs(client), batch_parameters(client)
    bucket = outputs["DataBucketName"]
    assert parameters["ModelBucketName"] == stack["ModelBucketName"]
    assert parameters["AlarmTopicArn"] == stack["AlarmTopicArn"]
    configuration = client("lambda").get_function_configuration(FunctionName=FUNCTION)
    assert configuration["MemorySize"] == 2048
    assert configuration["Environment"]["Variables"] | {"MODEL_SHA256": ""} == {
        "MODEL_URI": "/opt/ml/model",
        "MODEL_VERSION": "",
        "MODEL_RUN_ID": "",
        "MODEL_SHA256": "",
        "BATCH_INPUT_TEMPLATE": f"s3://{bucket}/input/green_tripdata_{{year}}-{{month:02d}}.parquet",
        "BATCH_OUTPUT_TEMPLATE": f"s3://{bucket}/output/year={{year}}/month={{month:02d}}/predictions.parquet",
        "LOG_LEVEL": "INFO",
    }
    assert outputs["InputPrefixUri"] == f"s3://{bucket}/input/"
    # The deploy's self-test, and the stack's outputs on stdout.
    captured = capsys.readouterr()
    assert f"{FUNCTION}: invoking it with the self-test event" in captured.err
    assert f"FunctionName\t{FUNCTION}" in captured.out


def test_the_function_may_read_inputs_write_outputs_and_read_models_only(
    client: Any, stack: dict[str, str], aws_endpoint: str
) -> None:
    assert deploy_batch(client, aws_endpoint) == 0

    bucket_arn = f"arn:aws:s3:::{batch_outputs(client)['DataBucketName']}"
    models = f"arn:aws:s3:::{stack['ModelBucketName']}"
    statements = role_statements(client, FUNCTION)
    s3 = {
        sid: (statement["Action"], statement["Resource"], statement.get("Condition"))
        for sid, statement in statements.items()
        if "s3" in json.dumps(statement["Action"])
    }
    assert s3 == {
        "ListInputPrefix": ("s3:ListBucket", bucket_arn, {"StringLike": {"s3:prefix": "input/*"}}),
        "ReadInputs": ("s3:GetObject", f"{bucket_arn}/input/*", None),
        "WriteOutputs": (["s3:PutObject", "s3:AbortMultipartUpload"], f"{bucket_arn}/output/*", None),
        "ListModelPrefix": ("s3:ListBucket", models, {"StringLike": {"s3:prefix": "models/*"}}),
        "ReadModels": ("s3:GetObject", f"{models}/models/*", None),
    }
    assert set(statements) - set(s3) == {"ReportFailedRuns", "WriteLogs"}
    assert statements["ReportFailedRuns"]["Action"] == "sqs:SendMessage"


def test_without_a_model_bucket_the_function_may_read_no_model(client: Any, aws_endpoint: str) -> None:
    """No stream stack: the model is inside the image, and no models/ statement is made."""
    assert deploy_batch(client, aws_endpoint) == 0

    assert batch_parameters(client)["ModelBucketName"] == ""
    assert {"ListModelPrefix", "ReadModels"}.isdisjoint(role_statements(client, FUNCTION))


def test_a_file_arriving_in_the_deployed_bucket_is_scored_by_the_deployed_configuration(
    client: Any, aws_endpoint: str, model_dir: Path, tmp_path: Path
) -> None:
    """The deployed rule matches what the deployed bucket sends for a file under input/ (and
    nothing the job writes); the job, with the function's deployed environment, scores it into the
    month's key under output/. The rule's target is the function, whose permission names the rule."""
    assert deploy_batch(client, aws_endpoint) == 0
    outputs = batch_outputs(client)
    bucket, s3, events, sqs = outputs["DataBucketName"], client("s3"), client("events"), client("sqs")
    rule = f"ride-duration-batch-arrivals-{STAGE}"
    [target] = events.list_targets_by_rule(Rule=rule)["Targets"]
    function_arn = client("lambda").get_function(FunctionName=FUNCTION)["Configuration"]["FunctionArn"]
    assert target["Arn"] == function_arn
    [permission] = json.loads(client("lambda").get_policy(FunctionName=FUNCTION)["Policy"])["Statement"]
    assert permission["Principal"] == {"Service": "events.amazonaws.com"}
    assert permission["Condition"]["ArnLike"]["AWS:SourceArn"] == events.describe_rule(Name=rule)["Arn"]
    # What moto's CloudFormation skips, as the template sets it.
    assert RESOURCES["DataBucket"]["Properties"]["NotificationConfiguration"]["EventBridgeConfiguration"] == {
        "EventBridgeEnabled": True
    }
    s3.put_bucket_notification_configuration(
        Bucket=bucket, NotificationConfiguration={"EventBridgeConfiguration": {}}
    )
    # moto's EventBridge cannot invoke a function (and stops at such a target): a queue takes its place.
    tap = sqs.create_queue(QueueName="in-the-functions-place")["QueueUrl"]
    tap_arn = sqs.get_queue_attributes(QueueUrl=tap, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    events.remove_targets(Rule=rule, Ids=[target["Id"]])
    events.put_targets(Rule=rule, Targets=[{"Id": "tap", "Arn": tap_arn}])
    trips = io.BytesIO()
    synthetic_trips(300, month=1, seed=5).to_parquet(trips)

    s3.put_object(Bucket=bucket, Key="input/green_tripdata_2021-01.parquet", Body=trips.getvalue())
    [message] = sqs.receive_message(QueueUrl=tap, MaxNumberOfMessages=10)["Messages"]
    environment = client("lambda").get_function_configuration(FunctionName=FUNCTION)["Environment"][
        "Variables"
    ]
    job = MonthlyScoring(
        load_model(str(model_dir), tmp_path), BatchSettings.from_env(environment), RecordingLog()
    )
    [result] = job.handle(json.loads(message["Body"]))["months"]

    assert result["output"] == f"s3://{bucket}/output/year=2021/month=01/predictions.parquet"
    body = s3.get_object(Bucket=bucket, Key="output/year=2021/month=01/predictions.parquet")["Body"].read()
    assert pq.read_table(io.BytesIO(body)).num_rows == 300
    assert "Messages" not in sqs.receive_message(QueueUrl=tap, MaxNumberOfMessages=10)  # the output: no event


def test_the_schedule_invokes_the_function_monthly_for_the_month_before() -> None:
    """Not modelled by moto's CloudFormation: the template's schedule, its input read by the
    function's own trigger code with Scheduler's context attribute filled in."""
    schedule = RESOURCES["MonthlySchedule"]["Properties"]
    assert TEMPLATE["Parameters"]["ScheduleExpression"]["Default"] == "cron(0 6 1 * ? *)"  # the 1st, 06:00
    assert schedule["Target"]["Arn"] == {"Fn::GetAtt": ["Function", "Arn"]}
    assert schedule["Target"]["RoleArn"] == {"Fn::GetAtt": ["SchedulerRole", "Arn"]}
    assert schedule["Target"]["DeadLetterConfig"]["Arn"] == {"Fn::GetAtt": ["FailedRunsQueue", "Arn"]}
    delivered = json.loads(
        schedule["Target"]["Input"].replace("<aws.scheduler.scheduled-time>", "2021-07-01T06:00:00Z")
    )
    [month] = runs_for(delivered, BatchSettings.from_env({}))
    assert month.month == Month(2021, 6)
    [role_policy] = RESOURCES["SchedulerRole"]["Properties"]["Policies"]
    actions = {s["Action"] for s in role_policy["PolicyDocument"]["Statement"]}
    assert actions == {"lambda:InvokeFunction", "sqs:SendMessage"}


def test_failed_runs_are_retried_then_reported_to_the_queue_the_alarm_watches() -> None:
    """Not modelled by moto's CloudFormation: the on-failure destination, the queue policy, the alarms."""
    invoke_config = RESOURCES["FunctionEventInvokeConfig"]["Properties"]
    assert invoke_config["DestinationConfig"]["OnFailure"]["Destination"] == {
        "Fn::GetAtt": ["FailedRunsQueue", "Arn"]
    }
    assert invoke_config["MaximumRetryAttempts"] == {"Ref": "MaximumRetryAttempts"}
    assert TEMPLATE["Parameters"]["MaximumRetryAttempts"]["Default"] == 2
    [statement] = RESOURCES["FailedRunsQueuePolicy"]["Properties"]["PolicyDocument"]["Statement"]
    assert statement["Condition"] == {"ArnEquals": {"aws:SourceArn": {"Fn::GetAtt": ["ArrivalRule", "Arn"]}}}
    [rule_target] = RESOURCES["ArrivalRule"]["Properties"]["Targets"]
    assert rule_target["DeadLetterConfig"]["Arn"] == {"Fn::GetAtt": ["FailedRunsQueue", "Arn"]}
    alarms = {
        resource["Properties"]["MetricName"]: resource["Properties"]
        for resource in RESOURCES.values()
        if resource["Type"] == "AWS::CloudWatch::Alarm"
    }
    assert set(alarms) == {"Errors", "ApproximateNumberOfMessagesVisible"}
    assert alarms["ApproximateNumberOfMessagesVisible"]["Dimensions"][0]["Value"] == {
        "Fn::GetAtt": ["FailedRunsQueue", "QueueName"]
    }
    for alarm in alarms.values():
        assert alarm["AlarmName"]["Fn::Sub"].startswith("ride-duration-batch-${Stage}-")  # CI may manage them


def test_a_new_batch_stack_needs_an_image(
    client: Any, aws_endpoint: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run(batch_deploy.main, ["--stage", STAGE]) == 1
    assert "stack ride-duration-batch-test does not exist yet: pass --image-uri" in capsys.readouterr().err


def test_a_failed_self_test_is_an_error_naming_the_previous_image(
    client: Any, aws_endpoint: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert deploy_batch(client, aws_endpoint) == 0
    first = batch_parameters(client)["ImageUri"]
    failing = self_test_report(drift=5.0)

    assert deploy_batch(client, aws_endpoint, answer=failing, tag="c") == 1

    error = capsys.readouterr().err
    assert "error: the batch function fails its self-test (the model failed its self-test" in error
    assert f"the previous image: make batch-deploy STAGE={STAGE} IMAGE={first}" in error


def stack_description(parameters: dict[str, str], outputs: dict[str, str]) -> dict[str, Any]:
    return {
        "Parameters": [{"ParameterKey": k, "ParameterValue": v} for k, v in parameters.items()],
        "Outputs": [{"OutputKey": k, "OutputValue": v} for k, v in outputs.items()],
    }


def test_a_new_batch_stack_scores_with_the_streams_s3_model_and_keeps_its_own_afterwards() -> None:
    stream = stack_description(
        {
            "ModelUri": "s3://models-bucket/models/m1/",
            "ModelVersion": "3",
            "ModelRunId": "r",
            "ModelSha256": "a" * 64,
        },
        {"ModelBucketName": "models-bucket", "AlarmTopicArn": "arn:aws:sns:us-east-1:123456789012:alarms"},
    )
    created = batch_deploy.requested_parameters("dev", "image", None, stream, None, overrides={})
    updated = batch_deploy.requested_parameters("dev", None, None, stream, {"Parameters": []}, overrides={})
    chosen = batch_deploy.requested_parameters(
        "dev", None, ModelSource("s3://models-bucket/models/m2/", sha256="b" * 64), stream, {}, overrides={}
    )
    baked = stack_description({"ModelUri": "/opt/ml/model"}, {"ModelBucketName": "models-bucket"})

    assert created["ModelUri"] == "s3://models-bucket/models/m1/"
    assert (created["ModelVersion"], created["ModelSha256"]) == ("3", "a" * 64)
    assert (created["ModelBucketName"], created["AlarmTopicArn"]) == (
        "models-bucket",
        "arn:aws:sns:us-east-1:123456789012:alarms",
    )
    assert "ModelUri" not in updated  # the batch stack keeps the model it was deployed with
    assert (chosen["ModelUri"], chosen["ModelVersion"], chosen["ModelSha256"]) == (
        "s3://models-bucket/models/m2/",
        "",
        "b" * 64,
    )
    assert "ModelUri" not in batch_deploy.requested_parameters(
        "dev", "image", None, baked, None, overrides={}
    )


# --- make backfill STAGE=... -------------------------------------------------------------------


def failure_record(month: str, message: str) -> str:
    """What Lambda's on-failure destination sends for an asynchronous invocation it gave up on."""
    return json.dumps(
        {
            "version": "1.0",
            "timestamp": "2021-07-02T10:00:00.000Z",
            "requestContext": {
                "requestId": "e4b46cbf-b738-xmpl-8880-a18cdf61200e",
                "functionArn": f"arn:aws:lambda:{REGION}:123456789012:function:{FUNCTION}:$LATEST",
                "condition": "RetriesExhausted",
                "approximateInvokeCount": 3,
            },
            "requestPayload": {"month": month},
            "responseContext": {
                "statusCode": 200,
                "executedVersion": "$LATEST",
                "functionError": "Unhandled",
            },
            "responsePayload": {"errorMessage": message, "errorType": "MonthFailedError"},
        }
    )


def test_backfill_on_aws_invokes_each_month_asynchronously_and_reports_outputs_and_failures(
    client: Any, aws_endpoint: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert deploy_batch(client, aws_endpoint) == 0
    outputs = batch_outputs(client)
    invoked: list[dict[str, Any]] = []
    session = boto3.Session(region_name=REGION)
    session.events.register("before-call.lambda.Invoke", lambda params, **_: invoked.append(params))
    polls: list[float] = []

    def the_function_runs(seconds: float) -> None:
        """Between two polls: March is scored, April fails for good, May has no answer yet."""
        polls.append(seconds)
        client("s3").put_object(
            Bucket=outputs["DataBucketName"], Key="output/year=2021/month=03/predictions.parquet", Body=b"..."
        )
        client("sqs").send_message(
            QueueUrl=outputs["FailedRunsQueueUrl"],
            MessageBody=failure_record(
                "2021-04", "month 2021-04 (request): s3://.../green_tripdata_2021-04.parquet: no such file"
            ),
        )

    months = [Month(2021, 3), Month(2021, 4), Month(2021, 5)]
    progress = backfill.backfill_on_aws(
        session, STAGE, months, wait_minutes=0.001, sleep=the_function_runs, poll_seconds=0
    )

    assert [(call["headers"]["X-Amz-Invocation-Type"], json.loads(call["body"])) for call in invoked] == [
        ("Event", {"month": "2021-03"}),
        ("Event", {"month": "2021-04"}),
        ("Event", {"month": "2021-05"}),
    ]
    assert list(progress.done) == [Month(2021, 3)]
    assert progress.failed == {
        Month(2021, 4): "month 2021-04 (request): s3://.../green_tripdata_2021-04.parquet: no such file"
    }
    assert progress.running == [Month(2021, 5)]
    assert polls == [0]
    # The failure record stays in the queue for the operator (and the alarm).
    assert (
        client("sqs").get_queue_attributes(
            QueueUrl=outputs["FailedRunsQueueUrl"], AttributeNames=["ApproximateNumberOfMessages"]
        )["Attributes"]["ApproximateNumberOfMessages"]
        == "1"
    )
    lines = capsys.readouterr().err.splitlines()
    assert "backfill 2021-03..2021-05: 1/3 months scored, 1 failed, 1 running (2021-05)" in lines[-1]


def test_an_output_older_than_the_backfill_is_not_taken_for_its_result(
    client: Any, aws_endpoint: str
) -> None:
    assert deploy_batch(client, aws_endpoint) == 0
    bucket = batch_outputs(client)["DataBucketName"]
    client("s3").put_object(Bucket=bucket, Key="output/year=2021/month=03/predictions.parquet", Body=b"old")
    later = datetime.now(UTC).replace(year=datetime.now(UTC).year + 1)

    uri = f"s3://{bucket}/output/year=2021/month=03/predictions.parquet"
    assert backfill.output_written_since(client("s3"), uri, datetime(2020, 1, 1, tzinfo=UTC))
    assert not backfill.output_written_since(client("s3"), uri, later)
    assert not backfill.output_written_since(
        client("s3"), uri.replace("03", "04"), datetime(2020, 1, 1, tzinfo=UTC)
    )


def test_make_backfill_on_aws_without_waiting_invokes_and_returns(
    client: Any, aws_endpoint: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert deploy_batch(client, aws_endpoint) == 0

    code = run(
        backfill.main, ["--from", "2021-11", "--to", "2022-02", "--stage", STAGE, "--wait-minutes", "0"]
    )

    assert code == 0
    error = capsys.readouterr().err
    assert [line.split(":")[0] for line in error.splitlines() if "invoked" in line] == [
        "2021-11",
        "2021-12",
        "2022-01",
        "2022-02",
    ]
    assert "not waiting (--wait-minutes 0)" in error


def test_backfill_names_a_bad_month_range(capsys: pytest.CaptureFixture[str]) -> None:
    assert run(backfill.main, ["--from", "2021-06", "--to", "2021-01"]) == 1
    assert "the last month (2021-01) is before the first (2021-06)" in capsys.readouterr().err
