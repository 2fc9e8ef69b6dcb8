"""The words the client reports in, and the errors that carry them.

A request is to one of ``APIS`` and ends with one of ``OUTCOMES`` (the ``api`` and
``outcome`` labels of ``cec_api_requests_total``); a failed collection has one of
``REASONS`` (the ``reason`` label of ``cec_collection_failures_total``). Plain strings,
so that this package never imports Prometheus.
"""

from __future__ import annotations

TOKEN_API = "tokenByAkSk"  # noqa: S105 - an API name, not a secret
QUERY_API = "queryPhone"
APIS = (QUERY_API, TOKEN_API)
OUTCOMES = (
    "success",
    "ret_code_error",
    "http_error",
    "timeout",
    "network_error",
    "invalid_response",
    "cancelled",
)
"""Every outcome of one HTTP request; ``cancelled``: sent, then given up because the
collection had already failed."""
REASONS = (
    "ret_code",
    "http_error",
    "network_error",
    "invalid_response",
    "incomplete",
    "page_limit",
    "credentials",
    "deadline",
    "budget",
)
"""Every reason a collection can fail for; ``budget``: the app's ``requests_per_second``
could not fit the whole collection before its deadline, so it was refused unsent."""
RETRYABLE_STATUS = frozenset({429, 500, 502, 503, 504})
"""HTTP statuses the client tries again after (with backoff), as a vendor's gateway asks."""
FORESEEN_STATUS = (401, *sorted(RETRYABLE_STATUS))
"""Error statuses the client expects (401: a token to renew), whose request counters exist
at 0 from the start, so that the first burst of one shows in ``increase()``."""


class CecError(Exception):
    """Base of every error the CEC client raises; ``outcome`` and ``reason`` classify it."""

    outcome = "network_error"
    reason = "network_error"


class InvalidResponse(CecError):
    """The API answered, but not with something we can read."""

    outcome = "invalid_response"
    reason = "invalid_response"


class RetCodeError(CecError):
    """HTTP 200 with a non-zero ``retCode``: a business failure."""

    outcome = "ret_code_error"
    reason = "ret_code"

    def __init__(self, ret_code: str, ret_msg: str) -> None:
        super().__init__(f"retCode {ret_code}" + (f" ({ret_msg})" if ret_msg else ""))
        self.ret_code = ret_code
        self.ret_msg = ret_msg


class HttpStatusError(CecError):
    """A non-200 HTTP status; ``retry_after`` is the server's hint in seconds."""

    outcome = "http_error"
    reason = "http_error"

    def __init__(self, status_code: int, retry_after: float | None = None) -> None:
        super().__init__(f"HTTP {status_code}")
        self.status_code = status_code
        self.retry_after = retry_after


class RequestTimeout(CecError):
    """A request did not finish in time (its own timeout or the scrape deadline)."""

    outcome = "timeout"
    reason = "deadline"


class DeadlineExceeded(RequestTimeout):
    """The collection's deadline passed before every page was read, or the next request
    could not start before it (rate budget)."""


class NetworkError(CecError):
    """Connection refused, reset, DNS or TLS failure, or a body cut short."""

    outcome = "network_error"
    reason = "network_error"


class CollectionError(CecError):
    """The collection as a whole failed for a reason that is not one request's."""


class PageLimitError(CollectionError):
    """``total`` needs more pages than ``max_pages`` allows."""

    reason = "page_limit"


class CredentialError(CollectionError):
    """The app secret could not be read, or the token endpoint refused key and secret."""

    reason = "credentials"


class IncompleteError(CollectionError):
    """The records counted do not add up to ``total`` (a short page, a list that shifted)."""

    reason = "incomplete"


class BudgetExceeded(CollectionError):
    """The app's ``requests_per_second`` budget cannot fit the collection's requests before
    its deadline beside the collections admitted: refused before sending them."""

    reason = "budget"
