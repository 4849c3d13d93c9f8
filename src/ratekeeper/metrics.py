"""Prometheus metrics for ratekeeper limiters: a pull-based ``prometheus_client`` collector.

Needs the optional extra: ``pip install 'ratekeeper[prometheus]'``.

The rule it keeps: nothing on the limiter's hot path. Limiters count what they do in
``statistics()`` whether or not anyone looks; this collector only reads those counters when
Prometheus scrapes, so attaching it adds no work to ``acquire()`` and a limiter without a
collector pays nothing at all (``benchmarks/bench_metrics.py`` measures both)::

    from prometheus_client import start_http_server
    from ratekeeper import TokenBucket
    from ratekeeper.metrics import register

    api = TokenBucket("100/s", 20, name="api")
    register(api)                 # into prometheus_client.REGISTRY
    start_http_server(9100)

Published per limiter, labelled ``limiter="<its name>"`` (``ratekeeper`` is the default
namespace)::

    ratekeeper_granted_total               counter    acquisitions granted
    ratekeeper_granted_tokens_total        counter    tokens granted or charged
    ratekeeper_rejected_total              counter    refused at once (a failed try, a timeout)
    ratekeeper_timed_out_total             counter    waiters whose timeout passed in the queue
    ratekeeper_cancelled_total             counter    waiters cancelled (queued or just granted)
    ratekeeper_refunded_tokens_total       counter    tokens given back
    ratekeeper_wait_seconds                histogram  wait of each grant (0 for immediate ones)
    ratekeeper_max_wait_seconds            gauge      longest wait so far
    ratekeeper_waiting                     gauge      waiters queued now
    ratekeeper_waiting_tokens              gauge      tokens those waiters ask for
    ratekeeper_tokens_available            gauge      tokens in the bucket now (< 0: debt)
    ratekeeper_limit_tokens_available      gauge      the same per limit of a composite
                                                      limiter (labels limiter, limit)
    ratekeeper_capacity_tokens             gauge      the burst size
    ratekeeper_rate_tokens_per_second      gauge      the refill rate

A shared backend's limiter (``ratekeeper.redis``) reports more in its statistics; each extra
numeric field is published as a counter of that name, e.g.::

    ratekeeper_backend_errors_total        counter    server calls that failed
    ratekeeper_failed_open_total           counter    calls let through while it was down
    ratekeeper_fallback_grants_total       counter    grants by the local fallback limiter
    ratekeeper_server_requests_total       counter    decisions sent to the server
    ratekeeper_round_trips_total           counter    round trips that carried them

Scrapes usually come from the exporter's own thread. A thread limiter's snapshot is taken
under its lock; an asyncio limiter's counters are read without one (they are plain integers,
and the collector keeps the histogram it publishes well-formed: cumulative, never above its
count), so a scrape may see one in-flight grant counted in one metric and not yet in another.
"""

from __future__ import annotations

import dataclasses
import inspect
import logging
import math
import threading
import weakref
from collections.abc import Callable, Iterable, Mapping
from typing import Protocol, TypeGuard

try:
    from prometheus_client.metrics_core import (
        CounterMetricFamily,
        GaugeMetricFamily,
        HistogramMetricFamily,
        Metric,
    )
    from prometheus_client.registry import REGISTRY, Collector, CollectorRegistry
except ImportError as exc:
    raise ModuleNotFoundError(
        "ratekeeper.metrics needs prometheus_client: pip install 'ratekeeper[prometheus]'",
        name="prometheus_client",
    ) from exc

from ._fork import track
from ._scheduler import Statistics

__all__ = ["LimiterCollector", "register"]

_log = logging.getLogger("ratekeeper.metrics")

_LABELS = ("limiter",)

_CORE_FIELDS = frozenset(field.name for field in dataclasses.fields(Statistics))
# Extra fields of backends' statistics (ratekeeper.redis.RedisStatistics) and their help text;
# any other extra numeric field is published too, with a generic one.
_EXTRA_DOCS = {
    "backend_errors": "Calls to the shared backend that failed (unreachable, timed out, refused).",
    "failed_open": "Calls let through unchecked while the backend was down (fail open).",
    "fallback_grants": "Grants decided by the local fallback limiter while the backend was down.",
    "server_requests": "Decisions sent to the backend server.",
    "round_trips": "Round trips to the backend server that carried those decisions.",
}


