"""The EnhancedFanOut option of infra/template.yaml: the input stream read through its own
consumer (AWS::Kinesis::StreamConsumer) instead of standard shared iterators.

moto (5.2) cannot deploy that variant: its CloudFormation does not model
AWS::Kinesis::StreamConsumer (it refuses the template: "Fn::GetAtt references undefined
resource InputStreamConsumer"), and its Lambda accepts a stream ARN only as an event source.
So the default stack is deployed to moto, and the template is resolved here the way
CloudFormation resolves it (conditions, Ref, GetAtt, Sub, AWS::NoValue), against that stack and
a consumer registered through moto's Kinesis API with the properties the template gives it.
The resolver is checked against moto's own deploy of the default variant first."""

from __future__ import annotations

import ast
import re
from dataclasses import dataclass, field
from typing import Any

import pytest
from botocore.exceptions import ClientError

from scripts.deploy import Deployment, deploy
from scripts.stack import load_template
from tests.deploy.conftest import STACK, STAGE

TEMPLATE = load_template()
NO_VALUE = object()  # what `Ref: AWS::NoValue` resolves to: the item or key is dropped


@dataclass
class Resolver:
    """A template's intrinsic functions under given parameter values, with the physical ids and
    attributes of the resources they name."""

    parameters: dict[str, str]
    refs: dict[str, str] = field(default_factory=dict)
    attributes: dict[str, str] = field(default_factory=dict)  # "Logical.Attribute" -> value

    @classmethod
    def with_defaults(cls, **overrides: str) -> Resolver:
        defaults = {name: str(spec.get("Default", "")) for name, spec in TEMPLATE["Parameters"].items()}
        return cls(defaults | overrides)

    def condition(self, name: str) -> bool:
        return bool(self.resolve(TEMPLATE["Conditions"][name]))

    def creates(self, logical_id: str) -> bool:
        condition = TEMPLATE["Resources"][logical_id].get("Condition")
        return condition is None or self.condition(condition)

    def properties(self, logical_id: str) -> Any:
        assert self.creates(logical_id), f"{logical_id} is not created with {self.parameters}"
        return self.resolve(TEMPLATE["Resources"][logical_id]["Properties"])

    def resolve(self, node: Any) -> Any:  # noqa: PLR0911 - a return per intrinsic function
        if isinstance(node, list):
            return [value for value in map(self.resolve, node) if value is not NO_VALUE]
        if not isinstance(node, dict):
            return node
        if len(node) == 1:
            [(key, argument)] = node.items()
            if key == "Ref":
                return self.ref(argument)
            if key == "Fn::GetAtt":
                return self.attributes[".".join(argument)]
            if key == "Fn::If":
                name, when_true, when_false = argument
                return self.resolve(when_true if self.condition(name) else when_false)
            if key == "Fn::Equals":
                left, right = (self.resolve(a) for a in argument)
                return left == right
            if key == "Fn::Not":
                return not self.resolve(argument[0])
            if key == "Fn::Sub":
                return re.sub(r"\$\{([^}]+)\}", lambda m: self.substitute(m[1]), argument)
        resolved = {key: self.resolve(value) for key, value in node.items()}
        return {key: value for key, value in resolved.items() if value is not NO_VALUE}

    def ref(self, name: str) -> Any:
        if name == "AWS::NoValue":
            return NO_VALUE
        return self.parameters[name] if name in self.parameters else self.refs[name]

    def substitute(self, name: str) -> str:
        return self.attributes[name] if "." in name else str(self.ref(name))


def deployed(client: Any, stack: dict[str, str], **parameters: str) -> Resolver:
    """A resolver for the deployed default stack's resources, under the given parameters."""
    kinesis, sqs = client("kinesis"), client("sqs")

    def stream_arn(output: str) -> str:
        return kinesis.describe_stream_summary(StreamName=stack[output])["StreamDescriptionSummary"][
            "StreamARN"
        ]

    [log_group] = client("logs").describe_log_groups(logGroupNamePrefix=stack["FunctionLogGroupName"])[
        "logGroups"
    ]
    resolver = Resolver.with_defaults(Stage=STAGE, **parameters)
    resolver.refs = {"Function": stack["FunctionName"], "LiveAlias": stack["LiveAliasArn"]}
    resolver.attributes = {
        "InputStream.Arn": stream_arn("InputStreamName"),
        "PredictionsStream.Arn": stream_arn("PredictionsStreamName"),
        "DeadLetterStream.Arn": stream_arn("DeadLetterStreamName"),
        "DiscardedBatchesQueue.Arn": sqs.get_queue_attributes(
            QueueUrl=stack["DiscardedBatchesQueueUrl"], AttributeNames=["QueueArn"]
        )["Attributes"]["QueueArn"],
        "ModelBucket.Arn": f"arn:aws:s3:::{stack['ModelBucketName']}",
        # moto's GetAtt of a log group: its ARN without the ":*" that AWS's has.
        "FunctionLogGroup.Arn": log_group["arn"].removesuffix(":*"),
    }
    return resolver


