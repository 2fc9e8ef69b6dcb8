"""What changed between two successful collections of a target, phone by phone.

Phones are matched by their de-duplication key (``Roster``): a key only in the new
collection is ``added`` to its tenant, one only in the old is ``removed`` from its
tenant, a key in another tenant is both (removed from the old, added to the new), and
a key in the same tenant with another status is a status change. Phones without a key
(neither ``id`` nor ``phoneNum``) cannot be matched and are not compared.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

from exporter.cec.snapshot import STATUSES, Roster

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
