"""The batch function's image (batch.Dockerfile), checked without Docker as the function's is: it
passes hadolint; it is built on the function's base, on the same tag; what it copies exists and
reaches the build context; it holds exactly the modules its handler imports; what it installs is
exactly the lock's runtime and batch sets, with a wheel for the image's platform; and its
handler, resolved by the base image's runtime client from a copy of the image's task root with
every package outside that set unimportable, scores a month's file from S3 (moto, over HTTP)
when handed the event EventBridge delivers for its arrival."""

from __future__ import annotations

import io
import json
import os
import shlex
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from scripts import publish
from scripts.stack import PROJECT_ROOT
from scripts.train import synthetic_trips
from tests.deploy.test_container_image import (
    ARCHITECTURES,
    DEVELOPMENT_TOOLS,
    HANDLER_DRIVER,
    TASK_ROOT,
    bake_model,
    copies,
    dockerfile_instructions,
    dockerignore_excludes,
    imported_project_files,
    locked_packages,
    model_step,
    modules_outside_the_runtime_set,
    packages_without_a_wheel,
    requirements,
    uv_executable,
)
from tests.deploy.test_container_image import INSTRUCTIONS as FUNCTION_INSTRUCTIONS
from tests.deploy.test_publish import COMMIT, FakeDocker, create_repository

BATCH_DOCKERFILE = PROJECT_ROOT / "batch.Dockerfile"
BATCH_REQUIREMENTS = PROJECT_ROOT / "requirements-batch.txt"
INSTRUCTIONS = dockerfile_instructions(BATCH_DOCKERFILE.read_text())


def only(keyword: str, instructions: list[Any] = INSTRUCTIONS) -> str:
    [arguments] = [i.arguments for i in instructions if i.keyword == keyword]
    return arguments


def task_root_files() -> dict[str, Path]:
    """Each file COPY puts under the task root (its path there) and its source, globs expanded."""
    files = {}
    for sources, destination in copies(INSTRUCTIONS):
        if not destination.startswith(TASK_ROOT):
            continue
        folder = destination.removeprefix(TASK_ROOT).strip("/")
        for source in sources:
            matches = sorted(PROJECT_ROOT.glob(source))
            assert matches, f"COPY source {source} matches nothing"
            for match in matches:
                files[str(Path(folder, match.name))] = match
    return files


def test_batch_dockerfile_passes_hadolint() -> None:
    hadolint = Path(sys.executable).parent / "hadolint"
    result = subprocess.run([hadolint, BATCH_DOCKERFILE], capture_output=True, text=True, check=False)
    assert (result.returncode, result.stdout + result.stderr) == (0, "")


def test_base_is_the_functions_on_the_same_tag() -> None:
    """One base for both Lambda images: the wheel checks of the function's hold here, and
    Renovate moves the two tags together."""
    assert only("FROM") == only("FROM", FUNCTION_INSTRUCTIONS)


def test_every_copy_source_exists_and_reaches_the_build_context() -> None:
    sources = [source for sources, _ in copies(INSTRUCTIONS) for source in sources]
    assert "requirements-batch.txt" in sources
    for source in sources:
        matches = list(PROJECT_ROOT.glob(source))
        assert matches, source
        for match in matches:
            relative = str(match.relative_to(PROJECT_ROOT))
            assert not dockerignore_excludes(relative), f"{relative} is excluded by .dockerignore"


def test_image_holds_the_modules_the_handler_imports_and_nothing_else() -> None:
    [handler] = json.loads(only("CMD"))
    files = set(task_root_files())
    assert files == imported_project_files(handler.rsplit(".", 1)[0])
    assert "batch/cli.py" not in files  # the command (and its progress bar) is for a terminal


