"""Counters about what clients asked for, so tests can check how the exporter behaved."""

import threading
import time
from collections import deque
from collections.abc import Iterator
from contextlib import contextmanager

# Only the most recent X-Token-Expire values are kept: enough to assert on, bounded in memory.
_TOKEN_EXPIRE_KEPT = 100
_COUNTERS = ("token_requests", "tokens_issued", "query_requests", "connections", "unauthorized")
_REQUEST_COUNTERS = {"tokenByAkSk": "token_requests", "queryPhone": "query_requests"}
# When the most recent API requests arrived: enough to check a client's pacing, bounded.
_ARRIVALS_KEPT = 2000


class Stats:
    """Thread-safe request counters; :meth:`snapshot` is JSON-able."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._in_flight = 0
        self._open = 0
        self.reset()

    def reset(self) -> None:
        """Zero every counter (requests in flight still count towards ``in_flight_max``)."""
        with self._lock:
            self._counters = dict.fromkeys(_COUNTERS, 0)
            self._by_page: dict[int, int] = {}
            self._pagination: dict[str, int] = {"number": 0, "string": 0}
            self._token_expire: deque[int | str | None] = deque(maxlen=_TOKEN_EXPIRE_KEPT)
            self._tenant_space_ids: set[str] = set()
            self._cookies: set[str] = set()
            self._faults: dict[str, int] = {}
            self._arrivals: deque[tuple[str, float]] = deque(maxlen=_ARRIVALS_KEPT)
            self._in_flight_max = self._in_flight
            self._open_max = self._open

    def incr(self, name: str) -> None:
        """Add one to the counter ``name``."""
        with self._lock:
            self._counters[name] += 1

    def request(self, api: str) -> None:
        """Count an API request (``token_requests`` or ``query_requests``) and when it came."""
        with self._lock:
            self._counters[_REQUEST_COUNTERS[api]] += 1
            self._arrivals.append((api, time.monotonic()))

    def page(self, page: int, pagination_type: str) -> None:
        """Record a well-formed queryPhone page request and how its numbers were typed."""
        with self._lock:
            self._by_page[page] = self._by_page.get(page, 0) + 1
            self._pagination[pagination_type] = self._pagination.get(pagination_type, 0) + 1

    def token_expire(self, value: int | str | None) -> None:
        """Record the X-Token-Expire asked for (int if numeric, raw text if not, None if absent)."""
        with self._lock:
            self._token_expire.append(value)

    def tenant_space_id(self, value: str) -> None:
        """Record an X-TenantSpaceID header value."""
        with self._lock:
            self._tenant_space_ids.add(value)

    def cookie(self, value: str) -> None:
        """Record a ``Cookie`` header value a client sent."""
        with self._lock:
            self._cookies.add(value)

    def fault(self, kind: str) -> None:
        """Record that a fault of ``kind`` was applied."""
        with self._lock:
            self._faults[kind] = self._faults.get(kind, 0) + 1

    def connection_opened(self) -> None:
        """Count a new connection (``connections``) and track how many are open at once."""
        with self._lock:
            self._counters["connections"] += 1
            self._open += 1
            self._open_max = max(self._open_max, self._open)

    def connection_closed(self) -> None:
        """A connection closed."""
        with self._lock:
            self._open -= 1

    @contextmanager
    def in_flight(self) -> Iterator[None]:
        """Count a queryPhone request as in flight for the duration of the block."""
        with self._lock:
            self._in_flight += 1
            self._in_flight_max = max(self._in_flight_max, self._in_flight)
        try:
            yield
        finally:
            with self._lock:
                self._in_flight -= 1

    def snapshot(self) -> dict[str, object]:
        """A copy of every counter; ``query_requests_by_page`` keys are page indexes;
        ``arrivals``: ``[api, time.monotonic()]`` of the most recent requests, oldest first."""
        with self._lock:
            return {
                **self._counters,
                "query_requests_by_page": dict(sorted(self._by_page.items())),
                "pagination_types": dict(self._pagination),
                "token_expire_requested": list(self._token_expire),
                "tenant_space_ids": sorted(self._tenant_space_ids),
                "cookies": sorted(self._cookies),
                "faults_applied": dict(self._faults),
                "arrivals": [[api, at] for api, at in self._arrivals],
                "in_flight": self._in_flight,
                "in_flight_max": self._in_flight_max,
                "connections_open": self._open,
                "connections_open_max": self._open_max,
            }
