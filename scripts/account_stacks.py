"""Create or update the stacks that live beside the stages: the image repository and CI's roles.

    python -m scripts.account_stacks ecr                          # ride-duration-ecr (infra/ecr.yaml)
    python -m scripts.account_stacks ci-role --stage dev \\
        --parameter GitHubRepository=<owner>/<repo>               # ride-duration-ci-dev (infra/ci-role.yaml)

Run once per account and region by someone allowed to create them (the CI roles cannot: they
may change only their stage's stack). Like scripts.deploy, an update keeps every parameter it
is not given at its deployed value, and prints the stack's outputs (the repository URI, the
role ARNs the GitHub workflow assumes).
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from scripts.deploy import (
    apply_stack,
    check_updatable,
    key_value,
    stack_parameters,
    template_parameters,
)
from scripts.stack import (
    PROJECT_ROOT,
    STACK_PREFIX,
    PrerequisiteError,
    caller_account,
    describe_stack,
    outputs_of,
    parameters_of,
    run,
    say,
    session,
)

ECR_TEMPLATE = PROJECT_ROOT / "infra" / "ecr.yaml"
CI_ROLE_TEMPLATE = PROJECT_ROOT / "infra" / "ci-role.yaml"
ECR_STACK = f"{STACK_PREFIX}-ecr"


def ci_role_stack(stage: str) -> str:
    return f"{STACK_PREFIX}-ci-{stage}"


def deploy_template(
    cloudformation: Any,
    name: str,
    template: Path,
    requested: dict[str, str],
    *,
    max_minutes: int = 30,
) -> dict[str, Any]:
    """Create or update the stack from the template, wait, and return it."""
    before = describe_stack(cloudformation, name)
    if before is not None:
        check_updatable(before, name)
    deployed = parameters_of(before) if before is not None else None
    request = {
        "StackName": name,
        "TemplateBody": template.read_text(),
        "Parameters": stack_parameters(requested, template_parameters(template), deployed),
        # ci-role.yaml creates IAM roles (unnamed: CAPABILITY_IAM) and possibly the OIDC provider.
        "Capabilities": ["CAPABILITY_IAM"],
        "Tags": [{"Key": "project", "Value": "ride-duration"}],
    }
    source = f" from {template.relative_to(PROJECT_ROOT)}"
    return apply_stack(cloudformation, name, before, request, max_minutes=max_minutes, source=source)


def parser() -> argparse.ArgumentParser:
    result = argparse.ArgumentParser(
        prog="python -m scripts.account_stacks",
        description=__doc__.split("\n\n", 1)[0],
    )
    result.add_argument("stack", choices=["ecr", "ci-role"], help="which stack")
    result.add_argument("--stage", help="ci-role: the stage whose deploys the role may make (dev, prod...)")
    result.add_argument(
        "--parameter",
        type=key_value,
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a template parameter, e.g. GitHubRepository=owner/repo or KeepImages=100",
    )
    result.add_argument("--region", help="AWS region (default: AWS_DEFAULT_REGION, or the profile's region)")
    result.add_argument(
        "--max-minutes", type=int, default=30, help="give up waiting after this (default: 30)"
    )
    return result


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    requested = dict(args.parameter)
    if args.stack == "ecr":
        name, template = ECR_STACK, ECR_TEMPLATE
    else:
        if not args.stage:
            raise PrerequisiteError("ci-role needs --stage (STAGE=dev): each stage has its own CI role")
        name, template = ci_role_stack(args.stage), CI_ROLE_TEMPLATE
        requested["Stage"] = args.stage
    aws = session(args)
    account = caller_account(aws.client("sts"))
    say(f"account {account}, region {aws.region_name}, stack {name}")
    stack = deploy_template(
        aws.client("cloudformation"), name, template, requested, max_minutes=args.max_minutes
    )
    for key, value in sorted(outputs_of(stack).items()):
        print(f"{key}\t{value}")
    return 0


if __name__ == "__main__":
    raise SystemExit(run(main))
