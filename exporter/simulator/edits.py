"""Edits to the simulated phone list: phones suspended, re-registered, removed, added, moved.

Phones stay a pure function of the config: record ``i`` is generated as before, and a
``PhoneEdits`` (part of the config) says which indices are gone and which carry another
status, tenant or number. Edits are few (a test's or a dry run's worth), so they are
plain sorted tuples; the listed phones are the first ``phones`` indices not removed.
"""

from __future__ import annotations

import dataclasses
from bisect import bisect_right
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from functools import cached_property

ACTIONS = ("suspend", "register", "flap", "remove", "add", "move")
_Pairs = tuple[tuple[int, str], ...]


@dataclass(frozen=True)
class PhoneEdits:
    """Which phone indices are removed, and which have another status, tenant or number."""

    removed: tuple[int, ...] = ()
    statuses: _Pairs = ()
    tenants: _Pairs = ()
    numbers: _Pairs = ()

    @cached_property
    def status_map(self) -> dict[int, str]:
        """Index -> status, for the phones whose status was steered."""
        return dict(self.statuses)

    @cached_property
    def tenant_map(self) -> dict[int, str]:
        """Index -> tenantId, for the phones moved or added to a chosen tenant."""
        return dict(self.tenants)

    @cached_property
    def number_map(self) -> dict[int, str]:
        """Index -> phoneNum, for the phones added with a chosen number."""
        return dict(self.numbers)

    def index(self, k: int) -> int:
        """The index of the ``k``-th listed phone (from 0): ``k`` plus the removed ones before it.

        The iteration climbs to the least fixed point of ``i = k + removed(<= i)``, which is
        that index (each step counts removed indices it has passed; it never overshoots).
        """
        i = k
        while (j := k + bisect_right(self.removed, i)) != i:
            i = j
        return i

    def indices(self, start: int, stop: int) -> Iterable[int]:
        """Indices of the listed phones ``start`` to ``stop - 1``, in order."""
        return self._listed(start, stop) if self.removed else range(start, max(start, stop))

    def _listed(self, start: int, stop: int) -> Iterator[int]:
        if start >= stop:
            return
        gone = set(self.removed)
        i = self.index(start)
        for _ in range(stop - start):
            while i in gone:
                i += 1
            yield i
            i += 1


def _pairs(mapping: dict[int, str]) -> _Pairs:
    return tuple(sorted(mapping.items()))


@dataclass(frozen=True)
class Change:
    """What one steering action asks for (``POST /_sim/phones``)."""

    action: str
    count: int
    tenant: str | None = None
    """Only phones of this tenant (``add``: the tenant of the new phones)."""
    to: str | None = None
    """``move``: the tenant the phones move to."""
    number: str | None = None
    """``add``: the phoneNum of the new phones (a number another phone may have too)."""

    @classmethod
    def parse(cls, data: object) -> Change:
        """Read one action object; ValueError names what is wrong."""
        if not isinstance(data, dict):
            raise ValueError("POST /_sim/phones takes one object: action, count, ...")
        unknown = sorted(set(data) - {f.name for f in dataclasses.fields(cls)})
        if unknown:
            raise ValueError(f"unknown field(s): {', '.join(unknown)}")
        action, count = data.get("action"), data.get("count")
        if action not in ACTIONS:
            raise ValueError(f"action: must be one of {', '.join(ACTIONS)}")
        if not isinstance(count, int) or isinstance(count, bool) or count < 1:
            raise ValueError("count: must be an integer >= 1")
        texts = {name: data.get(name) for name in ("tenant", "to", "number")}
        for name, value in texts.items():
            if value is not None and not isinstance(value, str):
                raise ValueError(f"{name}: must be a string")
        if action == "move" and (texts["tenant"] is None or texts["to"] is None):
            raise ValueError("move: needs tenant (from) and to")
        return cls(action, count, texts["tenant"], texts["to"], texts["number"])


Base = Callable[[int], tuple[str, str, str]]
"""Index -> (phoneNum, tenantId, status) of the phone as the config alone makes it."""


class Phones:
    """The listed phones of one config, with its edits; applies a ``Change``."""

    def __init__(self, phones: int, edits: PhoneEdits, base: Base) -> None:
        self.phones = phones
        self._made = edits
        self._base = base
        self.removed = set(edits.removed)
        self.statuses = dict(edits.status_map)
        self.tenants = dict(edits.tenant_map)
        self.numbers = dict(edits.number_map)

    def state(self, i: int) -> dict[str, str]:
        """Phone ``i`` as the API lists it: phone_num, tenant_id, status."""
        number, tenant, status = self._base(i)
        return {
            "phone_num": self.numbers.get(i, number),
            "tenant_id": self.tenants.get(i, tenant),
            "status": self.statuses.get(i, status),
        }

    def pick(self, count: int, tenant: str | None, status: str | None) -> list[int]:
        """The first ``count`` listed phones of ``tenant`` (any) with ``status`` (any)."""
        picked: list[int] = []
        for i in self._made.indices(0, self.phones):
            state = self.state(i)
            if tenant in (None, state["tenant_id"]) and status in (None, state["status"]):
                picked.append(i)
                if len(picked) == count:
                    return picked
        what = " ".join(filter(None, (status, f"of {tenant}" if tenant else None)))
        raise ValueError(f"only {len(picked)} listed phone(s) {what or 'at all'}, not {count}")

    def apply(self, change: Change) -> list[dict[str, object]]:
        """Make ``change``; returns each phone touched, ``before`` and ``after`` (None: absent)."""
        if change.action == "add":
            first, self.phones = self.phones, self.phones + change.count
            added = list(self._made.indices(first, self.phones))
            for i in added:
                if change.tenant is not None:
                    self.tenants[i] = change.tenant
                if change.number is not None:
                    self.numbers[i] = change.number
            return [{"before": None, "after": self.state(i)} for i in added]
        if change.action == "remove":
            gone = self.pick(change.count, change.tenant, None)
            touched: list[dict[str, object]] = [
                {"before": self.state(i), "after": None} for i in gone
            ]
            self.removed.update(gone)
            self.phones -= len(gone)
            return touched
        steered = self._steered(change)
        before = [self.state(i) for i, _ in steered]
        for i, value in steered:
            (self.tenants if change.action == "move" else self.statuses)[i] = value
        return [
            {"before": was, "after": self.state(i)}
            for was, (i, _) in zip(before, steered, strict=True)
        ]

    def _steered(self, change: Change) -> list[tuple[int, str]]:
        """(index, new status or tenant) of a suspend, register, flap or move."""
        count, tenant = change.count, change.tenant
        if change.action == "move":
            return [(i, str(change.to)) for i in self.pick(count, tenant, None)]
        down = [] if change.action == "register" else self.pick(count, tenant, "registered")
        up = [] if change.action == "suspend" else self.pick(count, tenant, "suspended")
        return [(i, "suspended") for i in down] + [(i, "registered") for i in up]

    def edits(self) -> PhoneEdits:
        """The edits made so far, as a config holds them."""
        return PhoneEdits(
            tuple(sorted(self.removed)),
            _pairs(self.statuses),
            _pairs(self.tenants),
            _pairs(self.numbers),
        )


__all__ = ["ACTIONS", "Base", "Change", "PhoneEdits", "Phones"]
