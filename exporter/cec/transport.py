"""One HTTP exchange with the vendor, counted once whatever happens.

``Transport.post`` waits for the shared rate budget and in-flight cap, sends the
request over the pool it shares with every target on the same endpoint, reads the
body up to ``max_response_bytes``, classifies any failure as a ``CecError``, and
reports exactly one outcome to the ``RequestObserver``: on success, on error, and on
cancellation (by the deadline, or because a sibling page failed). Vendor text that
enters here is redacted before it goes anywhere.
"""

from __future__ import annotations

import asyncio
import email.utils
import logging
import os
import socket
import ssl
import time
from collections.abc import Callable
from typing import Any, Protocol, TypeVar

import httpx2

from exporter.cec.errors import (
    QUERY_API,
    CecError,
    HttpStatusError,
    InvalidResponse,
    NetworkError,
    RequestTimeout,
    RetCodeError,
)
from exporter.cec.parse import clip_vendor_text
from exporter.cec.redact import redact
from exporter.cec.run import CollectionRun
from exporter.cec.target import TargetConfig
from exporter.cec.text import RET_CODE_CHARS, TRACE_TEXT_CHARS, clip, fields
from exporter.cec.trace import RequestRecord
from exporter.cec.upstream import Upstream

log = logging.getLogger(__name__)
_T = TypeVar("_T")

TOKEN_PATH = "/apigovernance/api/oauth/tokenByAkSk"  # noqa: S105
QUERY_PATH = "/apiaccess/CC-Management/v2/mobileAgent/queryPhone"


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
    cause = redact(clip_vendor_text(str(err))) or type(err).__name__
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


class Transport:
    """Sends one target's requests over its shared pool; each is counted exactly once."""

    def __init__(self, target: TargetConfig, observer: RequestObserver, upstream: Upstream) -> None:
        self.target = target
        self._observer = observer
        self._upstream = upstream
        # Shared with every target on the same endpoint. httpcore2 frees the pool slot of
        # a cancelled request (encode/httpcore#1093 is fixed there), so a collection
        # cancelled by its deadline cannot starve the others of connections
        # (tests/test_pool_leak.py).
        self._pool = upstream.acquire_pool(target)
        # Absolute URLs, built once: a path is parsed and merged with base_url per request
        # (two URL parses, a tenth of the client's CPU per page).
        self._urls = {p: self.http.build_request("POST", p).url for p in (TOKEN_PATH, QUERY_PATH)}
        # Built once too: from a float, httpx2 checks ``isinstance(x, SupportsFloat)`` (a
        # Protocol, slow) on every request.
        self._timeout = httpx2.Timeout(target.timeout_seconds)

    @property
    def http(self) -> httpx2.AsyncClient:
        """The pool's client as it is now (a renewed CA file replaces it on reload)."""
        return self._pool.client

    async def aclose(self) -> None:
        """Give the shared pool back (its last user closes the connections)."""
        await self._upstream.release_pool(self.target)

    async def post(
        self,
        run: CollectionRun,
        attempt: int,
        api: str,
        path: str,
        headers: dict[str, str],
        payload: dict[str, Any],
        read: Callable[[bytes], _T],
    ) -> _T:
        """POST ``payload``, read the body (size-capped) and parse it with ``read``.

        ``attempt`` is which try of a page this is, for the log. Waiting for the rate
        budget and the in-flight cap (until ``run``'s deadline at most) comes first and
        is no request of its own. Then exactly one outcome is reported to the observer,
        whatever happens, including cancellation by the deadline (reported as a timeout)
        and abandonment because a sibling page failed (``cancelled``).
        """
        async with self._upstream.admit(self.target, run) as waited:
            started = time.monotonic()
            outcome, status, ret_code, ret_msg = "timeout", None, None, None
            try:
                async with self.http.stream(
                    "POST",
                    self._urls[path],
                    headers=headers,
                    json=payload,
                    timeout=self._timeout,
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
                ret_code, ret_msg = redact(err.ret_code), redact(err.ret_msg)
                raise RetCodeError(ret_code, ret_msg) from None
            except InvalidResponse as err:  # may quote the body: vendor text
                outcome = err.outcome
                raise InvalidResponse(redact(str(err))) from None
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
                if run.abandoned:
                    outcome = "cancelled"  # sent, then given up: a sibling page had failed
                raise
            finally:
                seconds = time.monotonic() - started
                self._observer.request_done(api, outcome, seconds, status, ret_code)
                if ret_code is not None:
                    ret_code = clip(ret_code, RET_CODE_CHARS)
                elif api == QUERY_API and outcome == "success":
                    ret_code = "0"  # it passed the retCode check
                record = RequestRecord(
                    at=max(0.0, run.trace.elapsed() - seconds),
                    api=api,
                    offset=int(payload["offset"]) if "offset" in payload else None,
                    attempt=attempt,
                    outcome=outcome,
                    seconds=seconds,
                    status=status,
                    ret_code=ret_code,
                    ret_msg=None if ret_msg is None else clip(ret_msg, TRACE_TEXT_CHARS),
                    waited=waited,
                )
                self._record(run, record)

    def _record(self, run: CollectionRun, record: RequestRecord) -> None:
        """One debug log line per request (never a secret), and the collection's record."""
        if log.isEnabledFor(logging.DEBUG):  # its fields cost a tenth of a page's fold
            log.debug(
                "API request",
                extra=fields(
                    target=self.target.name,
                    api=record.api,
                    offset=record.offset,
                    status=record.status,
                    ret_code=record.ret_code,
                    duration=record.seconds,
                    attempt=record.attempt,
                    outcome=record.outcome,
                ),
            )
        run.trace.request(record)

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
