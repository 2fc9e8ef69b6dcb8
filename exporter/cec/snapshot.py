"""The typed result of one collection, and the builder that folds pages into it.

Pages are folded in as they arrive, in any order: each adds its counts, its share of
the listing's fingerprint and its keys as two flat arrays (12 bytes a phone, no object
per phone unless per-phone metrics are on). Once every page is in, the records are
de-duplicated in the order of the vendor's list, so the record at the lower offset is
the phone whatever order the pages came in; a listing the same as the last one's is not
de-duplicated again, its result is taken over (and so is its roster: nothing changed).
"""

from __future__ import annotations

import dataclasses
import logging
from array import array
from collections import Counter
from collections.abc import Generator, Iterator
from dataclasses import dataclass, field
from operator import itemgetter
from typing import cast

from exporter.cec.keyset import KeySet
from exporter.cec.records import REGISTERED, STATUSES, Endpoint, Page, Status
from exporter.cec.roster import Roster
from exporter.cec.steps import at_once
from exporter.cec.text import fields

log = logging.getLogger(__name__)

_STATUS_BITS = {status: bits for bits, status in enumerate(STATUSES)}
Keys = tuple[int, ...]
DEDUPLICATED_KEYS = 2048
"""Keys added per step of ``SnapshotBuilder.deduplicating``: under a millisecond."""


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


@dataclass(frozen=True)
class Listing:
    """The vendor's list as one collection read it, record by record, duplicates included.

    Two equal listings de-duplicate alike. ``fingerprint`` is the sum of
    ``hash((offset, key, value))`` over the records: the same in any page order, and
    equal for two different lists with probability 2**-64 (their changes then counted a
    collection late)."""

    fingerprint: int
    records: int
    counts: Counter[int]
    tenants: tuple[str, ...]


@dataclass(frozen=True)
class Deduplicated:
    """One collection's records de-duplicated: what the next collection may take over."""

    listing: Listing
    roster: Roster
    counts: Counter[int]
    """Records by value (tenant and status), each phone once; those without a key too."""
    duplicates: int

    @property
    def records(self) -> int:
        """Phone records counted, after de-duplication."""
        return self.listing.records - self.duplicates

    @property
    def tenants_in_use(self) -> tuple[str, ...]:
        """The tenants some record holds, in index order: the next collection's first
        indices, so that an unchanged list gives the same values and the same listing."""
        used = {value >> 2 for value, n in self.counts.items() if n}
        return tuple(t for index, t in enumerate(self.listing.tenants) if index in used)