class Observable(Protocol):
    """What the collector reads: any limiter with ``statistics()`` (the rest is optional).

    ``available()`` (or ``available_nowait()``), ``capacity`` and ``rate`` are published when
    present and not asynchronous; extra numeric fields of a Statistics subclass are
    published as counters.
    """

    def statistics(self) -> Statistics: ...


class LimiterCollector(Collector):
    """A Prometheus collector publishing the ``statistics()`` of the limiters added to it.

    Limiters are held by weak reference where they allow it: a limiter that is garbage
    collected disappears from the metrics. Each needs a distinct label value, its ``name``
    or the one given to ``add()``. Register the collector in a registry yourself
    (``registry.register(collector)``) or through ``register()``.

    Raises ValueError for a limiter without a name, or a name already in use.
    """

    def __init__(self, *limiters: Observable, namespace: str = "ratekeeper") -> None:
        if not namespace or not namespace.replace("_", "a").isalnum():
            raise ValueError(
                f"namespace must be a metric name prefix like 'ratekeeper', got {namespace!r}"
            )
        self._prefix = namespace + "_"
        self._lock = threading.Lock()
        track(self)
        self._limiters: dict[str, Callable[[], Observable | None]] = {}
        for limiter in limiters:
            self.add(limiter)

    def _fork_locks(self) -> tuple[threading.Lock, ...]:
        return (self._lock,)

    def _after_fork(self) -> None:
        self._lock = threading.Lock()

    # -- the set of limiters ---------------------------------------------------------------

    def add(self, limiter: Observable, name: str | None = None) -> None:
        """Publish ``limiter`` under the label ``limiter=name`` (default: its ``name``).

        Raises ValueError if there is no name, or another limiter has it; TypeError if the
        object has no ``statistics()``.
        """
        if not callable(getattr(limiter, "statistics", None)):
            raise TypeError(f"{limiter!r} has no statistics() method: it is not a limiter")
        label = getattr(limiter, "name", None) if name is None else name
        if not isinstance(label, str) or not label:
            raise ValueError(
                f"{limiter!r} needs a name for its metrics label: create it with "
                "name='...' or pass add(limiter, name='...')"
            )
        try:
            ref: Callable[[], Observable | None] = weakref.ref(limiter)
        except TypeError:  # no __weakref__ slot: hold it strongly
            ref = _Strong(limiter)
        with self._lock:
            current = self._limiters.get(label)
            if current is not None and current() is not None:
                raise ValueError(f"a limiter named {label!r} is already published")
            for other, other_ref in self._limiters.items():
                if other_ref() is limiter:
                    raise ValueError(f"{limiter!r} is already published as {other!r}")
            self._limiters[label] = ref

    def remove(self, limiter_or_name: Observable | str) -> None:
        """Stop publishing a limiter, given itself or its label. Raises KeyError if unknown."""
        with self._lock:
            if isinstance(limiter_or_name, str):
                del self._limiters[limiter_or_name]
                return
            for label, ref in self._limiters.items():
                if ref() is limiter_or_name:
                    del self._limiters[label]
                    return
        raise KeyError(limiter_or_name)

    def names(self) -> list[str]:
        """Return the labels of the limiters published now, sorted."""
        return sorted(label for label, _ in self._live())

    def _live(self) -> list[tuple[str, Observable]]:
        with self._lock:
            entries = list(self._limiters.items())
        live: list[tuple[str, Observable]] = []
        dead: list[str] = []
        for label, ref in entries:
            limiter = ref()
            if limiter is None:
                dead.append(label)
            else:
                live.append((label, limiter))
        if dead:
            with self._lock:
                for label in dead:
                    current = self._limiters.get(label)
                    if current is not None and current() is None:
                        del self._limiters[label]
        return live

    # -- the Collector protocol ------------------------------------------------------------

    def describe(self) -> Iterable[Metric]:
        """Yield the metric families without samples (lets a registry catch name clashes)."""
        families = _Families(self._prefix)
        for name in _EXTRA_DOCS:
            families.extra(name)
        return families.all()

    def collect(self) -> Iterable[Metric]:
        """Yield the metric families with one set of samples per live limiter."""
        families = _Families(self._prefix)
        for label, limiter in sorted(self._live(), key=lambda item: item[0]):
            try:
                stats = limiter.statistics()
            except Exception:
                # A scrape must not fail for every limiter because one cannot report (a
                # closed backend, say): the others are still published.
                _log.warning("statistics() of limiter %r failed; skipped", label, exc_info=True)
                continue
            if not isinstance(stats, Statistics) and inspect.isawaitable(stats):
                _close(stats)
                _log.warning("statistics() of limiter %r is asynchronous; skipped", label)
                continue
            families.add(label, limiter, stats)
        return families.all()

    def __repr__(self) -> str:
        return f"<LimiterCollector {self._prefix[:-1]!r} limiters={self.names()}>"


