"""The mutation score of each file `make mutation` mutates, from mutmut's results in mutants/.

    python -m scripts.mutation_score

Killed / total per file (a mutant that timed out counts as killed: the tests noticed), what
became of the rest, and the name of every survivor (`mutmut show NAME` prints its diff).
docs/testing.md says which survivors are left on purpose, and why.
"""

from __future__ import annotations

import json
import sys
import tomllib
from collections import Counter
from pathlib import Path

from mutmut.stats import status_by_exit_code

PROJECT_ROOT = Path(__file__).resolve().parent.parent
CAUGHT = {"killed", "timeout"}


def mutated_files(root: Path = PROJECT_ROOT) -> list[str]:
    config = tomllib.loads((root / "pyproject.toml").read_text())
    return list(config["tool"]["mutmut"]["source_paths"])


def statuses(meta: Path) -> dict[str, str]:
    """Each mutant's status by name, as mutmut names them ("killed", "survived", "no tests", ...)."""
    exit_codes: dict[str, int | None] = json.loads(meta.read_text())["exit_code_by_key"]
    return {name: status_by_exit_code[code] for name, code in exit_codes.items()}


def report(root: Path = PROJECT_ROOT) -> tuple[list[str], list[str]]:
    """Lines of the per-file table, and the survivors' names."""
    lines, survivors = [], []
    for path in mutated_files(root):
        meta = root / "mutants" / f"{path}.meta"
        if not meta.is_file():
            lines.append(f"  {path:<36} not run yet")
            continue
        by_name = statuses(meta)
        counts = Counter(by_name.values())
        caught = sum(counts[status] for status in CAUGHT)
        rest = ", ".join(f"{status} {n}" for status, n in counts.most_common() if status not in CAUGHT)
        share = f"{100 * caught / len(by_name):5.1f} %" if by_name else "    -  "
        lines.append(f"  {path:<36} {caught:>4} / {len(by_name):<4} {share}   {rest}")
        survivors += sorted(name for name, status in by_name.items() if status == "survived")
    return lines, survivors


def main() -> int:
    lines, survivors = report()
    print("mutation score: mutants killed / mutants, per file (results in mutants/)")
    print("\n".join(lines))
    if survivors:
        print(
            f"{len(survivors)} survivors (`mutmut show NAME` shows one; docs/testing.md explains those left):"
        )
        print("\n".join(f"  {name}" for name in survivors))
    return 0


if __name__ == "__main__":
    sys.exit(main())
