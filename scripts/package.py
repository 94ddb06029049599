"""Build the function as a deployment zip (PackageType Zip, python3.13 with SnapStart).

    python -m scripts.package                      # build/ride-duration-arm64.zip
    python -m scripts.package --arch x86_64        # build/ride-duration-x86_64.zip
    python -m scripts.package --model-dir model    # with ./model inside (MODEL_URI=/var/task/model)

The lock's runtime set (requirements-lambda.txt, hashes checked) is installed from manylinux
wheels for Lambda's python3.13 on Amazon Linux 2023 (glibc 2.34) and the chosen architecture,
without what the Python runtime already provides (boto3 and its dependencies); the function's
code goes next to it, as in the image. Test folders and compiled-extension sources are left
out. The zip is reproducible (sorted, fixed timestamps) and must stay under Lambda's 250 MB
unzipped; the script says how far under it is. Upload it to S3 and deploy it with
`make deploy ARGS="--zip s3://<bucket>/<key>"` (docs/deploy.md).
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import subprocess
import tempfile
import zipfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from scripts.publish import DEFAULT_ARCH, PLATFORMS, validate_model_dir
from scripts.stack import PROJECT_ROOT, PrerequisiteError, run, say

LAMBDA_PYTHON = "3.13"
GLIBC = "2_34"  # Amazon Linux 2023
MACHINES = {"arm64": "aarch64", "x86_64": "x86_64"}
# In every Lambda Python runtime, and left out of the zip (its version is the runtime's).
RUNTIME_PROVIDES = ("boto3", "botocore", "s3transfer", "jmespath", "python-dateutil", "six", "urllib3")
# The function's code: the image's task root (Dockerfile COPY), checked by tests/deploy.
CODE = ("lambda_function.py", "model_service.py", "stream/*.py")
# Lambda's limit for a function's unzipped code, layers included: 262,144,000 bytes.
MAX_UNZIPPED_BYTES = 250 * 1024 * 1024
# Never imported by the function: the packages' own test suites and the sources of their
# compiled extensions (scipy and scikit-learn ship both).
STRIPPED_DIRECTORIES = {"tests", "__pycache__"}
STRIPPED_SUFFIXES = {".pyx", ".pxd", ".pxi", ".c", ".cpp", ".h", ".hpp"}
# A fixed time for every entry, so the same inputs make the same bytes (zip's epoch is 1980).
ZIP_TIME = (1980, 1, 1, 0, 0, 0)


@dataclass(frozen=True)
class Package:
    path: Path
    files: int
    unzipped_bytes: int
    zipped_bytes: int
    stripped_bytes: int
    sha256: str


def uv_executable() -> str:
    local = PROJECT_ROOT / ".tools" / "bin" / "uv"
    found = str(local) if local.exists() else shutil.which("uv")
    if not found:
        raise PrerequisiteError("uv not found: run `make setup`")
    return found


def zip_requirements(uv: str) -> str:
    """The lock's runtime set with hashes, without what the Lambda runtime provides."""
    command = [uv, "export", "--frozen", "--no-default-groups", "--no-emit-project", "--quiet"]
    for name in RUNTIME_PROVIDES:
        command += ["--no-emit-package", name]
    return subprocess.run(  # noqa: S603 - uv, with arguments made here
        command, cwd=PROJECT_ROOT, capture_output=True, text=True, check=True
    ).stdout


def install_command(uv: str, requirements: Path, target: Path, arch: str) -> list[str]:
    return [
        uv, "pip", "install", "--quiet", "--target", str(target),
        "--python-version", LAMBDA_PYTHON, "--python-platform", f"{MACHINES[arch]}-manylinux_{GLIBC}",
        "--only-binary", ":all:", "--require-hashes", "--no-deps", "--no-compile",
        "--requirement", str(requirements),
    ]  # fmt: skip


def strip(root: Path) -> int:
    """Remove what the function never imports; the bytes removed."""
    removed = 0
    for leftover in (root / ".lock", root / "bin"):  # the installer's lock file, console scripts
        if leftover.is_dir():
            shutil.rmtree(leftover)
        else:
            leftover.unlink(missing_ok=True)
    for path in sorted(root.rglob("*"), reverse=True):
        if path.is_dir() and path.name in STRIPPED_DIRECTORIES:
            removed += sum(f.stat().st_size for f in path.rglob("*") if f.is_file())
            shutil.rmtree(path)
        elif path.is_file() and path.suffix in STRIPPED_SUFFIXES:
            removed += path.stat().st_size
            path.unlink()
    return removed