class _Families:
    """One scrape's metric families, filled limiter by limiter."""

    def __init__(self, p: str) -> None:
        labels = _LABELS
        self.granted = CounterMetricFamily(
            p + "granted", "Acquisitions granted, at once or after waiting.", labels=labels
        )
        self.granted_tokens = CounterMetricFamily(
            p + "granted_tokens",
            "Tokens granted or charged, including any refunded later.",
            labels=labels,
        )
        self.rejected = CounterMetricFamily(
            p + "rejected",
            "Requests refused at once: a failed try, or a timeout that could not be met.",
            labels=labels,
        )
        self.timed_out = CounterMetricFamily(
            p + "timed_out", "Waiters whose timeout passed while queued.", labels=labels
        )
        self.cancelled = CounterMetricFamily(
            p + "cancelled", "Waiters cancelled while queued, or after their grant.", labels=labels
        )
        self.refunded_tokens = CounterMetricFamily(
            p + "refunded_tokens",
            "Tokens given back by refund, cancellation or a failed block.",
            labels=labels,
        )
        self.wait = HistogramMetricFamily(
            p + "wait_seconds",
            "Time each grant waited in the queue (0 for immediate grants).",
            labels=labels,
        )
        self.max_wait = GaugeMetricFamily(
            p + "max_wait_seconds", "Longest wait of a grant so far.", labels=labels
        )
        self.waiting = GaugeMetricFamily(p + "waiting", "Waiters queued now.", labels=labels)
        self.waiting_tokens = GaugeMetricFamily(
            p + "waiting_tokens", "Tokens the queued waiters ask for.", labels=labels
        )
        self.limit_available = GaugeMetricFamily(
            p + "limit_tokens_available",
            "Tokens available now in each limit of a composite limiter.",
            labels=("limiter", "limit"),
        )
        self.available = GaugeMetricFamily(
            p + "tokens_available",
            "Tokens in the bucket now (negative while in debt).",
            labels=labels,
        )
        self.capacity = GaugeMetricFamily(
            p + "capacity_tokens", "The bucket's capacity (burst size).", labels=labels
        )
        self.rate = GaugeMetricFamily(
            p + "rate_tokens_per_second", "The refill rate.", labels=labels
        )
        self.prefix = p
        self.extras: dict[str, CounterMetricFamily] = {}

    def extra(self, name: str) -> CounterMetricFamily:
        """Return the counter family for an extra statistics field, made on first use."""
        family = self.extras.get(name)
        if family is None:
            doc = _EXTRA_DOCS.get(name, f"The limiter's {name.replace('_', ' ')} count.")
            family = CounterMetricFamily(self.prefix + name, doc, labels=_LABELS)
            self.extras[name] = family
        return family

    def all(self) -> list[Metric]:
        families: list[Metric] = [
            self.granted,
            self.granted_tokens,
            self.rejected,
            self.timed_out,
            self.cancelled,
            self.refunded_tokens,
            self.wait,
            self.max_wait,
            self.waiting,
            self.waiting_tokens,
            self.available,
            self.limit_available,
            self.capacity,
            self.rate,
        ]
        return families + [self.extras[name] for name in sorted(self.extras)]

    def add(self, label: str, limiter: Observable, stats: Statistics) -> None:
        labels = [label]
        self.granted.add_metric(labels, stats.granted)
        self.granted_tokens.add_metric(labels, stats.granted_tokens)
        self.rejected.add_metric(labels, stats.rejected)
        self.timed_out.add_metric(labels, stats.timed_out)
        self.cancelled.add_metric(labels, stats.cancelled)
        self.refunded_tokens.add_metric(labels, stats.refunded_tokens)
        self.wait.add_metric(
            labels, _buckets(stats.wait_histogram, stats.granted), stats.total_wait
        )
        self.max_wait.add_metric(labels, stats.max_wait)
        self.waiting.add_metric(labels, stats.waiting)
        self.waiting_tokens.add_metric(labels, stats.waiting_tokens)
        if dataclasses.is_dataclass(stats):
            for field in dataclasses.fields(stats):
                if field.name in _CORE_FIELDS or not field.name.isidentifier():
                    continue
                extra = getattr(stats, field.name)
                if _is_number(extra):
                    self.extra(field.name).add_metric(labels, extra)
        # An in-memory asyncio limiter answers at once through its synchronous twin.
        reader = "available_nowait" if hasattr(limiter, "available_nowait") else "available"
        available = _read(limiter, reader, label)
        if isinstance(available, Mapping):  # a composite limiter: tokens per limit
            for limit, tokens in sorted(available.items()):
                if _is_number(tokens):
                    self.limit_available.add_metric([label, str(limit)], tokens)
        elif _is_number(available):
            self.available.add_metric(labels, available)
        capacity = _read(limiter, "capacity", label)
        if _is_number(capacity):
            self.capacity.add_metric(labels, capacity)
        per_second = getattr(getattr(limiter, "rate", None), "per_second", None)
        if _is_number(per_second):
            self.rate.add_metric(labels, per_second)


