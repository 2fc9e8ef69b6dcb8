"""The typed result of one collection, the builder that folds pages into it, and what
changed between two collections.

Pages are folded in as they arrive, in any order, so a collection of 100,000
phones holds counts, not a list of phones (unless per-phone metrics are on).
"""

from __future__ import annotations

import dataclasses
import logging
from collections import Counter
from dataclasses import dataclass, field

from exporter.cec.keyset import Added, KeySet
from exporter.cec.records import REGISTERED, STATUSES, Endpoint, Page, Status

log = logging.getLogger(__name__)

_STATUS_BITS = {status: bits for bits, status in enumerate(STATUSES)}


@dataclass(frozen=True)
class Roster:
    """Every phone of one collection that has a key: the key, its tenant and its status.

    ``keys`` maps each de-duplication key to ``tenant index << 2 | status index``
    (indices into ``tenants`` and ``STATUSES``): 12 bytes a slot, no object per phone.
    """

    keys: KeySet
    tenants: tuple[str, ...]


@dataclass(frozen=True)
class Snapshot:
    """What one successful collection learned about a target."""

    total: int | None
    counts: dict[tuple[str, Status], int]
    endpoints: tuple[Endpoint, ...]
    phones: dict[tuple[str, str], bool] | None = None
    """(tenant_id, phone_num) -> registered; only with per-phone metrics. Keyed by both,
    as the series are labelled: one number may be allocated in several tenants."""
    pages: int = 0
    duplicates: int = 0
    phones_truncated: bool = False
    roster: Roster | None = field(default=None, compare=False, repr=False)
    """The phones by key, for comparing with the next collection; the collector takes it
    out (``without_roster``) before the snapshot is kept anywhere else."""

    def without_roster(self) -> Snapshot:
        """This snapshot without its roster (a million phones' roster is 24 MiB)."""
        return dataclasses.replace(self, roster=None)


@dataclass
class SnapshotBuilder:
    """Folds pages into counts; a phone seen twice (same ``id`` and ``phoneNum``) counts once."""

    per_phone: bool = False
    per_phone_cap: int = 50_000
    total: int | None = None
    pages: int = 0
    records: int = 0
    """Phone records counted, after de-duplication."""
    duplicates: int = 0
    later_total: int | None = None
    """A ``total`` a later page reported that differs from the first one given, if any."""
    total_changed: bool = False
    phones_truncated: bool = False
    _counts: Counter[int] = field(default_factory=Counter)
    """Phones by roster value (tenant index and status): counted in C, named in ``build``."""
    _endpoints: set[Endpoint] = field(default_factory=set)
    _seen: KeySet = field(default_factory=KeySet)  # Page.keys says why 64-bit hashes do
    _phones: dict[tuple[str, str], int] = field(default_factory=dict)
    """(tenant_id, phone_num) -> list position << 1 | registered: the lowest position wins."""
    _tenants: dict[str, int] = field(default_factory=dict)
    """tenant_id -> its index in the roster's ``tenants``, in order of appearance."""

    def add(self, page: Page, offset: int = 0) -> None:
        """Fold in one page, asked for at ``offset``; the first ``total`` a page gives is
        the one reported.

        A page that leaves ``total`` out reports no other total (any field may be
        missing, on the first page too); only a different number makes the count
        incomplete. A phone found twice (one key) with two contents is the record at the
        lower offset, whatever order the pages arrive in.
        """
        if self.total is None:
            self.total = page.total
        elif page.total is not None and page.total != self.total and not self.total_changed:
            log.debug("total changed while paging: %s -> %s", self.total, page.total)
            self.total_changed, self.later_total = True, page.total
        self.pages += 1
        self._endpoints.update(page.endpoints)
        values = page.pair_values(self._roster_value)
        added = self._seen.add(page.keys, values, offset)
        repeats, displaced = added
        self.duplicates += len(repeats) + len(displaced)
        counts = Counter(values)
        for index in repeats:  # phones held from a lower offset: counted once
            counts[values[index]] -= 1
        for _, was, _ in displaced:  # held from a higher offset: this record replaces it
            counts[was] -= 1
        self._counts.update(counts)
        self.records += len(page.keys) - len(repeats) - len(displaced)
        if self.per_phone:
            self._add_phones(page, offset, added)

    def _roster_value(self, tenant: str, status: str) -> int:
        index = self._tenants.setdefault(tenant, len(self._tenants))
        return index << 2 | _STATUS_BITS[status]

    def expect(self, phones: int) -> None:
        """Make room for ``phones`` keys at once (a hint, once ``total`` is trusted)."""
        self._seen.reserve(phones)

    def incomplete(self) -> str | None:
        """Why the pages added do not make a whole count, or None when they do.

        Complete means: the records counted equal the first ``total`` given and no page
        reported another. A short page, or a list that shifted while
        paging (one phone on two pages, another on none), fails this. Without a
        ``total`` there is nothing to check against.
        """
        if self.total_changed:
            return f"total changed while paging ({self.total} -> {self.later_total})"
        if self.total is not None and self.records != self.total:
            return f"counted {self.records} phone records, but total is {self.total}"
        return None

    def _add_phones(self, page: Page, offset: int, added: Added) -> None:
        """Per-phone series: each (tenant, number) is the record at the lowest offset."""
        phones = self._phones
        if added.displaced:
            tenants = tuple(self._tenants)
            for index, was, position in added.displaced:  # the record it replaced goes
                replaced = (tenants[was >> 2], page.numbers[index])
                if phones.get(replaced, -1) >> 1 == position:
                    del phones[replaced]
        skip = set(added.repeats)
        for index, (number, tenant_id, status) in enumerate(page.rows()):
            if not number or index in skip:
                continue
            entry = (offset + index) << 1 | (status == REGISTERED)
            held = phones.get((tenant_id, number))
            if held is None and len(phones) >= self.per_phone_cap:
                self.phones_truncated = True
            elif held is None or entry < held:
                phones[(tenant_id, number)] = entry

    def build(self) -> Snapshot:
        """The snapshot of every page added: the last step (no page is added after)."""
        tenants = tuple(self._tenants)
        self._seen.settle()
        return Snapshot(
            total=self.total,
            counts={
                (tenants[value >> 2], Status(STATUSES[value & 3])): n
                for value, n in self._counts.items()
                if n
            },
            endpoints=tuple(sorted(self._endpoints)),
            phones={k: bool(v & 1) for k, v in self._phones.items()} if self.per_phone else None,
            pages=self.pages,
            duplicates=self.duplicates,
            phones_truncated=self.phones_truncated,
            roster=Roster(self._seen, tenants),
        )


