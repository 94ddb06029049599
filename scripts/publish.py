"""Build the Lambda image and push it to ECR under an immutable tag; print it by digest.

    python -m scripts.publish                       # arm64 (Graviton); model from MODEL_URI at run time
    python -m scripts.publish --arch x86_64         # for an x86_64 function
    python -m scripts.publish --model-dir model     # bake `make train`'s ./model into the image
    python -m scripts.publish --image batch         # the batch function's image (batch.Dockerfile)

The tag is the commit (`git rev-parse HEAD`) and the architecture, with a fingerprint of the
baked model if any (and `batch-` before it for the batch image), so an image says what it holds; the repository refuses to move a tag
(IMMUTABLE), and a tag already published is not built again. The base image (the Dockerfile's
FROM, a dated tag) is pulled first and its digest is recorded in the image's labels
(org.opencontainers.image.base.digest) and printed: the registry cannot be reached where the
Dockerfile is written, so the digest is learned where the image is built.
The last line on stdout is the image URI by digest, what `scripts.deploy --image-uri` takes.
One repository serves every stage: promoting to prod deploys the digest that ran in dev. It is
made once by its own stack (`make ecr`, infra/ecr.yaml); publish never creates it. After the
push, publish waits for the repository's scan and reports its critical and high findings;
`--fail-on critical` (or high, ...) turns them into a failure that prints no image.
Needs Docker 23+ (BuildKit) with a running engine, and AWS credentials.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import json
import re
import shutil
import subprocess
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from scripts.stack import PROJECT_ROOT, PrerequisiteError, ScriptError, caller_account, run, say, session

DEFAULT_REPOSITORY = "ride-duration"
# Lambda's architecture names (infra/template.yaml, Architecture) and Docker's platforms for them.
PLATFORMS = {"arm64": "linux/arm64", "x86_64": "linux/amd64"}
DEFAULT_ARCH = "arm64"  # Graviton: about 20 % cheaper per GB-second
DOCKERFILE = Path(__file__).resolve().parent.parent / "Dockerfile"
# The two Lambda images, by what they run: the stream's function, and batch scoring's. Both go to
# the one repository (infra/ecr.yaml), told apart by their tags.
DOCKERFILES = {"function": DOCKERFILE, "batch": DOCKERFILE.with_name("batch.Dockerfile")}
DIGEST = re.compile(r"^sha256:[0-9a-f]{64}$")
IMAGE_BY_DIGEST = re.compile(
    r"^(?P<registry>(?P<account>\d{12})\.dkr\.ecr\.(?P<region>[a-z0-9-]+)\.amazonaws\.com)"
    r"/(?P<repository>[a-z0-9][a-z0-9._/-]*)@(?P<digest>sha256:[0-9a-f]{64})$"
)

Runner = Callable[..., subprocess.CompletedProcess[str]]


def image_uri_by_digest(repository_uri: str, digest: str) -> str:
    if not DIGEST.match(digest):
        raise ValueError(f"not an image digest: {digest!r}")
    return f"{repository_uri}@{digest}"


def parse_image_uri(uri: str) -> dict[str, str]:
    """registry, account, region, repository and digest of an ECR image URI by digest."""
    match = IMAGE_BY_DIGEST.match(uri)
    if not match:
        raise PrerequisiteError(
            f"not an ECR image URI by digest: {uri!r} (expected "
            "<account>.dkr.ecr.<region>.amazonaws.com/<repository>@sha256:<64 hex>, "
            "the last line `make publish` prints)"
        )
    return match.groupdict()


def git_commit(run_command: Runner = subprocess.run, root: Path = PROJECT_ROOT) -> str:
    result = run_command(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise PrerequisiteError(f"cannot read the git commit of {root}: {result.stderr.strip()}")
    return result.stdout.strip()


def has_uncommitted_changes(run_command: Runner = subprocess.run, root: Path = PROJECT_ROOT) -> bool:
    """Changes to tracked files; untracked files (./model, data) never reach the image unasked."""
    result = run_command(
        ["git", "status", "--porcelain", "--untracked-files=no"],
        cwd=root,
        capture_output=True,
        text=True,
        check=True,
    )
    return bool(result.stdout.strip())


def model_fingerprint(model_dir: Path) -> str:
    """12 hex digits that change with any file of the model directory (names and contents)."""
    digest = hashlib.sha256()
    for path in sorted(p for p in model_dir.rglob("*") if p.is_file()):
        digest.update(path.relative_to(model_dir).as_posix().encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()[:12]


def image_tag(
    commit: str,
    dirty: bool,
    model: str | None = None,
    now: datetime | None = None,
    arch: str = DEFAULT_ARCH,
    *,
    image: str = "function",
) -> str:
    """The commit and architecture, plus the baked model's fingerprint (./model is not in git), plus
    the time for a dirty tree (the commit alone would not describe the code); `batch-` first for
    the batch image."""
    tag = f"{commit}-{arch}" if model is None else f"{commit}-{arch}-model-{model}"
    if image != "function":
        tag = f"{image}-{tag}"
    if dirty:
        tag += "-dirty-" + (now or datetime.now(UTC)).strftime("%Y%m%dT%H%M%SZ")
    return tag


def require_docker(run_command: Runner = subprocess.run) -> None:
    if shutil.which("docker") is None:
        raise PrerequisiteError(
            "docker not found: publishing builds the image with Docker 23+ (BuildKit). "
            "Install Docker, or publish from a machine or CI runner that has it"
        )
    result = run_command(["docker", "info"], capture_output=True, text=True, check=False)
    if result.returncode != 0:
        reason = (result.stderr or result.stdout).strip().splitlines()
        raise PrerequisiteError(
            "the Docker engine is not reachable (`docker info` failed"
            + (f": {reason[-1]}" if reason else "")
            + "): start Docker and try again"
        )


def validate_model_dir(model_dir: Path, root: Path = PROJECT_ROOT) -> str:
    """The model directory as the build argument wants it: a path inside the build context."""
    resolved = (root / model_dir).resolve() if not model_dir.is_absolute() else model_dir.resolve()
    if not (resolved / "MLmodel").is_file():
        raise PrerequisiteError(
            f"{model_dir} is not an MLflow model directory (no MLmodel file): run `make train`"
        )
    try:
        return resolved.relative_to(root.resolve()).as_posix()
    except ValueError:
        raise PrerequisiteError(
            f"{model_dir} is outside the build context {root}: copy it into the project first"
        ) from None


def existing_repository_uri(ecr: Any, name: str) -> str:
    """The repository's URI. It is made by its own stack (infra/ecr.yaml), with its lifecycle
    policy and scanning, never here: a repository made ad hoc would have neither."""
    try:
        return ecr.describe_repositories(repositoryNames=[name])["repositories"][0]["repositoryUri"]
    except ecr.exceptions.RepositoryNotFoundException:
        command = (
            "make ecr" if name == DEFAULT_REPOSITORY else f"make ecr ARGS='--parameter RepositoryName={name}'"
        )
        raise PrerequisiteError(
            f"ECR repository {name} does not exist in {ecr.meta.region_name}: create it once with `{command}` "
            "(stack ride-duration-ecr from infra/ecr.yaml: immutable tags, scan on push, lifecycle policy)"
        ) from None


def tagged_digest(ecr: Any, repository: str, tag: str) -> str | None:
    """The digest of the image with this tag, or None if there is none."""
    try:
        images = ecr.describe_images(repositoryName=repository, imageIds=[{"imageTag": tag}])["imageDetails"]
    except ecr.exceptions.ImageNotFoundException:
        return None
    return images[0]["imageDigest"] if images else None


def docker_login(ecr: Any, registry: str, run_command: Runner = subprocess.run) -> None:
    token = ecr.get_authorization_token()["authorizationData"][0]["authorizationToken"]
    user, password = base64.b64decode(token).decode().split(":", 1)
    run_command(
        ["docker", "login", "--username", user, "--password-stdin", registry],
        input=password,
        text=True,
        check=True,
        capture_output=True,
    )


def base_image(dockerfile: Path = DOCKERFILE) -> str:
    """The image the Dockerfile builds FROM (one stage, a dated tag)."""
    [base] = [line.split()[1] for line in dockerfile.read_text().splitlines() if line.startswith("FROM ")]
    return base


def resolve_base_digest(base: str, platform: str, run_command: Runner = subprocess.run) -> str:
    """Pull the base image for the platform; its digest in the registry (sha256:...)."""
    run_command(
        ["docker", "pull", "--quiet", "--platform", platform, base],
        check=True,
        capture_output=True,
        text=True,
    )
    inspected = run_command(
        ["docker", "image", "inspect", "--format", "{{json .RepoDigests}}", base],
        check=True,
        capture_output=True,
        text=True,
    )
    repository = base.rsplit(":", 1)[0]
    references: list[str] = json.loads(inspected.stdout or "[]")
    for reference in references:
        name, _, digest = reference.partition("@")
        if name == repository and DIGEST.match(digest):
            return digest
    raise PrerequisiteError(f"docker pulled {base} but reports no digest for it: {inspected.stdout.strip()}")


def build_command(
    reference: str,
    model_dir: str | None,
    root: Path = PROJECT_ROOT,
    arch: str = DEFAULT_ARCH,
    base: tuple[str, str] | None = None,
    *,
    dockerfile: Path = DOCKERFILE,
) -> list[str]:
    command = ["docker", "build", "--platform", PLATFORMS[arch], "--tag", reference]
    if dockerfile != DOCKERFILE:
        command += ["--file", str(dockerfile)]
    # Lambda rejects the image index (with attestations) that BuildKit makes by default.
    command += ["--provenance=false"]
    if base:  # OCI's annotation keys for what the image was built on
        name, digest = base
        command += ["--label", f"org.opencontainers.image.base.name={name}"]
        command += ["--label", f"org.opencontainers.image.base.digest={digest}"]
    if model_dir:
        command += ["--build-arg", f"MODEL_DIR={model_dir}"]
    return [*command, str(root)]


def publish(
    ecr: Any,
    repository: str,
    tag: str,
    model_dir: str | None,
    run_command: Runner = subprocess.run,
    *,
    arch: str = DEFAULT_ARCH,
    dockerfile: Path = DOCKERFILE,
) -> str:
    """Build and push unless this tag exists; the image URI by digest."""
    repository_uri = existing_repository_uri(ecr, repository)
    existing = tagged_digest(ecr, repository, tag)
    if existing:
        say(f"{repository}:{tag} is already published; not building it again")
        return image_uri_by_digest(repository_uri, existing)
    reference = f"{repository_uri}:{tag}"
    base = base_image(dockerfile)
    base_digest = resolve_base_digest(base, PLATFORMS[arch], run_command)
    say(f"base image {base} is {base.rsplit(':', 1)[0]}@{base_digest} (recorded in the image's labels)")
    say(f"building {reference} for {PLATFORMS[arch]}")
    run_command(
        build_command(reference, model_dir, arch=arch, base=(base, base_digest), dockerfile=dockerfile),
        check=True,
    )
    docker_login(ecr, repository_uri.split("/", 1)[0], run_command)
    say(f"pushing {reference}")
    run_command(["docker", "push", reference], check=True)
    digest = tagged_digest(ecr, repository, tag)
    if not digest:
        raise PrerequisiteError(f"pushed {reference}, but ECR does not list it")
    return image_uri_by_digest(repository_uri, digest)


# --- What the repository's scan on push found ----------------------------------------------

SEVERITIES = ("CRITICAL", "HIGH", "MEDIUM", "LOW", "INFORMATIONAL", "UNDEFINED")
# Basic scanning finishes a push's scan in a minute or two; enhanced scanning (Inspector) says
# ACTIVE once its first findings are in.
SCAN_RUNNING = {"IN_PROGRESS", "PENDING"}
SCAN_DONE = {"COMPLETE", "ACTIVE"}
SCAN_POLL_SECONDS = 10


class ScanFindingsError(ScriptError):
    """The image is pushed, but its scan found what --fail-on refuses (or could not be read)."""


@dataclass(frozen=True)
class ScanResult:
    """The scan of one image: its status and how many findings of each severity."""

    digest: str
    status: str  # ECR's imageScanStatus, or NOT_FOUND when no scan has started
    counts: dict[str, int]
    description: str = ""

    def summary(self) -> str:
        if self.status not in SCAN_DONE:
            return f"scan {self.status}" + (f" ({self.description})" if self.description else "")
        counts = ", ".join(f"{severity} {self.counts.get(severity, 0)}" for severity in SEVERITIES[:2])
        others = sum(n for severity, n in self.counts.items() if severity not in SEVERITIES[:2])
        return f"scan {self.status}: {counts}, {others} lower"


def scan_result(
    ecr: Any,
    repository: str,
    digest: str,
    timeout: float,
    *,
    sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], float] = time.monotonic,
) -> ScanResult:
    """Wait (up to `timeout` seconds) for the scan that the push started, then its counts."""
    deadline = clock() + timeout
    while True:
        try:
            response = ecr.describe_image_scan_findings(
                repositoryName=repository, imageId={"imageDigest": digest}, maxResults=1
            )
            status = response["imageScanStatus"]["status"]
            description = response["imageScanStatus"].get("description", "")
            counts = response.get("imageScanFindings", {}).get("findingSeverityCounts", {})
        except ecr.exceptions.ScanNotFoundException:
            # Right after a push, or never when the repository does not scan on push.
            status, description, counts = (
                "NOT_FOUND",
                "no scan of this image yet: does the repository scan on push?",
                {},
            )
        if status not in SCAN_RUNNING | {"NOT_FOUND"} or clock() >= deadline:
            return ScanResult(digest, status, dict(counts), description)
        sleep(min(SCAN_POLL_SECONDS, max(0.0, deadline - clock())))


def check_scan(result: ScanResult, fail_on: str | None, repository: str) -> None:
    """Say what the scan found; with `fail_on` (a severity), refuse findings at or above it."""
    say(f"{repository}@{result.digest}: {result.summary()}")
    if fail_on is None:
        return
    look = (
        f"aws ecr describe-image-scan-findings --repository-name {repository} "
        f"--image-id imageDigest={result.digest}"
    )
    if result.status not in SCAN_DONE:
        raise ScanFindingsError(f"cannot check for {fail_on} findings: {result.summary()}; see `{look}`")
    refused = SEVERITIES[: SEVERITIES.index(fail_on) + 1]
    found = {severity: result.counts[severity] for severity in refused if result.counts.get(severity)}
    if found:
        listed = ", ".join(f"{n} {severity}" for severity, n in found.items())
        raise ScanFindingsError(
            f"the image has {listed} finding(s) (--fail-on {fail_on.lower()}): not printed for deploy. "
            f"See `{look}`; rebuild on a patched base image, or publish without --fail-on"
        )


def add_scan_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--fail-on",
        type=str.upper,
        choices=SEVERITIES[:4],
        help="fail (print no image) if the scan finds this severity or a higher one; "
        "without it the counts are only reported",
    )
    parser.add_argument(
        "--scan-timeout",
        type=float,
        default=600,
        help="seconds to wait for the scan on push (default: %(default)s)",
    )


def parser() -> argparse.ArgumentParser:
    result = argparse.ArgumentParser(
        prog="python -m scripts.publish",
        description=__doc__.split("\n\n", 1)[0],
        epilog="Prints the image URI by digest on stdout; pass it to `make deploy IMAGE=...`.",
    )
    result.add_argument(
        "--repository", default=DEFAULT_REPOSITORY, help="ECR repository (default: %(default)s)"
    )
    result.add_argument("--model-dir", type=Path, help="bake this MLflow model directory into the image")
    result.add_argument(
        "--image",
        choices=sorted(DOCKERFILES),
        default="function",
        help="which image: the stream's function (Dockerfile, the default) or batch (batch.Dockerfile)",
    )
    result.add_argument(
        "--arch",
        choices=sorted(PLATFORMS),
        default=DEFAULT_ARCH,
        help="the function's architecture (default: %(default)s; the stack's Architecture must match)",
    )
    result.add_argument("--region", help="AWS region (default: AWS_DEFAULT_REGION, or the profile's region)")
    result.add_argument(
        "--allow-dirty",
        action="store_true",
        help="publish uncommitted changes, tagged <commit>-dirty-<UTC time>",
    )
    add_scan_arguments(result)
    return result


def main(argv: Sequence[str] | None = None, run_command: Runner = subprocess.run) -> int:
    args = parser().parse_args(argv)
    model_dir = validate_model_dir(args.model_dir) if args.model_dir else None
    dirty = has_uncommitted_changes(run_command)
    if dirty and not args.allow_dirty:
        raise PrerequisiteError(
            "uncommitted changes: the commit would not describe the image. "
            "Commit first, or pass --allow-dirty"
        )
    fingerprint = model_fingerprint(PROJECT_ROOT / model_dir) if model_dir else None
    tag = image_tag(git_commit(run_command), dirty, fingerprint, arch=args.arch, image=args.image)
    require_docker(run_command)
    aws = session(args)
    account = caller_account(aws.client("sts"))
    say(f"account {account}, region {aws.region_name}")
    ecr = aws.client("ecr")
    image = publish(
        ecr, args.repository, tag, model_dir, run_command, arch=args.arch, dockerfile=DOCKERFILES[args.image]
    )
    scan = scan_result(ecr, args.repository, parse_image_uri(image)["digest"], args.scan_timeout)
    check_scan(scan, args.fail_on, args.repository)
    print(image)
    return 0


if __name__ == "__main__":
    raise SystemExit(run(main))
