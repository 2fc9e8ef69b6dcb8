"""Per-target change counters: phones whose status moved, phones added or removed.

A ``ChangeTracker`` lives with its target's collector: a reload that changes the
target, or a restart, starts a new one, whose first success is the baseline. Only
successful collections are observed (a failure keeps the last success as the
baseline), once each (cached answers and coalesced scrapes share one observation).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass

from exporter.cec.roster import ALLOCATION_CHANGES, STATUS_PAIRS, Changes, Roster, comparing
from exporter.cec.snapshot import Snapshot
from exporter.cec.steps import in_steps

EXAMPLES = 5
"""Phone numbers the debug probe names per collection (with per_phone_metrics)."""

_Phones = Mapping[tuple[str, str], bool]
"""registered or not, by (tenant, phone number): ``Snapshot.phones``."""


@dataclass(frozen=True)
class ChangeReport:
    """What one successful collection changed, and the target's counters after it."""

    found: Changes | None
    """None for the baseline (the first success of this collector): nothing compared."""
    status_totals: Mapping[tuple[str, str, str], int]
    allocation_totals: Mapping[tuple[str, str], int]
    examples: tuple[str, ...] = ()
    """A few changed phone numbers, in words (only with per_phone_metrics)."""


class ChangeTracker:
    """The baseline (the last success's roster) and the cumulative counters of one target.

    The counters are copied on write, so a report handed out is never changed after.
    """

    def __init__(self) -> None:
        self._baseline: Roster | None = None
        self._phones: _Phones | None = None
        self._status: dict[tuple[str, str, str], int] = {}
        self._allocation: dict[tuple[str, str], int] = {}

    async def observe(self, snapshot: Snapshot) -> tuple[Snapshot, ChangeReport]:
        """Compare a successful collection with the baseline, count, and make it the baseline.

        Returns the snapshot without its roster (the tracker keeps that) and the report.
        The comparison lets the event loop run between its steps: at a million phones it
        takes half a second, which would hold up every scrape and health check.
        """
        roster = snapshot.roster
        before, before_phones = self._baseline, self._phones
        # A truncated per-phone list holds whichever numbers came first: no examples from it.
        phones = None if snapshot.phones_truncated else snapshot.phones
        self._baseline, self._phones = roster, phones
        status, allocation = dict(self._status), dict(self._allocation)
        tenants = {tenant for tenant, _ in snapshot.counts}.union(roster.tenants if roster else ())
        for tenant in tenants:  # every series from the tenant's first appearance, at 0
            for was, now in STATUS_PAIRS:
                status.setdefault((tenant, was, now), 0)
            for change in ALLOCATION_CHANGES:
                allocation.setdefault((tenant, change), 0)
        found = (
            None if before is None or roster is None else await in_steps(comparing(before, roster))
        )
        examples: tuple[str, ...] = ()
        if found is not None:
            for pair, n in found.status.items():
                status[pair] = status.get(pair, 0) + n
            for tenant_change, n in found.allocation.items():
                allocation[tenant_change] = allocation.get(tenant_change, 0) + n
            if found.total and before_phones is not None and phones is not None:
                examples = tuple(_examples(before_phones, phones))
        self._status, self._allocation = status, allocation
        report = ChangeReport(found, status, allocation, examples)
        return snapshot.without_roster(), report


def _examples(before: _Phones, after: _Phones) -> Iterator[str]:
    """Up to ``EXAMPLES`` phone numbers added, removed or (un)registered, in words.

    Phones are keyed by (tenant, number), as their series are: a phone that moved to
    another tenant reads as removed from one and added to the other, as it is counted.
    """
    shown = 0
    for (tenant, number), registered in after.items():
        was = before.get((tenant, number))
        if was == registered:
            continue
        if was is None:
            yield f"{number} added to tenant {tenant!r}"
        else:
            now = "registered" if registered else "not registered"
            yield f"{number} in tenant {tenant!r} is {now} now"
        shown += 1
        if shown == EXAMPLES:
            return
    for tenant, number in before:
        if (tenant, number) in after:
            continue
        yield f"{number} removed from tenant {tenant!r}"
        shown += 1
        if shown == EXAMPLES:
            return
