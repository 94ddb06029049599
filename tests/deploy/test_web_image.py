"""The web service's image (web.Dockerfile), checked without Docker as the Lambda image is: it
passes hadolint; its base is the official slim Python on an exact version; what it copies exists
and reaches the build context; what it installs is exactly the lock's runtime and web sets, with
a wheel for the image's platform; it runs as a user other than root; and its gunicorn command,
run from a copy of the image's app directory with every package outside the web set hidden and
the image's environment, serves the model with the workers and port that environment names,
while its HEALTHCHECK tells a serving container from a stopped one. `make web-image` says when
Docker is missing and builds what the docs say."""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
import tomllib
import urllib.error
import urllib.request
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from scripts.stack import PROJECT_ROOT
from tests.deploy.test_container_image import (
    ARCHITECTURES,
    DEVELOPMENT_TOOLS,
    LAMBDA_PYTHON,
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
from tests.deploy.test_container_image import INSTRUCTIONS as LAMBDA_INSTRUCTIONS

WEB_DOCKERFILE = PROJECT_ROOT / "web.Dockerfile"
WEB_REQUIREMENTS = PROJECT_ROOT / "requirements-web.txt"
INSTRUCTIONS = dockerfile_instructions(WEB_DOCKERFILE.read_text())
# glibc of the Debian releases the official Python images are built on.
DEBIAN_GLIBC_MINOR = {"bookworm": 36, "trixie": 41}
BASE = re.compile(r"python:(?P<python>\d+\.\d+)\.\d+-slim-(?P<debian>[a-z]+)")


def only(keyword: str) -> str:
    [arguments] = [i.arguments for i in INSTRUCTIONS if i.keyword == keyword]
    return arguments


def image_environment() -> dict[str, str]:
    """Every ENV of the image, as `docker run` starts with it."""
    environment: dict[str, str] = {}
    for instruction in (i for i in INSTRUCTIONS if i.keyword == "ENV"):
        for word in shlex.split(instruction.arguments):
            key, _, value = word.partition("=")
            environment[key] = value
    return environment


def app_files() -> dict[str, Path]:
    """Each file COPY puts under the WORKDIR (its path there) and its source, globs expanded."""
    workdir = only("WORKDIR")
    files = {}
    for sources, destination in copies(INSTRUCTIONS):
        if not destination.startswith(workdir):
            continue
        folder = destination.removeprefix(workdir).strip("/")
        for source in sources:
            matches = sorted(PROJECT_ROOT.glob(source))
            assert matches, f"COPY source {source} matches nothing"
            for match in matches:
                files[str(Path(folder, match.name))] = match
    return files


def healthcheck() -> tuple[list[str], list[str]]:
    """The HEALTHCHECK's options and its command (exec form)."""
    options, _, command = only("HEALTHCHECK").partition(" CMD ")
    return options.split(), json.loads(command)


def test_web_dockerfile_passes_hadolint() -> None:
    hadolint = Path(sys.executable).parent / "hadolint"
    result = subprocess.run([hadolint, WEB_DOCKERFILE], capture_output=True, text=True, check=False)
    assert (result.returncode, result.stdout + result.stderr) == (0, "")


def test_base_is_the_official_slim_python_of_the_function_on_an_exact_version() -> None:
    base = only("FROM")
    match = BASE.fullmatch(base)
    assert match, f"{base}: not python:<x.y.z>-slim-<debian> (no moving tag, no unchecked digest)"
    assert match["python"] == ".".join(map(str, LAMBDA_PYTHON))  # the lock's wheels are checked for it
    assert match["debian"] in DEBIAN_GLIBC_MINOR


def test_every_copy_source_exists_and_reaches_the_build_context() -> None:
    sources = [source for sources, _ in copies(INSTRUCTIONS) for source in sources]
    assert "requirements-web.txt" in sources
    for source in sources:
        matches = list(PROJECT_ROOT.glob(source))
        assert matches, source
        for match in matches:
            relative = str(match.relative_to(PROJECT_ROOT))
            assert not dockerignore_excludes(relative), f"{relative} is excluded by .dockerignore"


def test_image_holds_the_modules_the_app_imports_and_nothing_else() -> None:
    command = json.loads(only("CMD"))
    app_module = command[-1].split(":")[0]
    assert set(app_files()) == imported_project_files(app_module)


def test_requirements_file_is_the_locks_runtime_and_web_sets() -> None:
    """What `make requirements` writes from uv.lock today, byte for byte (else: run it)."""
    exported = subprocess.run(
        [
            uv_executable(),
            "export",
            "--frozen",
            "--no-default-groups",
            "--group",
            "web",
            "--no-emit-project",
            "--quiet",
        ],
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert WEB_REQUIREMENTS.read_text() == exported, "requirements-web.txt is stale: run `make requirements`"
    names = {canonicalize_name(r.name) for r in requirements(exported)}
    project = tomllib.loads((PROJECT_ROOT / "pyproject.toml").read_text())
    direct = project["project"]["dependencies"] + project["dependency-groups"]["web"]
    assert {canonicalize_name(Requirement(r).name) for r in direct} <= names
    assert names.isdisjoint(DEVELOPMENT_TOOLS)  # no pandas, mlflow, moto, pytest...
    lambda_set = {
        canonicalize_name(r.name)
        for r in requirements((PROJECT_ROOT / "requirements-lambda.txt").read_text())
    }
    assert lambda_set < names  # the function's set and the web group's additions, nothing more


def test_dockerfile_installs_exactly_the_requirements_file_with_hashes_and_wheels_only() -> None:
    [install] = [i.arguments for i in INSTRUCTIONS if i.keyword == "RUN" and "pip install" in i.arguments]
    words = shlex.split(install.split("&&")[0])
    assert words[:2] == ["pip", "install"]
    assert {"--require-hashes", "--only-binary=:all:", "--no-cache-dir"} <= set(words)
    assert words[words.index("--requirement") + 1] == "/tmp/requirements-web.txt"
    assert (["requirements-web.txt"], "/tmp/requirements-web.txt") in copies(INSTRUCTIONS)
    assert sum("pip install" in i.arguments for i in INSTRUCTIONS) == 1


@pytest.mark.parametrize("arch", sorted(ARCHITECTURES))
def test_every_web_package_has_a_wheel_for_the_image(arch: str) -> None:
    """pip in the image takes wheels only: each locked version needs one for its glibc."""
    match = BASE.fullmatch(only("FROM"))
    assert match
    wanted = requirements(WEB_REQUIREMENTS.read_text())
    glibc_minor = DEBIAN_GLIBC_MINOR[match["debian"]]
    assert packages_without_a_wheel(wanted, locked_packages(), ARCHITECTURES[arch], glibc_minor) == []


def test_code_is_compiled_after_it_is_copied_and_the_service_does_not_run_as_root() -> None:
    keywords = [(i.keyword, i.arguments) for i in INSTRUCTIONS]
    last_copy = max(n for n, (k, _) in enumerate(keywords) if k == "COPY")
    [compile_step] = [n for n, (k, a) in enumerate(keywords) if k == "RUN" and "compileall" in a]
    assert compile_step > last_copy
    users = [(n, a) for n, (k, a) in enumerate(keywords) if k == "USER"]
    assert users
    position, user = users[-1]
    assert user.isdigit()  # numeric: Kubernetes' runAsNonRoot can check it
    assert int(user) != 0
    assert position > max(n for n, (k, _) in enumerate(keywords) if k in {"RUN", "COPY"})
    [create_user] = [a for k, a in keywords if k == "RUN" and "useradd" in a]
    assert f"--uid {user}" in create_user


def test_the_model_step_is_the_functions_and_bakes_a_readable_model(tmp_path: Path) -> None:
    assert model_step(INSTRUCTIONS) == model_step(LAMBDA_INSTRUCTIONS)
    assert image_environment()["MODEL_URI"] == "/opt/ml/model"
    model = tmp_path / "context" / "model"
    model.mkdir(parents=True)
    (model / "MLmodel").write_text("flavors: {}\n")
    (model / "model.pkl").write_bytes(b"...")
    (model / "model.pkl").chmod(0o600)  # the service's user is not the files' owner

    result, files = bake_model("model", tmp_path, INSTRUCTIONS)

    assert (result.returncode, files) == (0, {"MLmodel": "644", "model.pkl": "644"})


def test_port_workers_and_healthcheck_agree() -> None:
    environment = image_environment()
    options, command = healthcheck()
    assert only("EXPOSE") == environment["PORT"] == "9696"  # the course's `docker run -p 9696:9696`
    assert int(environment["WEB_CONCURRENCY"]) >= 1
    assert {"--interval=30s", "--retries=3"} <= set(options)
    assert command[0] == "python"  # no curl in a slim image
    assert "'PORT'" in command[-1]
    assert "/health" in command[-1]


def test_gunicorn_runs_with_make_serves_settings_and_takes_bind_and_workers_from_the_environment() -> None:
    makefile = (PROJECT_ROOT / "Makefile").read_text().replace("\\\n", " ")
    [serve] = [line for line in makefile.splitlines() if "/gunicorn " in line]
    words = shlex.split(serve.split("/gunicorn ", 1)[1])
    serve_settings = {w for w in words if w.startswith("--") and w not in {"--bind", "--workers"}}
    command = json.loads(only("CMD"))
    assert serve_settings <= set(command)  # --preload, --no-control-socket, --access-logfile
    assert command[command.index("--access-logfile") + 1] == words[words.index("--access-logfile") + 1]
    assert command[-1] == words[-1]  # the same app factory
    # Not on the command line: gunicorn reads PORT and WEB_CONCURRENCY (the image's ENV).
    assert not {"--bind", "-b", "--workers", "-w"} & set(command)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


# Runs in a fresh interpreter whose working directory is the staged app directory, as in the image.
GUNICORN_DRIVER = """
import json, os, sys
from importlib.metadata import entry_points

forbidden = set(json.loads(os.environ.pop("FORBIDDEN_MODULES")))

class NotInTheImage:
    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] in forbidden:
            raise ModuleNotFoundError(f"No module named {name!r} (not in the web image's set)")

sys.meta_path.insert(0, NotInTheImage())
# The image runs gunicorn's console script, whose directory is not the app's: gunicorn itself
# puts its working directory on the path. So must it here.
sys.path = [p for p in sys.path if p not in ("", os.getcwd())]
command = json.loads(os.environ.pop("COMMAND"))
[script] = entry_points(group="console_scripts", name=command[0])
sys.argv = command
sys.exit(script.load()())
"""


def http(url: str, body: bytes | None = None) -> tuple[int, Any]:
    request = urllib.request.Request(url, data=body, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def run_healthcheck(environment: dict[str, str]) -> int:
    _, command = healthcheck()
    return subprocess.run(
        [sys.executable, *command[1:]], env=environment, capture_output=True, timeout=30, check=False
    ).returncode


def test_gunicorn_command_serves_the_model_from_the_image_files_with_only_the_web_set(
    tmp_path: Path, model_dir: Path
) -> None:
    app = tmp_path / "app"
    for inside, source in app_files().items():
        (app / inside).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(source, app / inside)
    command = json.loads(only("CMD"))
    [script] = entry_points(group="console_scripts", name=command[0])
    web_set = {canonicalize_name(r.name) for r in requirements(WEB_REQUIREMENTS.read_text())}
    assert script.dist is not None
    assert canonicalize_name(script.dist.name) in web_set
    if not Path("/dev/shm").is_dir():  # Linux has it, as the image does; elsewhere a stand-in
        command[command.index("/dev/shm")] = str(tmp_path)
    forbidden = modules_outside_the_runtime_set(WEB_REQUIREMENTS)
    assert {"pytest", "moto", "pandas", "mlflow"} <= set(forbidden)  # the guard guards something
    assert "flask" not in forbidden
    port = free_port()
    # The image's environment, with this test's port and model; no PYTHON* setting of the test run.
    environment = {key: value for key, value in os.environ.items() if not key.startswith("PYTHON")}
    environment |= image_environment() | {
        "PORT": str(port),
        "MODEL_URI": str(model_dir),
        "MODEL_CACHE_DIR": str(tmp_path / "cache"),
    }
    log_path = tmp_path / "gunicorn.log"
    with log_path.open("w") as log:
        server = subprocess.Popen(
            [sys.executable, "-c", GUNICORN_DRIVER],
            cwd=app,
            env=environment | {"FORBIDDEN_MODULES": json.dumps(forbidden), "COMMAND": json.dumps(command)},
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        workers = int(environment["WEB_CONCURRENCY"])
        deadline = time.monotonic() + 90
        while log_path.read_text().count("Booting worker") < workers:
            assert server.poll() is None, f"gunicorn exited:\n{log_path.read_text()}"
            assert time.monotonic() < deadline, f"gunicorn did not start:\n{log_path.read_text()}"
            time.sleep(0.2)
        base = f"http://127.0.0.1:{port}"

        health = http(f"{base}/health")
        ride = {"PULocationID": 130, "DOLocationID": 205, "trip_distance": 3.66}
        status, answer = http(f"{base}/predict", json.dumps(ride).encode())

        assert health[0] == 200
        assert health[1]["model"]["uri"] == str(model_dir)
        assert status == 200
        assert answer["duration"] > 0
        assert f"Listening at: http://0.0.0.0:{port}" in log_path.read_text()  # PORT, as in the image
        assert run_healthcheck(environment) == 0
    finally:
        server.send_signal(signal.SIGTERM)  # `docker stop`
        returncode = server.wait(timeout=30)
    assert returncode == 0, log_path.read_text()  # a graceful stop
    assert run_healthcheck(environment) != 0


def make(target: str, path: Path, tmp_path: Path, *variables: str) -> subprocess.CompletedProcess[str]:
    """`make <target>` with nothing but `path` on PATH (make itself is called by its full path)."""
    executable = shutil.which("make")
    assert executable
    return subprocess.run(
        [executable, "-s", target, *variables],
        cwd=PROJECT_ROOT,
        env={"PATH": str(path), "HOME": str(tmp_path)},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def fake_docker(folder: Path, script: str) -> Path:
    folder.mkdir()
    docker = folder / "docker"
    docker.write_text(f"#!/bin/sh\n{script}\n")
    docker.chmod(0o755)
    return folder


def test_make_web_image_says_when_docker_is_missing(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    result = make("web-image", tmp_path / "empty", tmp_path)
    assert result.returncode != 0
    assert result.stderr.startswith("docker not found: this target builds an image and needs Docker")


def test_make_web_image_says_when_the_docker_engine_is_not_running(tmp_path: Path) -> None:
    bin_dir = fake_docker(tmp_path / "bin", 'echo "Cannot connect to the Docker daemon" >&2; exit 1')
    result = make("web-image", bin_dir, tmp_path)
    assert result.returncode != 0
    assert result.stderr.startswith("docker is installed but its engine is not running")


def test_make_web_image_builds_the_web_dockerfile_with_the_model_and_tag_asked_for(tmp_path: Path) -> None:
    calls = tmp_path / "calls"
    bin_dir = fake_docker(tmp_path / "bin", f'echo "$*" >> "{calls}"')
    result = make("web-image", bin_dir, tmp_path, "MODEL_DIR=my-model", "WEB_IMAGE=web:1")
    assert result.returncode == 0, result.stderr
    assert calls.read_text().splitlines() == [
        "info",
        "build -f web.Dockerfile --build-arg MODEL_DIR=my-model -t web:1 .",
    ]
    assert "docker run --rm -p 9696:9696 web:1" in result.stdout


def test_renovate_moves_the_web_base_to_newer_patches_of_the_same_python_only() -> None:
    config = json.loads((PROJECT_ROOT / "renovate.json").read_text())
    [rule] = [r for r in config["packageRules"] if r.get("matchPackageNames") == ["python"]]
    allowed = re.compile(rule["allowedVersions"].strip("/"))
    current = only("FROM").split(":", 1)[1]
    assert allowed.search(current)
    assert allowed.search("3.13.99-slim-trixie")
    assert not allowed.search("3.14.1-slim-trixie")
    assert "requirements-web.txt" in config["postUpgradeTasks"]["fileFilters"]