def grants(statements: list[dict[str, Any]]) -> dict[str, tuple[list[str], list[str]]]:
    def as_list(value: str | list[str]) -> list[str]:
        return [value] if isinstance(value, str) else list(value)

    return {s["Sid"]: (sorted(as_list(s["Action"])), sorted(as_list(s["Resource"]))) for s in statements}


def role_statements(resolver: Resolver) -> list[dict[str, Any]]:
    [policy] = resolver.properties("FunctionRole")["Policies"]
    statements: list[dict[str, Any]] = policy["PolicyDocument"]["Statement"]
    return statements


def test_the_resolver_reads_the_default_variant_as_moto_deployed_it(
    client: Any, stack: dict[str, str]
) -> None:
    resolver = deployed(client, stack)
    role = (
        client("lambda").get_function_configuration(FunctionName=stack["FunctionName"])["Role"].split("/")[-1]
    )
    iam = client("iam")
    [name] = iam.list_role_policies(RoleName=role)["PolicyNames"]
    document = iam.get_role_policy(RoleName=role, PolicyName=name)["PolicyDocument"]
    if isinstance(document, str):  # moto stores a policy created by CloudFormation as a Python repr
        document = ast.literal_eval(document)
    [mapping] = client("lambda").list_event_source_mappings(FunctionName=stack["LiveAliasArn"])[
        "EventSourceMappings"
    ]

    assert resolver.properties("EventSourceMapping")["EventSourceArn"] == mapping["EventSourceArn"]
    assert resolver.properties("EventSourceMapping")["FunctionName"] == mapping["FunctionArn"]
    # moto keeps `!Ref AWS::NoValue` in a list as null; CloudFormation (and the resolver) drop it.
    assert grants(role_statements(resolver)) == grants([s for s in document["Statement"] if s is not None])


def test_by_default_the_mapping_reads_the_stream_itself_and_no_consumer_exists(
    client: Any, stack: dict[str, str]
) -> None:
    resolver = deployed(client, stack)
    input_arn = resolver.attributes["InputStream.Arn"]

    assert TEMPLATE["Parameters"]["EnhancedFanOut"]["Default"] == "false"
    assert not resolver.creates("InputStreamConsumer")
    assert client("kinesis").list_stream_consumers(StreamARN=input_arn)["Consumers"] == []
    assert resolver.properties("EventSourceMapping")["EventSourceArn"] == input_arn
    assert "ReadThroughEnhancedFanOut" not in grants(role_statements(resolver))


def test_enhanced_fan_out_maps_the_function_to_a_consumer_of_the_input_stream_it_may_subscribe_through(
    client: Any, stack: dict[str, str]
) -> None:
    resolver = deployed(client, stack, EnhancedFanOut="true")
    kinesis = client("kinesis")
    input_arn = resolver.attributes["InputStream.Arn"]

    # What CloudFormation does for AWS::Kinesis::StreamConsumer, with the template's properties.
    consumer = resolver.properties("InputStreamConsumer")
    assert consumer == {"ConsumerName": f"ride-duration-{STAGE}", "StreamARN": input_arn}
    consumer_arn = kinesis.register_stream_consumer(**consumer)["Consumer"]["ConsumerARN"]
    resolver.attributes["InputStreamConsumer.ConsumerARN"] = consumer_arn

    description = kinesis.describe_stream_consumer(ConsumerARN=consumer_arn)["ConsumerDescription"]
    assert (description["StreamARN"], description["ConsumerStatus"]) == (input_arn, "ACTIVE")
    assert resolver.properties("EventSourceMapping")["EventSourceArn"] == consumer_arn
    granted = grants(role_statements(resolver))
    assert granted["ReadThroughEnhancedFanOut"] == (
        ["kinesis:DescribeStreamConsumer", "kinesis:SubscribeToShard"],
        [consumer_arn],
    )
    # Lambda still describes the stream and lists its shards: that grant stays on the stream.
    assert granted["ReadInputStream"][1] == [input_arn]


def test_the_option_takes_true_or_false_only() -> None:
    assert TEMPLATE["Parameters"]["EnhancedFanOut"]["AllowedValues"] == ["false", "true"]
    assert Resolver.with_defaults(EnhancedFanOut="true").condition("UseEnhancedFanOut")
    assert not Resolver.with_defaults(EnhancedFanOut="false").condition("UseEnhancedFanOut")


def test_moto_still_cannot_deploy_the_consumer(client: Any, image_uri: str) -> None:
    """Why the tests above resolve the template themselves. When this fails, moto has learnt
    AWS::Kinesis::StreamConsumer and consumer event sources: deploy the variant instead."""
    with pytest.raises(ClientError, match="InputStreamConsumer"):
        deploy(
            client("cloudformation"),
            STACK,
            STAGE,
            Deployment(image_uri=image_uri, overrides=(("EnhancedFanOut", "true"),)),
        )
