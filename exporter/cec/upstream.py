"""What the clients of all targets share: pools, the in-flight cap, rate budgets, tokens.

Targets with the same ``base_url`` and TLS/proxy settings share one pool, so 200
accounts on one CEC endpoint hold about as many sockets as requests in flight; a
semaphore caps the requests in flight across every target; targets with the same
``base_url`` and ``app_key`` share one requests-per-second budget, because the
vendor's gateway limits per app, and with the same secret also one access token.
Everything here runs on the collection loop.
"""

from __future__ import annotations

import asyncio
import logging
import math
import ssl
import time
from collections import OrderedDict, deque
from collections.abc import AsyncIterator, Callable, Hashable, Iterable
from contextlib import asynccontextmanager
from dataclasses import dataclass

import httpx2

from exporter.cec.errors import DeadlineExceeded
from exporter.cec.token import TokenCache
from exporter.config import DEFAULT_MAX_INFLIGHT_REQUESTS, Secret, TargetConfig

log = logging.getLogger(__name__)

KEEPALIVE_SECONDS = 90.0  # idle pooled connections outlive a scrape interval

PoolKey = tuple[str, bool, str | None, str | None]
BudgetKey = tuple[str, str]
AppKey = tuple[str, str, Secret]


def pool_key(target: TargetConfig) -> PoolKey:
    """Targets with equal keys can share connections: same endpoint, same TLS and proxy."""
    return (target.base_url, target.verify_tls, target.ca_file, target.proxy)


def budget_key(target: TargetConfig) -> BudgetKey:
    """Targets with equal keys share one requests-per-second budget (one vendor app)."""
    return (target.base_url, target.app_key)


def app_key(target: TargetConfig) -> AppKey:
    """Targets with equal keys share one access token: one vendor app, one secret."""
    return (target.base_url, target.app_key, target.app_secret)


def group_rates(targets: Iterable[TargetConfig]) -> dict[BudgetKey, float]:
    """The rate of each budget group: the lowest non-zero rate among its targets (0 = none)."""
    rates: dict[BudgetKey, float] = {}
    for target in targets:
        key, rate = budget_key(target), target.requests_per_second
        known = rates.get(key, 0.0)
        rates[key] = rate if known == 0 else (min(known, rate) if rate > 0 else known)
    return rates


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


@dataclass
class _Pool:
    client: httpx2.AsyncClient
    users: int = 0


class Upstream:
    """Shared pools, in-flight cap, rate limiters and tokens for every target of one exporter."""

    def __init__(self, max_inflight: int = DEFAULT_MAX_INFLIGHT_REQUESTS) -> None:
        self.max_inflight = max_inflight
        self._inflight = asyncio.Semaphore(max_inflight)
        self._pools: dict[PoolKey, _Pool] = {}
        self._limiters: dict[BudgetKey, RateLimiter] = {}
        self._tokens: dict[AppKey, TokenCache] = {}
        self._ssl: dict[tuple[bool, str | None], ssl.SSLContext] = {}

    def configure(self, targets: Iterable[TargetConfig], max_inflight: int) -> None:
        """Apply a (re)loaded config: the cap, the budgets and the shared tokens.

        A kept budget keeps its pace; a kept vendor app keeps its token.
        """
        targets = tuple(targets)
        if max_inflight != self.max_inflight:
            # Requests in flight release the semaphore they took; new ones take this one.
            self.max_inflight = max_inflight
            self._inflight = asyncio.Semaphore(max_inflight)
        limiters = {}
        for key, rate in group_rates(targets).items():
            if rate > 0:
                kept = self._limiters.get(key)
                limiters[key] = (
                    kept if kept is not None and kept.rate == rate else RateLimiter(rate)
                )
        self._limiters = limiters
        apps = {app_key(target) for target in targets}
        self._tokens = {key: cache for key, cache in self._tokens.items() if key in apps}

    def token_cache(self, target: TargetConfig) -> TokenCache:
        """The token cache ``target`` shares with every target of its vendor app."""
        key = app_key(target)
        cache = self._tokens.get(key)
        if cache is None:
            cache = self._tokens[key] = TokenCache()
        return cache

    @property
    def pools(self) -> int:
        """Connection pools open now."""
        return len(self._pools)

    def acquire_pool(self, target: TargetConfig) -> httpx2.AsyncClient:
        """The pool ``target`` uses; each call must be matched by ``release_pool``."""
        key = pool_key(target)
        pool = self._pools.get(key)
        if pool is None:
            pool = self._pools[key] = _Pool(self._new_client(target))
        pool.users += 1
        return pool.client

    async def release_pool(self, target: TargetConfig) -> None:
        """Give the pool back; the last user closes its connections."""
        key = pool_key(target)
        pool = self._pools.get(key)
        if pool is None:
            return
        pool.users -= 1
        if pool.users <= 0:
            del self._pools[key]
            await pool.client.aclose()

    async def aclose(self) -> None:
        """Close every pool (the exporter is stopping)."""
        pools, self._pools = list(self._pools.values()), {}
        for pool in pools:
            await pool.client.aclose()

    @asynccontextmanager
    async def admit(self, target: TargetConfig, deadline: float) -> AsyncIterator[float]:
        """Hold a place for one request: its rate slot, then an in-flight slot.

        Yields the seconds waited. The rate slot comes first, so a request waiting
        for its budget does not sit on an in-flight slot others could use.
        """
        started = time.monotonic()
        limiter = self._limiters.get(budget_key(target))
        if limiter is not None:
            await limiter.wait(deadline, party=target.name)
        semaphore = self._inflight
        async with semaphore:
            yield time.monotonic() - started

    def _new_client(self, target: TargetConfig) -> httpx2.AsyncClient:
        return httpx2.AsyncClient(
            base_url=target.base_url,
            verify=self._ssl_context(target),
            proxy=target.proxy,
            limits=httpx2.Limits(
                # No cap of its own: the in-flight semaphore bounds the requests, hence the
                # connections, and a reload that raises max_inflight_requests takes effect
                # in pools that outlive it.
                max_connections=None,
                max_keepalive_connections=None,
                # httpx2's 5 s default would reopen every connection (TLS handshakes
                # included) on each scrape at a 15-60 s interval; an idle connection the
                # server closed meanwhile is noticed and dropped before reuse.
                keepalive_expiry=KEEPALIVE_SECONDS,
            ),
            trust_env=False,  # only the proxy the config names
            follow_redirects=False,
        )

    def _ssl_context(self, target: TargetConfig) -> ssl.SSLContext:
        # Built once per setting: loading a CA bundle costs tens of ms.
        # A context, not the path: httpx2 deprecates verify=<str> (same meaning).
        key = (target.verify_tls, target.ca_file)
        context = self._ssl.get(key)
        if context is None:
            context = self._ssl[key] = (
                ssl.create_default_context(cafile=target.ca_file)
                if target.ca_file
                else httpx2.create_ssl_context(verify=target.verify_tls, trust_env=False)
            )
        return context
