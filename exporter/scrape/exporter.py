"""The running exporter: the config in force, one collector per target, its own metrics.

A scrape asks ``Exporter.scrape`` on the event loop: each target's deadline is computed
once, here, from the scrape's timeout (``collection_timeout``) and handed to its
``TargetCollector`` as a ``time.monotonic()`` instant; the families are built from the
collections that come back. A reload swaps collectors, keeping those whose settings
did not change (and with them their tokens, cache and change counters).
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Coroutine, Iterator
from concurrent.futures import CancelledError as FutureCancelled
from dataclasses import dataclass
from typing import Any, TypeVar

from prometheus_client.metrics_core import Metric
from prometheus_client.process_collector import ProcessCollector
from prometheus_client.registry import CollectorRegistry

from exporter.cec import Upstream
from exporter.cec.text import fields
from exporter.runtime import LoopThread
from exporter.scrape.api_metrics import ApiMetrics
from exporter.scrape.collection import (
    AfterCut,
    Collection,
    CollectionSummary,
    collection_timeout,
)
from exporter.scrape.families import Families, collection_families, exporter_families
from exporter.scrape.target import TargetCollector
from exporter.settings import Config, ConfigError, load_config
from exporter.settings.watch import fingerprint

log = logging.getLogger(__name__)
_T = TypeVar("_T")

LOOP_GRACE_SECONDS = 1.0
"""How long past the latest deadline a caller outside the loop waits for it."""


@dataclass(frozen=True)
class Scrape:
    """What one scrape gathered: its collections, and the registry that encodes them."""

    registry: CollectorRegistry
    collections: list[Collection]
    started: float
    """When the scrape started (``time.monotonic()``)."""
    deadlines: dict[str, float]
    """Each target's deadline (``time.monotonic()``), computed once for this scrape."""


