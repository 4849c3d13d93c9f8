"""The ``ratekeeper`` command: see what the limiter does.

No logic beyond the public API: each subcommand parses its arguments, calls the library,
and prints text (or JSON with ``--json``). Exit codes, for every subcommand:

    0  ok
    1  the check failed (demo, check), or a benchmark failed (bench)
    2  bad usage: an argument that does not parse, a file that is missing or unreadable
    3  a backend server could not be reached (check)
    4  an optional extra is missing (e.g. matplotlib for --plot, redis for a Redis URL)
  141  the reader of the output went away (e.g. ``ratekeeper demo | head``): the command
       stops quietly, without a traceback, with the code a shell reports for a process
       stopped by SIGPIPE (128 + 13), so that ``set -o pipefail`` sees it as such
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import json
import os
import queue
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn, TextIO

from . import __version__, _check, _simulate
from ._demo import render, run_demo
from ._rate import Rate, several

__all__ = ["main"]


def _rate(text: str) -> Rate:
    if several(text):
        raise argparse.ArgumentTypeError(
            f"{text!r:.60} holds several limits; this command runs one limit: give one rate, "
            "e.g. '10/hour' or '5/s'"
        )
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
        formatter_class=_FORMATTER,
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    demo = sub.add_parser(
        "demo",
        help="run tasks through a limiter on the real clock, checked against the ideal schedule",
        formatter_class=_FORMATTER,
        description=(
            "Run N tasks through one asyncio limiter on the real clock (by default 20 tasks, "
            "5/s, capacity 5, each holding its slot 0.1 s), print when "
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
    _add_simulate(sub)
    _add_check(sub)
    _add_bench(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; return the exit code (EXIT_BROKEN_PIPE if stdout was closed)."""
    try:
        try:
            return _dispatch(argv)
        finally:
            # Output still buffered meets a closed pipe here, and also when argparse exits
            # (--help, --version, a usage error) by raising SystemExit.
            sys.stdout.flush()
    except BrokenPipeError:
        # The reader went away (``| head``): stop quietly. Python ignores SIGPIPE, so the
        # write raised instead of killing us; point stdout at devnull so that the flush at
        # interpreter exit does not fail again and print "Exception ignored".
        _discard_stdout()
        return EXIT_BROKEN_PIPE


def _discard_stdout() -> None:
    with contextlib.suppress(AttributeError, OSError, ValueError):
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)


