"""The release artefacts: build the sdist and the wheel, check them, install the wheel.

Offline: the build runs with ``--no-isolation`` when the build backend (hatchling, in the
test extra) is installed here, and the wheel is installed with ``--no-index --no-deps``
(ratekeeper has no runtime dependencies), so no package index is asked for anything.

The wheel is also installed, without extras, into fresh environments of the oldest and the
newest supported Python (3.10 and 3.13) when they are on the machine. Where one is absent the
test is skipped saying so (nothing is proven there), and fails under CI, whose machines have
them.
"""

from __future__ import annotations

import email
import glob
import importlib.util
import os
import shutil
import subprocess
import sys
import tarfile
import venv
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from email.message import Message
from pathlib import Path

import pytest

import ratekeeper

REPO = Path(__file__).resolve().parents[1]
VERSION = ratekeeper.__version__

pytestmark = pytest.mark.timeout(180)


def missing(module: str) -> bool:
    return importlib.util.find_spec(module) is None


@dataclass(frozen=True)
class Dist:
    sdist: Path
    wheel: Path


def clean_env() -> dict[str, str]:
    """Return this environment without what would let a subprocess see the checkout."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    env.pop("VIRTUAL_ENV", None)
    return env


@pytest.fixture(scope="module")
def dist(tmp_path_factory: pytest.TempPathFactory) -> Dist:
    if missing("build"):
        pytest.skip("the 'build' package is not installed (pip install 'ratekeeper[test]')")
    out = tmp_path_factory.mktemp("dist")
    # Without an isolated environment the backend must be here; with one, pip fetches it.
    isolation = [] if missing("hatchling") else ["--no-isolation"]
    # sdist first, then the wheel built from the unpacked sdist: the sdist must be complete.
    done = subprocess.run(
        [sys.executable, "-m", "build", *isolation, "--outdir", str(out), str(REPO)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    (sdist,) = out.glob("*.tar.gz")
    (wheel,) = out.glob("*.whl")
    return Dist(sdist, wheel)


def wheel_metadata(wheel: Path) -> Message:
    with zipfile.ZipFile(wheel) as archive:
        return email.message_from_bytes(archive.read(f"ratekeeper-{VERSION}.dist-info/METADATA"))


def test_the_artefacts_are_named_after_the_one_version(dist: Dist) -> None:
    assert dist.sdist.name == f"ratekeeper-{VERSION}.tar.gz"
    assert dist.wheel.name == f"ratekeeper-{VERSION}-py3-none-any.whl"
    assert wheel_metadata(dist.wheel)["Version"] == VERSION


@pytest.mark.skipif(
    missing("twine"), reason="twine is not installed (pip install 'ratekeeper[test]')"
)
def test_twine_check_passes(dist: Dist) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "twine", "check", "--strict", str(dist.sdist), str(dist.wheel)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env={**os.environ, "NO_COLOR": "1"},
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.count("PASSED") == 2, done.stdout


def test_the_license_ships_in_the_wheel_and_the_sdist(dist: Dist) -> None:
    license_text = (REPO / "LICENSE").read_text(encoding="utf-8")
    assert license_text.startswith("MIT License")
    assert "Copyright (c) 2026 ratekeeper developers" in license_text
    with zipfile.ZipFile(dist.wheel) as archive:
        shipped = archive.read(f"ratekeeper-{VERSION}.dist-info/licenses/LICENSE")
    assert shipped.decode() == license_text
    with tarfile.open(dist.sdist) as archive:
        member = archive.extractfile(f"ratekeeper-{VERSION}/LICENSE")
        assert member is not None
        assert member.read().decode() == license_text


def test_the_wheel_metadata(dist: Dist) -> None:
    meta = wheel_metadata(dist.wheel)
    assert meta["License-Expression"] == "MIT"
    assert meta.get_all("License-File") == ["LICENSE"]
    classifiers = meta.get_all("Classifier") or []
    for minor in (10, 11, 12, 13):
        assert f"Programming Language :: Python :: 3.{minor}" in classifiers
    for classifier in (
        "Development Status :: 4 - Beta",
        "Framework :: AsyncIO",
        "Topic :: Internet :: WWW/HTTP",
        "Topic :: Software Development :: Libraries",
        "Typing :: Typed",
    ):
        assert classifier in classifiers
    # PEP 639: with a License-Expression, license classifiers are not allowed.
    assert not [c for c in classifiers if c.startswith("License ::")]
    urls = dict(url.split(", ", 1) for url in meta.get_all("Project-URL") or [])
    assert set(urls) == {"Homepage", "Documentation", "Changelog", "Issues"}
    assert all(url.startswith("https://github.com/ratekeeper/ratekeeper") for url in urls.values())
    # No runtime dependencies: every requirement belongs to an extra.
    assert all("extra ==" in req for req in meta.get_all("Requires-Dist") or [])
    assert meta["Requires-Python"] == ">=3.10"


def test_the_wheel_holds_the_package_and_nothing_else(dist: Dist) -> None:
    with zipfile.ZipFile(dist.wheel) as archive:
        names = archive.namelist()
    tops = {name.split("/", 1)[0] for name in names}
    assert tops == {"ratekeeper", f"ratekeeper-{VERSION}.dist-info"}
    for needed in (
        "ratekeeper/py.typed",
        "ratekeeper/redis/fixed.lua",
        "ratekeeper/redis/gcra.lua",
        "ratekeeper/redis/window.lua",
        "ratekeeper/cli.py",
    ):
        assert needed in names


@pytest.fixture(scope="module")
def installed(dist: Dist, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """Return the bin directory of a fresh virtual environment with only the wheel in it."""
    home = tmp_path_factory.mktemp("venv")
    venv.create(home, with_pip=True, clear=True)
    bin_dir = home / ("Scripts" if os.name == "nt" else "bin")
    done = subprocess.run(
        [
            str(bin_dir / "python"),
            "-m",
            "pip",
            "install",
            "--quiet",
            "--no-index",
            "--no-deps",
            "--disable-pip-version-check",
            str(dist.wheel),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env=clean_env(),
    )
    assert done.returncode == 0, done.stdout + done.stderr
    yield bin_dir
    shutil.rmtree(home, ignore_errors=True)


def run_in(bin_dir: Path, program: str, *args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(bin_dir / program), *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        cwd=cwd,
        env=clean_env(),
    )


def test_the_installed_wheel_imports_and_runs_without_extras(
    installed: Path, tmp_path: Path
) -> None:
    # Run away from the checkout, so that only the installed copy can be found.
    code = "import ratekeeper, sys; print(ratekeeper.__version__, ratekeeper.__file__)"
    done = run_in(installed, "python", "-c", code, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    version, location = done.stdout.split()
    assert version == VERSION
    assert Path(location).is_relative_to(installed.parent)
    done = run_in(installed, "ratekeeper", "--version", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stdout == f"ratekeeper {VERSION}\n"
    done = run_in(
        installed, "ratekeeper", "simulate", "--rate", "5/s", "--arrivals", "5/s", cwd=tmp_path
    )
    assert done.returncode == 0, done.stderr
    assert "granted" in done.stdout


def test_the_installed_wheel_names_the_missing_extras(installed: Path, tmp_path: Path) -> None:
    # Nothing but the wheel is installed: each optional module says what to install.
    for module, extra in (
        ("ratekeeper.integrations.httpx", "httpx"),
        ("ratekeeper.metrics", "prometheus"),
        ("ratekeeper.redis", "redis"),
    ):
        done = run_in(installed, "python", "-c", f"import {module}", cwd=tmp_path)
        assert done.returncode == 1
        assert f"ModuleNotFoundError: {module} needs" in done.stderr
        assert f"pip install 'ratekeeper[{extra}]'" in done.stderr
    done = run_in(installed, "python", "-c", "import ratekeeper.integrations.asgi", cwd=tmp_path)
    assert done.returncode == 0, done.stderr


def test_bench_from_the_installed_wheel_says_benchmarks_ship_with_the_source(
    installed: Path, tmp_path: Path
) -> None:
    done = run_in(installed, "ratekeeper", "bench", cwd=tmp_path)
    assert done.returncode == 2
    assert "they ship with the source checkout of ratekeeper" in done.stderr
    assert "Traceback" not in done.stderr


# -- the supported range: the oldest and the newest Python -----------------------------------

SUPPORTED_ENDS = ("3.10", "3.13")


def find_python(version: str) -> str | None:
    """Return a working interpreter of ``version``: a pyenv install, or ``pythonX.Y`` on PATH.

    Each candidate is run, since a pyenv shim on PATH may exist without its version being
    selected.
    """
    pyenv = os.environ.get("PYENV_ROOT", str(Path.home() / ".pyenv"))
    candidates = sorted(glob.glob(f"{pyenv}/versions/{version}.*/bin/python{version}"))
    on_path = shutil.which(f"python{version}")
    for candidate in [*reversed(candidates), *([on_path] if on_path else [])]:
        probe = subprocess.run(
            [candidate, "-c", "import sys; print('%d.%d' % sys.version_info[:2])"],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
            env=clean_env(),
        )
        if probe.returncode == 0 and probe.stdout.strip() == version:
            return candidate
    return None


@pytest.mark.parametrize("version", SUPPORTED_ENDS)
def test_the_wheel_installs_without_extras_on_the_oldest_and_newest_python(
    version: str, dist: Dist, tmp_path: Path
) -> None:
    python = find_python(version)
    if python is None:
        message = (
            f"Python {version} is not on this machine (no python{version} on PATH or under "
            f"pyenv): the wheel is NOT proven installable on {version} here"
        )
        if os.environ.get("CI"):  # CI is where the supported range must be proven
            pytest.fail(message)
        pytest.skip(message)
    home = tmp_path / f"venv{version}"
    # A venv without pip (fast, offline); this environment's pip installs into it.
    made = subprocess.run(
        [python, "-m", "venv", "--without-pip", str(home)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env=clean_env(),
    )
    assert made.returncode == 0, made.stderr
    bin_dir = home / ("Scripts" if os.name == "nt" else "bin")
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "--python",
            str(bin_dir / "python"),
            "install",
            "--quiet",
            "--no-index",
            "--no-deps",
            "--disable-pip-version-check",
            str(dist.wheel),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env=clean_env(),
    )
    assert done.returncode == 0, done.stdout + done.stderr
    code = (
        "import sys, ratekeeper, ratekeeper.integrations.asgi, ratekeeper.testing; "
        "print('%d.%d' % sys.version_info[:2], ratekeeper.__version__)"
    )
    done = run_in(bin_dir, "python", "-c", code, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == [version, VERSION]
    done = run_in(bin_dir, "ratekeeper", "--version", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stdout == f"ratekeeper {VERSION}\n"
    done = run_in(bin_dir, "ratekeeper", "demo", "--tasks", "3", "--hold", "0", cwd=tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
