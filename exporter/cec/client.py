"""Talk to one CEC account: fetch tokens, page through queryPhone, build a snapshot.

Connections come from a pool shared with every target on the same endpoint
(``Upstream``), which also paces and caps requests. The first page tells
``total``; the remaining pages are fetched with at most ``max_concurrency`` in
flight and folded into a ``SnapshotBuilder`` as they arrive. Every HTTP request
is reported once, with its outcome, to the ``RequestObserver``, logged at debug
level and recorded in the collection's ``CollectionTrace`` when there is one.
"""

from __future__ import annotations

import asyncio
import contextvars
import email.utils
import logging
import math
import os
import random
import socket
import ssl
import time
from collections.abc import Callable, Coroutine, Iterator
from typing import Any, Protocol, TypeVar

import httpx2

from exporter.cec.deadline import Deadline
from exporter.cec.errors import (
    QUERY_API,
    TOKEN_API,
    CecError,
    CredentialError,
    DeadlineExceeded,
    HttpStatusError,
    IncompleteError,
    InvalidResponse,
    NetworkError,
    PageLimitError,
    RequestTimeout,
    RetCodeError,
)
from exporter.cec.parse import clip_vendor_text, parse_page, parse_token
from exporter.cec.records import Page, Token
from exporter.cec.snapshot import Snapshot, SnapshotBuilder
from exporter.cec.target import TargetConfig
from exporter.cec.text import (
    RET_CODE_CHARS,
    TRACE_TEXT_CHARS,
    clip,
    fields,
    known_secrets,
    redact_vendor_text,
    register_secret,
)
from exporter.cec.trace import CollectionTrace, RequestRecord
from exporter.cec.upstream import Upstream

log = logging.getLogger(__name__)
_T = TypeVar("_T")

TOKEN_PATH = "/apigovernance/api/oauth/tokenByAkSk"  # noqa: S105
QUERY_PATH = "/apiaccess/CC-Management/v2/mobileAgent/queryPhone"
RETRYABLE_STATUS = frozenset({429, 500, 502, 503, 504})
MAX_TRIES = 3
BACKOFF_BASE_SECONDS = 0.2
BACKOFF_CAP_SECONDS = 5.0

# When the current collection must end (it may move later while it runs); retries
# and rate-budget waits that cannot fit before it are not attempted. Tasks inherit
# it from ``collect``.
_deadline: contextvars.ContextVar[Deadline | None] = contextvars.ContextVar(
    "deadline", default=None
)
# The log of the current collection (None: not recorded), and which try of a page this is.
_trace: contextvars.ContextVar[CollectionTrace | None] = contextvars.ContextVar(
    "trace", default=None
)
_attempt: contextvars.ContextVar[int] = contextvars.ContextVar("attempt", default=1)


def _deadline_at() -> float:
    """The current collection's deadline (monotonic), as it stands now."""
    deadline = _deadline.get()
    return math.inf if deadline is None else deadline.at


class _Abandoned:
    """Raised when a collection gives up its other pages because one page failed."""

    __slots__ = ("raised",)

    def __init__(self) -> None:
        self.raised = False


# Requests cancelled because a sibling page failed are counted as "cancelled": the
# vendor saw them, but a "timeout" would report a failure that did not happen.
_abandoned: contextvars.ContextVar[_Abandoned | None] = contextvars.ContextVar(
    "abandoned", default=None
)


class RequestObserver(Protocol):
    """Receives one report per HTTP request, and each new token's expiry."""

    def request_done(
        self,
        api: str,
        outcome: str,
        seconds: float,
        status_code: int | None = None,
        ret_code: str | None = None,
    ) -> None: ...

    def token_issued(self, expires_at: float) -> None: ...


def retry_after_seconds(value: str | None, now: float) -> float | None:
    """Parse a ``Retry-After`` header: delta seconds or an HTTP date."""
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - now)


