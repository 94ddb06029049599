"""Move a stage's alias `live` back to the version that was live before the current one.

    python -m scripts.rollback --stage dev                  # back one version (self-tested first)
    python -m scripts.rollback --stage dev --to-version 4   # to that version
    python -m scripts.rollback --stage dev --no-check       # without the self-test (seconds faster)

The version to go back to is the one the current version replaced: each version's description,
written when scripts/deploy.py published it, starts "replaces <n>". The target is invoked with
the self-test event first (it may no longer start: a model overwritten since fails its
MODEL_SHA256 check) unless --no-check. Only the alias moves: the stack still names the newer
code and model, and the next deploy refuses to put that version live again unless it changes
them (or is given --redeploy).
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from scripts.invoke import LIVE_ALIAS, self_test
from scripts.live_alias import get_version, live_version, move
from scripts.stack import PrerequisiteError, ScriptError, add_stack_arguments, deployed_stage, run, say


def parser() -> argparse.ArgumentParser:
    result = argparse.ArgumentParser(
        prog="python -m scripts.rollback", description=__doc__.split("\n\n", 1)[0]
    )
    add_stack_arguments(result)
    result.add_argument("--to-version", help="the version to move the alias to (default: the previous one)")
    result.add_argument("--no-check", action="store_true", help="move without invoking the self-test first")
    return result


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    aws, outputs = deployed_stage(args)
    function = outputs["FunctionName"]
    lambda_client = aws.client("lambda")
    current = live_version(lambda_client, function)
    if current is None:
        raise PrerequisiteError(
            f"{function} has no alias {LIVE_ALIAS!r}: deploy with this version of the scripts first"
        )
    target = args.to_version or get_version(lambda_client, function, current).replaces
    if target is None:
        raise PrerequisiteError(
            f"version {current} of {function} records no version before it (it was published with the "
            "stack): name one with --to-version"
        )
    if target == current:
        say(f"alias {LIVE_ALIAS} of {function} already points to version {current}")
        return 0
    version = get_version(lambda_client, function, target)  # exists, or the error lists those that do
    say(
        f"rolling back {function}: alias {LIVE_ALIAS} from version {current} to version {target} ({version.description})"
    )
    if not args.no_check:
        outcome = self_test(lambda_client, function, target)
        for line in outcome.lines():
            say(line)
        if not outcome.passed:
            raise ScriptError(
                f"version {target} fails its self-test now; alias {LIVE_ALIAS} left on version {current} "
                "(--no-check moves it anyway)"
            )
    move(lambda_client, function, target, current)
    say(f"alias {LIVE_ALIAS}: version {current} -> {target}")
    say(
        f"the stack still names version {current}'s code and model: a deploy that changes neither "
        f"refuses to put version {current} live again without --redeploy"
    )
    print(target)
    return 0


if __name__ == "__main__":
    raise SystemExit(run(main))
