"""Sum up the headline targets of one ``make bench`` run: which pass, which fail.

    .venv-bench/bin/python benchmarks/targets.py .bench/core.json .bench/redis.json .bench/web.json

Each file is the ``--json`` output of one benchmark script; a check marked ``headline`` there
is one of the project's performance targets (figures against a floor measured in the same
run, interleaved, medians of repeats). Exits with status 1 if a file is missing or unreadable,
0 otherwise (a failed target is reported, not an error: the machine may be loaded).
"""

from __future__ import annotations

import json
import sys

from _common import table


def main(paths: list[str]) -> int:
    rows = []
    missing = []
    for path in paths:
        try:
            with open(path) as f:
                data = json.load(f)
        except (OSError, ValueError) as exc:
            missing.append(f"{path}: {exc}")
            continue
        for check in data.get("checks", []):
            if check.get("headline"):
                rows.append(
                    (
                        check["section"],
                        check["name"],
                        check["shown"],
                        check["target"],
                        check["verdict"],
                    )
                )
    print("\nTargets of this run (figures and floors from the tables above):")
    print(table(("section", "target", "measured", "required", "result"), rows, align="lllll"))
    passed = sum(r[-1] == "PASS" for r in rows)
    print(f"\n{passed} of {len(rows)} targets pass")
    for line in missing:
        print(f"  no figures: {line}")
    return 1 if missing else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
