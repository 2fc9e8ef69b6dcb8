"""Talk to one CEC account: fetch tokens, page through queryPhone, build a snapshot.

Requests go out through a ``Transport``, which shares a connection pool with every
target on the same endpoint and counts each request once. The first page tells
``total``; the remaining pages are fetched with at most ``max_concurrency`` in flight
and folded into a ``SnapshotBuilder`` as they arrive. The collection's deadline, its
log and whether it has given up travel down as one ``CollectionRun`` argument.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import math
import random
import statistics
import time
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

from exporter.cec.budget import Booking
from exporter.cec.deadline import Deadline
from exporter.cec.errors import (
    QUERY_API,
    RETRYABLE_STATUS,
    TOKEN_API,
    BudgetExceeded,
    CecError,
    CredentialError,
    DeadlineExceeded,
    HttpStatusError,
    IncompleteError,
    NetworkError,
    PageLimitError,
    RetCodeError,
)
from exporter.cec.parse import parse_page, parse_token
from exporter.cec.records import Page, Token
from exporter.cec.redact import hold_secret, release_secrets
from exporter.cec.run import CollectionRun
from exporter.cec.snapshot import Deduplicated, Snapshot, SnapshotBuilder
from exporter.cec.steps import in_steps
from exporter.cec.target import TargetConfig
from exporter.cec.text import fields
from exporter.cec.token import TokenCache
from exporter.cec.trace import CollectionTrace
from exporter.cec.transport import QUERY_PATH, TOKEN_PATH, RequestObserver, Transport
from exporter.cec.upstream import Upstream

log = logging.getLogger(__name__)
_T = TypeVar("_T")

MAX_TRIES = 3
BACKOFF_BASE_SECONDS = 0.2
BACKOFF_CAP_SECONDS = 5.0


class _PageTries:
    """How many times one page has been sent: a retry and a 401's renewal each send it again."""

    __slots__ = ("count",)

    def __init__(self) -> None:
        self.count = 0


