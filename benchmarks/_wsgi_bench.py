"""The WSGI part of bench_web.py: Flask and Django front doors against Flask-Limiter and
django-ratelimit, under a real WSGI server (waitress) and called in-process.

Six apps, one minimal JSON endpoint each: Flask bare, with ratekeeper's extension
(``RATEKEEPER_DEFAULT``), with Flask-Limiter (``default_limits``); Django bare, with
ratekeeper's ``@route_limit``, with django-ratelimit's ``@ratelimit`` (locmem cache, the
default). Every limit is 1,000,000/minute per client address, so every request is accepted:
the accepted path is what is measured. Each limiting app is first checked to refuse at
3/minute. Two measures, interleaved round by round (each app takes each place in turn):

- in-process: each app called as WSGI with one prepared environ, ``time.process_time`` per
  batch of calls: the CPU the front door adds per request, with no server noise;
- under waitress (one process serves all six, one port each, one worker thread): a raw
  keep-alive client drives each in turn; the server reports its user CPU per request and a
  stopwatch around the app call (median per request), the server-side cost.

Ratios: added cost of ratekeeper over the peer's (variant minus bare of the same framework:
per round, then the median over rounds; for the stopwatch, of the medians); the target is
at most 1/4.
"""

from __future__ import annotations

import io
import json
import resource
import socket
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any

from _common import Check

LIMIT = "1000000/minute"
VARIANTS = (
    "flask",
    "flask+ratekeeper",
    "flask+limiter",
    "django",
    "django+ratekeeper",
    "django+ratelimit",
)
PEERS = {"flask": "flask+limiter", "django": "django+ratelimit"}


# -- the apps ------------------------------------------------------------------------------------


def _django_setup() -> None:
    import django
    from django.conf import settings

    if not settings.configured:
        settings.configure(
            SECRET_KEY="bench",
            ALLOWED_HOSTS=["*"],
            ROOT_URLCONF=__name__,
            INSTALLED_APPS=[],
            DATABASES={},
            MIDDLEWARE=[],
            CACHES={"default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"}},
            RATELIMIT_ENABLE=True,
        )
        django.setup()


urlpatterns: list[Any] = []  # filled by build_apps (ROOT_URLCONF is this module)


