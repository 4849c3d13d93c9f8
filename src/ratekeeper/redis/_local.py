"""The script's decisions on in-memory ``Gcra`` states: the local twin of ``gcra.lua``.

Pure: every method takes the time. The fallback policy decides with it while the server is
down, and the tests hold the script to it, so a composite decision means the same thing in
memory and at the server: every limit granted together or none changed, each limit
committed at the grant time (at once for the limits that set that time).
"""

from __future__ import annotations

from collections.abc import Sequence

from .._gcra import Gcra
from .._rate import Rate

__all__ = ["LocalLimits", "SafeGcra"]


class SafeGcra(Gcra):
    """Gcra whose refunds are safe after reservations into the future.

    ``Gcra.refund_at`` counts the tokens granted after the refunded grant from ``now``; when
    those grants are reservations whose slots lie ahead, that lets a newcomer take the slot of
    the last of them again (capacity 1 at 1/s: A, B, C reserved for 0, 1, 2 s; B's refund by
    mark, then a newcomer gets 2 s as C has). Here they count from the latest slot granted,
    ``max(now, tat - burst)``, and a refund without a mark gives nothing back while a slot is
    booked ahead. While none is, this is ``Gcra.refund_at`` exactly. The script keeps the
    same rule; it is proposed for ``Gcra`` itself, after which this class can go.
    """

    __slots__ = ()

    def refund_at(self, now_ns: int, tokens: int, mark: int | None = None) -> float:
        """Give back up to ``tokens`` taken earlier; return how many went back."""
        now = now_ns * self._scale
        tat = self._tat
        if tat <= now:
            return 0.0
        last = tat - self._burst  # the latest slot granted (ahead of now: booked, or debt)
        if mark is None:
            if last > now:
                return 0.0
            floor = now
        else:
            floor = max(last, now) + max(self._granted - mark, 0) * self._cost
        new_tat = max(tat - tokens * self._cost, floor)
        if new_tat >= tat:
            return 0.0
        self._tat = new_tat
        return (tat - new_tat) / self._cost


class LocalLimits:
    """Several token buckets decided together, all or nothing, as the script does."""

    __slots__ = ("gcras",)

    def __init__(self, limits: Sequence[tuple[Rate, int]], now_ns: int) -> None:
        self.gcras = [SafeGcra(rate, capacity, now_ns) for rate, capacity in limits]

    def reserve(
        self, now_ns: int, amounts: Sequence[int], max_wait_ns: int | None
    ) -> tuple[bool, int, tuple[int, ...]]:
        """Reserve ``amounts`` (one per limit) if the common wait is within max_wait.

        Returns (granted, wait_ns, marks); when refused nothing changed and ``wait_ns``
        says how long the wait would have been.
        """
        # A limit the request takes nothing from is not part of it (its mark stays 0).
        waits = [
            g.wait_ns(now_ns, n) if n else 0 for g, n in zip(self.gcras, amounts, strict=False)
        ]
        wait = max(waits)
        if max_wait_ns is not None and wait > max_wait_ns:
            return False, wait, ()
        marks = tuple(
            g.reserve_at(now_ns if own == wait else now_ns + wait, n).mark if n else 0
            for g, n, own in zip(self.gcras, amounts, waits, strict=False)
        )
        return True, wait, marks

    def charge(self, now_ns: int, amounts: Sequence[int]) -> tuple[int, ...]:
        """Take ``amounts`` now, debt allowed; return the marks."""
        return tuple(
            g.charge_at(now_ns, n) if n else 0 for g, n in zip(self.gcras, amounts, strict=False)
        )

    def refund(
        self, now_ns: int, amounts: Sequence[int], marks: Sequence[int | None]
    ) -> tuple[float, ...]:
        """Give back ``amounts`` (by mark where given); return the tokens that went back."""
        return tuple(
            g.refund_at(now_ns, n, mark) if n else 0.0
            for g, n, mark in zip(self.gcras, amounts, marks, strict=False)
        )

    def tokens(self, now_ns: int) -> tuple[float, ...]:
        """Return each limit's tokens at ``now_ns``."""
        return tuple(g.tokens_at(now_ns) for g in self.gcras)
