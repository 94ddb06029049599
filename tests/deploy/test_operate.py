"""What an operator gets from infra/template.yaml (docs/operate.md): alarms on what the function
does not raise, a dashboard, the mapping's own metrics, opt-in tracing, and a production stage
whose alarms must reach someone.

moto's CloudFormation creates the dashboard but skips the alarms (it has no model for
AWS::CloudWatch::Alarm). So the stack is deployed to moto by the deploy script, and each alarm
is created from its template properties, resolved against that stack (tests.deploy's resolver),
through moto's CloudWatch API: botocore checks every request against CloudWatch's API model,
and the alarms are then seen as AWS lists them, by the stage's name prefix.
"""

from __future__ import annotations

import json
import re
from typing import Any

import pytest

from scripts.deploy import Deployment, deploy
from scripts.stack import PrerequisiteError, load_template
from stream.metrics import DEFAULT_NAMESPACE, METRICS
from tests.deploy.conftest import STACK, STAGE
from tests.deploy.test_enhanced_fan_out import Resolver, deployed

TEMPLATE = load_template()
RESOURCES: dict[str, dict[str, Any]] = TEMPLATE["Resources"]
ALARMS = {name: r for name, r in RESOURCES.items() if r["Type"] == "AWS::CloudWatch::Alarm"}
SERVICE = {"Fn::Sub": "ride-duration-${Stage}"}


def resolved_alarms(client: Any, stack: dict[str, str], **parameters: str) -> dict[str, dict[str, Any]]:
    resolver = deployed(client, stack, **parameters)
    resolver.refs |= {"AlarmTopic": stack["AlarmTopicArn"], "AWS::Region": "us-east-1"}
    resolver.attributes["DiscardedBatchesQueue.QueueName"] = f"ride-events-discarded-{STAGE}"
    return {name: resolver.properties(name) for name in ALARMS}


def put_alarms(client: Any, alarms: dict[str, dict[str, Any]]) -> None:
    cloudwatch = client("cloudwatch")
    for properties in alarms.values():
        # A Number parameter is a string until CloudFormation converts it for the property.
        cloudwatch.put_metric_alarm(**properties | {"Threshold": float(properties["Threshold"])})


def test_the_stack_has_seven_alarms_named_for_the_stage_all_notifying_the_topic(
    client: Any, stack: dict[str, str]
) -> None:
    put_alarms(client, resolved_alarms(client, stack))

    described = client("cloudwatch").describe_alarms(AlarmNamePrefix=f"ride-duration-{STAGE}-")
    alarms = {a["AlarmName"]: a for a in described["MetricAlarms"]}
    assert set(alarms) == {
        f"ride-duration-{STAGE}-{name}"
        for name in (
            "dead-letter-ratio",
            "records-retried",
            "throttles",
            "duration",
            "iterator-age",
            "errors",
            "discarded-batches",
        )
    }
    for alarm in alarms.values():
        assert alarm["AlarmActions"] == alarm["OKActions"] == [stack["AlarmTopicArn"]]
        assert alarm["TreatMissingData"] == "notBreaching"  # no traffic is not an incident
    ratio = alarms[f"ride-duration-{STAGE}-dead-letter-ratio"]
    assert (ratio["Threshold"], ratio["EvaluationPeriods"], ratio["DatapointsToAlarm"]) == (5.0, 5, 3)
    [expression] = [m for m in ratio["Metrics"] if m.get("ReturnData")]
    assert expression["Expression"] == "IF(received > 0, 100 * dead / received, 0)"


def test_the_dead_letter_threshold_is_a_parameter(client: Any, stack: dict[str, str]) -> None:
    alarms = resolved_alarms(client, stack, DeadLetterAlarmPercent="20")
    assert alarms["DeadLetterRatioAlarm"]["Threshold"] == "20"
    assert "More than 20 % of the records" in alarms["DeadLetterRatioAlarm"]["AlarmDescription"]