class Exporter:
    """The running exporter: config, one collector per target, and its own metrics."""

    def __init__(
        self, config: Config, config_path: str | None = None, loop: LoopThread | None = None
    ) -> None:
        self.config_path = config_path
        self.api_metrics = ApiMetrics()
        self.after_cut = AfterCut()
        """What the work after the collections' deadline takes: the scrapes' margin grows
        with it (``collection_timeout``)."""
        self.upstream = Upstream(config.max_inflight_requests)
        self._io = loop or LoopThread()
        self._targets: dict[str, TargetCollector] = {}
        self._reload_lock = threading.Lock()
        self.reload_ok = True
        self.config = config
        self._read = fingerprint(config.files) if config_path else b""
        """The files a load read, as they were then: what a reload would read anew."""
        self._io.run(self._apply(config))
        self.reload_success_time = time.time()
        self.registry = CollectorRegistry(auto_describe=False)
        """The exporter's own metrics (``/metrics?collect[]=exporter``)."""
        ProcessCollector(registry=self.registry)
        self.registry.register(Families(self._own_families))

    @property
    def target_names(self) -> list[str]:
        """Configured target names, in config order."""
        return self.config.target_names

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        """The event loop every collection runs on (the web server serves on it too)."""
        return self._io.loop

    def run(self, coro: Coroutine[Any, Any, _T], timeout: float | None = None) -> _T:
        """Run ``coro`` on the loop from another thread and wait for its result."""
        return self._io.run(coro, timeout)

    # --- config ----------------------------------------------------------------------------

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
                new[target.name] = TargetCollector(target, self.api_metrics, self.upstream, kept)
                self.api_metrics.add_target(target.name)
        self._targets = new
        self.config = config
        for name, collector in old.items():
            if new.get(name) is not collector:
                await collector.aclose()
                if name not in new:
                    self.api_metrics.remove_target(name)

    def reload(self) -> bool:
        """Re-read the config file (from a thread other than the loop's); a bad one is
        logged and the old one kept."""
        if self.config_path is None:
            return True
        with self._reload_lock:
            return self._reload(self.config_path)

    def reload_if_changed(self) -> bool | None:
        """``reload`` if the config file or a file it names (secret, CA) changed since it
        was last read, whatever read it; None when nothing changed.

        A change that fails to load is tried once, not at every look: it stays refused
        (``cec_exporter_config_last_reload_successful`` 0) until a file changes again.
        """
        if self.config_path is None:
            return None
        with self._reload_lock:  # compared under the lock: a SIGHUP reload in flight counts
            if fingerprint(self.config.files) == self._read:
                return None
            log.info("config changed on disk; reloading", extra=fields(file=self.config_path))
            return self._reload(self.config_path)

    def _reload(self, path: str) -> bool:
        # Hashed before reading, so a change made meanwhile is seen by the next look.
        old = self.config
        self._read = fingerprint(old.files)
        try:
            config = load_config(path)
        except ConfigError as err:
            self.reload_ok = False
            log.error(  # noqa: TRY400 (a config error, not a crash: no traceback)
                "config reload failed, keeping the old config", extra=fields(error=err)
            )
            return False
        self._io.run(self._apply(config))
        if config.files != old.files:  # it names other files now: watch those
            self._read = fingerprint(config.files)
        self.reload_ok = True
        self.reload_success_time = time.time()
        log.info("config reloaded", extra=fields(targets=len(config.targets)))
        return True

    # --- scrapes ---------------------------------------------------------------------------

    def deadlines(
        self, names: list[str], scrape_timeout: float | None, now: float
    ) -> dict[str, float]:
        """The instant (``time.monotonic()``) by which each named target's collection must
        end, for a scrape that started ``now``: the scrape's timeout less a margin that
        grows with the work after the cut, capped by the target's ``timeout_seconds``
        (``now`` itself: too little time to start it). Names not configured are left out."""
        targets = self._targets
        after_cut = self.after_cut.seconds(len(names))
        return {
            name: now
            + collection_timeout(scrape_timeout, targets[name].config.timeout_seconds, after_cut)
            for name in names
            if name in targets
        }

    async def collect(self, deadlines: dict[str, float]) -> list[Collection]:
        """Collect every target of ``deadlines`` concurrently, each by its deadline."""

        async def one(name: str, deadline: float) -> Collection | None:
            # A reload may close the collector mid-way: ask its successor, by the same
            # deadline; a target the reload removed (or a shutdown) leaves it out.
            asked: TargetCollector | None = None
            while (collector := self._targets.get(name)) not in (None, asked):
                asked = collector
                collection = await collector.collect(deadline)
                if collection is not None:
                    return collection
            return None

        began = time.monotonic()
        found = await asyncio.gather(*(one(name, at) for name, at in deadlines.items()))
        collections = [collection for collection in found if collection is not None]
        # What cutting the collections that ran into their deadline cost, for the next
        # scrapes' margins (those given no time at all were never started).
        cut = [deadlines[c.target] for c in collections if c.reason == "deadline"]
        cut = [at for at in cut if at > began]
        ended = time.monotonic()
        if cut and ended > max(cut):
            self.after_cut.cut(len(cut), ended - max(cut))
        return collections

    def answered(self, scrape: Scrape, seconds: float) -> None:
        """The answer to ``scrape`` took ``seconds`` to build and encode (after its
        collections): the next scrapes of its size leave that much time for it."""
        self.after_cut.answered(len(scrape.deadlines), seconds)

    async def scrape(
        self, target: str | None = None, scrape_timeout: float | None = None
    ) -> Scrape:
        """One scrape on the loop: one target (``/probe``), or all plus our own metrics."""
        started = time.monotonic()
        deadlines = self.deadlines(self._names(target), scrape_timeout, started)
        return self._scraped(target, await self.collect(deadlines), started, deadlines)

    def scrape_from_thread(
        self, target: str | None = None, scrape_timeout: float | None = None
    ) -> Scrape:
        """``scrape`` for a caller outside the loop (the ``scrape`` command); blocks it.

        Always an answer: a loop that does not answer in time (or a call cancelled by
        shutdown) gives ``cec_up 0`` for every target asked.
        """
        started = time.monotonic()
        deadlines = self.deadlines(self._names(target), scrape_timeout, started)
        # Each collection ends by its deadline; the grace only guards against a stuck loop.
        wait = max(deadlines.values(), default=started) - started + LOOP_GRACE_SECONDS
        try:
            collections = self._io.run(self.collect(deadlines), timeout=wait)
        except (TimeoutError, FutureCancelled):
            log.error("collection loop did not answer in time")  # noqa: TRY400
            waited = time.monotonic() - started
            error = f"the collection loop did not answer within {waited:.2f}s"
            collections = [
                Collection.failed(name, error, waited, collector.last_success)
                for name in deadlines
                if (collector := self._targets.get(name)) is not None
            ]
        return self._scraped(target, collections, started, deadlines)

    def _names(self, target: str | None) -> list[str]:
        return self.target_names if target is None else [target]

    def _scraped(
        self,
        target: str | None,
        collections: list[Collection],
        started: float,
        deadlines: dict[str, float],
    ) -> Scrape:
        registry = CollectorRegistry(auto_describe=False)
        registry.register(Families(lambda: collection_families(collections)))
        if target is None:
            registry.register(Families(self.registry.collect))
        return Scrape(registry, collections, started, deadlines)

    def recent(self) -> dict[str, list[CollectionSummary]]:
        """Summaries of the recent collections of every configured target, newest first."""
        return {name: list(reversed(t.history)) for name, t in self._targets.items()}

    def _own_families(self) -> Iterator[Metric]:
        yield from self.api_metrics.families()
        yield from exporter_families(self.reload_ok, self.reload_success_time)

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
