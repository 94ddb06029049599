"""Create or update a stage's batch stack (infra/batch.yaml), then check the function's model.

    python -m scripts.batch_deploy --stage dev --image-uri <uri@sha256:...>         # first time
    python -m scripts.batch_deploy --stage dev --model-uri s3://<bucket>/models/<name>/
    python -m scripts.batch_deploy --stage dev --parameter ScheduleExpression="cron(0 6 2 * ? *)"

The stack is ride-duration-batch-<stage>, beside the stage's stream stack (ride-duration-<stage>).
From that stack, when it exists, it takes the model bucket (the function may read its models/
prefix) and the alarm topic; a new batch stack also takes the stream's model (ModelUri,
ModelVersion, ModelRunId, ModelSha256) when it is an s3:// one, so batch scores with the model
the stream serves. Otherwise the model is the one baked into the image (`make batch-publish
MODEL_DIR=model`), or `--model-uri` (s3:// under the stage's model prefix, pinned by its SHA-256
as `make deploy` pins it; runs:/ and models:/ resolved through MLFLOW_TRACKING_URI).
What is not given keeps its deployed value. After the update, the function is invoked once with
`{"self_test": true}`: it loads its model (or fails its init) and predicts the model's known rides,
touching no file. The batch function has no alias: a failed check leaves the new code in place,
and the line to deploy the previous image back is printed.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from scripts.account_stacks import deploy_template
from scripts.deploy import (
    ModelSource,
    ReleaseError,
    check_image,
    check_model_uri,
    key_value,
    model_sha256,
    resolve_model,
    wait_for_function,
)
from scripts.invoke import self_test
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

BATCH_TEMPLATE = PROJECT_ROOT / "infra" / "batch.yaml"
MODEL_PARAMETERS = ("ModelUri", "ModelVersion", "ModelRunId", "ModelSha256")


def batch_stack_name(stage: str) -> str:
    return f"{STACK_PREFIX}-batch-{stage}"


def requested_parameters(
    stage: str,
    image_uri: str | None,
    model: ModelSource | None,
    stage_stack: dict[str, Any] | None,
    batch_stack: dict[str, Any] | None,
    *,
    overrides: dict[str, str],
) -> dict[str, str]:
    """What this deploy sets; everything else keeps its deployed value (or its default)."""
    requested = {"Stage": stage}
    if image_uri:
        requested["ImageUri"] = image_uri
    if stage_stack is not None:
        outputs = outputs_of(stage_stack)
        requested["ModelBucketName"] = outputs.get("ModelBucketName", "")
        requested["AlarmTopicArn"] = outputs.get("AlarmTopicArn", "")
    if model is not None:
        requested |= dict(
            zip(MODEL_PARAMETERS, (model.uri, model.version, model.run_id, model.sha256), strict=True)
        )
    elif batch_stack is None and stage_stack is not None:
        stream = parameters_of(stage_stack)
        if stream.get("ModelUri", "").startswith("s3://"):
            say(
                f"the stream's model: {stream['ModelUri']} (pinned by ModelSha256 {stream.get('ModelSha256') or '-'})"
            )
            requested |= {key: stream.get(key, "") for key in MODEL_PARAMETERS}
    return requested | overrides


def previous_image_command(stage: str, before: dict[str, Any] | None) -> str | None:
    if before is None:
        return None
    return f"make batch-deploy STAGE={stage} IMAGE={parameters_of(before).get('ImageUri')}"


def parser() -> argparse.ArgumentParser:
    result = argparse.ArgumentParser(
        prog="python -m scripts.batch_deploy",
        description=__doc__.split("\n\n", 1)[0],
        epilog="Other template parameters: --parameter MaxConcurrentMonths=20 --parameter ScheduleState=DISABLED",
    )
    result.add_argument(
        "--stage", required=True, help="stage name, e.g. dev (stack ride-duration-batch-<stage>)"
    )
    result.add_argument("--region", help="AWS region (default: AWS_DEFAULT_REGION, or the profile's region)")
    result.add_argument(
        "--image-uri", help="the batch image in ECR by digest (`make batch-publish`); required at first"
    )
    result.add_argument(
        "--model-uri",
        help="MODEL_URI of the batch function: s3://<stage's model bucket>/models/<name>/, /opt/ml/model "
        "(baked in), or runs:/ and models:/ (resolved here); default: the stream's model at creation",
    )
    result.add_argument(
        "--parameter",
        type=key_value,
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="another template parameter",
    )
    result.add_argument("--template", type=Path, default=BATCH_TEMPLATE, help="default: %(default)s")
    result.add_argument(
        "--max-minutes", type=int, default=30, help="give up waiting after this (default: 30)"
    )
    return result


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    aws = session(args)
    account = caller_account(aws.client("sts"))
    cloudformation = aws.client("cloudformation")
    name = batch_stack_name(args.stage)
    say(f"account {account}, region {aws.region_name}, stack {name}")
    before = describe_stack(cloudformation, name)
    if before is None and not args.image_uri:
        raise PrerequisiteError(
            f"stack {name} does not exist yet: pass --image-uri (what `make batch-publish` printed)"
        )
    if args.image_uri:
        check_image(aws.client("ecr"), args.image_uri, account, aws.region_name)
    stage_stack = describe_stack(cloudformation, f"{STACK_PREFIX}-{args.stage}")
    if stage_stack is None:
        say(
            f"no stream stack {STACK_PREFIX}-{args.stage}: the model must be inside the image, and the alarms notify no one"
        )
    model = None
    if args.model_uri:
        model = resolve_model(args.model_uri)
        check_model_uri(aws.client("s3"), model.uri, outputs_of(stage_stack) if stage_stack else None)
        if urlparse(model.uri).scheme == "s3":
            model = replace(model, sha256=model_sha256(aws.client("s3"), model.uri))
            say(f"{model.uri} pinned by the SHA-256 of its files: {model.sha256}")
    requested = requested_parameters(
        args.stage, args.image_uri, model, stage_stack, before, overrides=dict(args.parameter)
    )
    after = deploy_template(cloudformation, name, args.template, requested, max_minutes=args.max_minutes)
    outputs, parameters = outputs_of(after), parameters_of(after)
    lambda_client = aws.client("lambda")
    wait_for_function(lambda_client, outputs["FunctionName"])
    say(f"{outputs['FunctionName']}: invoking it with the self-test event")
    outcome = self_test(lambda_client, outputs["FunctionName"], None, parameters.get("ModelUri"))
    for line in outcome.lines():
        say(line)
    if not outcome.passed:
        back = previous_image_command(args.stage, before)
        raise ReleaseError(
            f"the batch function fails its self-test ({outcome.error}); runs will fail until a fix is deployed"
            + (f"; the previous image: {back}" if back else "")
        )
    for key, value in sorted(outputs.items()):
        print(f"{key}\t{value}")
    return 0


if __name__ == "__main__":
    raise SystemExit(run(main))