def code_files(root: Path = PROJECT_ROOT) -> dict[str, Path]:
    """The function's modules, by their path in the zip."""
    return {
        str(path.relative_to(root)): path
        for pattern in CODE
        for path in sorted(root.glob(pattern))
        if "__pycache__" not in path.parts
    }


def entries(site: Path, code: dict[str, Path], model_dir: Path | None) -> Iterator[tuple[str, Path]]:
    yield from code.items()
    if model_dir is not None:
        yield from (
            (f"model/{p.relative_to(model_dir)}", p) for p in sorted(model_dir.rglob("*")) if p.is_file()
        )
    yield from ((str(p.relative_to(site)), p) for p in sorted(site.rglob("*")) if p.is_file())


def write_zip(path: Path, files: Sequence[tuple[str, Path]]) -> None:
    """Sorted entries with fixed times and modes: the same inputs give the same zip."""
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=9) as archive:
        for name, source in sorted(files):
            info = zipfile.ZipInfo(name, ZIP_TIME)
            info.compress_type = zipfile.ZIP_DEFLATED
            # Lambda runs the code as another user than the owner: readable by all.
            info.external_attr = (0o100755 if ".so" in source.suffixes else 0o100644) << 16
            info.create_system = 3  # Unix, so that the modes above are read
            archive.writestr(info, source.read_bytes())


def build_package(arch: str, output: Path, model_dir: Path | None = None) -> Package:
    uv = uv_executable()
    with tempfile.TemporaryDirectory(prefix="package-") as scratch:
        requirements = Path(scratch) / "requirements.txt"
        requirements.write_text(zip_requirements(uv))
        site = Path(scratch) / "site"
        say(
            f"installing the runtime set for python{LAMBDA_PYTHON} on {arch} (manylinux {GLIBC.replace('_', '.')})"
        )
        # No bytecode: it would be compiled by this interpreter, not python3.13 (the Makefile
        # asks uv to compile, for the virtualenvs).
        environment = {k: v for k, v in os.environ.items() if k != "UV_COMPILE_BYTECODE"}
        subprocess.run(install_command(uv, requirements, site, arch), check=True, env=environment)  # noqa: S603
        stripped = strip(site)
        files = list(entries(site, code_files(), model_dir))
        unzipped = sum(source.stat().st_size for _, source in files)
        if unzipped > MAX_UNZIPPED_BYTES:
            raise PrerequisiteError(
                f"{unzipped / 2**20:.1f} MB unzipped is over Lambda's 250 MB for a zip: "
                "use the container image (make publish)"
            )
        output.parent.mkdir(parents=True, exist_ok=True)
        write_zip(output, files)
    return Package(
        path=output,
        files=len(files),
        unzipped_bytes=unzipped,
        zipped_bytes=output.stat().st_size,
        stripped_bytes=stripped,
        sha256=hashlib.sha256(output.read_bytes()).hexdigest(),
    )


def parser() -> argparse.ArgumentParser:
    result = argparse.ArgumentParser(
        prog="python -m scripts.package",
        description=__doc__.split("\n\n", 1)[0],
        epilog="Prints the zip's path on stdout; upload it to S3 and deploy it with --zip.",
    )
    result.add_argument(
        "--arch", choices=sorted(PLATFORMS), default=DEFAULT_ARCH, help="default: %(default)s"
    )
    result.add_argument(
        "--model-dir", type=Path, help="put this MLflow model directory in the zip, at model/"
    )
    result.add_argument("--output", type=Path, help="default: build/ride-duration-<arch>.zip")
    return result


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    model_dir = PROJECT_ROOT / validate_model_dir(args.model_dir) if args.model_dir else None
    output = args.output or PROJECT_ROOT / "build" / f"ride-duration-{args.arch}.zip"
    package = build_package(args.arch, output, model_dir)
    say(
        f"{package.files:,} files, {package.unzipped_bytes / 2**20:.1f} MB unzipped "
        f"({(MAX_UNZIPPED_BYTES - package.unzipped_bytes) / 2**20:.1f} MB under Lambda's 250 MB; "
        f"{package.stripped_bytes / 2**20:.1f} MB of tests and extension sources left out), "
        f"{package.zipped_bytes / 2**20:.1f} MB zipped, sha256 {package.sha256}"
    )
    if model_dir is not None:
        say("the model is at /var/task/model: deploy with MODEL_URI=/var/task/model")
    print(package.path)
    return 0


if __name__ == "__main__":
    raise SystemExit(run(main))
