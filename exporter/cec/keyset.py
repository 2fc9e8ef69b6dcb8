"""A set of 64-bit phone keys in one flat array, for de-duplication across pages.

A Python ``set`` of ints costs about 80 bytes a key (a 40-byte int object plus
its share of the hash table): 8 MiB at 100,000 phones, 80 MiB at a million, and
more in fragmented arenas. Here a key is 8 bytes in an ``array`` at most half
full (open addressing, linear probing), 16 MiB at a million phones; the probe
loop costs about as much per key as building and merging a set per page.

Each key carries a 32-bit value in a parallel array (4 bytes a slot more): what a
phone was (tenant and status, ``exporter.cec.snapshot``), so that two collections
can be compared key by key without a Python object per phone. While pages are added,
a third array holds where in the vendor's list each key was found: a key found again
at a lower position takes that record's value, so the record at the lower offset is
the phone whatever order the pages arrive in (``settle`` frees it once all are in).
"""

from __future__ import annotations

from array import array
from collections import Counter
from collections.abc import Sequence
from itertools import compress
from typing import NamedTuple

_MIN_SLOTS = 256
_ABSENT = 0xFFFFFFFF  # never a value: the low two bits (a status) are never both set


def _slots_for(keys: int) -> int:
    """A power of two at least twice ``keys``: the table stays at most half full."""
    return max(_MIN_SLOTS, 1 << (2 * keys - 1).bit_length()) if keys > 0 else _MIN_SLOTS


class Added(NamedTuple):
    """What adding one page's keys found already held."""

    repeats: list[int]
    """Positions (in the page) of keys already held from a lower list position: not added."""
    displaced: list[tuple[int, int, int]]
    """(position in the page, value and list position it replaced) of keys held from a
    higher list position: this record is the phone now, the one held before the repeat."""


class KeySet:
    """Distinct non-None ints (hashes: any 64-bit signed value), added a page at a time."""

    __slots__ = ("_mask", "_positions", "_table", "_used", "_values")

    def __init__(self) -> None:
        self._table = array("q", bytes(8 * _MIN_SLOTS))  # 0 marks an empty slot
        self._values = array("I", bytes(4 * _MIN_SLOTS))  # the value of the key in that slot
        self._positions = array("I", bytes(4 * _MIN_SLOTS))  # where in the list it was found
        self._mask = _MIN_SLOTS - 1
        self._used = 0

    def __len__(self) -> int:
        return self._used

    def reserve(self, keys: int) -> None:
        """Make room for ``keys`` more keys at once (one allocation instead of doublings)."""
        slots = _slots_for(self._used + keys)
        if slots <= len(self._table):
            return
        old, self._table, self._mask = self._table, array("q", bytes(8 * slots)), slots - 1
        old_values, self._values = self._values, array("I", bytes(4 * slots))
        old_positions, self._positions = self._positions, array("I", bytes(4 * slots))
        table, values, positions, mask = self._table, self._values, self._positions, self._mask
        rows = zip(old, old_values, old_positions, strict=True)
        for held, value, position in compress(rows, old):
            slot = (held >> 1) & mask  # all distinct: each goes to the first free slot
            while table[slot]:
                slot = (slot + 1) & mask
            table[slot] = held
            values[slot] = value
            positions[slot] = position

    def settle(self) -> None:
        """Every page is in: free the list positions (a key set kept as a baseline is read,
        not added to; 4 bytes a slot, 8 MiB at a million phones)."""
        self._positions = array("I")

    def add(self, keys: Sequence[int | None], values: Sequence[int] = (), first: int = 0) -> Added:
        """Add ``keys`` (with ``values``, one each, when given), found in the vendor's list
        from position ``first`` on. A key held already keeps the record at the lower
        position: its value, or this one's (``displaced``). None is never held."""
        self.reserve(len(keys))
        return self._insert(keys, values or bytes(len(keys)), first)

    def _insert(self, keys: Sequence[int | None], new_values: Sequence[int], first: int) -> Added:
        table, values, positions, mask = self._table, self._values, self._positions, self._mask
        repeats: list[int] = []
        displaced: list[tuple[int, int, int]] = []
        for index, raw in enumerate(keys):
            if raw is None:
                continue
            # Stored with the low bit set, so never 0; the slot comes from the other
            # 63 bits, so the stored value alone finds its slot again on a resize.
            key = raw | 1
            slot = (key >> 1) & mask
            held = table[slot]
            while held:
                if held == key:
                    if first + index < positions[slot]:  # this record is the phone
                        displaced.append((index, values[slot], positions[slot]))
                        values[slot] = new_values[index]
                        positions[slot] = first + index
                    else:
                        repeats.append(index)
                    break
                slot = (slot + 1) & mask
                held = table[slot]
            else:
                table[slot] = key
                values[slot] = new_values[index]
                positions[slot] = first + index
        self._used += len(keys) - len(repeats) - len(displaced) - keys.count(None)
        return Added(repeats, displaced)

    def value_counts(self) -> Counter[int]:
        """How many keys hold each value (C-level: no Python loop per key)."""
        return Counter(compress(self._values, self._table))

    def pair_counts(self, before: KeySet) -> dict[tuple[int, int], int]:
        """For each key here: (its value, its value in ``before`` or -1 when absent) -> keys.

        Each pair is packed into one int in a flat array and counted at the end in C: a
        ``Counter`` update per key would cost a third more.
        """
        table, values, mask = before._table, before._values, before._mask
        packed = array("Q")
        append = packed.append
        for key, value in compress(zip(self._table, self._values, strict=True), self._table):
            slot = (key >> 1) & mask
            held = table[slot]
            while held != key:
                if not held:
                    append(value << 32 | _ABSENT)
                    break
                slot = (slot + 1) & mask
                held = table[slot]
            else:
                append(value << 32 | values[slot])
        return {
            (pair >> 32, -1 if pair & _ABSENT == _ABSENT else pair & _ABSENT): n
            for pair, n in Counter(packed).items()
        }