class _Strong:
    """A strong reference that looks like a weakref.ref (for objects without weakrefs)."""

    __slots__ = ("_obj",)

    def __init__(self, obj: Observable) -> None:
        self._obj = obj

    def __call__(self) -> Observable:
        return self._obj


def _buckets(histogram: Iterable[tuple[float, int]], granted: int) -> list[tuple[str, float]]:
    """Return Prometheus buckets from a Statistics.wait_histogram, kept well-formed.

    Cumulative counts never decrease and the +Inf bucket (the count) is last and largest,
    even if the counters were read mid-update from another thread.
    """
    out: list[tuple[str, float]] = []
    running = 0
    for bound, count in histogram:
        running = max(running, count)
        if math.isinf(bound):
            break
        out.append((repr(float(bound)), float(running)))
    out.append(("+Inf", float(max(running, granted))))
    return out


def _read(limiter: object, attr: str, label: str) -> object:
    """Return ``limiter.attr``, called if it is a method; None if it has none or fails.

    Asynchronous readers (a backend's ``available()`` that needs a round trip) cannot be
    awaited in a scrape: they are skipped (None).
    """
    value: object = getattr(limiter, attr, None)
    if callable(value):
        try:
            value = value()
        except Exception:
            _log.debug("%s() of limiter %r failed; skipped", attr, label, exc_info=True)
            return None
    if inspect.isawaitable(value):
        _close(value)
        return None
    return value


def _is_number(value: object) -> TypeGuard[float]:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def register(
    *limiters: Observable,
    registry: CollectorRegistry | None = None,
    namespace: str = "ratekeeper",
) -> LimiterCollector:
    """Publish ``limiters`` in ``registry`` (default: ``prometheus_client.REGISTRY``).

    Shorthand for ``LimiterCollector(*limiters)`` registered there; returns the collector,
    so more limiters can be ``add()``-ed later. Raises ValueError (from the registry) if
    the namespace's metric names are registered already.
    """
    collector = LimiterCollector(*limiters, namespace=namespace)
    (REGISTRY if registry is None else registry).register(collector)
    return collector


def _close(awaitable: object) -> None:
    """Close a coroutine that will never be awaited, so Python does not warn about it."""
    close = getattr(awaitable, "close", None)
    if callable(close):
        close()