def _dispatch(argv: Sequence[str] | None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    # ``bench ... -- ARGS`` passes ARGS through to the benchmark scripts untouched.
    passthrough: list[str] = []
    if argv[:1] == ["bench"] and "--" in argv:
        cut = argv.index("--")
        argv, passthrough = argv[:cut], argv[cut + 1 :]
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "demo":
        result = run_demo(args.rate, args.capacity, args.tasks, args.hold, args.tolerance)
        print(json.dumps(result.as_dict()) if args.json else render(result))
        return 0 if result.ok else 1
    if args.command == "simulate":
        return _simulate_command(args, _usage(parser, "simulate"))
    if args.command == "check":
        return _check_command(args, _usage(parser, "check"))
    if args.command == "bench":
        try:
            return _bench_command(args, passthrough, _usage(parser, "bench"))
        except KeyboardInterrupt:
            return 130  # the shell's code for "stopped by Ctrl-C"
    raise AssertionError(args.command)  # pragma: no cover  (argparse refuses others)


EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_UNREACHABLE, EXIT_MISSING = 0, 1, 2, 3, 4
EXIT_BROKEN_PIPE = 128 + 13  # 128 + SIGPIPE, as a shell reports a process SIGPIPE stopped

HELP_COLUMNS = 100  # no line of any --help is wider, however wide the terminal


class _HelpFormatter(argparse.HelpFormatter):
    """Wraps prose to the terminal (at most HELP_COLUMNS); keeps indented lines as written.

    A run of unindented lines is one paragraph, re-wrapped; an indented line (an example
    command, a table) is printed verbatim, so the examples stay copy-pasteable. Blank lines
    separate paragraphs.
    """

    def __init__(
        self,
        prog: str,
        indent_increment: int = 2,
        max_help_position: int = 24,
        width: int | None = None,
        **kwargs: Any,
    ) -> None:
        if width is None:
            width = min(shutil.get_terminal_size().columns, HELP_COLUMNS) - 2
        super().__init__(prog, indent_increment, max_help_position, width, **kwargs)

    def _fill_text(self, text: str, width: int, indent: str) -> str:
        lines: list[str] = []
        paragraph: list[str] = []

        def flush() -> None:
            if paragraph:
                lines.extend(
                    textwrap.wrap(
                        " ".join(paragraph),
                        width,
                        initial_indent=indent,
                        subsequent_indent=indent,
                        break_on_hyphens=False,
                        break_long_words=False,
                    )
                )
                paragraph.clear()

        for line in text.splitlines():
            if line.strip() and not line[0].isspace():
                paragraph.append(line.strip())
                continue
            flush()
            lines.append(indent + line.rstrip() if line.strip() else "")
        flush()
        return "\n".join(lines)


_FORMATTER = _HelpFormatter


class _Usage:
    """Reports a bad argument found after parsing the way argparse does: usage, error, exit 2."""

    def __init__(self, parser: argparse.ArgumentParser) -> None:
        self.parser = parser

    def error(self, message: str) -> NoReturn:
        self.parser.error(message)


def _usage(parser: argparse.ArgumentParser, command: str) -> _Usage:
    sub = next(
        action for action in parser._actions if isinstance(action, argparse._SubParsersAction)
    )
    return _Usage(sub.choices[command])


def _fail(message: str, code: int) -> int:
    print(f"ratekeeper: error: {message}", file=sys.stderr)
    return code


def _float(text: str, what: str, low: float = 0.0, *, allow_low: bool = True) -> float:
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    ok = value >= low if allow_low else value > low
    if not (ok and value < float("inf")):
        bound = f">= {low:g}" if allow_low else f"> {low:g}"
        raise argparse.ArgumentTypeError(f"expected {what} (a number {bound}), got {text!r}")
    return value


def _positive_seconds(text: str) -> float:
    return _float(text, "seconds", 0.0, allow_low=False)


def _factor(text: str) -> float:
    return _float(text, "a peak-to-mean factor", 1.0, allow_low=False)


def _seed(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None


# -- simulate --------------------------------------------------------------------------------

_SIMULATE_EPILOG = """\
examples:
  # Poisson traffic at 12 requests/s against 10/s with bursts of 20; refused when short
  ratekeeper simulate --rate 10/s --capacity 20 --arrivals 12/s

  # the same traffic, but callers wait up to 1 s; compare with a bucket of 50; plot both
  ratekeeper simulate --rate 10/s --capacity 20 --arrivals 12/s --pattern bursty \\
      --mode wait --max-wait 1 --compare capacity=50 --plot limits.png

  # replay a log: one row per request, a time in seconds or ISO 8601, an optional weight
  ratekeeper simulate --rate 100/minute --csv requests.csv --json

--compare takes KEY=VALUE pairs, comma-separated, changing the first limit: rate, capacity,
mode, max-wait (e.g. --compare rate=12/s,capacity=40). Both limits see the same arrivals.

exit codes:
  0  ok
  2  bad arguments, an unreadable --csv file, or a --plot file that cannot be written
  4  matplotlib is missing for --plot
"""


def _add_simulate(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    simulate = sub.add_parser(
        "simulate",
        help="replay a traffic pattern against a limit in virtual time; summary and plot",
        formatter_class=_FORMATTER,
        description=(
            "Replay arrivals against a limit on virtual time, with the limiters' own engine "
            "(same arithmetic, same FIFO, same fail-fast refusals), so minutes of traffic\n"
            "take a blink. Prints granted, refused, delayed, wait p50/p99/max and "
            "utilisation; --plot draws arrivals, grants and the bucket over time\n"
            "against the limit's envelope."
        ),
        epilog=_SIMULATE_EPILOG,
    )
    limit = simulate.add_argument_group("the limit")
    limit.add_argument(
        "--rate", type=_rate, required=True, help="the limit's rate, e.g. 10, '10/s', '600/minute'"
    )
    limit.add_argument(
        "--capacity",
        type=_positive_int,
        help="burst size in tokens (default: the rate's token count, e.g. 10 for 10/s)",
    )
    limit.add_argument(
        "--mode",
        choices=_simulate.MODES,
        help="when tokens are short: 'refuse' at once (try_acquire, the default) or 'wait' "
        "in line (acquire)",
    )
    limit.add_argument(
        "--max-wait",
        type=_seconds,
        metavar="SECONDS",
        help="longest wait; a request that would wait longer is refused at once (implies "
        "--mode wait)",
    )
    traffic = simulate.add_argument_group("the traffic (one of --arrivals or --csv)")
    source = traffic.add_mutually_exclusive_group(required=True)
    source.add_argument(
        "--arrivals", type=_rate, metavar="RATE", help="mean arrival rate of requests, e.g. 12/s"
    )
    source.add_argument(
        "--csv",
        metavar="FILE",
        help="replay a CSV file: one row per request, a time (seconds, or ISO 8601) and "
        "optionally a weight in tokens; a header row is optional",
    )
    traffic.add_argument(
        "--pattern",
        choices=_simulate.PATTERNS,
        help="with --arrivals: 'poisson' (default), 'bursty' (on/off peaks) or 'steady'",
    )
    traffic.add_argument(
        "--duration",
        type=_positive_seconds,
        metavar="SECONDS",
        help="with --arrivals: how long the traffic lasts (default 60)",
    )
    traffic.add_argument(
        "--seed", type=_seed, help="with --arrivals: random seed (default 1); same seed, same run"
    )
    traffic.add_argument(
        "--tokens",
        type=_positive_int,
        help="with --arrivals: tokens each request asks for (default 1)",
    )
    traffic.add_argument(
        "--burst-factor",
        type=_factor,
        metavar="F",
        help="with --pattern bursty: peak rate / mean rate (default 4)",
    )
    traffic.add_argument(
        "--burst-period",
        type=_positive_seconds,
        metavar="SECONDS",
        help="with --pattern bursty: mean length of one peak + quiet cycle (default: a tenth "
        "of the duration)",
    )
    output = simulate.add_argument_group("output")
    output.add_argument(
        "--compare",
        metavar="KEY=VALUE,...",
        help="also run a second limit, the first with these changes, side by side",
    )
    output.add_argument(
        "--plot",
        metavar="FILE.png",
        help="draw the run(s) into a PNG file (in a directory that exists: none is created)",
    )
    output.add_argument("--json", action="store_true", help="print the results as JSON")


def _limit(args: argparse.Namespace, usage: _Usage) -> _simulate.Limit:
    rate: Rate = args.rate
    capacity = rate.default_capacity if args.capacity is None else args.capacity
    mode = args.mode or ("wait" if args.max_wait is not None else "refuse")
    if mode == "refuse" and args.max_wait is not None:
        usage.error("--max-wait applies to --mode wait (a refusing caller never waits)")
    return _simulate.Limit(rate, capacity, mode, args.max_wait)


def _compare(spec: str, first: _simulate.Limit, usage: _Usage) -> _simulate.Limit:
    changes: dict[str, str] = {}
    for item in filter(None, (part.strip() for part in spec.split(","))):
        key, sep, value = item.partition("=")
        key = key.strip().replace("_", "-")
        if not sep or key not in ("rate", "capacity", "mode", "max-wait"):
            usage.error(
                f"--compare: cannot read {item!r}; write KEY=VALUE pairs with the keys rate, "
                "capacity, mode, max-wait, e.g. --compare capacity=50,mode=wait"
            )
        changes[key] = value.strip()
    if not changes:
        usage.error("--compare needs at least one KEY=VALUE, e.g. --compare capacity=50")
    try:
        rate = _rate(changes["rate"]) if "rate" in changes else first.rate
        capacity = _positive_int(changes["capacity"]) if "capacity" in changes else first.capacity
        max_wait = first.max_wait
        if "max-wait" in changes:
            text = changes["max-wait"]
            max_wait = None if text.lower() in ("", "none") else _seconds(text)
    except argparse.ArgumentTypeError as exc:
        usage.error(f"--compare: {exc}")
    mode = changes.get("mode", "wait" if "max-wait" in changes and max_wait else first.mode)
    if mode not in _simulate.MODES:
        usage.error(f"--compare: mode must be one of {', '.join(_simulate.MODES)}, got {mode!r}")
    if mode == "refuse":
        max_wait = None
    return _simulate.Limit(rate, capacity, mode, max_wait)


def _check_plot_path(text: str, usage: _Usage) -> None:
    """Refuse a --plot target that cannot be written, before the run; create nothing."""
    path = Path(text)
    if path.suffix.lower() not in ("", ".png"):
        usage.error(
            f"--plot writes a PNG file: give a name ending in .png (or with no suffix), "
            f"not {text!r}"
        )
    if text.endswith(("/", os.sep)) or path.is_dir():
        usage.error(f"--plot: {text} is a directory; give a file name, e.g. {path / 'run.png'}")
    directory = path.parent
    if not directory.is_dir():
        usage.error(f"--plot: cannot write {text}: no such directory {directory} (not created)")
    if not os.access(directory, os.W_OK) or (path.exists() and not os.access(path, os.W_OK)):
        usage.error(f"--plot: cannot write {text}: permission denied")


def _simulate_command(args: argparse.Namespace, usage: _Usage) -> int:
    limits = [_limit(args, usage)]
    if args.compare is not None:
        limits.append(_compare(args.compare, limits[0], usage))
    generated_only = ("pattern", "duration", "seed", "tokens", "burst_factor", "burst_period")
    if args.csv is not None:
        given = [f"--{name.replace('_', '-')}" for name in generated_only if getattr(args, name)]
        if given:
            usage.error(f"{', '.join(given)} apply to --arrivals, not to --csv")
        try:
            traffic = _simulate.read_csv(args.csv)
        except FileNotFoundError:
            usage.error(f"--csv: no such file: {args.csv}")
        except (OSError, UnicodeDecodeError) as exc:
            usage.error(f"--csv: cannot read {args.csv}: {exc}")
        except ValueError as exc:
            usage.error(f"--csv: {exc}")
    else:
        pattern = args.pattern or "poisson"
        if pattern != "bursty" and (args.burst_factor or args.burst_period):
            usage.error("--burst-factor and --burst-period apply to --pattern bursty")
        try:
            traffic = _simulate.generate(
                args.arrivals,
                60.0 if args.duration is None else args.duration,
                pattern,
                seed=1 if args.seed is None else args.seed,
                tokens=args.tokens or 1,
                burst_factor=args.burst_factor or 4.0,
                burst_period=args.burst_period,
            )
        except ValueError as exc:
            usage.error(str(exc))
    if args.plot is not None:
        _check_plot_path(args.plot, usage)
    try:
        results = [_simulate.simulate(limit, traffic) for limit in limits]
    except ValueError as exc:
        usage.error(str(exc))
    if args.plot is not None:
        try:
            _simulate.plot(traffic, results, args.plot)
        except _simulate.MissingExtra as exc:
            return _fail(str(exc), EXIT_MISSING)
        except OSError as exc:
            usage.error(f"--plot: cannot write {args.plot}: {exc.strerror or exc}")
    if args.json:
        document = {
            "traffic": traffic.as_dict(),
            "results": [result.as_dict() for result in results],
            "plot": args.plot,
        }
        print(json.dumps(document, indent=2))
    else:
        print(_simulate.render(traffic, results))
        if args.plot is not None:
            print(f"\nplot: {args.plot}")
    return EXIT_OK


# -- check -----------------------------------------------------------------------------------

_CHECK_EPILOG = """\
examples:
  ratekeeper check --memory
  ratekeeper check redis://localhost:6379/0
  ratekeeper check rediss://:PASSWORD@redis.internal:6380/2 --json

exit codes:
  0  the backend keeps the limit
  1  it does not (the report says where)
  2  bad arguments (e.g. not a redis:// URL)
  3  the server cannot be reached
  4  the redis client or ratekeeper's Redis limiter is not installed
"""


def _add_check(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    check = sub.add_parser(
        "check",
        help="self-test a backend: connect, run a burst, verify the envelope, time decisions",
        formatter_class=_FORMATTER,
        description=(
            "A short self-test of a backend before use (well under a second at the "
            "defaults): connects (and times PING for a server), asks for twice the\n"
            "capacity at once (exactly the capacity must be granted), waits for a few "
            "more tokens (each at its due time, never early), verifies that no time\n"
            "window got more than capacity + rate x window, and times single decisions. "
            "On a server it uses fresh keys, which expire."
        ),
        epilog=_CHECK_EPILOG,
    )
    check.add_argument(
        "url", nargs="?", metavar="URL", help="a Redis/Valkey URL: redis://, rediss://, unix://"
    )
    check.add_argument(
        "--memory", action="store_true", help="check the in-process limiter instead of a server"
    )
    check.add_argument(
        "--rate", type=_rate, default=Rate(20), help="the test limit's rate (default 20/s)"
    )
    check.add_argument(
        "--capacity", type=_positive_int, default=10, help="its burst size (default 10)"
    )
    check.add_argument(
        "--timeout",
        type=_positive_seconds,
        default=2.0,
        metavar="SECONDS",
        help="give up on a server that does not answer within this (default 2)",
    )
    check.add_argument(
        "--tolerance",
        type=_seconds,
        default=0.05,
        metavar="SECONDS",
        help="how late a waited grant may be (default 0.05)",
    )
    check.add_argument(
        "--samples",
        type=_positive_int,
        default=200,
        help="decisions timed for the latency figures (default 200)",
    )
    check.add_argument("--json", action="store_true", help="print the report as JSON")


def _check_command(args: argparse.Namespace, usage: _Usage) -> int:
    if (args.url is None) == (not args.memory):
        usage.error("give a server URL (e.g. redis://localhost:6379/0) or --memory, not both")
    rate: Rate = args.rate
    if rate.per_second * 10 > 10_000 or rate.per_second < 1:
        usage.error(f"--rate {rate}: the check needs a rate from 1/s to 1000/s to time its waits")
    target = "memory" if args.memory else _check.redact(args.url)
    try:
        report = _check.run_check(
            None if args.memory else args.url,
            rate,
            args.capacity,
            timeout=args.timeout,
            tolerance=args.tolerance,
            samples=args.samples,
        )
    except _check.CheckError as exc:
        if exc.exit_code == EXIT_USAGE:
            usage.error(str(exc))
        if args.json:
            steps = [step.__dict__ for step in exc.steps]
            error = {"target": target, "ok": False, "error": str(exc), "steps": steps}
            print(json.dumps({**error, "exit_code": exc.exit_code}, indent=2))
        else:
            print(_check.render_error(exc, target), file=sys.stderr)
        return exc.exit_code
    print(json.dumps(report.as_dict(), indent=2) if args.json else _check.render(report))
    return EXIT_OK if report.ok else EXIT_FAILED


# -- bench -----------------------------------------------------------------------------------

# What each known benchmark needs beyond the core; "module:attribute" needs the attribute too.
_BENCH_NEEDS: dict[str, tuple[str, ...]] = {
    "redis": ("redis", "ratekeeper.redis:RedisTokenBucket"),
    "metrics": ("prometheus_client",),
}

_BENCH_EPILOG = """\
examples:
  ratekeeper bench --list            # what there is, and what can run here
  ratekeeper bench --quick           # every runnable benchmark, smoke-sized
  ratekeeper bench core              # one benchmark, full size (minutes)
  ratekeeper bench metrics -- --strict   # pass flags through to the script

Benchmarks are the scripts benchmarks/bench_NAME.py of a source checkout (found in the
current directory, in the checkout an editable install runs from, or with --dir); an
installed wheel has none. Each runs in a fresh
interpreter; its tables are printed as they come, with a progress line on a terminal.

exit codes:
  0  all ran and passed
  1  one failed
  2  bad arguments, or no benchmarks found (they ship with the source checkout only)
  4  a benchmark named explicitly cannot run here (a missing extra)
"""


def _add_bench(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    bench = sub.add_parser(
        "bench",
        help="run the benchmarks of the installed backends and print their tables",
        formatter_class=_FORMATTER,
        description=(
            "Run the benchmark scripts (benchmarks/bench_*.py) whose backends are installed, "
            "and print their tables:\nthe same figures the documentation quotes."
        ),
        epilog=_BENCH_EPILOG,
    )
    bench.add_argument(
        "names", nargs="*", metavar="NAME", help="benchmarks to run, e.g. core (default: all)"
    )
    bench.add_argument("--quick", action="store_true", help="smoke-sized runs (seconds)")
    bench.add_argument("--list", action="store_true", help="list the benchmarks and exit")
    bench.add_argument("--dir", metavar="DIR", help="where the bench_*.py scripts are")
    bench.add_argument(
        "--timeout",
        type=_positive_seconds,
        metavar="SECONDS",
        help="stop a benchmark that runs longer than this (default: no limit)",
    )
    bench.add_argument(
        "--json",
        action="store_true",
        help="print one JSON document with each script's figures (from its --json FILE)",
    )


@dataclass(frozen=True)
class _Bench:
    name: str
    script: Path
    missing: str | None  # why it cannot run here, or None


def _bench_dir(explicit: str | None, usage: _Usage) -> Path:
    if explicit is not None:
        path = Path(explicit)
        if not path.is_dir():
            usage.error(f"--dir: no such directory: {explicit}")
        return path
    # The current directory first, then the checkout this module was installed from (editable).
    candidates = (Path.cwd() / "benchmarks", Path(__file__).resolve().parents[2] / "benchmarks")
    found = next((path for path in candidates if any(path.glob("bench_*.py"))), None)
    if found is None:
        usage.error(
            "no benchmarks here: they ship with the source checkout of ratekeeper (its "
            "benchmarks/ directory), not with the installed package; run this from a checkout "
            "(git clone, or the unpacked sdist) or give --dir DIR"
        )
    return found


def _missing(requirements: Sequence[str]) -> str | None:
    """Return what of ``requirements`` is not importable here, or None."""
    for requirement in requirements:
        module, _, attribute = requirement.partition(":")
        try:
            found = hasattr(importlib.import_module(module), attribute or "__name__")
        except ImportError:
            found = False
        if not found:
            return f"needs {requirement.replace(':', '.')}"
    return None


def _benchmarks(directory: Path) -> list[_Bench]:
    found = []
    for script in sorted(directory.glob("bench_*.py")):
        name = script.stem.removeprefix("bench_")
        found.append(_Bench(name, script, _missing(_BENCH_NEEDS.get(name, ()))))
    return found


class _Progress:
    """One status line on a terminal (redrawn), or plain log lines elsewhere."""

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream
        self.live = stream.isatty()
        self.shown = False

    def status(self, text: str) -> None:
        if self.live:
            self.stream.write("\r\033[K" + text[: _columns() - 1])
            self.stream.flush()
            self.shown = True

    def clear(self) -> None:
        if self.live and self.shown:
            self.stream.write("\r\033[K")
            self.stream.flush()
            self.shown = False

    def log(self, text: str) -> None:
        self.clear()
        self.stream.write(text + "\n")
        self.stream.flush()


def _columns() -> int:
    try:
        return os.get_terminal_size(sys.stderr.fileno()).columns
    except (OSError, ValueError):
        return 100


def _run_script(
    bench: _Bench, flags: list[str], *, echo: bool, timeout: float | None, progress: _Progress
) -> tuple[int, str, float]:
    """Run one benchmark script; return (exit code, its stdout, seconds).

    Its stdout is echoed line by line as it comes (when ``echo``); its stderr lines are the
    progress shown. A run past ``timeout`` is killed (exit code -9 is reported).
    """
    command = [sys.executable, str(bench.script), *flags]
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "RATEKEEPER_BENCH_PROGRESS": "1"}
    started = time.monotonic()
    lines: queue.Queue[tuple[str, str | None]] = queue.Queue()
    # Its own process group, so that stopping it also stops the workers it started (whose
    # inherited pipes would otherwise keep the output open).
    process = subprocess.Popen(
        command,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        text=True,
        env=env,
        start_new_session=hasattr(os, "killpg"),
    )

    def stop() -> None:
        if hasattr(os, "killpg"):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
        else:  # pragma: no cover  (Windows)
            process.kill()

    def pump(kind: str, stream: TextIO) -> None:
        for line in stream:
            lines.put((kind, line.rstrip("\n")))
        lines.put((kind, None))

    assert process.stdout is not None
    assert process.stderr is not None
    readers = [
        threading.Thread(target=pump, args=("out", process.stdout), daemon=True),
        threading.Thread(target=pump, args=("err", process.stderr), daemon=True),
    ]
    for reader in readers:
        reader.start()
    output: list[str] = []
    last = ""
    open_streams = 2
    killed = False
    try:
        while open_streams:
            elapsed = time.monotonic() - started
            if timeout is not None and elapsed > timeout and not killed:
                stop()
                killed = True
                progress.log(f"[{bench.name}] stopped after {timeout:g} s (--timeout)")
            progress.status(f"[{bench.name}] {elapsed:5.0f} s  {last}")
            try:
                kind, line = lines.get(timeout=0.2)
            except queue.Empty:
                continue
            if line is None:
                open_streams -= 1
            elif kind == "out":
                output.append(line)
                if echo:
                    progress.clear()
                    print(line, flush=True)
            else:
                last = line.strip()
                if not progress.live:
                    progress.log(f"[{bench.name}] {line}")
    except BaseException as exc:  # Ctrl-C, a closed stdout: the script must not outlive us
        stop()
        if isinstance(exc, KeyboardInterrupt):
            progress.log(f"[{bench.name}] interrupted")
        raise
    code = process.wait()
    progress.clear()
    return (-9 if killed else code), "\n".join(output), time.monotonic() - started


def _bench_command(args: argparse.Namespace, passthrough: list[str], usage: _Usage) -> int:
    directory = _bench_dir(args.dir, usage)
    available = _benchmarks(directory)
    by_name = {bench.name: bench for bench in available}
    if args.list:
        rows = [
            f"  {b.name:<12} {b.script}  {'ready' if b.missing is None else b.missing}"
            for b in available
        ]
        if args.json:
            listing = [
                {"name": b.name, "script": str(b.script), "missing": b.missing} for b in available
            ]
            print(json.dumps(listing, indent=2))
        else:
            print(f"benchmarks in {directory}:\n" + "\n".join(rows))
        return EXIT_OK
    unknown = [name for name in args.names if name not in by_name]
    if unknown:
        usage.error(
            f"no benchmark named {', '.join(map(repr, unknown))}; there are: "
            f"{', '.join(by_name) or 'none'}"
        )
    chosen = [by_name[name] for name in args.names] if args.names else available
    progress = _Progress(sys.stderr)
    if args.names:
        cannot = [b for b in chosen if b.missing is not None]
        if cannot:
            reasons = "; ".join(f"{b.name} {b.missing}" for b in cannot)
            return _fail(f"cannot run here: {reasons} (install the extras)", EXIT_MISSING)
    runs: list[dict[str, object]] = []
    failed = 0
    with tempfile.TemporaryDirectory(prefix="ratekeeper-bench-") as scratch:
        for bench in chosen:
            if bench.missing is not None:
                progress.log(f"[{bench.name}] skipped: {bench.missing}")
                runs.append({"name": bench.name, "skipped": bench.missing})
                continue
            flags = (["--quick"] if args.quick else []) + passthrough
            progress.log(f"[{bench.name}] running {' '.join([str(bench.script), *flags])}")
            figures_file = Path(scratch) / f"{bench.name}.json"
            extra = ["--json", str(figures_file)] if args.json else []
            code, output, seconds = _run_script(
                bench, flags + extra, echo=not args.json, timeout=args.timeout, progress=progress
            )
            verdict = "done" if code == 0 else f"FAILED (exit code {code})"
            progress.log(f"[{bench.name}] {verdict} in {seconds:.1f} s")
            failed += code != 0
            figures: object = None
            if figures_file.exists():
                try:
                    figures = json.loads(figures_file.read_text(encoding="utf-8"))
                except ValueError:
                    figures = None
            runs.append(
                {
                    "name": bench.name,
                    "script": str(bench.script),
                    "flags": flags,
                    "exit_code": code,
                    "seconds": round(seconds, 3),
                    "figures": figures,
                    "output": output,
                }
            )
    if args.json:
        print(json.dumps({"directory": str(directory), "benchmarks": runs}, indent=2))
    return EXIT_FAILED if failed else EXIT_OK


def _entry() -> None:
    """Console-script entry point."""
    sys.exit(main())


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