# --- what changed between two collections ----------------------------------------------------
# What changed between two successful collections of a target, phone by phone.
#
# Phones are matched by their de-duplication key (``Roster``): a key only in the new
# collection is ``added`` to its tenant, one only in the old is ``removed`` from its
# tenant, a key in another tenant is both (removed from the old, added to the new), and
# a key in the same tenant with another status is a status change. Phones without a key
# (neither ``id`` nor ``phoneNum``) cannot be matched and are not compared.

STATUS_PAIRS = tuple((was, now) for was in STATUSES for now in STATUSES if was != now)
"""Every (from, to) of a status change, in a fixed order."""
ALLOCATION_CHANGES = ("added", "removed")


@dataclass(frozen=True)
class Changes:
    """Phones that changed between two collections, per tenant (only non-zero entries)."""

    status: dict[tuple[str, str, str], int]
    """(tenant_id, from, to) -> phones."""
    allocation: dict[tuple[str, str], int]
    """(tenant_id, ``added`` or ``removed``) -> phones."""

    @property
    def total(self) -> int:
        """Every change counted (a moved phone twice: removed and added)."""
        return sum(self.status.values()) + sum(self.allocation.values())


def compare(before: Roster, after: Roster) -> Changes:
    """The changes from ``before`` to ``after``: one pass over ``after``'s keys."""
    status: Counter[tuple[str, str, str]] = Counter()
    allocation: Counter[tuple[str, str]] = Counter()
    kept: Counter[int] = Counter()  # values in ``before`` whose key is still there
    for (now, was), phones in after.keys.pair_counts(before.keys).items():
        tenant = after.tenants[now >> 2]
        if was < 0:
            allocation[tenant, "added"] += phones
            continue
        kept[was] += phones
        old_tenant = before.tenants[was >> 2]
        if old_tenant != tenant:
            allocation[tenant, "added"] += phones
            allocation[old_tenant, "removed"] += phones
        elif now & 3 != was & 3:
            status[tenant, STATUSES[was & 3], STATUSES[now & 3]] += phones
    for was, phones in before.keys.value_counts().items():
        gone = phones - kept[was]
        if gone:
            allocation[before.tenants[was >> 2], "removed"] += gone
    return Changes(dict(status), dict(allocation))
