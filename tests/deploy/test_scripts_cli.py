"""What every deploy script says to a user: its help, and one clear line when AWS is out of reach."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

import pytest
from botocore.exceptions import ClientError

from scripts import (
    account_stacks,
    backfill,
    batch_deploy,
    deploy,
    invoke,
    promote,
    publish,
    replay,
    rollback,
    smoke_test,
)
from scripts.stack import PROJECT_ROOT, load_template, run

SCRIPTS = {
    "publish": publish,
    "deploy": deploy,
    "smoke_test": smoke_test,
    "invoke": invoke,
    "replay": replay,
    "promote": promote,
    "account_stacks": account_stacks,
    "rollback": rollback,
    "batch_deploy": batch_deploy,
    "backfill": backfill,
}
STAGE_SCRIPTS = ["deploy", "smoke_test", "invoke", "rollback", "batch_deploy"]


@pytest.mark.parametrize("name", SCRIPTS)
def test_help_says_what_the_script_does_and_what_it_takes(
    name: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exited:
        SCRIPTS[name].main(["--help"])

    assert exited.value.code == 0
    help_text = capsys.readouterr().out
    assert help_text.startswith(f"usage: python -m scripts.{name} ")
    assert SCRIPTS[name].__doc__.split("\n\n")[0].replace("\n", " ") in " ".join(help_text.split())
    assert "--region" in help_text
    if name in STAGE_SCRIPTS:
        assert "--stage STAGE" in help_text


@pytest.mark.parametrize("name", STAGE_SCRIPTS)
def test_the_stage_is_required(name: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        SCRIPTS[name].main([])

    assert exited.value.code == 2
    assert "the following arguments are required: --stage" in capsys.readouterr().err


def test_the_scripts_run_as_modules() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "scripts.smoke_test", "--help"],
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0
    assert "--timeout" in result.stdout


@pytest.fixture
def no_credentials(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")  # no instance role lookup either
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")  # nothing may be reached


@pytest.mark.parametrize("name", [*STAGE_SCRIPTS, "replay"])
def test_without_credentials_each_script_says_how_to_get_them(
    name: str, no_credentials: None, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run(SCRIPTS[name].main, ["--stage", "dev"]) == 1

    last_line = capsys.readouterr().err.splitlines()[-1]
    assert last_line == (
        "error: no usable AWS credentials (Unable to locate credentials): run `aws configure` or "
        "`aws sso login`, or set AWS_PROFILE / AWS_ACCESS_KEY_ID"
    )


def test_without_a_region_the_script_asks_for_one(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("AWS_REGION")
    monkeypatch.delenv("AWS_DEFAULT_REGION")
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")  # nothing may be reached

    assert run(smoke_test.main, ["--stage", "dev"]) == 1

    assert (
        capsys.readouterr().err
        == "error: no AWS region: pass --region, or set AWS_DEFAULT_REGION or a region in your AWS profile\n"
    )


def failing_with(code: str, message: str) -> Callable[[Sequence[str] | None], int]:
    def main(_argv: Sequence[str] | None) -> int:
        raise ClientError({"Error": {"Code": code, "Message": message}}, "GetCallerIdentity")

    return main


def test_expired_credentials_are_named_as_such(capsys: pytest.CaptureFixture[str]) -> None:
    assert run(failing_with("ExpiredToken", "The security token included in the request is expired")) == 1

    assert capsys.readouterr().err == (
        "error: An error occurred (ExpiredToken) when calling the GetCallerIdentity operation: The security "
        "token included in the request is expired: refresh your credentials (`aws sso login`, or new access keys)\n"
    )


def test_template_short_forms_read_as_cloudformation_long_forms() -> None:
    resources = load_template()["Resources"]
    assert resources["Function"]["Properties"]["Role"] == {"Fn::GetAtt": ["FunctionRole", "Arn"]}
    assert resources["EventSourceMapping"]["Properties"]["FunctionName"] == {"Ref": "LiveAlias"}
    assert resources["InputStream"]["Properties"]["Name"] == {"Fn::Sub": "ride-events-${Stage}"}
