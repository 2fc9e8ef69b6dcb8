"""The typed records the client deals in, and the readers of the vendor's loose values.

``parse`` builds these from the wire, ``snapshot`` folds them: everything behind this
module trusts their types. Numbers may come as strings and strings as numbers, any
field may be missing: ``integer_of``, ``text_of`` and ``status_of`` say how each is read.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import NamedTuple


class Status(enum.StrEnum):
    """A softphone's registration status, as the ``status`` label spells it."""

    REGISTERED = "registered"
    SUSPENDED = "suspended"
    UNKNOWN = "unknown"


# The values as plain strings, for counting: a Status member hashes through the
# Python-level Enum.__hash__, several times the cost of a str, once per phone.
REGISTERED, SUSPENDED, UNKNOWN = STATUSES = tuple(str(s.value) for s in Status)

_STATUS = {0: REGISTERED, 1: SUSPENDED}


@dataclass(frozen=True, order=True)
class Endpoint:
    """One registration endpoint; ``mode`` is single, pool or legacy."""

    mode: str
    node: str
    reg_ip: str
    reg_port: str
    sip_ip: str
    sip_port: str


class Phone(NamedTuple):
    """One softphone record, without its password (a row of ``Page``'s columns)."""

    key: int | None
    phone_num: str
    tenant_id: str
    status: Status


@dataclass(frozen=True)
class Page:
    """One queryPhone answer: its retCode and, on success, what it carried.

    Phones are held as columns, one entry per phone in the order received, so that
    they are built and folded by C-level ``map``/``zip``/``Counter`` rather than one
    Python object per phone (100,000 per scrape at the size cap).
    """

    ret_code: str
    ret_msg: str
    total: int | None
    endpoints: tuple[Endpoint, ...]
    keys: tuple[int | None, ...] = ()
    """Identity for de-duplication across pages: the 64-bit hash of (``id``, ``phoneNum``)
    as text; None when both are missing (such records are all counted). ``id`` alone
    is no identity: it is a "Configuration ID" that phones in different ``partdbId``
    partitions share. An id whose text is a plain integer is hashed as that int
    (``_identity``): equal texts, equal keys, without turning every id into a string.

    A hash, not the strings: 8 bytes a phone in ``KeySet`` where a tuple of two
    strings costs about 200. Python's str hash is SipHash, keyed at random per
    process, and the tuple hash mixes both into 64 bits, of which ``KeySet`` keeps
    63: two distinct phones collide with probability 2**-63, so among a million
    phones about n**2 / 2**64 = 5e-8 per collection. An int id is hashed as itself
    only where Python's int hash is injective (not -1, whose hash is -2's, nor at or
    beyond 2**61 - 1, where ints hash modulo that); any other is hashed as its text
    (``_injective_ids``). A collision would count one phone as a duplicate of
    another (``Snapshot.duplicates`` shows duplicates)."""
    numbers: tuple[str, ...] = ()
    """``phoneNum`` of each phone, ``""`` when missing."""
    tenants: tuple[object, ...] = ()
    """``tenantId`` of each phone as decoded (a str or int); ``text_of`` makes the label."""
    codes: tuple[object, ...] = ()
    """``status`` of each phone as decoded (an int, str or None); ``status_of`` reads it.

    Tenants and codes are read per distinct pair when counting (a page has a few),
    not per phone: that is most of what parsing a page would cost."""

    def pair_values(
        self, value: Callable[[str, str], int], known: dict[tuple[object, object], int]
    ) -> list[int]:
        """``value(tenant_id, status value)`` of each phone, computed once per distinct pair
        as decoded and remembered in ``known`` (from one page to the next: the same few)."""
        try:
            return list(map(known.__getitem__, zip(self.tenants, self.codes, strict=True)))
        except KeyError:  # a pair not seen before
            for pair in set(zip(self.tenants, self.codes, strict=True)).difference(known):
                known[pair] = value(text_of(pair[0]), status_of(pair[1]))
            return list(map(known.__getitem__, zip(self.tenants, self.codes, strict=True)))

    def rows(self) -> Iterator[tuple[str, str, str]]:
        """(phone_num, tenant_id, status value) of each phone, in the order received."""
        for number, tenant, code in zip(self.numbers, self.tenants, self.codes, strict=True):
            yield number, text_of(tenant), status_of(code)

    @property
    def phones(self) -> tuple[Phone, ...]:
        """The phones as records, for tests and debugging (the fold reads the columns)."""
        rows = zip(self.keys, self.rows(), strict=True)
        return tuple(Phone(key, num, tenant, Status(status)) for key, (num, tenant, status) in rows)


@dataclass(frozen=True)
class Token:
    """An access token and when, by the local clock, it stops being valid."""

    value: str
    expires_at: float

    def __repr__(self) -> str:
        return f"Token(<redacted>, expires_at={self.expires_at:.0f})"


# --- loose readers ---------------------------------------------------------------------------


def integer_of(value: object) -> int | None:
    """An integer from an int, an integral float or a numeric string; else None."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float):
        return int(value) if math.isfinite(value) and value.is_integer() else None
    if isinstance(value, str):
        text = value.strip()
        try:
            return int(text)
        except ValueError:
            try:
                return integer_of(float(text))
            except ValueError:
                return None
    return None


def text_of(value: object) -> str:
    """A label-friendly string from a string or number; anything else is ``""``."""
    if isinstance(value, bool) or value is None:
        return ""
    if isinstance(value, (int, str)):
        return str(value).strip()
    if isinstance(value, float):
        number = integer_of(value)
        return str(number) if number is not None else str(value)
    return ""


def status_of(code: object) -> str:
    """The status value of a loose ``status`` field: 0 and 1 in any numeric spelling."""
    number = code if type(code) is int else integer_of(code)
    return _STATUS.get(number, UNKNOWN) if number is not None else UNKNOWN
