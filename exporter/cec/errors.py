"""Errors a collection can end with, each tagged with its request ``outcome``.

The outcome strings are the values of the ``outcome`` label of
``cec_api_requests_total`` (SPEC section 6).
"""

from __future__ import annotations


class CecError(Exception):
    """Base of every error the CEC client raises; ``outcome`` classifies it."""

    outcome = "network_error"


class InvalidResponse(CecError):
    """The API answered, but not with something we can read."""

    outcome = "invalid_response"


class RetCodeError(CecError):
    """HTTP 200 with a non-zero ``retCode``: a business failure."""

    outcome = "ret_code_error"

    def __init__(self, ret_code: str, ret_msg: str) -> None:
        super().__init__(f"retCode {ret_code}" + (f" ({ret_msg})" if ret_msg else ""))
        self.ret_code = ret_code
        self.ret_msg = ret_msg


class HttpStatusError(CecError):
    """A non-200 HTTP status; ``retry_after`` is the server's hint in seconds."""

    outcome = "http_error"

    def __init__(self, status_code: int, retry_after: float | None = None) -> None:
        super().__init__(f"HTTP {status_code}")
        self.status_code = status_code
        self.retry_after = retry_after


class RequestTimeout(CecError):
    """A request did not finish in time (its own timeout or the scrape deadline)."""

    outcome = "timeout"


class DeadlineExceeded(RequestTimeout):
    """The next request could not start before the collection's deadline (rate budget)."""


class NetworkError(CecError):
    """Connection refused, reset, DNS or TLS failure, or a body cut short."""

    outcome = "network_error"


class CollectionError(CecError):
    """The collection as a whole failed for a reason that is not one request's."""


class PageLimitError(CollectionError):
    """``total`` needs more pages than ``max_pages`` allows."""


class CredentialError(CollectionError):
    """The app secret could not be read (a missing or unreadable secret file)."""
