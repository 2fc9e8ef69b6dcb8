"""One vendor app's ``requests_per_second`` budget, shared by whole collections.

Interleaving every target's pages made each target use most of its share before it
ran out of time: a budget that fitted half the targets left a few up, a different few
each scrape, and most requests went to collections that then failed. So collections
are admitted whole: each books the requests it will send (its pages, known from its
last collection or from its first page's ``total``), and is admitted only if those
fit before its deadline beside every collection already admitted, served earliest
deadline first (the order in which ``RateLimiter`` hands out slots). One that cannot
fit is refused at once and sends nothing (``BudgetExceeded``, reason ``budget``).

A collection that does not know its size yet (its first time) books its first page
alone, served ahead of the others, so that every target knows its size after one
scrape; once the page tells ``total``, the rest joins the others in deadline order, or
is refused. The collections of one scrape ask together; they are decided together, the
targets admitted least recently first, so the targets refused take their turn next
time and none is starved while the budget fits any at all.
"""

from __future__ import annotations

import asyncio
import bisect
import itertools
import math
import time
from collections.abc import Callable, Hashable, Iterable
from dataclasses import dataclass

from exporter.cec.errors import BudgetExceeded
from exporter.cec.inflight import InflightCap
from exporter.cec.ratelimit import Key, RateLimiter

SPARE = 0.03
"""Of the time to its deadline, what a collection keeps spare, at least one interval: the
loop sometimes hands a slot out later than its usual pace (a page parsed, a GC pass)."""


@dataclass(eq=False)
class Booking:
    """The requests one admitted collection may still send; ``slot`` spends one."""

    budget: Budget
    party: Hashable
    key: Key
    """Its place in the order collections are served in: deadline, then admission."""
    deadline: float
    tail: float
    """Seconds a request takes: the last one must end, not only start, by ``deadline``."""
    left: int = 0
    token: object | None = None
    """The token cache this booking booked a fetch for (one booking per cache)."""
    sizing: bool = False
    """Only its first page is booked, served ahead of the rest: the collection's size."""
    admitted_at: float = -math.inf
    turn: float = -math.inf
    """When its party was admitted before this (its turn back if this one falls short)."""
    closed: bool = False

    async def slot(self) -> InflightCap:
        """Wait for this collection's next slot and an in-flight place (held on return)."""
        if self.sizing and not self.left:  # its first page is sent: the rest (pages of a
            self.need(0)  # list without ``total``) waits in deadline order, unbooked
        cap = await self.budget.limiter.slot(self.key)
        if self.left > 0:  # else an unbooked request (a token renewal mid-way): sent anyway
            self.left -= 1
            self.budget.booked -= 1
        return cap

    def need(self, requests: int) -> bool:
        """Book exactly ``requests`` more for this collection: fewer always; more only when
        they fit before its deadline without pushing another collection past its own."""
        if self.closed:
            return False
        if self.sizing:
            return self.budget.resize(self, requests)
        extra = requests - self.left
        if extra > 0 and not self.budget.fits(self, extra):
            self.budget.fell_short(self)
            return False
        self.left = requests
        self.budget.booked += extra
        return True

    def refusal(self, requests: int, when: str) -> str:
        """Why ``requests`` more were refused ``when``: for the collection's error."""
        return self.budget.refusal(requests, self.deadline, when)

    def close(self, short: bool = False) -> None:
        """The collection ended: what it did not send is free for others. ``short``: it ran
        out of time all the same, so its party is owed the turn it had."""
        if not self.closed:
            self.closed = True
            self.budget.drop(self)
            if short:
                self.budget.fell_short(self)


@dataclass
class _Ask:
    """A collection asking to be admitted, until the turn's decision."""

    party: Hashable
    requests: int
    deadline: float
    tail: float
    token: object | None
    sizing: bool
    future: asyncio.Future[Booking]