def build_apps(limit: str = LIMIT) -> dict[str, Callable[..., Iterable[bytes]]]:
    """Return the six WSGI apps, each limiting at ``limit`` per client address."""
    from flask import Flask

    def flask_app() -> Flask:
        app = Flask(__name__)

        @app.get("/")
        def index() -> dict[str, str]:
            return {"hello": "world"}

        return app

    bare = flask_app()
    ours = flask_app()
    ours.config["RATEKEEPER_DEFAULT"] = limit
    from ratekeeper.integrations.flask import RateLimiter

    RateLimiter(ours)
    peer = flask_app()
    from flask_limiter import Limiter
    from flask_limiter.util import get_remote_address

    Limiter(get_remote_address, app=peer, default_limits=[limit], storage_uri="memory://")

    _django_setup()
    from django.core.handlers.wsgi import WSGIHandler
    from django.http import JsonResponse
    from django.urls import clear_url_caches, path
    from django_ratelimit.decorators import ratelimit

    from ratekeeper.integrations.django import route_limit

    def hello(request: Any) -> JsonResponse:
        return JsonResponse({"hello": "world"})

    count, _, period = limit.partition("/")
    urlpatterns[:] = [
        path("django/", hello),
        path("django+ratekeeper/", route_limit(limit)(hello)),
        path(
            "django+ratelimit/",
            ratelimit(key="ip", rate=f"{count}/{period[0]}", block=True)(hello),
        ),
    ]
    # A second build (another limit for the same view) starts afresh: the URL resolver and
    # ratekeeper's limits by view would keep the first build's otherwise.
    clear_url_caches()
    from ratekeeper.integrations import django as ours_django

    ours_django._reset(setting="RATEKEEPER")
    handler = WSGIHandler()

    def at(prefix: str) -> Callable[..., Iterable[bytes]]:
        def app(environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
            environ["PATH_INFO"] = prefix
            return handler(environ, start_response)

        return app

    return {
        "flask": bare.wsgi_app,
        "flask+ratekeeper": ours.wsgi_app,
        "flask+limiter": peer.wsgi_app,
        "django": at("/django/"),
        "django+ratekeeper": at("/django+ratekeeper/"),
        "django+ratelimit": at("/django+ratelimit/"),
    }


def environ() -> dict[str, Any]:
    return {
        "REQUEST_METHOD": "GET",
        "SCRIPT_NAME": "",
        "PATH_INFO": "/",
        "QUERY_STRING": "",
        "SERVER_NAME": "bench",
        "SERVER_PORT": "80",
        "SERVER_PROTOCOL": "HTTP/1.1",
        "REMOTE_ADDR": "127.0.0.1",
        "HTTP_HOST": "bench",
        "wsgi.version": (1, 0),
        "wsgi.url_scheme": "http",
        "wsgi.input": io.BytesIO(b""),
        "wsgi.errors": sys.stderr,
        "wsgi.multithread": True,
        "wsgi.multiprocess": False,
        "wsgi.run_once": False,
    }


def call(app: Callable[..., Iterable[bytes]]) -> str:
    """Call a WSGI app once; return its status line."""
    status = ""

    def start_response(line: str, headers: Any, exc_info: Any = None) -> Any:
        nonlocal status
        status = line
        return None

    body = app(environ(), start_response)
    for _ in body:
        pass
    close = getattr(body, "close", None)
    if close is not None:
        close()
    return status


# -- in-process ----------------------------------------------------------------------------------


def check_the_limits_apply() -> None:
    apps = build_apps("3/minute")
    for variant, app in apps.items():
        if variant in ("flask", "django"):
            continue
        statuses = [call(app)[:3] for _ in range(5)]
        if statuses[:3] != ["200"] * 3 or "200" in statuses[3:]:
            raise SystemExit(f"{variant} does not limit as configured: {statuses}")


def in_process(calls: int, rounds: int) -> dict[str, list[float]]:
    """Return each app's CPU us per request, one figure per round (interleaved, rotated)."""
    apps = build_apps()
    for app in apps.values():  # warm up
        for _ in range(200):
            call(app)
    figures: dict[str, list[float]] = {v: [] for v in VARIANTS}
    order = list(VARIANTS)
    for _ in range(rounds):
        order = order[1:] + order[:1]
        for variant in order:
            app = apps[variant]
            start = time.process_time()
            for _ in range(calls):
                call(app)
            figures[variant].append((time.process_time() - start) / calls * 1e6)
            if call(app)[:3] != "200":  # the accepted path is what is measured
                raise SystemExit(f"{variant} refused a request: {call(app)}")
    return figures


# -- under waitress ------------------------------------------------------------------------------


def serve(ports: list[int]) -> None:
    """Serve the six apps (one port each, one worker thread each) in this process."""
    import logging

    from waitress.server import create_server

    logging.getLogger("waitress").setLevel(logging.ERROR)  # "task queue depth" notes
    apps = build_apps()
    samples: dict[str, list[int]] = {v: [] for v in VARIANTS}

    def timed(variant: str, app: Callable[..., Iterable[bytes]]) -> Any:
        record = samples[variant].append

        def wrapper(environ: dict[str, Any], start_response: Any) -> list[bytes]:
            start = time.perf_counter_ns()
            body = app(environ, start_response)
            chunks = list(body)
            close = getattr(body, "close", None)
            if close is not None:
                close()
            record(time.perf_counter_ns() - start)
            return chunks

        return wrapper

    servers = [
        create_server(timed(variant, apps[variant]), host="127.0.0.1", port=port, threads=1)
        for variant, port in zip(VARIANTS, ports, strict=True)
    ]
    for server in servers:
        threading.Thread(target=server.run, daemon=True).start()
    print("ready", flush=True)
    for line in sys.stdin:
        usage = resource.getrusage(resource.RUSAGE_SELF)
        answer: Any = [usage.ru_utime, {v: len(s) for v, s in samples.items()}]
        if line.strip() == "samples":
            answer = [usage.ru_utime, samples]
        print(json.dumps(answer), flush=True)


def drive(port: int, path: str, requests: int) -> list[int]:
    """Send ``requests`` keep-alive GETs on one connection; return the statuses."""
    request = f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode()
    statuses = []
    with socket.create_connection(("127.0.0.1", port)) as sock:
        reader = sock.makefile("rb")
        for _ in range(requests):
            sock.sendall(request)
            status = reader.readline()
            length = 0
            chunked = False
            while True:
                line = reader.readline()
                if line in (b"\r\n", b""):
                    break
                name, _, value = line.partition(b":")
                if name.lower() == b"content-length":
                    length = int(value)
                elif name.lower() == b"transfer-encoding":
                    chunked = True
            if chunked:
                while True:
                    size = int(reader.readline().strip(), 16)
                    reader.read(size + 2)
                    if not size:
                        break
            else:
                reader.read(length)
            statuses.append(int(status[9:12]))
    return statuses


def under_server(requests: int, rounds: int) -> tuple[dict[str, list[float]], dict[str, float]]:
    """Return (server user CPU us per request per round, median stopwatch us per app)."""
    ports = []
    for _ in VARIANTS:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            ports.append(sock.getsockname()[1])
    process = subprocess.Popen(
        [sys.executable, __file__, "--serve", ",".join(map(str, ports))],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert process.stdin is not None
    assert process.stdout is not None
    try:
        if process.stdout.readline().strip() != "ready":
            raise SystemExit("the WSGI servers did not start")

        def reading(samples: bool = False) -> Any:
            assert process.stdin is not None
            assert process.stdout is not None
            process.stdin.write("samples\n" if samples else "?\n")
            process.stdin.flush()
            return json.loads(process.stdout.readline())

        port_of = dict(zip(VARIANTS, ports, strict=True))
        for variant in VARIANTS:  # warm up
            drive(port_of[variant], "/", 300)
        cpu: dict[str, list[float]] = {v: [] for v in VARIANTS}
        order = list(VARIANTS)
        for _ in range(rounds):
            order = order[1:] + order[:1]
            for variant in order:
                before = reading()[0]
                statuses = drive(port_of[variant], "/", requests)
                after = reading()[0]
                if set(statuses) != {200}:
                    raise SystemExit(f"{variant}: unexpected statuses {set(statuses)}")
                cpu[variant].append((after - before) / requests * 1e6)
        samples = reading(True)[1]
        inside = {v: statistics.median(s) / 1000 for v, s in samples.items()}
        return cpu, inside
    finally:
        process.terminate()
        process.wait(10)


# -- the report ----------------------------------------------------------------------------------


def bench_wsgi(quick: bool = False) -> list[Check]:
    """Run both measures; print the tables and ratios; return the targets."""
    calls, rounds = (1000, 5) if quick else (4000, 15)
    requests, server_rounds = (500, 4) if quick else (2000, 12)
    print(
        f"\n## Flask and Django front doors (WSGI), limit {LIMIT} per client address: "
        f"in-process {calls} calls x {rounds} rounds; under waitress {requests} requests x "
        f"{server_rounds} rounds (interleaved, rotated; medians)\n"
    )
    check_the_limits_apply()
    local = in_process(calls, rounds)
    cpu, inside = under_server(requests, server_rounds)
    print(
        "| app | in-process CPU us/request | added | server user CPU us/request | added "
        "| server stopwatch us/request | added |"
    )
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    added: dict[str, dict[str, float]] = {"local": {}, "cpu": {}, "inside": {}}
    for variant in VARIANTS:
        base = variant.split("+")[0]
        row = [variant]
        for measure, rounds_of in (("local", local), ("cpu", cpu), ("inside", None)):
            mine = inside[variant] if rounds_of is None else statistics.median(rounds_of[variant])
            row.append(f"{mine:.1f}")
            if variant == base:
                row.append("-")
                continue
            if rounds_of is None:
                extra = mine - inside[base]
            else:  # paired by round: a loaded machine's slow spells move both alike
                pairs = zip(rounds_of[variant], rounds_of[base], strict=True)
                extra = statistics.median(a - b for a, b in pairs)
            added[measure][variant] = extra
            row.append(f"{extra:+.1f}")
        print("| " + " | ".join(row) + " |")
    checks = []
    print()
    for framework, peer in PEERS.items():
        ours = f"{framework}+ratekeeper"
        for measure, label in (
            ("local", "in-process CPU"),
            ("cpu", "server user CPU"),
            ("inside", "server stopwatch"),
        ):
            mine, theirs = added[measure][ours], added[measure][peer]
            ratio = mine / theirs if theirs > 0 else float("inf")
            print(
                f"{framework}, {label}: ratekeeper adds {mine:.1f} us, {peer.split('+')[1]} "
                f"{theirs:.1f} us: ratio {ratio:.2f}"
            )
            if measure == "local":
                checks.append(
                    Check(
                        "wsgi",
                        f"{framework}: added CPU per request, ratekeeper / {peer}",
                        ratio,
                        f"{ratio:.2f} ({mine:.1f} us vs {theirs:.1f} us)",
                        "<= 0.25",
                        ratio <= 0.25,
                        headline=True,
                    )
                )
    return checks


if __name__ == "__main__":
    sys.path.insert(0, str(__import__("pathlib").Path(__file__).resolve().parents[1] / "src"))
    if len(sys.argv) == 3 and sys.argv[1] == "--serve":
        serve([int(p) for p in sys.argv[2].split(",")])
    else:
        bench_wsgi("--quick" in sys.argv)