class CecClient:
    """The HTTP client for one target; ``read_snapshot`` returns a ``Snapshot``."""

    def __init__(
        self,
        target: TargetConfig,
        observer: RequestObserver,
        upstream: Upstream | None = None,
        previous: CecClient | None = None,
    ) -> None:
        """``previous``: the client of the same target name that a reload replaces; what it
        learnt of the list's size and the vendor's pace carries over (a target whose size
        is unknown costs a whole scrape's budget to learn it again)."""
        self.target = target
        self._observer = observer
        self._upstream = upstream = upstream or Upstream()
        self.transport = Transport(target, observer, upstream)
        self._tokens: TokenCache | None = None
        """The token cache of this target's app and secret value as last read: shared with
        every target of the same base_url, app_key and secret value."""
        self._reported: Token | None = None  # the token whose expiry the observer last saw
        self._pages: int | None = None
        """Pages a pass over the list took last time: what a collection books of a budget."""
        self._request_seconds = 0.0
        """How long a request took last time (the median): the last one must end in time."""
        if previous is not None:
            self._request_seconds = previous._request_seconds
            if previous._pages is not None:  # as many records, at this page size
                records = previous._pages * previous.target.page_size
                self._pages = max(1, math.ceil(records / target.page_size))
        # What this target sends stays redacted for as long as it lives (``aclose``).
        hold_secret(self, "app_key", target.app_key)
        if target.app_secret.value is not None:
            hold_secret(self, "app_secret", target.app_secret.value)
        # The last success's records de-duplicated: a collection that lists the same takes
        # them over (SnapshotBuilder.after), which costs no key set and no comparison.
        self._last: Deduplicated | None = None

    async def aclose(self) -> None:
        """Give the shared pool back (its last user closes the connections); what this
        target sent need no longer be redacted."""
        release_secrets(self)
        await self.transport.aclose()

    # --- token ---------------------------------------------------------------------

    def _read_secret(self) -> str:
        """The app secret's value now (a file is read again), redacted from now on."""
        try:
            secret = self.target.app_secret.read()
        except OSError as err:
            raise CredentialError(f"cannot read app secret: {err.strerror or err}") from None
        except UnicodeDecodeError:
            raise CredentialError("cannot read app secret: not UTF-8 text") from None
        hold_secret(self, "app_secret", secret)
        return secret

    def _token_cache(self, rejected: bool) -> tuple[TokenCache, str | None]:
        """The token cache to ask now, and the secret value read to find it (None: not read).

        Tokens are shared by the secret's value, so it is read when a token is needed (none
        held, one due, or one ``rejected`` with a 401): a rotated file, or another target
        with the same value written elsewhere, leads to the cache of that value.
        """
        cache = self._tokens
        if cache is not None and not rejected and not cache.due():
            return cache, None
        try:
            secret = self._read_secret()
        except CredentialError:
            if cache is None or rejected:
                raise
            return cache, None  # the early renewal reads it again and keeps the held token
        self._tokens = self._upstream.token_cache(self.target, secret)
        return self._tokens, secret

    async def _fetch_token(
        self, run: CollectionRun, tries: _PageTries, secret: str | None, reason: str
    ) -> Token:
        """A new token, fetched within the page try ``tries`` of ``run`` with ``secret``
        (read now if None)."""
        run.trace.token_noted = True  # every renewal is noted; a reuse only once
        run.trace.note(f"new token: {reason}")
        if secret is None:
            secret = self._read_secret()
        headers = {
            "Content-Type": "application/json",
            "X-Token-Expire": str(self.target.token_lifetime_seconds),
        }
        payload = {"app_key": self.target.app_key, "app_secret": secret}
        # One attempt: a token is only fetched inside a page's retry loop (query_page),
        # which retries it; a loop here as well would multiply the tries (3 x 3).
        try:
            token = await self.transport.post(
                run,
                tries.count,
                TOKEN_API,
                TOKEN_PATH,
                headers,
                payload,
                lambda b: parse_token(b, time.time()),
            )
        except HttpStatusError as err:
            if err.status_code not in (401, 403):
                raise
            # Counted as an http_error request; the collection failed for its credentials.
            raise CredentialError(
                f"tokenByAkSk refused app_key and app_secret (HTTP {err.status_code})"
            ) from None
        log.debug(
            "new token",
            extra=fields(target=self.target.name, expires_at=round(token.expires_at)),
        )
        return token

    def _report(self, token: Token) -> Token:
        """Tell the observer the expiry of a token this target has not used before."""
        if token is not self._reported:
            self._reported = token
            # Whichever target of the app fetched it, this one sends it: keep it known.
            hold_secret(self, "token", token.value)
            self._observer.token_issued(token.expires_at)
        return token

    # --- pages ---------------------------------------------------------------------

    def _query_payload(self, offset: int) -> dict[str, Any]:
        limit = self.target.page_size
        if self.target.pagination_as_strings:
            return {"offset": str(offset), "limit": str(limit)}
        return {"offset": offset, "limit": limit}

    def _query_headers(self, token: Token) -> dict[str, str]:
        headers = {
            "Authorization": f"Bearer {token.value}",
            "X-APP-Key": self.target.app_key,
            "Content-Type": "application/json",
        }
        if self.target.tenant_space_id:
            headers["X-TenantSpaceID"] = self.target.tenant_space_id
        return headers

    @staticmethod
    def _check_ret_code(body: bytes) -> Page:
        page = parse_page(body)
        if page.ret_code != "0":
            raise RetCodeError(page.ret_code, page.ret_msg)
        return page

    async def _query_once(self, run: CollectionRun, offset: int, tries: _PageTries) -> Page:
        """One page; a 401 costs one new token (shared with concurrent pages) and one retry."""
        cache, secret = self._token_cache(rejected=False)
        fetch = functools.partial(self._fetch_token, run, tries, secret)
        token = self._report(await cache.get(fetch, self.target.name))
        if not run.trace.token_noted:  # the first decision only: no text to make per page
            run.trace.token(
                f"token reused: valid for another {token.expires_at - time.time():.0f}s"
            )
        payload = self._query_payload(offset)

        async def send(token: Token) -> Page:
            headers = self._query_headers(token)
            return await self.transport.post(
                run, tries.count, QUERY_API, QUERY_PATH, headers, payload, self._check_ret_code
            )

        try:
            return await send(token)
        except HttpStatusError as err:
            if err.status_code != 401:
                raise
        cache, secret = self._token_cache(rejected=True)
        fetch = functools.partial(self._fetch_token, run, tries, secret)
        token = self._report(await cache.renew(token, fetch))
        tries.count += 1  # the same page sent again: its next try
        return await send(token)

    async def query_page(self, run: CollectionRun, offset: int) -> Page:
        """One page, with 429/5xx and network failures retried with backoff.

        ``run``'s deadline bounds the whole thing: a backoff that cannot end before it
        is not started.
        """
        tries = _PageTries()
        for number in range(1, MAX_TRIES + 1):
            # A try after a 401's renewal already counted itself: keep counting from there.
            tries.count += 1
            try:
                return await self._query_once(run, offset, tries)
            except (HttpStatusError, NetworkError) as err:
                if number == MAX_TRIES or not _retryable(err):
                    raise
                delay = _backoff(number, getattr(err, "retry_after", None))
                if time.monotonic() + delay >= run.deadline.at:
                    raise  # no time left to wait and try again
                if run.booking is not None and not run.booking.need(run.booking.left + 1):
                    raise  # the app's budget has no room for another try
                log.debug(
                    "retrying",
                    extra=fields(target=self.target.name, error=err, backoff=f"{delay:.2f}s"),
                )
                run.trace.note(f"{err}; retrying in {delay:.2f}s")
                await asyncio.sleep(delay)
        raise AssertionError("unreachable")  # pragma: no cover

    # --- a whole collection ---------------------------------------------------------

    async def read_snapshot(
        self, deadline: Deadline | None = None, trace: CollectionTrace | None = None
    ) -> Snapshot:
        """Read every page and return a complete snapshot; raises ``CecError`` on any failure.

        The collection ends by ``deadline`` (``DeadlineExceeded``), which may move later
        while it runs; on cancellation the pages in flight are cancelled. Each request
        is recorded in ``trace`` when one is given.
        """
        run = CollectionRun(deadline or Deadline(), trace or CollectionTrace())
        started = time.monotonic()
        try:
            async with run.deadline.enforce():
                run.booking = await self._book(run)
                try:
                    return await self._read_complete(run)
                finally:
                    self._learn(run)
        except TimeoutError:
            if not run.deadline.fired:
                raise
            raise DeadlineExceeded(
                f"deadline of {run.deadline.at - started:.2f}s exceeded"
            ) from None

    async def _book(self, run: CollectionRun) -> Booking | None:
        """Admit this collection to its app's rate budget, if it has one, with the requests
        it will send: a pass over the pages as long as the last one (the first page alone
        the first time), and a token if one is due. ``BudgetExceeded`` when they cannot fit.
        """
        cache, _ = self._token_cache(rejected=False)
        due = cache if cache.due() else None
        booking = await self._upstream.book(
            self.target, self._pages, run, self._request_seconds, due
        )
        if booking is not None:
            rate, booked = booking.budget.rate, booking.left
            sizing = " (its first page: the size is not known yet)" if booking.sizing else ""
            run.trace.note(f"requests_per_second {rate:g}: admitted, {booked} requests{sizing}")
        return booking

    def _learn(self, run: CollectionRun) -> None:
        """What the next collection books: this one's request time; its booking ends (a
        collection its deadline cut short keeps its turn: it was admitted for nothing)."""
        if run.booking is not None:
            run.booking.close(short=run.deadline.fired)
        seconds = [r.seconds for r in run.trace.requests if r.outcome == "success"]
        if seconds:
            self._request_seconds = statistics.median(seconds)

    async def _read_complete(self, run: CollectionRun) -> Snapshot:
        """Read every page; an incomplete read is retried once from the first page."""
        started = time.monotonic()
        builder = await self._read_pages(run)
        await in_steps(builder.deduplicating())  # a million phones: the loop serves meanwhile
        problem = builder.incomplete()
        if problem is not None:
            # Another pass costs about as long as this one: start it only if it can finish.
            if run.deadline.left() <= time.monotonic() - started:
                raise IncompleteError(f"{problem}; no time left to read again")
            if run.booking is not None and not run.booking.need(self._pages or 1):
                raise IncompleteError(f"{problem}; the requests_per_second budget has no room")
            log.info(
                "incomplete read; reading again from the first page",
                extra=fields(target=self.target.name, problem=problem),
            )
            run.trace.note(f"{problem}; reading again from the first page")
            builder = await self._read_pages(run)
            await in_steps(builder.deduplicating())
            problem = builder.incomplete()
            if problem is not None:
                raise IncompleteError(f"{problem}, twice in a row")
        snapshot = builder.build()
        self._last = builder.deduplicated
        if snapshot.phones_truncated:
            log.warning(
                "per-phone series capped",
                extra=fields(target=self.target.name, max_phones=builder.per_phone_cap),
            )
        return snapshot

    async def _read_pages(self, run: CollectionRun) -> SnapshotBuilder:
        """One pass over every page, from the first, folded into a fresh builder.

        Pages are read one by one until one gives ``total`` (the first, as a rule), then
        the rest ``max_concurrency`` at a time. Without any ``total``, up to a short page
        that the next one, empty, shows to be the last.
        """
        target = self.target
        builder = SnapshotBuilder.after(self._last, per_phone=target.per_phone_metrics)
        offset, short = 0, None
        while builder.total is None:
            page = await self.query_page(run, offset)
            builder.add(page, offset)
            if builder.total is not None:
                offset += target.page_size
                break
            if short is not None:  # a page after a short one: it had no end, or this one
                if page.keys:
                    builder.gap = short
                self._pages = builder.pages
                return builder
            if len(page.keys) < target.page_size:
                short = offset  # the end, if the next page is empty: nothing to count against
            elif builder.pages >= target.max_pages:
                raise PageLimitError(f"no total reported and max_pages {builder.pages} reached")
            offset += target.page_size
        total = builder.total
        pages = self._pages = max(1, math.ceil(total / target.page_size))
        if pages > target.max_pages:
            raise PageLimitError(
                f"total {total} needs {pages} pages, more than max_pages "
                f"{target.max_pages} at page_size {target.page_size}"
            )
        rest = range(offset, total, target.page_size)
        if run.booking is not None and not run.booking.need(len(rest)):
            raise BudgetExceeded(run.booking.refusal(len(rest), "after the first page"))
        offsets = iter(rest)

        async def worker() -> None:
            for offset in offsets:  # shared iterator: each offset is taken once
                builder.add(await self.query_page(run, offset), offset)

        await _run_workers(run, target.max_concurrency, worker)
        return builder


def _retryable(err: CecError) -> bool:
    return isinstance(err, NetworkError) or (
        isinstance(err, HttpStatusError) and err.status_code in RETRYABLE_STATUS
    )


def _backoff(attempt: int, retry_after: float | None) -> float:
    """Exponential backoff with jitter, or the server's ``Retry-After`` (capped)."""
    if retry_after is not None:
        return min(retry_after, BACKOFF_CAP_SECONDS * 6)
    base = min(BACKOFF_CAP_SECONDS, BACKOFF_BASE_SECONDS * 2 ** (attempt - 1))
    return float(base * (0.5 + random.random() / 2))


async def _run_workers(
    run: CollectionRun, count: int, worker: Callable[[], Coroutine[Any, Any, None]]
) -> None:
    """Run ``count`` copies of ``worker``; the first failure abandons ``run``'s other
    pages (cancelled), and is raised."""
    tasks = [asyncio.ensure_future(worker()) for _ in range(count)]
    try:
        done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
        for task in done:
            error = task.exception()
            if error is not None:
                run.abandoned = True  # the pages still in flight are cancelled below
                raise error
        await asyncio.gather(*tasks)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
