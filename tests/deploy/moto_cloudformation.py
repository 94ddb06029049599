"""What moto's CloudFormation (5.2.5) lacks for infra/template.yaml, added to the moto server the
deploy tests run in this process, each through moto's own Lambda backend as CloudFormation would
call the Lambda API:

- `AWS::Lambda::Alias` is not modelled (moto skips it with a warning, so `!Ref LiveAlias` is
  empty and the mapping cannot be created): created, updated and deleted here with moto's
  CreateAlias/UpdateAlias/DeleteAlias; `Ref` gives the alias ARN, as in AWS.
- `!GetAtt <AWS::Lambda::Version>.Version` is not answered: the version number, as in AWS.
- A mapping created or updated with an alias ARN keeps the version the alias resolved to as its
  FunctionArn; AWS keeps the alias ARN (so that moving the alias moves the mapping's traffic).
- AWS::Lambda::Version's Description is not passed on to PublishVersion (not patched: the
  tests do not read it).

Everything else (the function, PublishVersion, the mapping's settings) is moto's own.
"""

from __future__ import annotations

from typing import Any

from moto.awslambda.models import EventSourceMapping, LambdaAlias, LambdaBackend, LambdaVersion
from moto.awslambda.utils import get_backend
from moto.cloudformation import parsing
from moto.core.common_models import CloudFormationModel


class CloudFormationAlias(CloudFormationModel):
    """AWS::Lambda::Alias, as CloudFormation's handler drives the Lambda API."""

    def __init__(self, alias: LambdaAlias, function_name: str) -> None:
        self.alias = alias
        self.function_name = function_name

    @staticmethod
    def cloudformation_name_type() -> str:
        return "Name"

    @staticmethod
    def cloudformation_type() -> str:
        return "AWS::Lambda::Alias"

    @property
    def physical_resource_id(self) -> str:
        return self.alias.arn

    def get_cfn_attribute(self, attribute_name: str) -> str:
        if attribute_name == "AliasArn":
            return self.alias.arn
        raise NotImplementedError(attribute_name)

    @classmethod
    def create_from_cloudformation_json(  # type: ignore[override]
        cls,
        resource_name: str,
        cloudformation_json: dict[str, Any],
        account_id: str,
        region_name: str,
        **kwargs: Any,
    ) -> CloudFormationAlias:
        properties = cloudformation_json["Properties"]
        alias = get_backend(account_id, region_name).create_alias(
            name=properties["Name"],
            function_name=properties["FunctionName"],
            function_version=str(properties["FunctionVersion"]),
            description=properties.get("Description", ""),
            routing_config=properties.get("RoutingConfig"),  # type: ignore[arg-type]
        )
        return cls(alias, properties["FunctionName"])

    @classmethod
    def update_from_cloudformation_json(  # type: ignore[override]
        cls,
        original_resource: CloudFormationAlias,
        new_resource_name: str,
        cloudformation_json: dict[str, Any],
        account_id: str,
        region_name: str,
    ) -> CloudFormationAlias:
        properties = cloudformation_json["Properties"]
        alias = get_backend(account_id, region_name).update_alias(
            name=properties["Name"],
            function_name=properties["FunctionName"],
            function_version=str(properties["FunctionVersion"]),
            description=properties.get("Description", ""),
            routing_config=properties.get("RoutingConfig"),  # type: ignore[arg-type]
        )
        return cls(alias, properties["FunctionName"])

    @classmethod
    def delete_from_cloudformation_json(  # type: ignore[override]
        cls, resource_name: str, cloudformation_json: dict[str, Any], account_id: str, region_name: str
    ) -> None:
        properties = cloudformation_json["Properties"]
        get_backend(account_id, region_name).delete_alias(properties["Name"], properties["FunctionName"])


def _version_attribute(self: LambdaVersion, attribute_name: str) -> str:
    if attribute_name == "Version":
        return str(self.version)
    raise NotImplementedError(attribute_name)


def _qualified_arn(spec: dict[str, Any]) -> str | None:
    requested = str(spec.get("FunctionName", ""))
    return requested if requested.startswith("arn:") and len(requested.split(":")) == 8 else None


def _keeping_the_alias_arn_on_create(create: Any) -> Any:
    def create_event_source_mapping(self: LambdaBackend, spec: dict[str, Any]) -> EventSourceMapping:
        arn = _qualified_arn(spec)
        mapping: EventSourceMapping = create(self, spec)
        if arn:
            mapping.function_arn = arn
        return mapping

    return create_event_source_mapping


def _keeping_the_alias_arn_on_update(update: Any) -> Any:
    def update_event_source_mapping(
        self: LambdaBackend, uuid: str, spec: dict[str, Any]
    ) -> EventSourceMapping | None:
        arn = _qualified_arn(spec)
        mapping: EventSourceMapping | None = update(self, uuid, spec)
        if mapping is not None and arn:
            mapping.function_arn = arn
        return mapping

    return update_event_source_mapping


def install() -> None:
    """Idempotent: the classes are registered once per process."""
    if getattr(LambdaVersion, "_release_patched", False):
        return
    LambdaVersion.get_cfn_attribute = _version_attribute  # type: ignore[attr-defined]
    LambdaBackend.create_event_source_mapping = _keeping_the_alias_arn_on_create(  # type: ignore[method-assign]
        LambdaBackend.create_event_source_mapping
    )
    LambdaBackend.update_event_source_mapping = _keeping_the_alias_arn_on_update(  # type: ignore[method-assign]
        LambdaBackend.update_event_source_mapping
    )
    LambdaVersion._release_patched = True  # type: ignore[attr-defined]
    # moto finds resource models among CloudFormationModel's subclasses, cached on first use.
    parsing.get_model_map.cache_clear()
    parsing.get_name_type_map.cache_clear()