def _transport_error(err: httpx2.HTTPError) -> CecError:
    if isinstance(err, httpx2.TimeoutException):
        return RequestTimeout(f"request timed out ({type(err).__name__})")
    # A protocol error quotes what the server sent (an illegal status or header line).
    cause = clip_vendor_text(str(err)) or type(err).__name__
    reason = _os_reason(err)
    if reason and reason.lower() not in cause.lower():
        cause += f" ({reason})"  # "All connection attempts failed" alone hides the why
    return NetworkError(cause)


def _os_reason(err: BaseException) -> str | None:
    """The errno text of the OS error under ``err`` (e.g. "Connection refused"), if any."""
    seen = err.__cause__ or err.__context__
    for _ in range(10):  # a bounded walk down the chain
        if seen is None or isinstance(seen, (ssl.SSLError, socket.gaierror)):
            return None  # their errno is not an OS errno; str(err) already says it
        if isinstance(seen, OSError) and seen.errno is not None and seen.errno > 0:
            return os.strerror(seen.errno)
        seen = seen.__cause__ or seen.__context__
    return None


class CecClient:
    """The HTTP client for one target; ``collect`` returns a ``Snapshot``."""

    def __init__(
        self, target: TargetConfig, observer: RequestObserver, upstream: Upstream | None = None
    ) -> None:
        self.target = target
        self._observer = observer
        self._upstream = upstream or Upstream()
        # Shared with every target on the same endpoint. httpcore2 frees the pool slot of
        # a cancelled request (encode/httpcore#1093 is fixed there), so a collection
        # cancelled by its deadline cannot starve the others of connections
        # (tests/test_pool_leak.py).
        self._pool = self._upstream.acquire_pool(target)
        # Absolute URLs, built once: a path is parsed and merged with base_url per request
        # (two URL parses, a tenth of the client's CPU per page).
        self._urls = {p: self._http.build_request("POST", p).url for p in (TOKEN_PATH, QUERY_PATH)}
        # Shared with every target of the same vendor app (base_url, app_key, secret).
        self.tokens = self._upstream.token_cache(target)
        self._reported: Token | None = None  # the token whose expiry the observer last saw

    @property
    def _http(self) -> httpx2.AsyncClient:
        """The pool's client as it is now (a renewed CA file replaces it on reload)."""
        return self._pool.client

    async def aclose(self) -> None:
        """Give the shared pool back (its last user closes the connections)."""
        await self._upstream.release_pool(self.target)

    # --- one HTTP exchange, counted once -------------------------------------------

    async def _exchange(
        self,
        api: str,
        path: str,
        headers: dict[str, str],
        payload: dict[str, Any],
        read: Callable[[bytes], _T],
    ) -> _T:
        """POST ``payload``, read the body (size-capped) and parse it with ``read``.

        Reports exactly one outcome to the observer, whatever happens, including
        cancellation by the scrape deadline (reported as a timeout) and abandonment
        because a sibling page failed (``cancelled``). Waiting for the
        rate budget and the in-flight cap comes first and is no request of its own.
        """
        async with self._upstream.admit(self.target, _deadline_at()) as waited:
            return await self._send(api, path, headers, payload, read, waited)

    async def _send(
        self,
        api: str,
        path: str,
        headers: dict[str, str],
        payload: dict[str, Any],
        read: Callable[[bytes], _T],
        waited: float,
    ) -> _T:
        started = time.monotonic()
        outcome, status, ret_code, ret_msg = "timeout", None, None, None
        try:
            async with self._http.stream(
                "POST",
                self._urls[path],
                headers=headers,
                json=payload,
                timeout=self.target.timeout_seconds,
            ) as response:
                status = response.status_code
                if status != 200:
                    outcome = "http_error"
                    raise HttpStatusError(
                        status,
                        retry_after_seconds(response.headers.get("Retry-After"), time.time()),
                    )
                body = await self._read_capped(response)
            result = read(body)
            outcome = "success"
            return result
        except RetCodeError as err:
            outcome = "ret_code_error"
            ret_code, ret_msg = self._redact(err.ret_code), self._redact(err.ret_msg)
            raise RetCodeError(ret_code, ret_msg) from None
        except InvalidResponse as err:  # may quote the body: vendor text
            outcome = err.outcome
            raise InvalidResponse(self._redact(str(err))) from None
        except httpx2.HTTPError as err:
            failure = _transport_error(err)
            outcome = failure.outcome
            raise failure from None
        except CecError as err:
            outcome = err.outcome
            raise
        except Exception:
            outcome = "invalid_response"  # a body our parser choked on: still counted once
            raise
        except asyncio.CancelledError:
            abandoned = _abandoned.get()
            if abandoned is not None and abandoned.raised:
                outcome = "cancelled"  # sent, then given up: a sibling page had failed
            raise
        finally:
            seconds = time.monotonic() - started
            self._observer.request_done(api, outcome, seconds, status, ret_code)
            self._record(
                api,
                payload,
                outcome,
                seconds,
                status,
                ret_code,
                ret_msg,
                waited,
            )

    def _redact(self, vendor_text: str) -> str:
        """Vendor text with the credentials it could echo (token, app key, app secret) replaced."""
        # Every registered secret, not only this target's: a target whose app shares a
        # token with others may never have read the secret itself.
        return redact_vendor_text(vendor_text, (self.target.app_key, *known_secrets()))

    def _record(
        self,
        api: str,
        payload: dict[str, Any],
        outcome: str,
        seconds: float,
        status: int | None,
        ret_code: str | None,
        ret_msg: str | None,
        waited: float,
    ) -> None:
        """One debug log line per request (never a secret), and the collection's record."""
        offset = int(payload["offset"]) if "offset" in payload else None
        attempt = _attempt.get()
        if api == QUERY_API and outcome == "success":
            ret_code = "0"  # _check_ret_code let it through
        code = None if ret_code is None else clip(ret_code, RET_CODE_CHARS)
        log.debug(
            "API request",
            extra=fields(
                target=self.target.name,
                api=api,
                offset=offset,
                status=status,
                ret_code=code,
                duration=seconds,
                attempt=attempt,
                outcome=outcome,
            ),
        )
        trace = _trace.get()
        if trace is not None:
            trace.request(
                RequestRecord(
                    at=max(0.0, trace.elapsed() - seconds),
                    api=api,
                    offset=offset,
                    attempt=attempt,
                    outcome=outcome,
                    seconds=seconds,
                    status=status,
                    ret_code=code,
                    ret_msg=None if ret_msg is None else clip(ret_msg, TRACE_TEXT_CHARS),
                    waited=waited,
                )
            )

    async def _read_capped(self, response: httpx2.Response) -> bytes:
        cap = self.target.max_response_bytes
        declared = response.headers.get("Content-Length", "")
        if declared.isdigit() and int(declared) > cap:
            raise InvalidResponse(f"response of {declared} bytes exceeds the {cap}-byte cap")
        chunks: list[bytes] = []
        size = 0
        async for chunk in response.aiter_bytes():  # decoded: the cap bounds what we hold
            size += len(chunk)
            if size > cap:
                raise InvalidResponse(f"response exceeds the {cap}-byte cap")
            chunks.append(chunk)
        return b"".join(chunks)

    # --- token ---------------------------------------------------------------------

    async def _fetch_token(self, reason: str) -> Token:
        trace = _trace.get()
        if trace is not None:
            trace.token_noted = True  # every renewal is noted; a reuse only once
            trace.note(f"new token: {reason}")
        try:
            secret = self.target.app_secret.read()
        except OSError as err:
            raise CredentialError(f"cannot read app secret: {err.strerror or err}") from None
        except UnicodeDecodeError:
            raise CredentialError("cannot read app secret: not UTF-8 text") from None
        register_secret(secret)
        headers = {
            "Content-Type": "application/json",
            "X-Token-Expire": str(self.target.token_lifetime_seconds),
        }
        payload = {"app_key": self.target.app_key, "app_secret": secret}
        # One attempt: a token is only fetched inside a page's retry loop (query_page),
        # which retries it; a loop here as well would multiply the tries (3 x 3).
        try:
            token = await self._exchange(
                TOKEN_API, TOKEN_PATH, headers, payload, lambda b: parse_token(b, time.time())
            )
        except HttpStatusError as err:
            if err.status_code not in (401, 403):
                raise
            # Counted as an http_error request; the collection failed for its credentials.
            raise CredentialError(
                f"tokenByAkSk refused app_key and app_secret (HTTP {err.status_code})"
            ) from None
        register_secret(token.value)
        log.debug(
            "new token",
            extra=fields(target=self.target.name, expires_at=round(token.expires_at)),
        )
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

    def _report(self, token: Token) -> Token:
        """Tell the observer the expiry of a token this target has not used before."""
        if token is not self._reported:
            self._reported = token
            # Whichever target of the app fetched it, this one sends it: keep it known.
            register_secret(token.value)
            self._observer.token_issued(token.expires_at)
        return token

    @staticmethod
    def _check_ret_code(body: bytes) -> Page:
        page = parse_page(body)
        if page.ret_code != "0":
            raise RetCodeError(page.ret_code, page.ret_msg)
        return page

    async def _query_once(self, offset: int) -> Page:
        """One page; a 401 costs one new token (shared with concurrent pages) and one retry."""
        token = self._report(await self.tokens.get(self._fetch_token, self.target.name))
        trace = _trace.get()
        if trace is not None:
            trace.token(f"token reused: valid for another {token.expires_at - time.time():.0f}s")
        payload = self._query_payload(offset)
        try:
            return await self._exchange(
                QUERY_API, QUERY_PATH, self._query_headers(token), payload, self._check_ret_code
            )
        except HttpStatusError as err:
            if err.status_code != 401:
                raise
        token = self._report(await self.tokens.renew(token, self._fetch_token))
        _attempt.set(_attempt.get() + 1)  # the same page sent again: its next try
        return await self._exchange(
            QUERY_API, QUERY_PATH, self._query_headers(token), payload, self._check_ret_code
        )

    async def query_page(self, offset: int) -> Page:
        """One page, with 429/5xx and network failures retried with backoff."""
        return await self._with_retries(lambda: self._query_once(offset))

    async def _with_retries(self, attempt: Callable[[], Coroutine[Any, Any, _T]]) -> _T:
        """Retry 429, 5xx and network failures, honouring ``Retry-After``.

        The caller's deadline (an enclosing asyncio timeout) bounds the whole
        thing; a wait that cannot fit is not started.
        """
        _attempt.set(0)
        for number in range(1, MAX_TRIES + 1):
            # A try after a 401's renewal already counted itself: keep counting from there.
            _attempt.set(_attempt.get() + 1)
            try:
                return await attempt()
            except (HttpStatusError, NetworkError) as err:
                if number == MAX_TRIES or not _retryable(err):
                    raise
                delay = _backoff(number, getattr(err, "retry_after", None))
                if time.monotonic() + delay >= _deadline_at():
                    raise  # no time left to wait and try again
                log.debug(
                    "retrying",
                    extra=fields(target=self.target.name, error=err, backoff=f"{delay:.2f}s"),
                )
                trace = _trace.get()
                if trace is not None:
                    trace.note(f"{err}; retrying in {delay:.2f}s")
                await asyncio.sleep(delay)
        raise AssertionError("unreachable")  # pragma: no cover

    # --- a whole collection ---------------------------------------------------------

    async def collect(
        self, deadline: Deadline | None = None, trace: CollectionTrace | None = None
    ) -> Snapshot:
        """Read every page and return a complete snapshot; raises ``CecError`` on any failure.

        The collection ends by ``deadline`` (``DeadlineExceeded``), which may move later
        while it runs; on cancellation the pages in flight are cancelled. Each request
        is recorded in ``trace`` when one is given.
        """
        deadline = deadline or Deadline()
        _trace.set(trace)
        started = time.monotonic()
        try:
            async with deadline.enforce():
                return await self._collect(deadline)
        except TimeoutError:
            if not deadline.fired:
                raise
            raise DeadlineExceeded(f"deadline of {deadline.at - started:.2f}s exceeded") from None

    async def _collect(self, deadline: Deadline) -> Snapshot:
        """Read every page; an incomplete read is retried once from the first page."""
        _deadline.set(deadline)
        _abandoned.set(_Abandoned())
        started = time.monotonic()
        builder = await self._read_pages()
        problem = builder.incomplete()
        if problem is not None:
            # Another pass costs about as long as this one: start it only if it can finish.
            if deadline.left() <= time.monotonic() - started:
                raise IncompleteError(f"{problem}; no time left to read again")
            log.info(
                "incomplete read; reading again from the first page",
                extra=fields(target=self.target.name, problem=problem),
            )
            trace = _trace.get()
            if trace is not None:
                trace.note(f"{problem}; reading again from the first page")
            builder = await self._read_pages()
            problem = builder.incomplete()
            if problem is not None:
                raise IncompleteError(f"{problem}, twice in a row")
        snapshot = builder.build()
        if snapshot.phones_truncated:
            log.warning(
                "per-phone series capped",
                extra=fields(target=self.target.name, max_phones=builder.per_phone_cap),
            )
        return snapshot

    async def _read_pages(self) -> SnapshotBuilder:
        """One pass over every page, from the first, folded into a fresh builder."""
        target = self.target
        builder = SnapshotBuilder(per_phone=target.per_phone_metrics)
        first = await self.query_page(0)
        builder.add(first)
        if first.total is None:
            await self._collect_until_short_page(builder, len(first.keys))
            return builder
        pages = max(1, math.ceil(first.total / target.page_size))
        if pages > target.max_pages:
            raise PageLimitError(
                f"total {first.total} needs {pages} pages, more than max_pages "
                f"{target.max_pages} at page_size {target.page_size}"
            )
        builder.expect(first.total)  # now a trusted size: one allocation for the keys
        offsets = iter(range(target.page_size, first.total, target.page_size))
        await _run_workers(target.max_concurrency, self._page_worker(offsets, builder))
        return builder

    def _page_worker(
        self, offsets: Iterator[int], builder: SnapshotBuilder
    ) -> Callable[[], Coroutine[Any, Any, None]]:
        async def worker() -> None:
            for offset in offsets:  # shared iterator: each offset is taken once
                builder.add(await self.query_page(offset))

        return worker

    async def _collect_until_short_page(self, builder: SnapshotBuilder, first_size: int) -> None:
        """Without a ``total``, page on sequentially until a short page or ``max_pages``."""
        size, offset = first_size, 0
        while size >= self.target.page_size:
            if builder.pages >= self.target.max_pages:
                raise PageLimitError(f"no total reported and max_pages {builder.pages} reached")
            offset += self.target.page_size
            page = await self.query_page(offset)
            builder.add(page)
            size = len(page.keys)


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


async def _run_workers(count: int, worker: Callable[[], Coroutine[Any, Any, None]]) -> None:
    """Run ``count`` copies of ``worker``; the first failure cancels the rest and is raised."""
    tasks = [asyncio.ensure_future(worker()) for _ in range(count)]
    try:
        done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
        for task in done:
            error = task.exception()
            if error is not None:
                abandoned = _abandoned.get()
                if abandoned is not None:
                    abandoned.raised = True  # the pages still in flight are cancelled below
                raise error
        await asyncio.gather(*tasks)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
