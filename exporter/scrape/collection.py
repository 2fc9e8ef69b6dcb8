"""What one collection of one target gave, and how long a collection may take.

A ``Collection`` is a snapshot or an error, with what the landing page, the debug probe
and the metric families need; a ``CollectionSummary`` is what the history keeps of it.
``collection_timeout`` turns a scrape's timeout into the seconds a collection may take,
leaving the margin ``AfterCut`` measures for the work left once the collections are cut.
"""

from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import dataclass

from exporter.cec import CollectionTrace, Snapshot
from exporter.cec.text import ERROR_TEXT_CHARS, clip
from exporter.scrape.changes import ChangeReport

SCRAPE_MARGIN_SECONDS = 0.5
SCRAPE_MARGIN_RATIO = 0.1
COLLECTION_FLOOR_SECONDS = 0.1
"""Less time than this for a collection holds no vendor request (a token and a page are a
round trip each): it is not started, fails at once as ``deadline`` and sends nothing."""


def collection_timeout(
    scrape_timeout: float | None, timeout_seconds: float, after_cut: float = 0.0
) -> float:
    """Seconds one collection may take: the scrape timeout minus a margin, capped.

    The margin leaves time to answer once the collections are cut: 0.5 s or 10 % of the
    timeout, whichever is smaller (to send it, as blackbox_exporter does), plus
    ``after_cut``, what the work left after the cut takes (``AfterCut``: the collections
    still running stopped, the families built and encoded). No (or no usable) scrape
    timeout: the target's ``timeout_seconds``. 0 when less than
    ``COLLECTION_FLOOR_SECONDS`` would be left: the collection is not started.
    """
    if scrape_timeout is None or not math.isfinite(scrape_timeout) or scrape_timeout <= 0:
        return timeout_seconds
    margin = min(SCRAPE_MARGIN_SECONDS, scrape_timeout * SCRAPE_MARGIN_RATIO) + after_cut
    left = scrape_timeout - margin
    return 0.0 if left < COLLECTION_FLOOR_SECONDS else min(timeout_seconds, left)


class AfterCut:
    """How long a scrape takes from its collections' deadline to its answer, as measured.

    Two parts, each the largest seen lately (a tenth forgotten per measure), so one slow
    scrape widens the next margins at once and a quiet spell narrows them slowly: cutting
    a collection still running (its requests cancelled, its failure logged and counted),
    per target cut; and building and encoding the answer, per scrape size (600 targets
    are 40,000 lines). Before a measure, ``GUESS_SECONDS`` a target for each part.
    """

    GUESS_SECONDS = 0.001
    FORGET = 0.9
    MIN_CUT = 10
    """Fewer targets cut than this say too little about the cost of one."""
    SIZES = 16
    """Scrape sizes remembered (``/metrics``, ``/probe``, a few reloads' worth)."""

    def __init__(self) -> None:
        self._cut = self.GUESS_SECONDS
        self._answer: dict[int, float] = {}

    def seconds(self, targets: int) -> float:
        """The margin a scrape of ``targets`` targets needs for its work after the cut."""
        answer = self._answer.get(targets, targets * self.GUESS_SECONDS)
        return targets * self._cut + answer

    def cut(self, targets: int, seconds: float) -> None:
        """``targets`` collections were cut and ended ``seconds`` after their deadline."""
        if targets >= self.MIN_CUT and seconds > 0:
            self._cut = max(seconds / targets, self._cut * self.FORGET)

    def answered(self, targets: int, seconds: float) -> None:
        """The answer to a scrape of ``targets`` targets took ``seconds`` to build."""
        if targets not in self._answer and len(self._answer) >= self.SIZES:
            self._answer.pop(next(iter(self._answer)))
        self._answer[targets] = max(seconds, self._answer.get(targets, 0.0) * self.FORGET)


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

    @classmethod
    def failed(
        cls,
        target: str,
        error: str,
        duration: float,
        last_success: float | None,
        trace: CollectionTrace | None = None,
        reason: str | None = None,
    ) -> Collection:
        """A failure of ``target`` that took ``duration`` seconds and ended now."""
        return cls(
            target=target,
            snapshot=None,
            error=error,
            duration=duration,
            finished_mono=time.monotonic(),
            last_success=last_success,
            trace=trace,
            started_wall=time.time() - duration if trace is None else trace.started_wall,
            reason=reason,
        )

    @property
    def up(self) -> bool:
        """True when every page was read with retCode 0."""
        return self.snapshot is not None

    @property
    def phone_records(self) -> int | None:
        """Phone records counted (after de-duplication), when the collection succeeded."""
        return None if self.snapshot is None else sum(self.snapshot.counts.values())

    def aged(self, age: float) -> Collection:
        """This collection as served from the cache, ``age`` seconds after it finished."""
        return dataclasses.replace(self, age=age)


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
