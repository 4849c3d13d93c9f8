"""The script's decisions in memory: the local twin of ``gcra.lua``, on the core's arithmetic.

Pure: every method takes the time. The fallback policy decides with it while the server is
down, and the tests hold the script to it, so a composite decision means the same thing in
memory and at the server: every limit granted together or none changed, each limit
committed at the grant time (at once for the limits that set that time). It is a thin view
of ``CompositeGcra``: there is one arithmetic, not a second one here.
"""

from __future__ import annotations

from collections.abc import Sequence

from .._gcra import CompositeGcra, Limit, Part
from .._rate import Rate

__all__ = ["LocalLimits"]


class LocalLimits:
    """Several token buckets decided together, all or nothing, as the script does."""

    __slots__ = ("_composite", "gcras")

    def __init__(self, limits: Sequence[tuple[Rate, int]], now_ns: int) -> None:
        self._composite = CompositeGcra(
            {str(index): Limit(rate, capacity) for index, (rate, capacity) in enumerate(limits)},
            now_ns,
        )
        self.gcras: list[Part] = list(self._composite.parts)

    def reserve(
        self, now_ns: int, amounts: Sequence[int], max_wait_ns: int | None
    ) -> tuple[bool, int, tuple[int, ...]]:
        """Reserve ``amounts`` (one per limit) if the common wait is within max_wait.

        Returns (granted, wait_ns, marks); when refused nothing changed and ``wait_ns``
        says how long the wait would have been. A limit the request takes nothing from is
        not part of it (its mark is 0).
        """
        decision = self._composite.reserve_at(now_ns, tuple(amounts), max_wait_ns)
        if not decision.granted:
            return False, decision.wait_ns, ()
        return True, decision.wait_ns, _own_marks(decision.marks, amounts)

    def charge(self, now_ns: int, amounts: Sequence[int]) -> tuple[int, ...]:
        """Take ``amounts`` now, debt allowed; return the marks."""
        return _own_marks(self._composite.charge_at(now_ns, tuple(amounts)), amounts)

    def refund(
        self, now_ns: int, amounts: Sequence[int], marks: Sequence[int | None]
    ) -> tuple[float, ...]:
        """Give back ``amounts`` (by mark where given); return the tokens that went back."""
        return tuple(
            g.refund_at(now_ns, n, mark) if n else 0.0
            for g, n, mark in zip(self.gcras, amounts, marks, strict=False)
        )

    def reconfigure(self, now_ns: int, index: int, rate: Rate, capacity: int) -> None:
        """Change limit ``index`` at ``now_ns``, carrying its balance over (Gcra.reconfigure)."""
        self._composite.reconfigure_limit(now_ns, str(index), rate, capacity)

    def tokens(self, now_ns: int) -> tuple[float, ...]:
        """Return each limit's tokens at ``now_ns``."""
        return tuple(g.tokens_at(now_ns) for g in self.gcras)


def _own_marks(marks: tuple[int, ...], amounts: Sequence[int]) -> tuple[int, ...]:
    return tuple(mark if n else 0 for mark, n in zip(marks, amounts, strict=False))
