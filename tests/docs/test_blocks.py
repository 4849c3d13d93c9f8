"""Every ```python block in README.md and docs/ runs, as the script a reader would paste.

Sybil finds the blocks (fenced, and ``<!-- invisible-code-block: python -->`` comments).
Each block runs on its own: a fresh namespace named ``__main__``, in a temporary directory,
so a block that leans on an earlier one fails here as it would for a reader. The rules a
block follows (also in CONTRIBUTING.md):

- it is a complete script: imports included, async code inside ``asyncio.run(main())``;
- a block that needs a Redis or Valkey server reads
  ``os.environ.get("REDIS_URL", "redis://localhost:6379/0")``: here ``REDIS_URL`` names the
  test server;
- a block that needs an HTTP server to call reads ``os.environ.get("API_URL", ...)``: here
  ``API_URL`` names a server on loopback that answers 200 with JSON, and status N on
  ``/status/N`` (``Retry-After: 1`` on 429 and 503). A block may also start its own server
  on 127.0.0.1.

Nothing is skipped: a fragment that cannot run is not a ``python`` block (use ``text``).
New pages under docs/ are picked up as they are added.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sybil import Document, Example
from sybil.evaluators.python import pad
from sybil.parsers.markdown import CodeBlockParser

try:  # imported before any block, so that its default collectors stay registered
    import prometheus_client
except ImportError:  # pragma: no cover - the test extra installs it
    prometheus_client = None  # type: ignore[assignment]

REPO = Path(__file__).resolve().parents[2]
PAGES = [REPO / "README.md", *sorted((REPO / "docs").rglob("*.md"))]
# An opening fence of a python block, as CommonMark reads one (also inside a list or quote),
# with or without more words after "python" (which Sybil would not run: the count says so).
_FENCE = re.compile(
    r"^(?:[ \t]*>)*[ \t]*(?:(?:[-*+]|\d+[.)])[ \t]+)?(`{3,}|~{3,})[ \t]*python(?:[ \t].*)?$"
)


def _run_as_script(example: Example) -> None:
    """Run one block in a namespace of its own, its line numbers those of the page."""
    code = compile(
        pad(example.parsed, example.line + example.parsed.line_offset), example.path, "exec"
    )
    exec(code, {"__name__": "__main__", "__file__": example.path})  # the page's own code


@contextlib.contextmanager
def _global_state_restored() -> Iterator[None]:
    """Unregister the Prometheus collectors a block registered, as its process would end."""
    registry = prometheus_client.REGISTRY if prometheus_client else None
    before = set(registry._collector_to_names) if registry else set()
    try:
        yield
    finally:
        if registry:
            for collector in set(registry._collector_to_names) - before:
                registry.unregister(collector)


_PARSER = CodeBlockParser(language="python", evaluator=_run_as_script)


def _blocks() -> list[Any]:
    params = []
    for page in PAGES:
        document = Document.parse(str(page), _PARSER)
        for example in document.examples():
            name = f"{page.relative_to(REPO)}:{example.line}"
            params.append(pytest.param(example, id=name))
    return params


BLOCKS = _blocks()


def test_every_python_block_is_found() -> None:
    """Sybil runs as many blocks as there are ```python fences: none is passed over."""
    assert (REPO / "docs").is_dir() and len(PAGES) > 1
    for page in PAGES:
        text = page.read_text(encoding="utf-8")
        fences = sum(1 for line in text.splitlines() if _FENCE.match(line))
        comments = text.count("invisible-code-block: python")
        found = sum(1 for block in BLOCKS if block.values[0].path == str(page))
        assert found == fences + comments, (
            f"{page.name}: {found} blocks run, {fences} ```python fences; a fence with more "
            "after 'python' is not run: write ```python alone"
        )


@pytest.mark.parametrize("example", BLOCKS)
def test_block_runs(
    example: Example,
    request: pytest.FixtureRequest,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    text = str(example.parsed)
    if "REDIS_URL" in text:
        monkeypatch.setenv("REDIS_URL", request.getfixturevalue("redis_url"))
    if "API_URL" in text:
        monkeypatch.setenv("API_URL", request.getfixturevalue("api_url"))
    monkeypatch.chdir(tmp_path)
    with _global_state_restored():
        example.evaluate()


def test_a_block_runs_alone_and_its_failure_fails(tmp_path: Path) -> None:
    """The runner itself: each block on its own (no names from the one before), errors raise."""
    page = tmp_path / "page.md"
    page.write_text(
        "```python\nx = 1\n```\n\ntext\n\n```python\nprint(x)\n```\n\n"
        "```python\nassert 1 + 1 == 3, 'wrong'\n```\n"
    )
    first, second, third = Document.parse(str(page), _PARSER).examples()
    first.evaluate()
    with pytest.raises(NameError):
        second.evaluate()
    with pytest.raises(AssertionError, match="wrong"):
        third.evaluate()
