"""What the clients of all targets share: pools, the in-flight cap, rate budgets, tokens.

Targets with the same ``base_url`` and TLS/proxy settings share one pool, so 200
accounts on one CEC endpoint hold about as many sockets as requests in flight; one
cap bounds the requests in flight across every target; targets with the same
``base_url`` and ``app_key`` share one requests-per-second budget, because the
vendor's gateway limits per app, and with the same secret value also one access token.
A ``ca_file`` whose content changed is read again on reload, and the pools that
trust it get a new client. Everything here runs on the collection loop.
"""

from __future__ import annotations

import asyncio
import hashlib
import http.cookiejar
import logging
import ssl
import time
from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx2

from exporter.cec.budget import Booking, Budget
from exporter.cec.inflight import InflightCap
from exporter.cec.run import CollectionRun
from exporter.cec.target import TargetConfig
from exporter.cec.text import fields
from exporter.cec.token import TokenCache

log = logging.getLogger(__name__)

KEEPALIVE_SECONDS = 90.0  # idle pooled connections outlive a scrape interval
DEFAULT_MAX_INFLIGHT_REQUESTS = 64
"""Requests in flight at once across every target, unless the config says otherwise."""

PoolKey = tuple[str, bool, str | None, str | None]
BudgetKey = tuple[str, str]
TokenKey = tuple[str, str, bytes]


def pool_key(target: TargetConfig) -> PoolKey:
    """Targets with equal keys can share connections: same endpoint, same TLS and proxy."""
    return (target.base_url, target.verify_tls, target.ca_file, target.proxy)


def budget_key(target: TargetConfig) -> BudgetKey:
    """Targets with equal keys share one requests-per-second budget (one vendor app)."""
    return (target.base_url, target.app_key)


def token_key(target: TargetConfig, secret: str) -> TokenKey:
    """Targets with equal keys share one access token: one vendor app, one secret value
    (``secret``, read now), however it is written (inline, in one file or another)."""
    return (target.base_url, target.app_key, hashlib.sha256(secret.encode()).digest())


def group_rates(targets: Iterable[TargetConfig]) -> dict[BudgetKey, float]:
    """The rate of each budget group: the lowest non-zero rate among its targets (0 = none)."""
    rates: dict[BudgetKey, float] = {}
    for target in targets:
        key, rate = budget_key(target), target.requests_per_second
        known = rates.get(key, 0.0)
        rates[key] = rate if known == 0 else (min(known, rate) if rate > 0 else known)
    return rates


class _NoCookies(http.cookiejar.DefaultCookiePolicy):
    """Accepts no cookie and returns none: a pool is shared by targets (tenant spaces,
    accounts), so a ``Set-Cookie`` answered to one must never ride on another's requests;
    the CEC API needs no cookie (a bearer token authenticates each request)."""

    def set_ok(self, cookie: http.cookiejar.Cookie, request: object) -> bool:
        return False

    def return_ok(self, cookie: http.cookiejar.Cookie, request: object) -> bool:
        return False


def _ca_digest(ca_file: str | None) -> bytes | None:
    """A digest of the CA file's content (None without one): tells a renewed CA apart."""
    return None if ca_file is None else hashlib.sha256(Path(ca_file).read_bytes()).digest()


@dataclass
class Pool:
    """One shared connection pool; ``client`` is replaced when its CA file is renewed,
    so users read it per request rather than keeping it."""

    client: httpx2.AsyncClient
    ca_digest: bytes | None = None
    users: int = 0


