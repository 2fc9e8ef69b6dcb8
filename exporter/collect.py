"""Turn collections into metric families, within the scrape deadline.

One ``TargetCollector`` per target coalesces concurrent scrapes into one
collection in flight and serves a recent success from cache when
``cache_ttl_seconds`` allows. ``Exporter`` owns the asyncio loop (in a thread
of its own) on which every collection runs, so a slow target never holds up
another, and builds the families that the web layer encodes.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import math
import platform
import threading
import time
from collections.abc import Callable, Coroutine, Iterable, Iterator
from concurrent.futures import CancelledError as FutureCancelled
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass
from typing import Any, TypeVar

from prometheus_client import disable_created_metrics
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.metrics_core import Metric
from prometheus_client.process_collector import ProcessCollector
from prometheus_client.registry import Collector, CollectorRegistry

from exporter import __version__
from exporter.build import revision
from exporter.cec import CecClient, CecError, Snapshot
from exporter.cec.deadline import Deadline
from exporter.cec.target import TargetConfig
from exporter.cec.text import ERROR_TEXT_CHARS, clip, fields
from exporter.cec.trace import CollectionTrace
from exporter.cec.upstream import Upstream
from exporter.changes import ChangeReport, ChangeTracker, change_families
from exporter.metrics import ApiMetrics
from exporter.settings import Config, ConfigError, load_config

log = logging.getLogger(__name__)
_T = TypeVar("_T")

disable_created_metrics()  # type: ignore[no-untyped-call]  # SPEC: no _created series

SCRAPE_MARGIN_SECONDS = 0.5
SCRAPE_MARGIN_RATIO = 0.1
HISTORY = 10  # recent collections kept per target for the landing page


def collection_budget(scrape_timeout: float | None, timeout_seconds: float) -> float:
    """Seconds one collection may take: the scrape timeout minus a margin, capped.

    The margin (0.5 s or 10 %, whichever is smaller) leaves time to encode and
    send the answer, as blackbox_exporter does.
    """
    if scrape_timeout is None or not math.isfinite(scrape_timeout) or scrape_timeout <= 0:
        return timeout_seconds
    margin = min(SCRAPE_MARGIN_SECONDS, scrape_timeout * SCRAPE_MARGIN_RATIO)
    return max(0.0, min(timeout_seconds, scrape_timeout - margin))


@dataclass(frozen=True)
class Collection:
    """The outcome of one collection of one target: a snapshot or an error."""

    target: str
    snapshot: Snapshot | None
    error: str | None
    duration: float
    finished_mono: float
    last_success: float | None = None
    age: float = 0.0
    trace: CollectionTrace | None = None
    """What happened, request by request (None when no collection ran for it)."""
    started_wall: float = dataclasses.field(default_factory=time.time)
    reason: str | None = None
    """Why it failed: a ``reason`` label value of cec_collection_failures_total."""
    changes: ChangeReport | None = None
    """What this success changed since the previous one, and the change counters after it."""

    @property
    def up(self) -> bool:
        """True when every page was read with retCode 0."""
        return self.snapshot is not None

    @property
    def phone_records(self) -> int | None:
        """Phone records counted (after de-duplication), when the collection succeeded."""
        return None if self.snapshot is None else sum(self.snapshot.counts.values())


@dataclass(frozen=True)
class CollectionSummary:
    """What the landing page shows of a past collection, and nothing more.

    No snapshot and no trace: with ``per_phone_metrics`` a collection holds a map of
    every phone, and ten of them per target were most of the exporter's memory.
    """

    started_wall: float
    up: bool
    duration: float
    pages: int | None
    """Pages read (with retCode 0), when known."""
    phone_records: int | None
    error: str | None
    """The error, clipped to ``ERROR_TEXT_CHARS``."""
    reason: str | None

    @classmethod
    def of(cls, collection: Collection) -> CollectionSummary:
        """The summary of ``collection``."""
        snapshot, trace = collection.snapshot, collection.trace
        pages = snapshot.pages if snapshot is not None else None
        if pages is None and trace is not None:
            pages = trace.pages
        error = collection.error
        return cls(
            started_wall=collection.started_wall,
            up=collection.up,
            duration=collection.duration,
            pages=pages,
            phone_records=collection.phone_records,
            error=None if error is None else clip(error, ERROR_TEXT_CHARS),
            reason=collection.reason,
        )


class TargetCollector:
    """Collects one target; concurrent scrapes share one collection in flight.

    The collection runs until the latest deadline among the scrapes waiting for
    it; each scrape answers by its own deadline (SPEC section 6).
    """

    def __init__(
        self, config: TargetConfig, api_metrics: ApiMetrics, upstream: Upstream | None = None
    ) -> None:
        self.config = config
        self._observer = api_metrics.observer(config.name)
        self.client = CecClient(config, self._observer, upstream)
        self.history: tuple[CollectionSummary, ...] = ()
        """Summaries of the most recent collections, oldest first (the landing page).

        Replaced, never mutated, so the web threads can read it while the loop appends.
        """
        self._inflight: asyncio.Task[Collection | None] | None = None
        self._deadline = Deadline()
        self._cached: Collection | None = None
        self._last_success: float | None = None
        self._changes = ChangeTracker()
        self._closed = False

    async def get(self, deadline: float) -> Collection | None:
        """A collection no older than the cache TTL, by ``deadline`` (monotonic).

        None when a reload closed this collector meanwhile: the caller asks the
        collector that replaced it, if any.
        """
        started = time.monotonic()
        cached = self._cached
        if cached is not None and started - cached.finished_mono < self.config.cache_ttl_seconds:
            return _replace_age(cached, started - cached.finished_mono)
        # A longer scrape never fails for a shorter one: it extends the shared deadline,
        # or, once that has fired (the collection is being cancelled), waits for the end
        # of that collection and starts its own.
        while self._inflight is not None and not self._deadline.extend(deadline):
            await asyncio.wait({self._inflight})
        if self._closed:
            return None
        if self._inflight is None:
            self._deadline = Deadline(deadline)
            self._inflight = asyncio.ensure_future(self._collect(self._deadline))
            self._inflight.add_done_callback(self._finished)
        task, shared = self._inflight, self._deadline
        try:
            return await asyncio.wait_for(asyncio.shield(task), deadline - time.monotonic())
        except TimeoutError:
            pass
        except asyncio.CancelledError:
            if not self._cancelled_by_reload(task):
                raise
            return None  # the caller asks the collector that replaced this one
        if shared.at <= deadline:
            # Ours is the latest deadline: the collection ends at this same instant and
            # logs and counts its own failure; a verdict here would do it twice.
            try:
                return await asyncio.shield(task)
            except asyncio.CancelledError:
                if not self._cancelled_by_reload(task):
                    raise
                return None
        waited = time.monotonic() - started
        log.warning(
            "scrape deadline passed; the collection goes on for a later scrape",
            extra=fields(target=self.config.name, duration=waited),
        )
        self._observer.scrape_abandoned()  # the collection counts its own outcome
        return self._failed(f"deadline of {waited:.2f}s passed", waited, reason="deadline")

    def _cancelled_by_reload(self, task: asyncio.Task[Collection | None]) -> bool:
        """Whether ``task`` was stopped by ``aclose`` (and not the scrape waiting on it).

        ``aclose`` may cancel the collection before its first step, so ``_run`` never
        sees it: the ``CancelledError`` reaches the scrapes waiting for it instead.
        """
        current = asyncio.current_task()
        return task.cancelled() and self._closed and not (current and current.cancelling())

    def _finished(self, task: asyncio.Task[Collection | None]) -> None:
        self._inflight = None
        if task.cancelled() or task.exception() is not None:
            return
        result = task.result()
        if result is not None and result.up:
            self._cached = result

    async def _collect(self, deadline: Deadline) -> Collection | None:
        collection = await self._run(deadline, CollectionTrace())
        if collection is not None:
            self.history = (*self.history[1 - HISTORY :], CollectionSummary.of(collection))
        return collection

    async def _run(self, deadline: Deadline, trace: CollectionTrace) -> Collection | None:
        started = time.monotonic()
        reason: str | None = None
        try:
            snapshot = await self.client.read_snapshot(deadline, trace)
        except asyncio.CancelledError:
            if not self._closed:
                raise
            # Only aclose() (a reload replaced or removed the target) cancels it: that is
            # no failure of the target, so nothing is counted and no series is left.
            log.info(
                "collection in flight stopped by a config reload",
                extra=fields(target=self.config.name),
            )
            return None
        except CecError as err:
            error, reason = str(err), err.reason
        except Exception as err:  # a bug must not take the exporter down with it
            log.exception("collection crashed", extra=fields(target=self.config.name))
            error = f"internal error: {type(err).__name__}"
        else:
            self._last_success = time.time()
            snapshot, changes = self._changes.observe(snapshot)  # once per real collection
            return Collection(
                target=self.config.name,
                snapshot=snapshot,
                error=None,
                duration=time.monotonic() - started,
                finished_mono=time.monotonic(),
                last_success=self._last_success,
                trace=trace,
                started_wall=trace.started_wall,
                changes=changes,
            )
        duration = time.monotonic() - started
        log.warning(
            "collection failed",
            extra=fields(target=self.config.name, reason=reason, duration=duration, error=error),
        )
        if reason is not None:  # an internal error is a bug, not a reason the API gave
            self._observer.collection_failed(reason)
        return self._failed(error, duration, trace, reason)

    def _failed(
        self,
        error: str,
        duration: float,
        trace: CollectionTrace | None = None,
        reason: str | None = None,
    ) -> Collection:
        return Collection(
            target=self.config.name,
            snapshot=None,
            error=error,
            duration=duration,
            finished_mono=time.monotonic(),
            last_success=self._last_success,
            trace=trace,
            started_wall=time.time() - duration if trace is None else trace.started_wall,
            reason=reason,
        )

    async def aclose(self) -> None:
        """Stop any collection in flight, silently, and close the HTTP client."""
        self._closed = True
        self._observer.detach()
        if self._inflight is not None:
            self._inflight.cancel()
        await self.client.aclose()


def _replace_age(collection: Collection, age: float) -> Collection:
    return dataclasses.replace(collection, age=age)


def collection_families(collections: Iterable[Collection]) -> Iterator[Metric]:
    """Metric families for a set of collections (SPEC section 6).

    A failed collection shows only ``cec_up 0``, its duration and the last
    success time: a partial count must never look like a drop.
    """
    collections = list(collections)  # read twice: the gauges, then the change counters
    up = GaugeMetricFamily(
        "cec_up", "1 if the last collection read every page with retCode 0.", labels=["target"]
    )
    duration = GaugeMetricFamily(
        "cec_collection_duration_seconds",
        "How long the last collection of the target took.",
        labels=["target"],
    )
    last_success = GaugeMetricFamily(
        "cec_last_success_timestamp_seconds",
        "Unix time of the last successful collection of the target.",
        labels=["target"],
    )
    age = GaugeMetricFamily(
        "cec_collection_age_seconds",
        "Age of the collection being served; above 0 when served from cache.",
        labels=["target"],
    )
    allocated = GaugeMetricFamily(
        "cec_softphones_allocated",
        "Allocated softphones (result.total) as the API reports it.",
        labels=["target"],
    )
    phones = GaugeMetricFamily(
        "cec_softphones",
        "Softphone records by tenant and registration status.",
        labels=["target", "tenant_id", "status"],
    )
    endpoints = GaugeMetricFamily(
        "cec_registration_endpoint_info",
        "Registration endpoints reported by queryPhone; value is always 1.",
        labels=["target", "mode", "node", "reg_ip", "reg_port", "sip_ip", "sip_port"],
    )
    per_phone = GaugeMetricFamily(
        "cec_softphone_registered",
        "1 if the softphone is registered, 0 otherwise (per_phone_metrics only).",
        labels=["target", "tenant_id", "phone_num"],
    )
    for c in collections:
        up.add_metric([c.target], 1.0 if c.up else 0.0)
        duration.add_metric([c.target], c.duration)
        if c.last_success is not None:
            last_success.add_metric([c.target], c.last_success)
        snap = c.snapshot
        if snap is None:
            continue
        age.add_metric([c.target], c.age)
        if snap.total is not None:
            allocated.add_metric([c.target], snap.total)
        for (tenant, status), n in sorted(snap.counts.items()):
            phones.add_metric([c.target, tenant, status.value], n)
        for ep in snap.endpoints:
            endpoints.add_metric(
                [c.target, ep.mode, ep.node, ep.reg_ip, ep.reg_port, ep.sip_ip, ep.sip_port], 1
            )
        for (tenant, number), registered in sorted((snap.phones or {}).items()):
            per_phone.add_metric([c.target, tenant, number], 1.0 if registered else 0.0)
    families = (up, duration, last_success, age, allocated, phones, endpoints, per_phone)
    yield from (f for f in families if f.samples or f is up)
    yield from change_families((c.target, c.changes) for c in collections if c.changes)


class Families(Collector):
    """Adapts a ready list of families to the registry interface."""

    def __init__(self, families: Callable[[], Iterable[Metric]]) -> None:
        self._families = families

    def collect(self) -> Iterable[Metric]:
        return self._families()

    def describe(self) -> Iterable[Metric]:
        return []  # nothing to check at registration; families are built per scrape


class LoopThread:
    """An asyncio event loop in a daemon thread; other threads submit coroutines."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name="cec-io", daemon=True)
        self._thread.start()

    def run(self, coro: Coroutine[Any, Any, _T], timeout: float | None = None) -> _T:
        """Run ``coro`` on the loop and wait for its result."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def stop(self) -> None:
        """Stop the loop and wait for its thread."""
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(timeout=5)


class Exporter:
    """The running exporter: config, one collector per target, and its own metrics."""

    def __init__(self, config: Config, config_path: str | None = None) -> None:
        self.config_path = config_path
        self.api_metrics = ApiMetrics()
        self.upstream = Upstream(config.max_inflight_requests)
        self._io = LoopThread()
        self._targets: dict[str, TargetCollector] = {}
        self._reload_lock = threading.Lock()
        self.reload_ok = True
        self.reload_success_time = 0.0
        self.config = config
        self._io.run(self._apply(config))
        self.reload_success_time = time.time()
        self.registry = CollectorRegistry(auto_describe=False)
        ProcessCollector(registry=self.registry)
        self.registry.register(Families(self._exporter_families))

    @property
    def target_names(self) -> list[str]:
        """Configured target names, in config order."""
        return self.config.target_names

    async def _apply(self, config: Config) -> None:
        """Swap to ``config``: keep collectors whose settings did not change (and their tokens)."""
        old = self._targets
        new: dict[str, TargetCollector] = {}
        self.upstream.configure(config.targets, config.max_inflight_requests)
        for target in config.targets:
            kept = old.get(target.name)
            if kept is not None and kept.config == target:
                new[target.name] = kept
            else:
                new[target.name] = TargetCollector(target, self.api_metrics, self.upstream)
                self.api_metrics.add_target(target.name)
        self._targets = new
        self.config = config
        for name, collector in old.items():
            if new.get(name) is not collector:
                await collector.aclose()
                if name not in new:
                    self.api_metrics.remove_target(name)

    def reload(self) -> bool:
        """Re-read the config file; a bad one is logged and the old one kept."""
        if self.config_path is None:
            return True
        with self._reload_lock:
            try:
                config = load_config(self.config_path)
            except ConfigError as err:
                self.reload_ok = False
                log.error(  # noqa: TRY400 (a config error, not a crash: no traceback)
                    "config reload failed, keeping the old config", extra=fields(error=err)
                )
                return False
            self._io.run(self._apply(config))
            self.reload_ok = True
            self.reload_success_time = time.time()
            log.info("config reloaded: %d target(s)", len(config.targets))
            return True

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        """The event loop every collection runs on (the web server serves on it too)."""
        return self._io.loop

    def run(self, coro: Coroutine[Any, Any, _T], timeout: float | None = None) -> _T:
        """Run ``coro`` on the loop from another thread and wait for its result."""
        return self._io.run(coro, timeout)

    def _budgets(self, names: list[str], scrape_timeout: float | None) -> dict[str, float]:
        targets = self._targets
        return {
            name: collection_budget(scrape_timeout, targets[name].config.timeout_seconds)
            for name in names
            if name in targets
        }

    async def acollect(
        self, names: list[str], scrape_timeout: float | None = None
    ) -> list[Collection]:
        """Collect ``names`` concurrently, each within its own budget (on the loop)."""
        started = time.monotonic()

        async def one(name: str, deadline: float) -> Collection | None:
            # A reload may close the collector mid-way: ask its successor, by the same
            # deadline; a target the reload removed (or a shutdown) leaves it out.
            asked: TargetCollector | None = None
            while (collector := self._targets.get(name)) not in (None, asked):
                asked = collector
                collection = await collector.get(deadline)
                if collection is not None:
                    return collection
            return None

        budgets = self._budgets(names, scrape_timeout)
        found = await asyncio.gather(
            *(one(name, started + budget) for name, budget in budgets.items())
        )
        return [collection for collection in found if collection is not None]

    def collect(self, names: list[str], scrape_timeout: float | None = None) -> list[Collection]:
        """``acollect`` from another thread; blocks the caller.

        Always an answer: a loop that does not answer in time (or a call cancelled by
        shutdown) gives ``cec_up 0`` for every target asked (SPEC section 6).
        """
        started = time.monotonic()
        budgets = self._budgets(names, scrape_timeout)
        # Each get() ends within its budget; the extra second only guards against a stuck loop.
        try:
            return self._io.run(
                self.acollect(names, scrape_timeout), timeout=max(budgets.values(), default=0) + 1.0
            )
        except (FutureTimeout, FutureCancelled):
            log.error("collection loop did not answer in time")  # noqa: TRY400
            waited = time.monotonic() - started
            error = f"the collection loop did not answer within {waited:.2f}s"
            targets = self._targets
            return [targets[name]._failed(error, waited) for name in budgets if name in targets]

    def registry_for(self, target: str | None, collections: list[Collection]) -> CollectorRegistry:
        """A registry to encode: one target's collections, or all plus our own metrics."""
        registry = CollectorRegistry(auto_describe=False)
        registry.register(Families(lambda: collection_families(collections)))
        if target is None:
            registry.register(Families(self.registry.collect))
        return registry

    async def ascrape(
        self, target: str | None = None, scrape_timeout: float | None = None
    ) -> tuple[CollectorRegistry, list[Collection]]:
        """A registry to encode: one target (``/probe``), or all plus our own metrics."""
        names = self.target_names if target is None else [target]
        collections = await self.acollect(names, scrape_timeout)
        return self.registry_for(target, collections), collections

    def scrape(
        self, target: str | None = None, scrape_timeout: float | None = None
    ) -> tuple[CollectorRegistry, list[Collection]]:
        """``ascrape`` from another thread (the ``scrape`` command); blocks the caller."""
        names = self.target_names if target is None else [target]
        collections = self.collect(names, scrape_timeout)
        return self.registry_for(target, collections), collections

    def own_metrics(self) -> CollectorRegistry:
        """The exporter's own metrics alone, without collecting any target.

        Sharded replicas are scraped for these while their targets come through ``/probe``.
        """
        return self.registry

    def recent(self) -> dict[str, list[CollectionSummary]]:
        """Summaries of the recent collections of every configured target, newest first."""
        return {name: list(reversed(t.history)) for name, t in self._targets.items()}

    def _exporter_families(self) -> Iterator[Metric]:
        yield from self.api_metrics.collect()
        info = GaugeMetricFamily(
            "cec_exporter_build_info",
            "Build information of cec-phone-exporter; value is always 1.",
            labels=["version", "revision", "python_version"],
        )
        info.add_metric([__version__, revision(), platform.python_version()], 1)
        reload_ok = GaugeMetricFamily(
            "cec_exporter_config_last_reload_successful",
            "1 if the last config load or reload worked.",
        )
        reload_ok.add_metric([], 1.0 if self.reload_ok else 0.0)
        reload_time = GaugeMetricFamily(
            "cec_exporter_config_last_reload_success_timestamp_seconds",
            "Unix time of the last successful config load or reload.",
        )
        reload_time.add_metric([], self.reload_success_time)
        yield from (info, reload_ok, reload_time)

    def close(self) -> None:
        """Close every client and stop the loop."""
        targets = list(self._targets.values())

        async def close_all() -> None:
            await asyncio.gather(*(t.aclose() for t in targets), return_exceptions=True)
            # Scrapes that waited on the collections just cancelled answer before the
            # loop stops (else their threads would wait out their whole deadline).
            others = asyncio.all_tasks() - {asyncio.current_task()}
            if others:
                await asyncio.wait(others, timeout=1.0)
            await self.upstream.aclose()

        try:
            self._io.run(close_all(), timeout=5)
        finally:
            self._io.stop()


__all__ = [
    "Collection",
    "CollectionSummary",
    "Exporter",
    "Families",
    "TargetCollector",
    "collection_budget",
    "collection_families",
]
