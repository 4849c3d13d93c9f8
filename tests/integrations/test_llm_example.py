"""examples/llm_sdk.py with the real openai and anthropic SDKs, against a fake server that
refills like the providers and sends their real header names."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

from ._providers import FakeLLM
from ._server import serve

EXAMPLE = Path(__file__).parents[2] / "examples" / "llm_sdk.py"


def test_the_sdks_stay_under_the_providers_limits() -> None:
    # 4 requests/s (bursts of 6) and 250 tokens/s (bursts of 500): slower than the client's
    # configured 600 requests/min, so only the headers keep it from 429s.
    app = FakeLLM(requests=(6, 4.0), tokens=(500, 250.0))
    with serve(app) as url:
        start = time.monotonic()
        done = subprocess.run(
            [sys.executable, str(EXAMPLE), url, "--calls", "16", "--concurrency", "4"],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        elapsed = time.monotonic() - start
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.splitlines() == [
        "openai: 16 served, 0 refused",
        "anthropic: 16 served, 0 refused",
    ]
    assert app.served == {"openai": 16, "anthropic": 16}
    assert app.refused == {"openai": 0, "anthropic": 0}
    assert elapsed < 60