def test_requirements_file_is_the_locks_runtime_and_batch_sets() -> None:
    """What `make requirements` writes from uv.lock today, byte for byte (else: run it)."""
    exported = subprocess.run(
        [
            uv_executable(),
            "export",
            "--frozen",
            "--no-default-groups",
            "--group",
            "batch",
            "--no-emit-project",
            "--quiet",
        ],
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert BATCH_REQUIREMENTS.read_text() == exported, (
        "requirements-batch.txt is stale: run `make requirements`"
    )
    names = {canonicalize_name(r.name) for r in requirements(exported)}
    project = tomllib.loads((PROJECT_ROOT / "pyproject.toml").read_text())
    direct = project["project"]["dependencies"] + project["dependency-groups"]["batch"]
    assert {canonicalize_name(Requirement(r).name) for r in direct} <= names
    assert "pyarrow" in names
    assert names.isdisjoint(DEVELOPMENT_TOOLS)  # no pandas, mlflow, moto, pytest...
    lambda_set = {
        canonicalize_name(r.name)
        for r in requirements((PROJECT_ROOT / "requirements-lambda.txt").read_text())
    }
    assert lambda_set < names  # the function's set and the batch group's additions, nothing more


def test_dockerfile_installs_exactly_the_requirements_file_with_hashes_and_wheels_only() -> None:
    [install] = [i.arguments for i in INSTRUCTIONS if i.keyword == "RUN" and "pip install" in i.arguments]
    words = shlex.split(install.split("&&")[0])
    assert words[:2] == ["pip", "install"]
    assert {"--require-hashes", "--only-binary=:all:", "--no-cache-dir"} <= set(words)
    assert words[words.index("--requirement") + 1] == "/tmp/requirements-batch.txt"
    assert words[words.index("--target") + 1] == TASK_ROOT
    assert (["requirements-batch.txt"], "/tmp/requirements-batch.txt") in copies(INSTRUCTIONS)
    assert sum("pip install" in i.arguments for i in INSTRUCTIONS) == 1


@pytest.mark.parametrize("arch", sorted(ARCHITECTURES))
def test_every_batch_package_has_a_wheel_for_the_lambda_image(arch: str) -> None:
    """pip in the image takes wheels only: pyarrow's too, for glibc <= 2.34 on both machines."""
    wanted = requirements(BATCH_REQUIREMENTS.read_text())
    assert packages_without_a_wheel(wanted, locked_packages(), ARCHITECTURES[arch]) == []


def test_bytecode_is_compiled_after_the_code_is_copied_and_the_model_step_is_the_functions(
    tmp_path: Path,
) -> None:
    keywords = [(i.keyword, i.arguments) for i in INSTRUCTIONS]
    last_copy = max(n for n, (k, a) in enumerate(keywords) if k == "COPY" and TASK_ROOT in a)
    [compile_step] = [n for n, (k, a) in enumerate(keywords) if k == "RUN" and "compileall" in a]
    assert compile_step > last_copy
    assert model_step(INSTRUCTIONS) == model_step(FUNCTION_INSTRUCTIONS)
    model = tmp_path / "context" / "model"
    model.mkdir(parents=True)
    (model / "MLmodel").write_text("flavors: {}\n")
    (model / "model.pkl").write_bytes(b"...")
    (model / "model.pkl").chmod(0o600)  # Lambda runs the function as another user than root

    result, files = bake_model("model", tmp_path, INSTRUCTIONS)

    assert (result.returncode, files) == (0, {"MLmodel": "644", "model.pkl": "644"})


def test_handler_scores_an_arriving_month_from_the_image_task_root_with_only_the_batch_set(
    tmp_path: Path, model_dir: Path, client: Any, aws_endpoint: str
) -> None:
    task_root = tmp_path / "task"
    for inside, source in task_root_files().items():
        (task_root / inside).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(source, task_root / inside)
    [handler] = json.loads(only("CMD"))
    s3 = client("s3")
    s3.create_bucket(Bucket="ride-duration-batch-data")
    trips = io.BytesIO()
    synthetic_trips(500, month=2, seed=4).to_parquet(trips)
    s3.put_object(
        Bucket="ride-duration-batch-data", Key="input/green_tripdata_2021-02.parquet", Body=trips.getvalue()
    )
    event = {
        "version": "0",
        "id": "c9888434-815d-c6f4-9fc2-4dd7bdeccaaf",
        "detail-type": "Object Created",
        "source": "aws.s3",
        "account": "123456789012",
        "time": "2021-03-02T13:09:50Z",
        "region": "us-east-1",
        "resources": ["arn:aws:s3:::ride-duration-batch-data"],
        "detail": {
            "version": "0",
            "bucket": {"name": "ride-duration-batch-data"},
            "object": {
                "key": "input/green_tripdata_2021-02.parquet",
                "size": 1,
                "etag": "0",
                "sequencer": "0",
            },
            "request-id": "XRRTKJXSZQCWNQR1",
            "requester": "123456789012",
            "source-ip-address": "192.0.2.1",
            "reason": "PutObject",
        },
    }
    forbidden = modules_outside_the_runtime_set(BATCH_REQUIREMENTS)
    assert {"pytest", "moto", "pandas", "cfnlint", "mlflow"} <= set(forbidden)  # the guard guards something
    assert "pyarrow" not in forbidden
    environment = {key: value for key, value in os.environ.items() if not key.startswith("PYTHON")}
    environment |= {
        "HANDLER": handler,
        "FORBIDDEN_MODULES": json.dumps(forbidden),
        "MODEL_URI": str(model_dir),
        "MODEL_CACHE_DIR": str(tmp_path / "cache"),
        "BATCH_INPUT_TEMPLATE": "s3://ride-duration-batch-data/input/green_tripdata_{year}-{month:02d}.parquet",
        "BATCH_OUTPUT_TEMPLATE": "s3://ride-duration-batch-data/output/year={year}/month={month:02d}/predictions.parquet",
    }

    result = subprocess.run(
        [sys.executable, "-c", HANDLER_DRIVER],
        cwd=task_root,
        env=environment,
        input=json.dumps(event),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )

    assert result.returncode == 0, result.stderr
    [response] = [
        line.removeprefix("RESPONSE ") for line in result.stdout.splitlines() if line.startswith("RESPONSE ")
    ]
    [month] = json.loads(response)["months"]
    assert (month["month"], month["rows"], month["predicted"]) == ("2021-02", 500, 500)
    output = s3.get_object(
        Bucket="ride-duration-batch-data", Key="output/year=2021/month=02/predictions.parquet"
    )
    assert pq.read_table(io.BytesIO(output["Body"].read())).num_rows == 500


def test_handler_answers_the_self_test_event_with_the_models_report(tmp_path: Path, model_dir: Path) -> None:
    """What `make batch-deploy` sends after an update: the model loaded and checked, no file read."""
    task_root = tmp_path / "task"
    for inside, source in task_root_files().items():
        (task_root / inside).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(source, task_root / inside)
    [handler] = json.loads(only("CMD"))
    environment = {key: value for key, value in os.environ.items() if not key.startswith("PYTHON")}
    environment |= {
        "HANDLER": handler,
        "FORBIDDEN_MODULES": json.dumps(modules_outside_the_runtime_set(BATCH_REQUIREMENTS)),
        "MODEL_URI": str(model_dir),
        "MODEL_CACHE_DIR": str(tmp_path / "cache"),
    }

    result = subprocess.run(
        [sys.executable, "-c", HANDLER_DRIVER],
        cwd=task_root,
        env=environment,
        input=json.dumps({"self_test": True}),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )

    assert result.returncode == 0, result.stderr
    [response] = [
        line.removeprefix("RESPONSE ") for line in result.stdout.splitlines() if line.startswith("RESPONSE ")
    ]
    report = json.loads(response)
    assert (report["self_test"], report["passed"], report["model_uri"]) == ("passed", True, str(model_dir))


def test_publish_builds_the_batch_image_from_its_dockerfile_under_a_batch_tag(client: Any) -> None:
    ecr = client("ecr")
    create_repository(ecr)
    docker = FakeDocker(ecr)
    tag = publish.image_tag(COMMIT, dirty=False, image="batch")

    image = publish.publish(
        ecr, "ride-duration", tag, None, run_command=docker, dockerfile=publish.DOCKERFILES["batch"]
    )

    assert tag == f"batch-{COMMIT}-arm64"
    pull, _, build, _, push = docker.commands
    assert pull[-1] == only("FROM")  # the base this Dockerfile names
    assert build[build.index("--file") + 1] == str(BATCH_DOCKERFILE)
    assert build[-1] == str(PROJECT_ROOT)
    assert push == ["docker", "push", f"123456789012.dkr.ecr.us-east-1.amazonaws.com/ride-duration:{tag}"]
    assert image.startswith("123456789012.dkr.ecr.us-east-1.amazonaws.com/ride-duration@sha256:")
    function_build = publish.build_command("reference", None)
    assert "--file" not in function_build  # `make publish` builds ./Dockerfile as before