def test_the_function_metrics_alarms_watch_what_the_function_emits() -> None:
    """Namespace, metric names and the service dimension as stream/metrics.py writes them and
    as the function's environment names them."""
    environment = RESOURCES["Function"]["Properties"]["Environment"]["Variables"]
    assert environment["POWERTOOLS_SERVICE_NAME"] == SERVICE
    assert environment["POWERTOOLS_METRICS_NAMESPACE"] == {"Ref": "MetricsNamespace"}
    assert TEMPLATE["Parameters"]["MetricsNamespace"]["Default"] == DEFAULT_NAMESPACE
    watched = []
    for alarm in ALARMS.values():
        properties = alarm["Properties"]
        stats = [m["MetricStat"]["Metric"] for m in properties.get("Metrics", []) if "MetricStat" in m]
        for metric in [properties, *stats]:
            if metric.get("Namespace") == {"Ref": "MetricsNamespace"}:
                assert metric["Dimensions"] == [{"Name": "service", "Value": SERVICE}]
                watched.append(metric["MetricName"])
    assert sorted(watched) == ["RecordsDeadLettered", "RecordsReceived", "RecordsRetried"]
    assert set(watched) <= set(METRICS)


def test_the_duration_alarm_is_a_share_of_the_timeout(client: Any, stack: dict[str, str]) -> None:
    alarm = resolved_alarms(client, stack, Timeout="120")["DurationAlarm"]
    [duration] = [m for m in alarm["Metrics"] if "MetricStat" in m]
    [share] = [m for m in alarm["Metrics"] if m.get("ReturnData")]
    assert (duration["MetricStat"]["Metric"]["MetricName"], duration["MetricStat"]["Stat"]) == (
        "Duration",
        "p99",
    )
    assert share["Expression"] == "100 * duration / (120 * 1000)"
    assert alarm["Threshold"] == 80


def test_throttles_are_watched_on_the_live_alias() -> None:
    throttles = ALARMS["ThrottlesAlarm"]["Properties"]
    assert (throttles["Namespace"], throttles["MetricName"], throttles["Statistic"]) == (
        "AWS/Lambda",
        "Throttles",
        "Sum",
    )
    assert throttles["Dimensions"] == [
        {"Name": "FunctionName", "Value": {"Ref": "Function"}},
        {"Name": "Resource", "Value": {"Fn::Sub": "${Function}:live"}},
    ]


def test_the_dashboard_shows_the_records_latencies_age_cold_starts_concurrency_drift_and_alarms(
    client: Any, stack: dict[str, str]
) -> None:
    body = json.loads(
        client("cloudwatch").get_dashboard(DashboardName=stack["DashboardName"])["DashboardBody"]
    )
    assert stack["DashboardName"] == f"ride-duration-{STAGE}"
    for widget in body["widgets"]:
        for line in widget["properties"].get("metrics", []):
            names = [item for item in line if isinstance(item, str)]
            if names[0] == DEFAULT_NAMESPACE:
                assert names[2:4] == ["service", stack["FunctionName"]]
            if names[0] == "AWS/Lambda" and names[2] == "FunctionName":
                assert names[3] == stack["FunctionName"]
    rows = [line for w in body["widgets"] for line in w["properties"].get("metrics", [])]
    named = {item for line in rows for item in line if isinstance(item, str)}
    assert {
        "RecordsReceived",
        "RecordsPredicted",
        "RecordsDeadLettered",
        "RecordsRetried",
        "BatchLatency",
        "PredictLatency",
        "IteratorAge",
        "ColdStart",
        "ConcurrentExecutions",
        "PredictedDurationMean",
    } <= named
    [alarms] = [w for w in body["widgets"] if w["type"] == "alarm"]
    arns = alarms["properties"]["alarms"]
    assert len(arns) == len(ALARMS)
    for arn in arns:
        assert re.fullmatch(
            rf"arn:aws:cloudwatch:us-east-1:\d{{12}}:alarm:ride-duration-{STAGE}-[a-z-]+", arn
        )
    assert {arn.rsplit(":", 1)[1] for arn in arns} == {
        properties["Properties"]["AlarmName"]["Fn::Sub"].replace("${Stage}", STAGE)
        for properties in ALARMS.values()
    }


def test_the_mapping_publishes_its_event_counts() -> None:
    assert RESOURCES["EventSourceMapping"]["Properties"]["MetricsConfig"] == {"Metrics": ["EventCount"]}


