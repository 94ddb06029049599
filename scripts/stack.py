"""What the deploy scripts share: the stack of a stage, its outputs, and clear failures.

Every script takes `--stage` (the stack is `ride-duration-<stage>` unless `--stack-name` says
otherwise) and `--region`; boto3 finds credentials and endpoints as usual (AWS_PROFILE,
AWS_ENDPOINT_URL...). A missing prerequisite ends the script with one line saying what to do.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import boto3
import yaml
from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    NoCredentialsError,
    NoRegionError,
    PartialCredentialsError,
    TokenRetrievalError,
    WaiterError,
)

PROJECT_ROOT = Path(__file__).resolve().parent.parent
TEMPLATE = PROJECT_ROOT / "infra" / "template.yaml"
STACK_PREFIX = "ride-duration"

CREDENTIAL_ERROR_CODES = {
    "ExpiredToken",
    "ExpiredTokenException",
    "InvalidClientTokenId",
    "UnrecognizedClientException",
}


class ScriptError(RuntimeError):
    """The script cannot finish; the message says why and what to do."""


class PrerequisiteError(ScriptError):
    """Something the script needs is missing or in the wrong state."""


class _TemplateLoader(yaml.SafeLoader):
    """YAML with CloudFormation's short forms: `!Ref X` reads as {"Ref": "X"}, `!Sub s` as {"Fn::Sub": s}."""


def _intrinsic(loader: yaml.SafeLoader, suffix: str, node: yaml.Node) -> dict[str, Any]:
    if isinstance(node, yaml.ScalarNode):
        value: Any = loader.construct_scalar(node)
        if suffix == "GetAtt":
            value = value.split(".", 1)
    elif isinstance(node, yaml.SequenceNode):
        value = loader.construct_sequence(node, deep=True)
    else:
        value = loader.construct_mapping(node, deep=True)
    return {"Ref" if suffix == "Ref" else f"Fn::{suffix}": value}


_TemplateLoader.add_multi_constructor("!", _intrinsic)


def load_template(path: Path = TEMPLATE) -> dict[str, Any]:
    """The CloudFormation template as a dict, intrinsic functions in their long form."""
    return yaml.load(path.read_text(), Loader=_TemplateLoader)  # noqa: S506 - a SafeLoader


def stack_name(stage: str) -> str:
    return f"{STACK_PREFIX}-{stage}"


def add_stack_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--stage", required=True, help="stage name, e.g. dev or prod (stack ride-duration-<stage>)"
    )
    parser.add_argument("--stack-name", help="the stack's name, if not ride-duration-<stage>")
    parser.add_argument("--region", help="AWS region (default: AWS_DEFAULT_REGION, or the profile's region)")


def chosen_stack_name(args: argparse.Namespace) -> str:
    return args.stack_name or stack_name(args.stage)


def session(args: argparse.Namespace) -> boto3.Session:
    """A session in the chosen region; none at all is an error before anything is called
    (STS would otherwise quietly use its global endpoint)."""
    result = boto3.Session(region_name=args.region) if args.region else boto3.Session()
    if not result.region_name:
        raise NoRegionError
    return result


def caller_account(sts: Any) -> str:
    """The account the credentials belong to: the first call, so bad credentials fail here."""
    return sts.get_caller_identity()["Account"]


def describe_stack(cloudformation: Any, name: str) -> dict[str, Any] | None:
    """The stack, or None when it does not exist."""
    try:
        return cloudformation.describe_stacks(StackName=name)["Stacks"][0]
    except ClientError as error:
        if error.response["Error"]["Code"] == "ValidationError" and "does not exist" in str(error):
            return None
        raise


def outputs_of(stack: dict[str, Any]) -> dict[str, str]:
    return {output["OutputKey"]: output["OutputValue"] for output in stack.get("Outputs", [])}


def parameters_of(stack: dict[str, Any]) -> dict[str, str]:
    return {p["ParameterKey"]: p.get("ParameterValue", "") for p in stack.get("Parameters", [])}


def stack_outputs(cloudformation: Any, name: str, stage: str | None = None) -> dict[str, str]:
    """The outputs of a deployed stack; a clear error when it is missing."""
    stack = describe_stack(cloudformation, name)
    region = cloudformation.meta.region_name
    if stack is None:
        hint = f"make deploy STAGE={stage} IMAGE=<image URI by digest>" if stage else "deploy it first"
        raise PrerequisiteError(f"stack {name} does not exist in {region}: {hint}")
    if stack["StackStatus"] not in ("CREATE_COMPLETE", "UPDATE_COMPLETE", "UPDATE_ROLLBACK_COMPLETE"):
        raise PrerequisiteError(f"stack {name} is {stack['StackStatus']}, not ready to use")
    return outputs_of(stack)


def deployed_stage(args: argparse.Namespace) -> tuple[boto3.Session, dict[str, str]]:
    """The session and the outputs of the stage's stack, credentials checked first: what every
    script that works on a deployed stage starts with."""
    aws = session(args)
    caller_account(aws.client("sts"))
    return aws, stack_outputs(aws.client("cloudformation"), chosen_stack_name(args), args.stage)


def run(main: Callable[[list[str] | None], int], argv: list[str] | None = None) -> int:
    """Run a script's main, turning missing prerequisites and AWS errors into one line and exit 1."""
    try:
        return main(argv)
    except ScriptError as error:
        message = str(error)
    except (NoCredentialsError, PartialCredentialsError, TokenRetrievalError) as error:
        message = (
            f"no usable AWS credentials ({error}): run `aws configure` or `aws sso login`, "
            "or set AWS_PROFILE / AWS_ACCESS_KEY_ID"
        )
    except NoRegionError:
        message = "no AWS region: pass --region, or set AWS_DEFAULT_REGION or a region in your AWS profile"
    except WaiterError as error:
        message = f"gave up waiting: {error}"
    except ClientError as error:
        code = error.response["Error"]["Code"]
        message = str(error)
        if code in CREDENTIAL_ERROR_CODES:
            message += ": refresh your credentials (`aws sso login`, or new access keys)"
    except BotoCoreError as error:
        message = str(error)
    print(f"error: {message}", file=sys.stderr)
    return 1


def say(message: str) -> None:
    """Progress goes to stderr, so stdout carries only the result a caller may capture."""
    print(message, file=sys.stderr, flush=True)
