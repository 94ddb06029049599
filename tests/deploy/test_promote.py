"""scripts/promote.py against two stages deployed to a moto server: the image that ran in dev,
and dev's model copied into prod's bucket."""

from __future__ import annotations

from typing import Any

import pytest

from scripts import promote
from scripts.deploy import Deployment, deploy
from scripts.stack import run
from tests.deploy.conftest import publish_fake_image

MODEL_FILES = {"MLmodel": b"flavors: {}\n", "model.pkl": b"weights", "requirements.txt": b"scikit-learn\n"}


def make_stage(client: Any, stage: str, image_uri: str) -> dict[str, str]:
    # prod's alarms must reach someone (scripts/deploy.py refuses it otherwise).
    subscriber = (("AlarmEmail", "oncall@example.com"),) if stage == "prod" else ()
    _, after = deploy(
        client("cloudformation"),
        f"ride-duration-{stage}",
        stage,
        Deployment(image_uri=image_uri, overrides=subscriber),
    )
    return {o["OutputKey"]: o["OutputValue"] for o in after["Outputs"]}


@pytest.fixture
def stages(client: Any, image_uri: str) -> tuple[dict[str, str], dict[str, str]]:
    """dev running a model from its bucket, and prod (still on the image's baked model)."""
    dev = make_stage(client, "dev", image_uri)
    prod = make_stage(client, "prod", image_uri)
    for name, body in MODEL_FILES.items():
        client("s3").put_object(Bucket=dev["ModelBucketName"], Key=f"models/run-7/{name}", Body=body)
    dev_model = f"{dev['ModelPrefixUri']}run-7/"
    deploy(client("cloudformation"), "ride-duration-dev", "dev", Deployment(model_uri=dev_model))
    return dev, prod


def bucket_contents(client: Any, bucket: str) -> dict[str, bytes]:
    s3 = client("s3")
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket=bucket).get("Contents", [])]
    return {key: s3.get_object(Bucket=bucket, Key=key)["Body"].read() for key in keys}


def test_promotion_copies_devs_model_into_prods_bucket_and_names_the_same_image(
    client: Any,
    image_uri: str,
    stages: tuple[dict[str, str], dict[str, str]],
    capsys: pytest.CaptureFixture[str],
) -> None:
    _, prod = stages

    assert run(promote.main, ["--from-stage", "dev", "--stage", "prod", "--image-uri", image_uri]) == 0

    out, err = capsys.readouterr()
    assert out == f"IMAGE={image_uri}\nMODEL_URI={prod['ModelPrefixUri']}run-7/\n"
    assert bucket_contents(client, prod["ModelBucketName"]) == {
        f"models/run-7/{name}": body for name, body in MODEL_FILES.items()
    }
    assert f"model: 3 of 3 objects copied to s3://{prod['ModelBucketName']}/models/run-7/" in err


@pytest.mark.usefixtures("stages")
def test_a_model_already_in_prod_is_not_copied_again(capsys: pytest.CaptureFixture[str]) -> None:
    assert run(promote.main, ["--from-stage", "dev", "--stage", "prod"]) == 0

    assert run(promote.main, ["--from-stage", "dev", "--stage", "prod"]) == 0

    assert "model: 0 of 3 objects copied" in capsys.readouterr().err


@pytest.mark.usefixtures("stages")
def test_an_image_dev_does_not_run_is_refused(client: Any, capsys: pytest.CaptureFixture[str]) -> None:
    other = publish_fake_image(client("ecr"), tag="2" * 40)

    assert run(promote.main, ["--from-stage", "dev", "--stage", "prod", "--image-uri", other]) == 1

    assert f"not {other}: promote only what ran there" in capsys.readouterr().err


def test_a_baked_model_goes_with_the_image(
    client: Any, image_uri: str, capsys: pytest.CaptureFixture[str]
) -> None:
    make_stage(client, "dev", image_uri)
    make_stage(client, "prod", image_uri)

    assert run(promote.main, ["--from-stage", "dev", "--stage", "prod"]) == 0

    assert capsys.readouterr().out == f"IMAGE={image_uri}\nMODEL_URI=/opt/ml/model\n"


def test_the_next_stage_must_exist(client: Any, image_uri: str, capsys: pytest.CaptureFixture[str]) -> None:
    make_stage(client, "dev", image_uri)

    assert run(promote.main, ["--from-stage", "dev", "--stage", "prod"]) == 1

    assert "stack ride-duration-prod does not exist in us-east-1" in capsys.readouterr().err
