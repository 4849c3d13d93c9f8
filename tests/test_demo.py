"""`ratekeeper demo` end to end, as a subprocess on the real clock."""

from __future__ import annotations

import json
import subprocess
import sys

from ratekeeper import Rate
from ratekeeper._demo import ideal_schedule


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "ratekeeper", "demo", *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_ideal_schedule() -> None:
    assert ideal_schedule(Rate(5), 5, 7) == [0, 0, 0, 0, 0, 0.2, 0.4]


def test_demo_prints_the_timeline_and_an_ok_verdict() -> None:
    done = run("--rate", "20/s", "--capacity", "3", "--tasks", "8", "--tolerance", "0.25")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "verdict: OK: the first 3 started at once, then one every 0.050 s" in done.stdout
    assert done.stdout.count("\n") >= 8 + 4


def test_demo_json_and_a_violated_schedule_exits_non_zero() -> None:
    # A zero tolerance cannot be met on a real clock: the verdict must say so in the exit code.
    done = run("--rate", "50", "--capacity", "1", "--tasks", "3", "--tolerance", "0", "--json")
    result = json.loads(done.stdout)
    assert result["ok"] is False
    assert done.returncode == 1
    assert result["order"] == [0, 1, 2]


def test_demo_refuses_bad_arguments_with_exit_code_2() -> None:
    for args in (["--rate", "fast"], ["--capacity", "0"], ["--tasks", "x"], ["--hold", "-1"]):
        done = run(*args)
        assert done.returncode == 2, args
        assert "error:" in done.stderr