@dataclass
class SnapshotBuilder:
    """Folds pages into counts; a phone seen twice (same ``id`` and ``phoneNum``) counts once."""

    per_phone: bool = False
    per_phone_cap: int = 50_000
    total: int | None = None
    pages: int = 0
    later_total: int | None = None
    """A ``total`` a later page reported that differs from the first one given, if any."""
    total_changed: bool = False
    gap: int | None = None
    """The offset of a short page followed by one that was not empty, with no total to
    count against: records are missing (the client finds it, ``incomplete`` says it)."""
    phones_truncated: bool = False
    last: Deduplicated | None = None
    """The last collection's result, taken over when this one lists the same."""
    _records: int = 0
    _counts: Counter[int] = field(default_factory=Counter)
    """Records by roster value (tenant index and status), duplicates included."""
    _fingerprint: int = 0
    _listed: list[tuple[int, array[int], array[int]]] = field(default_factory=list)
    """(offset, keys, values) of each page, until de-duplicated; key 0: none."""
    _endpoints: set[Endpoint] = field(default_factory=set)
    _phones: dict[int, tuple[int, str, str, bool]] = field(default_factory=dict)
    """key -> (offset, tenant_id, phone_num, registered) of the record at the lowest offset."""
    _tenants: dict[str, int] = field(default_factory=dict)
    """tenant_id -> its index in the roster's ``tenants``, in order of appearance."""
    _pair_values: dict[tuple[object, object], int] = field(default_factory=dict)
    """(tenantId, status) as decoded -> roster value: ``Page.pair_values`` remembers them."""
    _deduplicated: Deduplicated | None = None

    @classmethod
    def after(cls, last: Deduplicated | None, per_phone: bool = False) -> SnapshotBuilder:
        """A builder for the collection after ``last``: its tenants indexed first."""
        tenants = last.tenants_in_use if last else ()
        indices = {tenant: i for i, tenant in enumerate(tenants)}
        return cls(per_phone=per_phone, last=last, _tenants=indices)

    def add(self, page: Page, offset: int = 0) -> None:
        """Fold in one page, asked for at ``offset``; the first ``total`` a page gives is
        the one reported.

        A page that leaves ``total`` out reports no other total (any field may be
        missing, on the first page too); only a different number makes the count
        incomplete.
        """
        if self.total is None:
            self.total = page.total
        elif page.total is not None and page.total != self.total and not self.total_changed:
            log.debug("total changed while paging", extra=fields(was=self.total, now=page.total))
            self.total_changed, self.later_total = True, page.total
        self.pages += 1
        self._endpoints.update(page.endpoints)
        keys, values = page.keys, page.pair_values(self._roster_value, self._pair_values)
        self._records += len(keys)
        self._counts.update(values)
        offsets = range(offset, offset + len(keys))
        self._fingerprint += sum(map(hash, zip(offsets, keys, values, strict=True)))
        # The key set is built once every page is in (``deduplicating``): Page.keys says
        # why 64-bit hashes do, and 0 stands for none (a 2**-64 chance of a real one).
        flat = array("q", (k or 0 for k in keys)) if None in keys else array("q", cast(Keys, keys))
        self._listed.append((offset, flat, array("I", values)))
        if self.per_phone:
            self._add_phones(page, offset)

    def _roster_value(self, tenant: str, status: str) -> int:
        index = self._tenants.setdefault(tenant, len(self._tenants))
        return index << 2 | _STATUS_BITS[status]

    def _add_phones(self, page: Page, offset: int) -> None:
        """Per-phone series: the record at the lowest offset of each key."""
        phones = self._phones
        rows = zip(page.keys, page.rows(), strict=True)
        for position, (key, (number, tenant_id, status)) in enumerate(rows, offset):
            if not number or key is None:
                continue
            held = phones.get(key)
            if held is None and len(phones) >= self.per_phone_cap:
                self.phones_truncated = True
            elif held is None or position < held[0]:
                phones[key] = (position, tenant_id, number, status == REGISTERED)

    def deduplicating(self) -> Iterator[Deduplicated | None]:
        """De-duplicate the records in list order, in steps (``exporter.cec.steps``): None
        after each ``DEDUPLICATED_KEYS`` keys, the result last. A listing equal to the last
        collection's takes its result over without a step."""
        if self._deduplicated is None:
            listing = Listing(self._fingerprint, self._records, self._counts, self.tenants)
            if self.last is not None and self.last.listing == listing:
                self._deduplicated = self.last
            else:
                self._deduplicated = yield from self._deduplicate(listing)
            self._listed = []
        yield self._deduplicated

    def _deduplicate(self, listing: Listing) -> Generator[None, None, Deduplicated]:
        keys, counts, keyless = KeySet(), Counter(self._counts), Counter[int]()
        keys.reserve(self._records)
        duplicates = added = 0
        for _, page_keys, values in sorted(self._listed, key=itemgetter(0)):
            for index in keys.add(page_keys, values):  # held from a lower offset
                counts[values[index]] -= 1
                duplicates += 1
            if 0 in page_keys:  # rare: phones with neither id nor number, never compared
                keyless.update(v for k, v in zip(page_keys, values, strict=True) if not k)
            added += len(page_keys)
            if added >= DEDUPLICATED_KEYS:
                added = 0
                yield None
        roster = Roster(keys, listing.tenants, counts - keyless)
        return Deduplicated(listing, roster, counts, duplicates)

    @property
    def tenants(self) -> tuple[str, ...]:
        """Every tenant seen, by index."""
        return tuple(self._tenants)

    @property
    def deduplicated(self) -> Deduplicated:
        """The records de-duplicated (in one go here when no caller did it in steps)."""
        return at_once(self.deduplicating())

    @property
    def records(self) -> int:
        """Phone records counted, after de-duplication."""
        return self.deduplicated.records

    @property
    def duplicates(self) -> int:
        """Records that repeated a phone listed at a lower offset."""
        return self.deduplicated.duplicates

    def incomplete(self) -> str | None:
        """Why the pages added do not make a whole count, or None when they do.

        Complete means: the records counted equal the first ``total`` given and no page
        reported another. A short page, or a list that shifted while paging (one phone
        on two pages, another on none), fails this. Without a ``total`` there is nothing
        to check against.
        """
        if self.total_changed:
            return f"total changed while paging ({self.total} -> {self.later_total})"
        if self.gap is not None and self.total is None:
            return f"no total reported, and the short page at offset {self.gap} was not the last"
        if self.total is not None and self.records != self.total:
            return f"counted {self.records} phone records, but total is {self.total}"
        return None

    def _phone_series(self) -> dict[tuple[str, str], bool]:
        """(tenant, number) -> registered; two phones on one pair: the lower offset's."""
        series: dict[tuple[str, str], tuple[int, bool]] = {}
        for position, tenant_id, number, registered in self._phones.values():
            held = series.get((tenant_id, number))
            if held is None or position < held[0]:
                series[(tenant_id, number)] = (position, registered)
        return {pair: registered for pair, (_, registered) in series.items()}

    def build(self) -> Snapshot:
        """The snapshot of every page added (de-duplicated now if not done before)."""
        done = self.deduplicated
        tenants = done.listing.tenants
        return Snapshot(
            total=self.total,
            counts={
                (tenants[value >> 2], Status(STATUSES[value & 3])): n
                for value, n in done.counts.items()
                if n
            },
            endpoints=tuple(sorted(self._endpoints)),
            phones=self._phone_series() if self.per_phone else None,
            pages=self.pages,
            duplicates=done.duplicates,
            phones_truncated=self.phones_truncated,
            roster=done.roster,
        )
