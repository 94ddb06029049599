"""Get ready to promote what runs in one stage to the next: the same image, and its model copied
into the next stage's bucket.

    python -m scripts.promote --from-stage dev --stage prod --image-uri <uri@sha256:...>

Each stage's function may read only its own bucket, so a model that runs from
s3://<dev bucket>/models/<name>/ is copied, object by object and inside S3, to
s3://<prod bucket>/models/<name>/ (objects already there with the same content are kept). A
model baked into the image (a path such as /opt/ml/model) travels with the image.
Prints `IMAGE=...` and `MODEL_URI=...` on stdout, what `make deploy` takes.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from typing import Any
from urllib.parse import urlparse

from scripts.stack import (
    PrerequisiteError,
    caller_account,
    run,
    say,
    session,
    stack_name,
    stack_outputs,
)


def model_keys(s3: Any, bucket: str, prefix: str) -> list[dict[str, Any]]:
    """Every object under the prefix, with its ETag (folder markers have no content to copy)."""
    objects = []
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        objects.extend(o for o in page.get("Contents", []) if not o["Key"].endswith("/"))
    return objects


def copy_model(s3: Any, source_uri: str, target_prefix_uri: str) -> str:
    """Copy the model under source_uri to the same name under the target's models/ prefix."""
    source = urlparse(source_uri)
    prefix = source.path.lstrip("/").rstrip("/") + "/"
    if not prefix.startswith("models/"):
        raise PrerequisiteError(f"{source_uri} is not under a stage's models/ prefix")
    target = urlparse(target_prefix_uri)
    objects = model_keys(s3, source.netloc, prefix)
    if not any(o["Key"] == f"{prefix}MLmodel" for o in objects):
        raise PrerequisiteError(f"no MLmodel file under {source_uri}: is it a model?")
    present = {o["Key"]: o["ETag"] for o in model_keys(s3, target.netloc, prefix)}
    copied = 0
    for item in objects:
        if present.get(item["Key"]) == item["ETag"]:
            continue
        s3.copy_object(
            Bucket=target.netloc, Key=item["Key"], CopySource={"Bucket": source.netloc, "Key": item["Key"]}
        )
        copied += 1
    say(f"model: {copied} of {len(objects)} objects copied to s3://{target.netloc}/{prefix}")
    return f"s3://{target.netloc}/{prefix}"


def promotion(
    cloudformation: Any, s3: Any, from_stage: str, stage: str, image_uri: str | None
) -> tuple[str, str]:
    """The image and model URI the next stage should run: what runs in from_stage."""
    source = stack_outputs(cloudformation, stack_name(from_stage), from_stage)
    target = stack_outputs(cloudformation, stack_name(stage), stage)
    if image_uri and source["ImageUri"] != image_uri:
        raise PrerequisiteError(
            f"{from_stage} runs {source['ImageUri']}, not {image_uri}: promote only what ran there "
            f"(deploy it to {from_stage} and check it first)"
        )
    model_uri = source["ModelUri"]
    if urlparse(model_uri).scheme == "s3":
        model_uri = copy_model(s3, model_uri, target["ModelPrefixUri"])
    else:
        say(f"model: {model_uri} is in the image; it goes with it")
    return source["ImageUri"], model_uri


def parser() -> argparse.ArgumentParser:
    result = argparse.ArgumentParser(
        prog="python -m scripts.promote",
        description=__doc__.split("\n\n", 1)[0],
        epilog="Then: make deploy STAGE=<stage> IMAGE=<IMAGE> MODEL_URI=<MODEL_URI>",
    )
    result.add_argument("--from-stage", required=True, help="the stage whose image and model are promoted")
    result.add_argument("--stage", required=True, help="the stage to promote to (its stack must exist)")
    result.add_argument("--image-uri", help="refuse unless the from-stage runs exactly this image")
    result.add_argument("--region", help="AWS region (default: AWS_DEFAULT_REGION, or the profile's region)")
    return result


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    aws = session(args)
    caller_account(aws.client("sts"))
    image, model_uri = promotion(
        aws.client("cloudformation"), aws.client("s3"), args.from_stage, args.stage, args.image_uri
    )
    print(f"IMAGE={image}")
    print(f"MODEL_URI={model_uri}")
    return 0


if __name__ == "__main__":
    raise SystemExit(run(main))
