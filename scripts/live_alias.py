"""The function's published versions and the alias the stream invokes (`live`).

scripts/deploy.py publishes a version of what the stack has just deployed ($LATEST), runs the
self-test on it (scripts/invoke.py) and moves the alias to it; scripts/rollback.py and the
alarm watch move it back. Each version's description starts with the version that was live
when it was published ("replaces 4; ..."): version descriptions are immutable, so that record
survives any later stack update, and `make rollback` knows where back is.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from botocore.exceptions import ClientError

from scripts.invoke import LIVE_ALIAS
from scripts.stack import PrerequisiteError, ScriptError

REPLACES = re.compile(r"^replaces (\d+)\b")
DESCRIPTION_LIMIT = 256  # characters, Lambda's limit for a version's description


class AliasMovedError(ScriptError):
    """The alias is no longer where this script saw it: someone else moved it meanwhile."""


@dataclass(frozen=True)
class Version:
    number: str
    description: str
    new: bool = True  # False: Lambda returned the latest published version, nothing had changed

    @property
    def replaces(self) -> str | None:
        """The version that was live when this one was published (None: the stack's first)."""
        found = REPLACES.match(self.description)
        return found[1] if found else None


def description(replaces: str | None, code: str, model: str) -> str:
    """What a new version records: the version it replaces, its code and its model."""
    text = f"replaces {replaces}; " if replaces else ""
    return (text + f"code {code}; model {model}")[:DESCRIPTION_LIMIT]


def live_version(lambda_client: Any, function_name: str) -> str | None:
    """The version the alias points to; None for a stack from before the alias."""
    try:
        version: str = lambda_client.get_alias(FunctionName=function_name, Name=LIVE_ALIAS)["FunctionVersion"]
    except ClientError as error:
        if error.response["Error"]["Code"] == "ResourceNotFoundException":
            return None
        raise
    return version


def published_versions(lambda_client: Any, function_name: str) -> dict[str, str]:
    """Every published version (not $LATEST) and its description."""
    versions = {}
    for page in lambda_client.get_paginator("list_versions_by_function").paginate(FunctionName=function_name):
        for item in page["Versions"]:
            if item["Version"] != "$LATEST":
                versions[item["Version"]] = item.get("Description", "")
    return versions


def get_version(lambda_client: Any, function_name: str, number: str) -> Version:
    try:
        config = lambda_client.get_function_configuration(FunctionName=function_name, Qualifier=number)
    except ClientError as error:
        if error.response["Error"]["Code"] == "ResourceNotFoundException":
            known = ", ".join(sorted(published_versions(lambda_client, function_name), key=int)) or "none"
            raise PrerequisiteError(
                f"{function_name} has no version {number} (published versions: {known})"
            ) from None
        raise
    return Version(number, config.get("Description", ""), new=False)


def publish(lambda_client: Any, function_name: str, text: str) -> Version:
    """Publish $LATEST as a version and wait until it can be invoked (with SnapStart, Lambda
    takes its snapshot now: minutes). Lambda publishes nothing when $LATEST has not changed
    since the latest version; it returns that version (`new` is False)."""
    existing = published_versions(lambda_client, function_name)
    # The code the stack deployed: if $LATEST changed since (another deploy), Lambda refuses.
    code_sha256 = lambda_client.get_function_configuration(FunctionName=function_name)["CodeSha256"]
    published = lambda_client.publish_version(
        FunctionName=function_name, CodeSha256=code_sha256, Description=text[:DESCRIPTION_LIMIT]
    )
    number = published["Version"]
    lambda_client.get_waiter("published_version_active").wait(
        FunctionName=function_name, Qualifier=number, WaiterConfig={"Delay": 5, "MaxAttempts": 180}
    )
    return Version(number, published.get("Description", ""), new=number not in existing)


def move(lambda_client: Any, function_name: str, to_version: str, from_version: str | None) -> None:
    """Point the alias at `to_version`, only if it still points at `from_version`."""
    alias = lambda_client.get_alias(FunctionName=function_name, Name=LIVE_ALIAS)
    if from_version is not None and alias["FunctionVersion"] != from_version:
        raise AliasMovedError(
            f"alias {LIVE_ALIAS} of {function_name} points to version {alias['FunctionVersion']}, "
            f"not {from_version} as it did a moment ago: someone else moved it; left as it is"
        )
    lambda_client.update_alias(
        FunctionName=function_name,
        Name=LIVE_ALIAS,
        FunctionVersion=to_version,
        RevisionId=alias["RevisionId"],  # refused if the alias changed since get_alias
    )


def delete_version(lambda_client: Any, function_name: str, number: str) -> None:
    """A version that failed its check: never invoked by the stream, and with SnapStart its
    snapshot is billed for as long as the version exists."""
    lambda_client.delete_function(FunctionName=function_name, Qualifier=number)
