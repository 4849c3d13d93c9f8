"""Optional extras: a module whose dependency is missing says what to install.

Each case runs in a fresh interpreter in which the dependency is blocked
(``sys.modules[name] = None`` makes every import of it fail, as if it were not installed),
so that the modules already imported by this test run do not hide the failure.
"""

from __future__ import annotations

import json
import subprocess
import sys
from importlib.metadata import metadata
from pathlib import Path

import pytest

# What each optional dependency is blocked for, and the extra that the message must name.
EXTRAS = {
    "redis": ("ratekeeper.redis", ["redis"]),
    "httpx": ("ratekeeper.integrations.httpx", ["httpx"]),
    "prometheus": ("ratekeeper.metrics", ["prometheus_client"]),
    "starlette": ("ratekeeper.integrations.starlette", ["starlette"]),
    "flask": ("ratekeeper.integrations.flask", ["flask"]),
    "django": ("ratekeeper.integrations.django", ["django"]),
    "requests": ("ratekeeper.integrations.requests", ["requests"]),
    "aiohttp": ("ratekeeper.integrations.aiohttp", ["aiohttp"]),
    "celery": ("ratekeeper.integrations.celery", ["celery"]),
}
EVERY_OPTIONAL_DEPENDENCY = [
    *["redis", "httpx", "prometheus_client", "matplotlib", "requests", "aiohttp", "celery"]
]
WEB_FRAMEWORKS = ["starlette", "fastapi", "uvicorn", "anyio"]

IMPORT_WITHOUT = """\
import importlib, json, sys
for name in sys.argv[2:]:
    sys.modules[name] = None
try:
    importlib.import_module(sys.argv[1])
except ImportError as exc:
    print(json.dumps({"type": type(exc).__name__, "message": str(exc), "name": exc.name,
                      "cause": type(exc.__cause__).__name__}))
else:
    print("null")
"""


def import_without(module: str, blocked: list[str]) -> dict[str, str] | None:
    """Import ``module`` with ``blocked`` missing; return the ImportError raised, or None."""
    done = subprocess.run(
        [sys.executable, "-c", IMPORT_WITHOUT, module, *blocked],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    result: dict[str, str] | None = json.loads(done.stdout)
    return result


@pytest.mark.parametrize("extra", sorted(EXTRAS))
def test_a_missing_extra_names_what_to_install(extra: str) -> None:
    module, blocked = EXTRAS[extra]
    error = import_without(module, blocked)
    assert error is not None, f"{module} imported without {blocked}"
    assert error["type"] == "ModuleNotFoundError"  # an ImportError: `except ImportError` works
    assert error["name"] == blocked[0]
    assert f"{module} needs " in error["message"]
    assert f"pip install 'ratekeeper[{extra}]'" in error["message"]
    assert error["cause"] == "ModuleNotFoundError"  # the original failure is kept


@pytest.mark.parametrize("extra", [*sorted(EXTRAS), "plot"])
def test_every_extra_named_in_a_message_exists(extra: str) -> None:
    assert extra in (metadata("ratekeeper").get_all("Provides-Extra") or [])


@pytest.mark.parametrize(
    "module",
    ["ratekeeper", "ratekeeper.cli", "ratekeeper.testing", "ratekeeper.contract", "ratekeeper.llm"],
)
def test_the_core_needs_no_extra(module: str) -> None:
    assert import_without(module, EVERY_OPTIONAL_DEPENDENCY + WEB_FRAMEWORKS) is None


@pytest.mark.parametrize("module", ["ratekeeper.integrations.asgi", "ratekeeper.integrations._web"])
def test_the_asgi_middleware_and_the_web_core_need_no_extra(module: str) -> None:
    # Pure ASGI, and the front doors' shared core: no framework, no httpx.
    blocked = EVERY_OPTIONAL_DEPENDENCY + WEB_FRAMEWORKS
    assert import_without(module, blocked) is None


def test_the_wsgi_middleware_needs_no_extra() -> None:
    # Pure WSGI: no framework, no server (redis only for a redis:// storage).
    blocked = EVERY_OPTIONAL_DEPENDENCY + WEB_FRAMEWORKS + ["flask", "django", "werkzeug"]
    assert import_without("ratekeeper.integrations.wsgi", blocked) is None


PLOT_WITHOUT_MATPLOTLIB = """\
import sys
sys.modules["matplotlib"] = None
from ratekeeper import Rate
from ratekeeper._simulate import Limit, generate, plot, simulate
traffic = generate(Rate(5), 2.0)
try:
    plot(traffic, [simulate(Limit(Rate(5), 5), traffic)], sys.argv[1])
except ImportError as exc:  # MissingExtra, an ImportError subclass
    print(exc)
"""


def test_plotting_without_matplotlib_names_the_plot_extra(tmp_path: Path) -> None:
    target = tmp_path / "p.png"
    done = subprocess.run(
        [sys.executable, "-c", PLOT_WITHOUT_MATPLOTLIB, str(target)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "--plot needs matplotlib: pip install 'ratekeeper[plot]'"
    assert not target.exists()
