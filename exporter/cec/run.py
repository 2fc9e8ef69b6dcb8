"""One collection in progress: what each of its requests must know, passed down explicitly.

As blackbox_exporter hands the prober a ``ctx`` that carries the scrape deadline, the
client hands every call that sends a request a ``CollectionRun``: the deadline (a later
scrape that joins may push it back), the collection's log, its booking of the app's rate
budget, and whether the collection has already given up because one of its pages failed.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from exporter.cec.budget import Booking
from exporter.cec.deadline import Deadline
from exporter.cec.trace import CollectionTrace


@dataclass
class CollectionRun:
    """The deadline, the log and the state of one collection, shared by all its requests."""

    deadline: Deadline = field(default_factory=Deadline)
    """When the collection must end (``time.monotonic()``); waits that cannot fit before
    it (rate budget, retry backoff) are not started."""
    trace: CollectionTrace = field(default_factory=CollectionTrace)
    booking: Booking | None = None
    """The requests its app's ``requests_per_second`` budget admitted (None: no budget)."""
    abandoned: bool = False
    """True once a page failed: the requests still in flight are cancelled and counted as
    ``cancelled`` (the vendor saw them; a ``timeout`` would report a failure that did
    not happen)."""
