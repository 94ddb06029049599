"""scripts/package.py: the deployment zip, built for real from the lock's manylinux wheels."""

from __future__ import annotations

import zipfile
from pathlib import Path

import pytest

from scripts.package import MAX_UNZIPPED_BYTES, RUNTIME_PROVIDES, ZIP_TIME, Package, build_package
from tests.deploy.test_container_image import task_root_files


@pytest.fixture(scope="module")
def package(tmp_path_factory: pytest.TempPathFactory, model_dir: Path) -> Package:
    return build_package("arm64", tmp_path_factory.mktemp("package") / "function.zip", model_dir)


@pytest.fixture(scope="module")
def names(package: Package) -> list[str]:
    with zipfile.ZipFile(package.path) as archive:
        return archive.namelist()


def test_the_zip_fits_lambdas_unzipped_limit(package: Package) -> None:
    with zipfile.ZipFile(package.path) as archive:
        assert sum(info.file_size for info in archive.infolist()) == package.unzipped_bytes
    assert package.unzipped_bytes < MAX_UNZIPPED_BYTES
    assert package.stripped_bytes > 0


def test_the_zip_holds_the_images_code_and_the_runtime_set_for_arm64_python_3_13(names: list[str]) -> None:
    code = set(task_root_files())
    assert code <= set(names)
    assert {name for name in names if name.startswith("stream/")} == {
        n for n in code if n.startswith("stream/")
    }
    assert not [name for name in names if name.startswith(("bin/", ".lock"))]  # the installer's leftovers
    tops = {name.split("/", 1)[0] for name in names}
    assert {"numpy", "scipy", "sklearn", "pydantic_core", "aws_lambda_powertools", "yaml"} <= tops
    assert any(n.startswith("scikit_learn-") and n.endswith(".dist-info/METADATA") for n in names)
    extensions = [n for n in names if n.startswith("numpy/_core/_multiarray_umath") and n.endswith(".so")]
    assert extensions
    assert all("cpython-313-aarch64-linux-gnu" in n for n in extensions)


def test_what_the_runtime_provides_and_the_packages_tests_are_left_out(names: list[str]) -> None:
    tops = {name.split("/", 1)[0].split("-", 1)[0].lower() for name in names}
    provided = {name.replace("-", "_") for name in RUNTIME_PROVIDES} | {"dateutil"}
    assert tops.isdisjoint(provided)
    assert not [n for n in names if "/tests/" in n or n.endswith((".pyx", ".pxd"))]


def test_the_model_is_inside_and_entries_are_reproducible_and_readable(
    names: list[str], package: Package
) -> None:
    assert "model/MLmodel" in names
    with zipfile.ZipFile(package.path) as archive:
        infos = archive.infolist()
    assert names == sorted(names)
    assert {info.date_time for info in infos} == {ZIP_TIME}
    assert all((info.external_attr >> 16) & 0o444 == 0o444 for info in infos)
