"""The log of one collection: each request and each token decision, in order.

It answers "why is this target down?" without reading the exporter's logs: the
debug probe and the landing page render it. Plain data and no Prometheus here;
everything in it is safe to show (no secret is ever recorded, and the vendor's
``retMsg`` is clipped and has its control characters escaped).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

MAX_RECORDS = 2000  # a 100,000-phone target has 1,000 pages: the log stays bounded


@dataclass(frozen=True)
class RequestRecord:
    """One HTTP request as sent and answered (or not)."""

    at: float
    """Seconds from the start of the collection to the moment it was sent."""
    api: str
    offset: int | None
    attempt: int
    """1 for the first try of a page, 2 and 3 for retries."""
    outcome: str
    """Its ``outcome`` label value (``cancelled`` when a sibling page failed first)."""
    seconds: float
    status: int | None = None
    ret_code: str | None = None
    ret_msg: str | None = None
    waited: float = 0.0
    """Seconds spent waiting for the rate budget and the in-flight cap before sending."""


@dataclass
class CollectionTrace:
    """Requests and notes (token reuse or renewal and why, retries) of one collection."""

    started: float = field(default_factory=time.monotonic)
    started_wall: float = field(default_factory=time.time)
    requests: list[RequestRecord] = field(default_factory=list)
    notes: list[tuple[float, str]] = field(default_factory=list)
    dropped: int = 0
    token_noted: bool = False

    def elapsed(self) -> float:
        """Seconds since the collection started."""
        return time.monotonic() - self.started

    def request(self, record: RequestRecord) -> None:
        """Add one request; past ``MAX_RECORDS`` only the count grows."""
        if len(self.requests) + len(self.notes) < MAX_RECORDS:
            self.requests.append(record)
        else:
            self.dropped += 1

    def note(self, text: str) -> None:
        """Add a line of explanation at the current time."""
        if len(self.requests) + len(self.notes) < MAX_RECORDS:
            self.notes.append((self.elapsed(), text))
        else:
            self.dropped += 1

    def token(self, text: str) -> None:
        """Note how this collection got its token (the first decision only)."""
        if not self.token_noted:
            self.token_noted = True
            self.note(text)

    @property
    def pages(self) -> int:
        """queryPhone pages answered with retCode 0."""
        return sum(1 for r in self.requests if r.api == "queryPhone" and r.outcome == "success")
