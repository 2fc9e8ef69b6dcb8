"""One target's collections: concurrent scrapes share one in flight, a success is cached.

The collection runs until the latest deadline among the scrapes waiting for it, so a
scrape with a longer deadline never gets a failure caused by a shorter one; each scrape
answers by its own deadline. The change counters and the history live here too, so
each real collection is observed once, however many scrapes shared it.
"""

from __future__ import annotations

import asyncio
import logging
import time

from exporter.cec import CecClient, CecError, CollectionTrace, Deadline, TargetConfig, Upstream
from exporter.cec.text import fields
from exporter.logs import Throttle
from exporter.scrape.api_metrics import ApiMetrics
from exporter.scrape.changes import ChangeTracker
from exporter.scrape.collection import COLLECTION_FLOOR_SECONDS, Collection, CollectionSummary

log = logging.getLogger(__name__)

HISTORY = 10  # recent collections kept per target for the landing page
_TOO_SHORT = Throttle(60.0)  # one line a minute for every target's refused collections


class TargetCollector:
    """Collects one target; concurrent scrapes share one collection in flight.

    The collection runs until the latest deadline among the scrapes waiting for
    it; each scrape answers by its own deadline. A recent success is served from
    cache while ``cache_ttl_seconds`` allows.
    """

    def __init__(
        self,
        config: TargetConfig,
        api_metrics: ApiMetrics,
        upstream: Upstream | None = None,
        previous: TargetCollector | None = None,
    ) -> None:
        """``previous``: the collector of the same name that a reload replaces. Its last
        success, history and what its client learnt of the list's size belong to the
        target's name and carry over; its cache and change baseline belong to the old
        settings and do not."""
        self.config = config
        self._observer = api_metrics.observer(config.name)
        before = None if previous is None else previous.client
        self.client: CecClient = CecClient(config, self._observer, upstream, before)
        self.history: tuple[CollectionSummary, ...] = () if previous is None else previous.history
        """Summaries of the most recent collections, oldest first (the landing page).

        Replaced, never mutated, so the web threads can read it while the loop appends.
        """
        self._inflight: asyncio.Task[Collection | None] | None = None
        self._deadline = Deadline()
        self._cached: Collection | None = None
        self.last_success: float | None = None if previous is None else previous.last_success
        """Unix time of the target's last successful collection, if any (under any settings:
        ``cec_last_success_timestamp_seconds`` must not reset while the target is down)."""
        self._changes = ChangeTracker()
        self._closed = False

    async def collect(self, deadline: float) -> Collection | None:
        """A collection no older than the cache TTL, by ``deadline`` (monotonic).

        None when a reload closed this collector meanwhile: the caller asks the
        collector that replaced it, if any.
        """
        started = time.monotonic()
        cached = self._cached
        if cached is not None and started - cached.finished_mono < self.config.cache_ttl_seconds:
            return cached.aged(started - cached.finished_mono)
        if deadline <= started:  # the scrape's timeout left no time (collection_timeout)
            return self._refused()
        # A longer scrape never fails for a shorter one: it extends the shared deadline,
        # or, once that has fired (the collection is being cancelled), waits for the end
        # of that collection and starts its own.
        while self._inflight is not None and not self._deadline.extend(deadline):
            await asyncio.wait({self._inflight})
        if self._closed:
            return None
        if self._inflight is None:
            self._deadline = Deadline(deadline)
            self._inflight = asyncio.ensure_future(self._collect_fresh(self._deadline))
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
        return Collection.failed(
            self.config.name,
            f"deadline of {waited:.2f}s passed",
            waited,
            self.last_success,
            reason="deadline",
        )

    def _refused(self) -> Collection:
        """A collection not started: no time for any vendor request. Counted as ``deadline``
        (no request is), remembered, logged once a minute however many scrapes ask."""
        if _TOO_SHORT.ready():
            log.warning(
                "scrape timeout too short to collect: failing as deadline without asking the "
                "vendor (logged once a minute)",
                extra=fields(target=self.config.name, floor=COLLECTION_FLOOR_SECONDS),
            )
        self._observer.collection_failed("deadline")
        error = f"the scrape timeout left less than {COLLECTION_FLOOR_SECONDS}s: nothing sent"
        collection = Collection.failed(
            self.config.name, error, 0.0, self.last_success, reason="deadline"
        )
        self._remember(collection)
        return collection

    def _remember(self, collection: Collection) -> None:
        """Add ``collection`` to the history (a new tuple: the web threads read it)."""
        self.history = (*self.history[1 - HISTORY :], CollectionSummary.of(collection))

    def _cancelled_by_reload(self, task: asyncio.Task[Collection | None]) -> bool:
        """Whether ``task`` was stopped by ``aclose`` (and not the scrape waiting on it).

        ``aclose`` may cancel the collection before its first step, so ``_read`` never
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

    async def _collect_fresh(self, deadline: Deadline) -> Collection | None:
        """One collection of the target, remembered in the history."""
        collection = await self._read(deadline, CollectionTrace())
        if collection is not None:
            self._remember(collection)
        return collection

    async def _read(self, deadline: Deadline, trace: CollectionTrace) -> Collection | None:
        """Read a snapshot by ``deadline``; a failure is logged, counted and returned.

        None when a reload stopped it (no failure of the target: nothing counted).
        """
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
            self.last_success = time.time()
            snapshot, changes = await self._changes.observe(snapshot)  # once per collection
            return Collection(
                target=self.config.name,
                snapshot=snapshot,
                error=None,
                duration=time.monotonic() - started,
                finished_mono=time.monotonic(),
                last_success=self.last_success,
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
        return Collection.failed(
            self.config.name, error, duration, self.last_success, trace, reason
        )

    async def aclose(self) -> None:
        """Stop any collection in flight, silently, and close the HTTP client."""
        self._closed = True
        self._observer.detach()
        if self._inflight is not None:
            self._inflight.cancel()
        await self.client.aclose()
