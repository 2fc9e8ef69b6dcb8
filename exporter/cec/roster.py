"""The phones of one collection by key, and what changed between two collections.

Phones are matched by their de-duplication key (``Roster``): a key only in the new
collection is ``added`` to its tenant, one only in the old is ``removed`` from its
tenant, a key in another tenant is both (removed from the old, added to the new), and
a key in the same tenant with another status is a status change. Phones without a key
(neither ``id`` nor ``phoneNum``) cannot be matched and are not compared.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field

from exporter.cec.keyset import ABSENT, KeySet
from exporter.cec.records import STATUSES
from exporter.cec.steps import at_once

STATUS_PAIRS = tuple((was, now) for was in STATUSES for now in STATUSES if was != now)
"""Every (from, to) of a status change, in a fixed order."""
ALLOCATION_CHANGES = ("added", "removed")
COMPARED_SLOTS = 1 << 12
"""Key-table slots compared per step of ``comparing``: at most 2,048 keys, under a millisecond."""


@dataclass(frozen=True)
class Roster:
    """Every phone of one collection that has a key: the key, its tenant and its status.

    ``keys`` maps each de-duplication key to ``tenant index << 2 | status index``
    (indices into ``tenants`` and ``STATUSES``): 12 bytes a slot, no object per phone.
    """

    keys: KeySet
    tenants: tuple[str, ...]
    counts: Counter[int] = field(default_factory=Counter)
    """How many keys hold each value (kept from the de-duplication, not counted again)."""


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


def comparing(before: Roster, after: Roster) -> Iterator[Changes | None]:
    """The changes from ``before`` to ``after``, one pass over ``after``'s keys, in steps
    (``exporter.cec.steps``): None after each ``COMPARED_SLOTS`` slots, the changes last.

    A collection that listed exactly what the last one did shares its roster: nothing to
    compare, and nothing changed.
    """
    if after is before:
        yield Changes({}, {})
        return
    pairs: Counter[int] = Counter()
    for start in range(0, after.keys.slots, COMPARED_SLOTS):
        pairs.update(after.keys.pair_counts(before.keys, start, start + COMPARED_SLOTS))
        yield None
    status: Counter[tuple[str, str, str]] = Counter()
    allocation: Counter[tuple[str, str]] = Counter()
    kept: Counter[int] = Counter()  # values in ``before`` whose key is still there
    for pair, phones in pairs.items():
        now, was = pair >> 32, pair & ABSENT
        tenant = after.tenants[now >> 2]
        if was == ABSENT:
            allocation[tenant, "added"] += phones
            continue
        kept[was] += phones
        old_tenant = before.tenants[was >> 2]
        if old_tenant != tenant:
            allocation[tenant, "added"] += phones
            allocation[old_tenant, "removed"] += phones
        elif now & 3 != was & 3:
            status[tenant, STATUSES[was & 3], STATUSES[now & 3]] += phones
    for was, phones in before.counts.items():
        gone = phones - kept[was]
        if gone:
            allocation[before.tenants[was >> 2], "removed"] += gone
    yield Changes(dict(status), dict(allocation))


def compare(before: Roster, after: Roster) -> Changes:
    """The changes from ``before`` to ``after``, in one go."""
    return at_once(comparing(before, after))
