"""The demo: N tasks through one limiter on the real clock, checked against the ideal schedule.

N tasks share a limiter of ``rate``/s with ``capacity`` burst; each holds its slot for
``hold`` seconds. The ideal: the first ``capacity`` start at once, then one every 1/rate s,
in the order they asked. Nothing here but the public API.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import asdict, dataclass

from ._asyncio import TokenBucket
from ._rate import Rate

__all__ = ["DemoResult", "run_demo"]


@dataclass(frozen=True)
class DemoResult:
    """What the demo saw: start offsets per task (seconds) and the verdict."""

    rate: str
    capacity: int
    tasks: int
    hold: float
    order: list[int]
    starts: list[float]
    ideal: list[float]
    tolerance: float
    max_late: float
    max_early: float
    ok: bool

    def as_dict(self) -> dict[str, object]:
        """Return the result as plain data (for --json)."""
        return asdict(self)


def ideal_schedule(rate: Rate, capacity: int, tasks: int) -> list[float]:
    """Return the ideal start offsets: ``capacity`` at once, then one per interval."""
    return [max(0, i - capacity + 1) * rate.interval for i in range(tasks)]


async def _scenario(
    rate: Rate, capacity: int, tasks: int, hold: float
) -> tuple[list[int], list[float]]:
    limiter = TokenBucket(rate, capacity)
    order: list[int] = []
    starts: list[float] = []
    t0 = time.monotonic()

    async def process(task_id: int) -> None:
        async with limiter:
            starts.append(time.monotonic() - t0)
            order.append(task_id)
            await asyncio.sleep(hold)

    await asyncio.gather(*(process(i) for i in range(tasks)))
    return order, starts


def run_demo(
    rate: Rate, capacity: int, tasks: int, hold: float, tolerance: float = 0.05
) -> DemoResult:
    """Run the scenario and judge it: never early (no burst), at most ``tolerance`` late."""
    order, starts = asyncio.run(_scenario(rate, capacity, tasks, hold))
    ideal = ideal_schedule(rate, capacity, tasks)
    late = max((s - i for s, i in zip(starts, ideal, strict=True)), default=0.0)
    # A start before its ideal time would mean a token granted early: a burst.
    early = max((i - s for s, i in zip(starts, ideal, strict=True)), default=0.0)
    ok = order == sorted(order) and late <= tolerance and early <= 0.001
    return DemoResult(
        str(rate), capacity, tasks, hold, order, starts, ideal, tolerance, late, early, ok
    )


def render(result: DemoResult, width: int = 40) -> str:
    """Return the timeline as text: one row per task, with a bar at its start time."""
    span = max(result.ideal[-1] if result.ideal else 0.0, 1e-9)
    lines = [
        f"ratekeeper demo: {result.tasks} tasks, rate {result.rate}, capacity "
        f"{result.capacity}, each holding its slot {result.hold:g} s (real clock)",
        "",
        " task   start s   ideal s   late ms  timeline",
    ]
    for task_id, start, ideal in zip(result.order, result.starts, result.ideal, strict=True):
        col = min(width, round(start / span * width))
        lines.append(
            f"{task_id:5d}  {start:8.3f}  {ideal:8.3f}  {(start - ideal) * 1e3:+8.1f}  {' ' * col}#"
        )
    first = sum(1 for i in result.ideal if i == 0)
    verdict = "OK" if result.ok else "VIOLATED"
    fifo = "in arrival order" if result.order == sorted(result.order) else "OUT OF ORDER"
    lines += [
        "",
        f"verdict: {verdict}: the first {first} started at once, then one every "
        f"{(result.ideal[-1] - result.ideal[first - 1]) / max(result.tasks - first, 1):.3f} s, "
        f"{fifo}; latest {result.max_late * 1e3:.1f} ms after the ideal schedule "
        f"(allowed {result.tolerance * 1e3:.0f} ms), never early "
        f"(earliest {result.max_early * 1e3:+.1f} ms)",
    ]
    return "\n".join(lines)
