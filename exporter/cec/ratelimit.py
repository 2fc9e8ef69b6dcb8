"""A requests-per-second budget shared fairly by the targets of one vendor app.

Requests are spaced ``1/rate`` seconds apart; the targets waiting are served
round-robin, and a slot is handed out only when it is due, so neither a busy
target nor one that gave up (cancelled waiters) holds the budget from the others.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Hashable

from exporter.cec.errors import DeadlineExceeded


class _Waiter:
    """One request waiting for a slot: its party (the target) and the future granting it."""

    __slots__ = ("future", "party")

    def __init__(self, party: Hashable, future: asyncio.Future[float]) -> None:
        self.party = party
        self.future = future


class RateLimiter:
    """Spaces requests ``1/rate`` seconds apart (an interval limiter, no bursts), fairly.

    The targets sharing one budget ("parties") are served round-robin: each party
    waiting gets one slot in turn, whatever the number of requests it has queued, so
    a big account with many pages in flight cannot starve a small one. A slot is
    handed out only when it is due, never reserved ahead: a waiter cancelled (its
    deadline passed, a sibling page failed, a reload) holds nothing. A request whose
    turn, served fairly, would only come after its deadline is refused at once.
    """

    def __init__(self, rate: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.rate = rate
        self._interval = 1.0 / rate
        self._clock = clock
        self._next = -math.inf
        """The earliest instant (``clock``) at which the next slot may be handed out."""
        self._queues: OrderedDict[Hashable, deque[_Waiter]] = OrderedDict()
        """Waiting requests per party; the order is the round-robin turn."""
        self._timer: asyncio.TimerHandle | None = None

    @property
    def waiting(self) -> int:
        """Requests waiting for a slot now."""
        return sum(map(len, self._queues.values()))

    def slots_ahead(self, party: Hashable) -> int:
        """Slots handed out before a request ``party`` queued now, if nobody else came.

        Round-robin: each party before ``party`` in turn gets one slot more than it
        has rounds to wait, each party after it as many as its rounds.
        """
        own = self._queues.get(party)
        rounds = len(own) if own is not None else 0
        ahead, before = rounds, True
        for other, queue in self._queues.items():
            if other == party:
                before = False
                continue
            ahead += min(len(queue), rounds + 1 if before else rounds)
        return ahead

    async def wait(self, deadline: float, party: Hashable = None) -> float:
        """Wait for ``party``'s next slot; returns the seconds waited.

        Raises ``DeadlineExceeded`` at once when the slot, served fairly, would come
        after ``deadline``.
        """
        now = self._clock()
        if not self._queues and now >= self._next:
            self._next = now + self._interval
            return 0.0
        start = max(now, self._next) + self._interval * self.slots_ahead(party)
        if start > deadline:
            raise DeadlineExceeded(
                f"requests_per_second {self.rate:g}: the next request could start only in "
                f"{start - now:.2f}s, after the deadline"
            )
        waiter = _Waiter(party, asyncio.get_running_loop().create_future())
        queue = self._queues.get(party)
        if queue is None:
            queue = self._queues[party] = deque()  # a new party waits for its turn last
        queue.append(waiter)
        self._schedule()
        try:
            granted = await waiter.future
        except asyncio.CancelledError:
            self._withdraw(waiter)
            raise
        return max(0.0, granted - now)

    def _withdraw(self, waiter: _Waiter) -> None:
        """A cancelled waiter leaves the queue; a slot it was just granted goes to the next."""
        future = waiter.future
        if future.done() and not future.cancelled():
            granted = future.result()
            if self._next == granted + self._interval:  # no later slot handed out yet
                self._next = granted
                self._reschedule()
            return
        queue = self._queues.get(waiter.party)
        if queue is not None and waiter in queue:
            queue.remove(waiter)
            if not queue:
                del self._queues[waiter.party]

    def _reschedule(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._schedule()

    def _schedule(self) -> None:
        """Arm the timer for the next slot, if anyone waits and none is armed."""
        if self._timer is None and self._queues:
            delay = max(0.0, self._next - self._clock())
            self._timer = asyncio.get_running_loop().call_later(delay, self._dispatch)

    def _dispatch(self) -> None:
        """The slot is due: hand it to the next party in turn."""
        self._timer = None
        while self._queues:
            party, queue = next(iter(self._queues.items()))
            waiter = queue.popleft()
            if queue:
                self._queues.move_to_end(party)  # its next request waits for the others
            else:
                del self._queues[party]
            if waiter.future.done():  # cancelled, not yet withdrawn
                continue
            slot = max(self._clock(), self._next)
            waiter.future.set_result(slot)
            self._next = slot + self._interval
            break
        self._schedule()
