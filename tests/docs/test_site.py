"""The documentation site builds in strict mode: a broken link, page or reference fails.

The same build as ``make docs`` (MkDocs, Material, mkdocstrings), into a temporary folder.
It needs no network: no plugin fetches anything and the theme loads no web fonts.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_the_site_builds_in_strict_mode(tmp_path: Path) -> None:
    site = tmp_path / "site"
    done = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(site)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
    )
    assert done.returncode == 0, done.stderr[-4000:]
    reference = (site / "reference" / "index.html").read_text(encoding="utf-8")
    for name in (
        "TokenBucket",
        "redis.RedisTokenBucket",
        "integrations.asgi.RateLimitMiddleware",
        "testing.ManualClock",
    ):  # the API reference is generated from the docstrings
        assert f'id="ratekeeper.{name}"' in reference, name
    pages = {page.stem for page in (REPO / "docs").glob("*.md")} - {"index"}
    built = {path.parent.name for path in site.glob("*/index.html")}
    assert pages <= built, f"pages not built: {sorted(pages - built)}"
    for page in site.rglob("*.html"):
        assert "fonts.googleapis.com" not in page.read_text(encoding="utf-8"), page


def test_the_readme_links_resolve() -> None:
    """The README is not part of the site, so its relative links are checked here."""
    text = (REPO / "README.md").read_text(encoding="utf-8")
    targets = re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", text)
    local = [target for target in targets if "://" not in target]
    assert local, "the README links no page"
    missing = [target for target in local if not (REPO / target).exists()]
    assert not missing, f"README links to missing files: {missing}"