@pytest.mark.parametrize(("tracing", "enabled"), [("PassThrough", "false"), ("Active", "true")])
def test_tracing_is_off_by_default_and_active_turns_on_xray_and_the_functions_subsegments(
    tracing: str, enabled: str
) -> None:
    assert TEMPLATE["Parameters"]["Tracing"]["Default"] == "PassThrough"
    resolver = Resolver.with_defaults(Tracing=tracing)
    resolver.refs = {"PredictionsStream": "p", "DeadLetterStream": "d"}
    resolver.attributes = {
        "FunctionRole.Arn": "role",
        "InputStream.Arn": "in",
        "PredictionsStream.Arn": "p",
        "DeadLetterStream.Arn": "d",
        "DiscardedBatchesQueue.Arn": "q",
        "ModelBucket.Arn": "b",
        "FunctionLogGroup.Arn": "l",
    }
    function = resolver.properties("Function")
    assert function["TracingConfig"] == {"Mode": tracing}
    assert function["Environment"]["Variables"]["TRACING_ENABLED"] == enabled
    role = resolver.properties("FunctionRole")
    sids = {s["Sid"] for policy in role["Policies"] for s in policy["PolicyDocument"]["Statement"]}
    assert ("WriteTraces" in sids) is (tracing == "Active")


# --- the production stage's subscriber -------------------------------------------------------


def test_a_stage_named_prod_without_a_subscriber_is_refused_with_one_line(
    client: Any, image_uri: str
) -> None:
    with pytest.raises(PrerequisiteError) as refused:
        deploy(client("cloudformation"), "ride-duration-prod", "prod", Deployment(image_uri=image_uri))
    assert "\n" not in str(refused.value)
    assert "stage prod is a production stage and nobody would receive its alarms" in str(refused.value)
    assert "--parameter AlarmEmail=" in str(refused.value)
    assert client("cloudformation").list_stacks()["StackSummaries"] == []  # nothing was created


def test_prod_with_an_alarm_email_is_deployed_and_remembered_as_production(
    client: Any, image_uri: str
) -> None:
    email = (("AlarmEmail", "oncall@example.com"),)
    _, after = deploy(
        client("cloudformation"),
        "ride-duration-prod",
        "prod",
        Deployment(image_uri=image_uri, overrides=email),
    )
    parameters = {p["ParameterKey"]: p["ParameterValue"] for p in after["Parameters"]}
    assert (parameters["ProductionStage"], parameters["AlarmEmail"]) == ("true", "oncall@example.com")
    # (moto's CloudFormation does not create AWS::SNS::Subscription: the template's is static.)
    # A later deploy that names no subscriber keeps the deployed AlarmEmail: still accepted.
    deploy(
        client("cloudformation"), "ride-duration-prod", "prod", Deployment(overrides=(("ShardCount", "2"),))
    )


def test_a_subscription_made_outside_the_stack_is_enough(client: Any, image_uri: str) -> None:
    """An HTTPS endpoint (a pager, a chat integration) subscribed to the topic by hand."""
    cloudformation, sns = client("cloudformation"), client("sns")
    opt_out = (("ProductionStage", "false"),)
    _, created = deploy(
        cloudformation, "ride-duration-prod", "prod", Deployment(image_uri=image_uri, overrides=opt_out)
    )
    topic = {o["OutputKey"]: o["OutputValue"] for o in created["Outputs"]}["AlarmTopicArn"]
    production = (("ProductionStage", "true"),)
    with pytest.raises(PrerequisiteError):
        deploy(cloudformation, "ride-duration-prod", "prod", Deployment(overrides=production), sns=sns)

    sns.subscribe(TopicArn=topic, Protocol="https", Endpoint="https://pager.example.com/hook")
    deploy(cloudformation, "ride-duration-prod", "prod", Deployment(overrides=production), sns=sns)


def test_any_stage_may_be_declared_production_and_dev_is_not_by_default(
    client: Any, stack: dict[str, str]
) -> None:
    [described] = client("cloudformation").describe_stacks(StackName=STACK)["Stacks"]
    assert {p["ParameterKey"]: p["ParameterValue"] for p in described["Parameters"]}[
        "ProductionStage"
    ] == "false"
    with pytest.raises(PrerequisiteError, match=f"stage {STAGE} is a production stage"):
        deploy(client("cloudformation"), STACK, STAGE, Deployment(overrides=(("ProductionStage", "true"),)))