class Budget:
    """Whole collections of one vendor app admitted to its rate, earliest deadline first."""

    def __init__(
        self, rate: float, cap: InflightCap, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.limiter = RateLimiter(rate, cap, clock)
        self.booked = 0
        """Requests booked and not sent yet, over every admitted collection."""
        self._clock = clock
        self._plan: list[Booking] = []
        """The admitted collections in the order they are served: by ``key``."""
        self._order = itertools.count()
        self._admitted: dict[Hashable, float] = {}
        """When each party was last admitted: the least recent goes first."""
        self._asks: list[_Ask] = []
        self._tokens: dict[int, Booking] = {}
        """Token caches with a fetch booked, by ``id``, and the booking that booked it."""

    @property
    def rate(self) -> float:
        return self.limiter.rate

    async def admit(
        self,
        party: Hashable,
        requests: int,
        deadline: float,
        tail: float = 0.0,
        token: object | None = None,
        sizing: bool = False,
    ) -> Booking:
        """Book ``requests`` (and a fetch of the token cache ``token``, unless another
        collection has) for ``party``'s collection, which must end by ``deadline``;
        ``sizing``: only its first page, to learn its size, served ahead of the others.

        Raises ``BudgetExceeded`` at once when they cannot fit. Asks made in the same turn
        of the loop (one scrape's collections) are decided together, in turn.
        """
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Booking] = loop.create_future()
        if not self._asks:
            loop.call_soon(self._decide)
        self._asks.append(_Ask(party, requests, deadline, tail, token, sizing, future))
        try:
            return await future
        except asyncio.CancelledError:
            if future.done() and not future.cancelled() and future.exception() is None:
                future.result().close()  # admitted just as the collection was cancelled
            raise

    def _decide(self) -> None:
        """Admit what fits of the asks made this turn, least recently admitted first."""
        asks, self._asks = self._asks, []
        asks.sort(key=lambda ask: self._admitted.get(ask.party, -math.inf))  # stable
        for ask in asks:
            if ask.future.done():
                continue  # the collection gave up meanwhile
            key = (-math.inf if ask.sizing else ask.deadline, next(self._order))
            turn = self._admitted.get(ask.party, -math.inf)
            booking = Booking(self, ask.party, key, ask.deadline, ask.tail, sizing=ask.sizing)
            booking.turn = turn
            fetch = ask.token is not None and id(ask.token) not in self._tokens
            requests = ask.requests + fetch
            if not self.fits(booking, requests):
                message = self.refusal(requests, ask.deadline, "before it sent anything")
                ask.future.set_exception(BudgetExceeded(message))
                continue
            bisect.insort(self._plan, booking, key=lambda b: b.key)
            booking.left = requests
            self.booked += requests
            if fetch:
                booking.token = ask.token
                self._tokens[id(ask.token)] = booking
            self._admitted[ask.party] = booking.admitted_at = self._clock()
            ask.future.set_result(booking)

    def fits(self, booking: Booking, extra: int) -> bool:
        """Whether ``booking`` with ``extra`` requests more (admitted or not) and every
        collection served after it still end by their deadlines, sent back to back from
        the next free slot at the pace the loop keeps, with a spare (``SPARE``)."""
        interval = self.limiter.interval * self.limiter.pace
        start = self.limiter.next_free()
        plan, wanted = self._plan, booking.left + extra
        if wanted <= 0:
            return True  # nothing to send: nobody's end moves

        def ends_in_time(queued: int, other: Booking) -> bool:
            spare = max(self.limiter.interval, SPARE * (other.deadline - start))
            return start + (queued - 1) * interval + other.tail + spare <= other.deadline

        admitted = booking in plan
        if (plan[-1] is booking) if admitted else (not plan or plan[-1].key < booking.key):
            return ends_in_time(self.booked - booking.left + wanted, booking)  # served last
        order = plan if admitted else sorted([*plan, booking], key=lambda b: b.key)
        queued, affected = 0, False
        for other in order:  # from ``booking`` on, each must still end in time
            left = wanted if other is booking else other.left
            queued += left
            affected = affected or other is booking
            if affected and left and not ends_in_time(queued, other):
                return False
        return True

    def refusal(self, requests: int, deadline: float, when: str) -> str:
        """Why ``requests`` were refused ``when``, for a collection's error."""
        return (
            f"requests_per_second {self.rate:g}: {requests} requests cannot end within the "
            f"{max(0.0, deadline - self._clock()):.2f}s left beside the {self.booked} booked "
            f"for this app; refused {when}"
        )

    def resize(self, booking: Booking, requests: int) -> bool:
        """A sizing ``booking`` learnt its size: ``requests`` more, served in deadline order
        now, if they fit (else it keeps its place and falls short)."""
        self._plan.remove(booking)
        self.booked -= booking.left
        sizing, booked = booking.key, booking.left
        booking.key, booking.left = (booking.deadline, next(self._order)), 0
        fits = self.fits(booking, requests)  # as a newcomer, not in the plan
        if fits:
            booking.left, booking.sizing = requests, False
        else:
            booking.key, booking.left = sizing, booked
            self.fell_short(booking)
        bisect.insort(self._plan, booking, key=lambda b: b.key)
        self.booked += booking.left
        return fits

    def fell_short(self, booking: Booking) -> None:
        """``booking``'s collection was refused the rest of its requests (its first page
        told of more pages than it booked): its party is owed the turn it had."""
        if self._admitted.get(booking.party) == booking.admitted_at:
            self._admitted[booking.party] = booking.turn

    def drop(self, booking: Booking) -> None:
        """``booking``'s collection ended: its unsent requests and token fetch are freed."""
        if booking in self._plan:
            self._plan.remove(booking)
        self.booked -= booking.left
        booking.left = 0
        if booking.token is not None and self._tokens.get(id(booking.token)) is booking:
            del self._tokens[id(booking.token)]

    def forget(self, parties: Iterable[Hashable]) -> None:
        """Keep the turn of ``parties`` only (the targets of this app after a reload)."""
        kept = set(parties)
        self._admitted = {p: at for p, at in self._admitted.items() if p in kept}
