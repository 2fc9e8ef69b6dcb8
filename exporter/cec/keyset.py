"""A set of 64-bit phone keys in one flat array, for de-duplication across pages.

A Python ``set`` of ints costs about 80 bytes a key (a 40-byte int object plus
its share of the hash table): 8 MiB at 100,000 phones, 80 MiB at a million, and
more in fragmented arenas. Here a key is 8 bytes in an ``array`` at most half
full (open addressing, linear probing), 16 MiB at a million phones; the probe
loop costs about as much per key as building and merging a set per page.

Each key carries a 32-bit value in a parallel array (4 bytes a slot more): what a
phone was (tenant and status, ``exporter.cec.snapshot``), so that two collections
can be compared key by key without a Python object per phone. Keys are added in the
order of the vendor's list, so the one held is the record at the lowest offset.
"""

from __future__ import annotations

from array import array
from collections import Counter
from collections.abc import Sequence
from itertools import compress

_MIN_SLOTS = 256
ABSENT = 0xFFFFFFFF
"""Never a value (its low two bits, a status, are never both set): a key ``before`` lacks."""


def _slots_for(keys: int) -> int:
    """A power of two at least twice ``keys``: the table stays at most half full."""
    return max(_MIN_SLOTS, 1 << (2 * keys - 1).bit_length()) if keys > 0 else _MIN_SLOTS


class KeySet:
    """Distinct non-zero ints (hashes: any 64-bit signed value), added a page at a time; 0
    is no key (a phone with neither id nor number)."""

    __slots__ = ("_mask", "_table", "_used", "_values")

    def __init__(self) -> None:
        self._table = array("q", bytes(8 * _MIN_SLOTS))  # 0 marks an empty slot
        self._values = array("I", bytes(4 * _MIN_SLOTS))  # the value of the key in that slot
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
        table, values, mask = self._table, self._values, self._mask
        for held, value in compress(zip(old, old_values, strict=False), old):
            slot = (held >> 1) & mask  # all distinct: each goes to the first free slot
            while table[slot]:
                slot = (slot + 1) & mask
            table[slot] = held
            values[slot] = value

    def add(self, keys: Sequence[int], values: Sequence[int] = ()) -> list[int]:
        """Add ``keys`` (with ``values``, one each, when given; a repeat keeps its first);
        returns the positions of those already held (0 is never held)."""
        self.reserve(len(keys))
        return self._insert(keys, values or bytes(len(keys)))

    def _insert(self, keys: Sequence[int], new_values: Sequence[int]) -> list[int]:
        table, values, mask = self._table, self._values, self._mask
        repeats: list[int] = []
        for position, raw in enumerate(keys):
            if not raw:
                continue
            # Stored with the low bit set, so never 0; the slot comes from the other
            # 63 bits, so the stored value alone finds its slot again on a resize.
            key = raw | 1
            slot = (key >> 1) & mask
            held = table[slot]
            while held:
                if held == key:
                    repeats.append(position)
                    break
                slot = (slot + 1) & mask
                held = table[slot]
            else:
                table[slot] = key
                values[slot] = new_values[position]
        self._used += len(keys) - len(repeats) - keys.count(0)
        return repeats

    @property
    def slots(self) -> int:
        """The table's size: ``pair_counts`` takes a range of these."""
        return len(self._table)

    def pair_counts(self, before: KeySet, start: int = 0, stop: int | None = None) -> Counter[int]:
        """For each key in slots ``start`` to ``stop`` here: its value and its value in
        ``before`` (or ``ABSENT``), packed as ``value << 32 | before's``, counted.

        A range, so that a million keys can be compared a slice at a time. Each pair is
        packed into one int in a flat array and counted at the end in C: a ``Counter``
        update per key would cost a third more.
        """
        table, values, mask = before._table, before._values, before._mask
        here = self._table[start:stop]
        packed = array("Q")
        append = packed.append
        for key, value in compress(zip(here, self._values[start:stop], strict=True), here):
            slot = (key >> 1) & mask
            held = table[slot]
            while held != key:
                if not held:
                    append(value << 32 | ABSENT)
                    break
                slot = (slot + 1) & mask
                held = table[slot]
            else:
                append(value << 32 | values[slot])
        return Counter(packed)
