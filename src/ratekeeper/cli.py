"""The ``ratekeeper`` command: see what the limiter does.

No logic beyond the public API: each subcommand parses its arguments, calls the library,
and prints text (or JSON with ``--json``). Exit codes: 0 ok, 1 the check failed, 2 bad usage.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence

from ._demo import render, run_demo
from ._rate import Rate

__all__ = ["main"]


def _rate(text: str) -> Rate:
    try:
        return Rate.of(float(text)) if _is_number(text) else Rate.parse(text)
    except (TypeError, ValueError) as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1, got {value}")
    return value


def _seconds(text: str) -> float:
    message = f"expected seconds (a number >= 0), got {text!r}"
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(message) from None
    if not 0 <= value < float("inf"):
        raise argparse.ArgumentTypeError(message)
    return value


def build_parser() -> argparse.ArgumentParser:
    """Return the argument parser of the ``ratekeeper`` command."""
    parser = argparse.ArgumentParser(
        prog="ratekeeper",
        description="See what a ratekeeper limiter does.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    demo = sub.add_parser(
        "demo",
        help="run the seed scenario on the real clock and check it against the ideal schedule",
        description=(
            "Run N tasks through one asyncio limiter on the real clock (the seed snippet's "
            "scenario: 20 tasks, 5/s, capacity 5, each holding its slot 0.1 s), print when "
            "each started next to the ideal schedule, and exit 1 if any started early (a "
            "burst), out of order, or later than the tolerance."
        ),
    )
    demo.add_argument("--rate", type=_rate, default=Rate(5), help="e.g. 5, '5/s', '300/minute'")
    demo.add_argument("--capacity", type=_positive_int, default=5, help="burst size (tokens)")
    demo.add_argument("--tasks", type=_positive_int, default=20, help="number of tasks")
    demo.add_argument("--hold", type=_seconds, default=0.1, help="seconds each task holds")
    demo.add_argument(
        "--tolerance", type=_seconds, default=0.05, help="allowed lateness in seconds"
    )
    demo.add_argument("--json", action="store_true", help="print the result as JSON")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; return the exit code."""
    args = build_parser().parse_args(argv)
    if args.command == "demo":
        result = run_demo(args.rate, args.capacity, args.tasks, args.hold, args.tolerance)
        print(json.dumps(result.as_dict()) if args.json else render(result))
        return 0 if result.ok else 1
    raise AssertionError(args.command)  # pragma: no cover  (argparse refuses others)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())


def _entry() -> None:
    """Console-script entry point."""
    sys.exit(main())