class Upstream:
    """Shared pools, in-flight cap, rate limiters and tokens for every target of one exporter."""

    def __init__(self, max_inflight: int = DEFAULT_MAX_INFLIGHT_REQUESTS) -> None:
        self.max_inflight = max_inflight
        self._inflight = InflightCap(max_inflight)
        self._pools: dict[PoolKey, Pool] = {}
        self._budgets: dict[BudgetKey, Budget] = {}
        self._tokens: dict[TokenKey, TokenCache] = {}
        self._ssl: dict[tuple[bool, str | None], tuple[bytes | None, ssl.SSLContext]] = {}
        # Clients replaced by a CA renewal, each closed by a timer once its requests ended
        # (a timer, not a sleeping task: shutdown waits for tasks).
        self._retired: dict[httpx2.AsyncClient, asyncio.TimerHandle] = {}
        self._closing: set[asyncio.Task[None]] = set()
        self._grace = 0.0

    def configure(self, targets: Iterable[TargetConfig], max_inflight: int) -> None:
        """Apply a (re)loaded config: the cap, the budgets and the shared tokens.

        A kept budget keeps its pace, its admitted collections and its turn; a kept
        vendor app keeps its token.
        """
        targets = tuple(targets)
        if max_inflight != self.max_inflight:
            # Requests in flight release the cap they took a place of; new ones take this.
            self.max_inflight = max_inflight
            self._inflight = InflightCap(max_inflight)
        budgets = {}
        names: dict[BudgetKey, list[str]] = {}
        for target in targets:
            names.setdefault(budget_key(target), []).append(target.name)
        for key, rate in group_rates(targets).items():
            if rate > 0:
                budget = self._budgets.get(key)
                if budget is None or budget.rate != rate:
                    budget = Budget(rate, self._inflight)
                budget.limiter.cap = self._inflight
                budget.forget(names[key])
                budgets[key] = budget
        self._budgets = budgets
        self._tokens = {key: self._tokens[key] for key in self._token_keys(targets)}
        self._renew_tls(targets)

    def _token_keys(self, targets: Iterable[TargetConfig]) -> set[TokenKey]:
        """The keys of the token caches ``targets`` use now; for a secret that cannot be
        read now, every cache of its app is kept (its collections will say why)."""
        keys: set[TokenKey] = set()
        for target in targets:
            try:
                keys.add(token_key(target, target.app_secret.read()))
            except (OSError, UnicodeDecodeError):
                app = (target.base_url, target.app_key)
                keys.update(key for key in self._tokens if key[:2] == app)
        return keys & self._tokens.keys()

    def token_cache(self, target: TargetConfig, secret: str) -> TokenCache:
        """The token cache ``target`` shares with every target of its vendor app and
        secret value."""
        key = token_key(target, secret)
        cache = self._tokens.get(key)
        if cache is None:
            cache = self._tokens[key] = TokenCache()
        return cache

    def _renew_tls(self, targets: Iterable[TargetConfig]) -> None:
        """Give the pools whose CA file changed a client that trusts the new content.

        The old client serves the requests in flight, then closes: after the longest
        ``timeout_seconds``, by which every request on it has ended.
        """
        targets = list(targets)
        self._grace = max((t.timeout_seconds for t in targets), default=0.0)
        in_use = {(t.verify_tls, t.ca_file) for t in targets}
        self._ssl = {key: value for key, value in self._ssl.items() if key in in_use}
        for key, pool in self._pools.items():
            base_url, ca_file = key[0], key[2]
            try:
                if _ca_digest(ca_file) == pool.ca_digest:
                    continue
                client, digest = self._new_client(key)
            except (OSError, ssl.SSLError) as err:  # changed again since the config check
                log.warning(
                    "ca_file unusable; keeping the CA read before",
                    extra=fields(ca_file=ca_file, error=err),
                )
                continue
            log.info(
                "ca_file changed; new connections trust it",
                extra=fields(ca_file=ca_file, base_url=base_url),
            )
            old, pool.client, pool.ca_digest = pool.client, client, digest
            loop = asyncio.get_running_loop()
            self._retired[old] = loop.call_later(self._grace, self._close_retired, old)

    def _close_retired(self, client: httpx2.AsyncClient) -> None:
        del self._retired[client]
        task = asyncio.ensure_future(client.aclose())
        self._closing.add(task)  # held until done: the loop keeps only weak references
        task.add_done_callback(self._closing.discard)

    @property
    def pools(self) -> int:
        """Connection pools open now."""
        return len(self._pools)

    def acquire_pool(self, target: TargetConfig) -> Pool:
        """The pool ``target`` uses; each call must be matched by ``release_pool``."""
        key = pool_key(target)
        pool = self._pools.get(key)
        if pool is None:
            pool = self._pools[key] = Pool(*self._new_client(key))
        pool.users += 1
        return pool

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
        retired, self._retired = self._retired, {}
        for client, timer in retired.items():
            timer.cancel()
            await client.aclose()
        await asyncio.gather(*self._closing, return_exceptions=True)

    async def book(
        self,
        target: TargetConfig,
        pages: int | None,
        run: CollectionRun,
        tail: float,
        token: object,
    ) -> Booking | None:
        """Admit ``target``'s collection to its app's rate budget with its ``pages`` booked
        (None: unknown, its first page alone), and a fetch of ``token`` (a token cache)
        when one is due; None without a budget.

        Raises ``BudgetExceeded`` when they cannot fit before ``run``'s deadline.
        """
        budget = self._budgets.get(budget_key(target))
        if budget is None:
            return None
        deadline, sizing = run.deadline.at, pages is None
        return await budget.admit(target.name, pages or 1, deadline, tail, token, sizing)

    @asynccontextmanager
    async def admit(self, target: TargetConfig, run: CollectionRun) -> AsyncIterator[float]:
        """Hold a place for one request of ``run``: its rate slot, taken as it leaves with
        an in-flight place, or only the place without a budget. Yields the seconds waited.
        """
        started = time.monotonic()
        if run.booking is not None:
            cap = await run.booking.slot()
        elif (budget := self._budgets.get(budget_key(target))) is not None:
            # a request outside a booked collection, served by its deadline
            cap = await budget.limiter.slot((run.deadline.at, -1))
        else:
            cap = self._inflight
            await cap.take()
        try:
            yield time.monotonic() - started
        finally:
            cap.release()

    def _new_client(self, key: PoolKey) -> tuple[httpx2.AsyncClient, bytes | None]:
        """A client for the pool ``key``, and the digest of the CA content it trusts."""
        base_url, verify_tls, ca_file, proxy = key
        digest, context = self._ssl_context(verify_tls, ca_file)
        client = httpx2.AsyncClient(
            base_url=base_url,
            verify=context,
            proxy=proxy,
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
            cookies=http.cookiejar.CookieJar(policy=_NoCookies()),
            follow_redirects=False,
        )
        return client, digest

    def _ssl_context(
        self, verify_tls: bool, ca_file: str | None
    ) -> tuple[bytes | None, ssl.SSLContext]:
        # Built once per setting and CA content: loading a CA bundle costs tens of ms.
        # A context, not the path: httpx2 deprecates verify=<str> (same meaning).
        key = (verify_tls, ca_file)
        digest = _ca_digest(ca_file)
        cached = self._ssl.get(key)
        if cached is None or cached[0] != digest:
            context = (
                ssl.create_default_context(cafile=ca_file)
                if ca_file
                else httpx2.create_ssl_context(verify=verify_tls, trust_env=False)
            )
            cached = self._ssl[key] = (digest, context)
        return cached
