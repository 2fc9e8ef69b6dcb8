"""The front door's limits: their values, who gets a connection, and how much of an
unfinished request head anyone may hold.

The listener asks ``Admission.admit`` for every accepted connection. Open connections
are capped, and so are those of one client address; at either bound room is made by
closing the longest-idle kept-alive connection (of that address, for its bound), and the
new one is refused only when none is idle. An idle flood can so never lock the scraper
out: its connection is busy every scrape interval, the flood's are not.

The bytes of request heads still incomplete, across every connection, share one budget:
past it the newest incomplete head is answered 431 and its connection closed, so that a
few hundred heads just under the 1 MiB limit cost the budget, not a few hundred MiB.
"""

from __future__ import annotations

import logging
import time
from collections import Counter, OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field

log = logging.getLogger(__name__)

HEAD_BUDGET_BYTES = 32 << 20
"""What unfinished request heads may hold across every connection (each: 1 MiB at most)."""


@dataclass(frozen=True)
class Limits:
    """The front door's limits that the command line sets (``--web.*``)."""

    max_connections: int = 2048
    """Open connections; about 50 KiB each over TLS at rest (35 in clear text), so the
    default costs ~100 MiB when every one is taken, well inside a 256 MiB container."""
    max_per_client: int = 256
    """Open connections of one client address."""
    head_timeout: float = 10.0
    """A TLS handshake, and each request head from its first byte, must be done within it."""
    idle_timeout: float = 300.0
    """How long a kept-alive connection may wait for its next request: past a 60 s scrape
    interval, as Prometheus keeps its side for 5 minutes."""


@dataclass(eq=False)
class Slot:
    """One admitted connection, as admission sees it.

    The connection reports what it does: ``idle()`` once an answer is done and nothing of
    a next request has come, ``active()`` when bytes come, ``held(n)`` after each read
    with the bytes of an incomplete head it holds, ``closed()`` at the end.
    """

    admission: Admission
    address: str
    close: Callable[[], None]
    """Ends the connection at once (its transport aborted): for an evicted idle one."""
    refuse_head: Callable[[], None] = lambda: None
    """Answers the incomplete head 431 and closes: set by whoever parses the heads."""
    head_bytes: int = 0

    def idle(self) -> None:
        self.admission._idle(self)

    def active(self) -> None:
        self.admission._active(self)

    def held(self, head_bytes: int) -> None:
        self.admission._held(self, head_bytes)

    def closed(self) -> None:
        self.admission._release(self)


@dataclass
class Admission:
    """The open connections, each client address's share, the idle ones oldest first, and
    the unfinished heads newest last."""

    max_connections: int
    max_per_client: int
    head_budget: int = HEAD_BUDGET_BYTES
    slots: set[Slot] = field(default_factory=set)
    per_client: Counter[str] = field(default_factory=Counter)
    _idle_slots: OrderedDict[Slot, float] = field(default_factory=OrderedDict)
    _heads: OrderedDict[Slot, None] = field(default_factory=OrderedDict)
    head_total: int = 0

    @property
    def open(self) -> int:
        return len(self.slots)

    def admit(self, address: str, close: Callable[[], None]) -> Slot | None:
        """A slot for a new connection from ``address``, making room by closing the
        longest-idle kept-alive connection when a bound is reached; None: refuse it."""
        if self.per_client[address] >= self.max_per_client and not self._evict(address):
            return None
        if self.open >= self.max_connections and not self._evict(None):
            return None
        slot = Slot(self, address, close)
        self.slots.add(slot)
        self.per_client[address] += 1
        return slot

    def _evict(self, address: str | None) -> bool:
        """Close the longest-idle connection (of ``address``, when given); False if none."""
        victim = next(
            (slot for slot in self._idle_slots if address is None or slot.address == address),
            None,
        )
        if victim is None:
            return False
        idle_for = time.monotonic() - self._idle_slots[victim]
        log.debug(
            "closing a connection of %s idle for %.1fs to make room", victim.address, idle_for
        )
        self._release(victim)
        victim.close()
        return True

    def _idle(self, slot: Slot) -> None:
        if slot in self.slots:
            self._idle_slots[slot] = time.monotonic()
            self._idle_slots.move_to_end(slot)

    def _active(self, slot: Slot) -> None:
        self._idle_slots.pop(slot, None)

    def _held(self, slot: Slot, head_bytes: int) -> None:
        if slot not in self.slots:
            return
        self.head_total += head_bytes - slot.head_bytes
        slot.head_bytes = head_bytes
        if not head_bytes:
            self._heads.pop(slot, None)
            return
        self._heads.setdefault(slot)
        while self.head_total > self.head_budget and self._heads:
            newest, _ = self._heads.popitem()
            log.debug(
                "unfinished request heads hold %d bytes, over the budget: the newest, "
                "from %s, is refused",
                self.head_total,
                newest.address,
            )
            self._release(newest)
            newest.refuse_head()

    def _release(self, slot: Slot) -> None:
        """Forget ``slot``: its place under both bounds and its head bytes."""
        if slot not in self.slots:
            return
        self.slots.discard(slot)
        self.per_client[slot.address] -= 1
        if not self.per_client[slot.address]:
            del self.per_client[slot.address]
        self._idle_slots.pop(slot, None)
        self._heads.pop(slot, None)
        self.head_total -= slot.head_bytes
        slot.head_bytes = 0


__all__ = ["HEAD_BUDGET_BYTES", "Admission", "Limits", "Slot"]
