"""Helpers shared by the benchmark scripts: statistics, plain-text tables, checks, workers.

Nothing here measures anything; it keeps the scripts about what they measure.
"""

from __future__ import annotations

import json
import math
import os
import platform
import resource
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from importlib import metadata

__all__ = [
    "Check",
    "WorkerFailed",
    "finite",
    "write_checks",
    "jain",
    "machine",
    "median",
    "peak_rss_bytes",
    "quantile",
    "rss_bytes",
    "run_worker",
    "source",
    "table",
]


# -- statistics ------------------------------------------------------------------------------


def quantile(values: Sequence[float], q: float) -> float:
    """Return the q-quantile (0..1) of ``values`` by linear interpolation; nan if empty."""
    if not values:
        return math.nan
    ordered = sorted(values)
    pos = (len(ordered) - 1) * q
    low = math.floor(pos)
    if pos == low:
        return ordered[low]
    return ordered[low] + (ordered[low + 1] - ordered[low]) * (pos - low)


def median(values: Sequence[float]) -> float:
    """Return the median of ``values``; nan if empty."""
    return quantile(values, 0.5)


def jain(values: Sequence[float]) -> float:
    """Return Jain's fairness index: 1.0 when all equal, 1/n when one value takes all."""
    total = sum(values)
    squares = sum(v * v for v in values)
    return total * total / (len(values) * squares) if squares else math.nan


def finite(value: object) -> object:
    """Return ``value`` with every nan and infinity in it replaced by None (for JSON)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [finite(v) for v in value]
    return value


# -- memory ----------------------------------------------------------------------------------


def rss_bytes() -> int:
    """Return the resident set size of this process now (Linux /proc; else the peak)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:  # pragma: no cover - not Linux
        return peak_rss_bytes()


def peak_rss_bytes() -> int:
    """Return the peak resident set size of this process so far."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024


# -- the machine -----------------------------------------------------------------------------


def _version(dist: str) -> str:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return "not installed"


def source(root: str) -> str:
    """Return the git commit of ``root`` and whether its src/ differs from it, for headers."""
    try:
        head = subprocess.run(
            ["git", "-C", root, "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", root, "status", "--porcelain", "--", "src"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown (not a git checkout)"
    return f"git {head}" + (" + uncommitted changes in src/" if dirty else "")


def machine() -> dict[str, object]:
    """Return what the figures depend on: Python, CPUs, load, library versions."""
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        usable = os.cpu_count() or 0
    load = os.getloadavg() if hasattr(os, "getloadavg") else (math.nan,) * 3
    return {
        "python": f"{platform.python_implementation()} {platform.python_version()}",
        "platform": platform.platform(terse=True),
        "machine": platform.machine(),
        "nproc": usable,
        "cpu_count": os.cpu_count(),
        "loadavg_1_5_15": [round(x, 2) for x in load],
        "ratekeeper": _version("ratekeeper"),
        "aiolimiter": _version("aiolimiter"),
    }


# -- checks and tables -----------------------------------------------------------------------


@dataclass
class Check:
    """One target: what was measured, what it had to be, and whether it was."""

    section: str
    name: str
    value: float
    shown: str
    target: str
    ok: bool
    headline: bool = False  # one of the targets `make bench` sums up (benchmarks/targets.py)

    @property
    def verdict(self) -> str:
        """PASS or FAIL."""
        return "PASS" if self.ok else "FAIL"

    def as_dict(self) -> dict[str, object]:
        """Return the check as plain data (for --json)."""
        return {**asdict(self), "verdict": self.verdict}


def table(headers: Sequence[str], rows: Sequence[Sequence[object]], align: str = "") -> str:
    """Render rows as an aligned plain-text table, indented by two spaces.

    ``align`` has one letter per column, ``l`` or ``r``; by default the first column is
    left-aligned and the others right-aligned.
    """
    align = align or "l" + "r" * (len(headers) - 1)
    cells = [[str(h) for h in headers], *[[str(c) for c in row] for row in rows]]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]

    def line(row: Sequence[str]) -> str:
        parts = [
            c.rjust(w) if a == "r" else c.ljust(w)
            for c, w, a in zip(row, widths, align, strict=True)
        ]
        return ("  " + "  ".join(parts)).rstrip()

    rule = "  " + "  ".join("-" * w for w in widths)
    return "\n".join([line(cells[0]), rule, *(line(r) for r in cells[1:])])


def write_checks(path: str, script: str, checks: Sequence[Check], **extra: object) -> None:
    """Write ``checks`` (and ``extra`` figures) as JSON to ``path`` for benchmarks/targets.py."""
    payload = {"script": script, "checks": [c.as_dict() for c in checks], **extra}
    with open(path, "w") as f:
        json.dump(finite(payload), f, indent=2, default=str)


# -- worker processes ------------------------------------------------------------------------


class WorkerFailed(RuntimeError):
    """A measurement subprocess crashed, hung or printed no result."""


def run_worker(script: str, job: dict[str, object], timeout: float) -> dict[str, object]:
    """Run ``script --worker JOB`` in a fresh interpreter and return the JSON it prints.

    A fresh process per measurement keeps one run's heap, threads and peak RSS out of the next.
    """
    try:
        proc = subprocess.run(
            [sys.executable, script, "--worker", json.dumps(job)],
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        raise WorkerFailed(f"{job} did not finish within {timeout:.0f}s") from exc
    lines = proc.stdout.strip().splitlines()
    if proc.returncode != 0 or not lines:
        tail = "\n".join(proc.stderr.strip().splitlines()[-8:])
        raise WorkerFailed(f"{job} exited with {proc.returncode}:\n{tail}")
    result: dict[str, object] = json.loads(lines[-1])
    return result
