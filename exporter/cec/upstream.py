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
import ssl
import time
from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager
from dataclasses import dataclass

import httpx2

from exporter.cec.ratelimit import RateLimiter
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
