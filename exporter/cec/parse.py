"""Parse the vendor's loose JSON, once, into typed records.

This is the edge: numbers may come as strings and strings as numbers, any
field may be missing, and phone passwords are dropped right here, never read.
Anything we cannot read raises ``InvalidResponse``.

msgspec decodes a page into structs that name only the fields we read: a phone's
``password`` (and every other field) is skipped by the decoder, never built as a
Python object, and the shape (objects, lists) is checked in C. A page whose phones
carry the usual wire types (strings and integers) is then turned into columns with
C-level ``map``/``zip`` (tenants and statuses are read once per distinct pair, when
counted); any other page is decoded again with every field typed ``Any`` and read
field by field with the same loose rules.
"""

from __future__ import annotations

import math
import re
import sys
from collections.abc import Callable, Iterator
from operator import attrgetter
from typing import Any, Generic, TypeVar, cast

import msgspec

from exporter.cec.errors import InvalidResponse
from exporter.cec.records import Endpoint, Page, Token, integer_of, text_of
from exporter.cec.text import VENDOR_TEXT_CHARS, clip

_P = TypeVar("_P")
_R = TypeVar("_R")
_T = TypeVar("_T")


# --- what the decoder reads: only these fields ----------------------------------------------


class _Endpoint(msgspec.Struct, gc=False):  # gc=False: decoded JSON holds no cycles
    regIPAddress: Any = None
    regPort: Any = None
    sipServiceIp: Any = None
    sipServicePort: Any = None


class _Phone(msgspec.Struct, gc=False):
    """A phone with the usual wire types; ``password`` and the rest are skipped, unread."""

    phoneNum: str | int = ""
    id: str | int = ""
    tenantId: str | int = ""
    status: int | str | None = None


class _LoosePhone(msgspec.Struct, gc=False):
    """A phone with any JSON value in each field (a float id, a boolean status, ...)."""

    phoneNum: Any = None
    id: Any = None
    tenantId: Any = None
    status: Any = None


_Endpoints = list[_Endpoint] | _Endpoint  # a list, or one object on its own


class _Result(_Endpoint, Generic[_P], gc=False):
    """``result`` of a queryPhone answer; a legacy answer has its endpoint fields inline."""

    total: Any = None
    phone: list[_P] | None = None
    singleRegServ: _Endpoints | None = None
    poolRegServ: dict[str, _Endpoints] | None = None


class _Head(msgspec.Struct, gc=False):
    retCode: Any = None
    retMsg: Any = None


class _Answer(_Head, Generic[_R], gc=False):
    result: _R | None = None


class _TokenAnswer(msgspec.Struct, gc=False):
    AccessToken: Any = None
    Expires: Any = None
    CreateTime: Any = None


_USUAL = msgspec.json.Decoder(_Answer[_Result[_Phone]])
_LOOSE = msgspec.json.Decoder(_Answer[_Result[_LoosePhone]])
_HEAD = msgspec.json.Decoder(_Head)  # the result skipped: a failed retCode needs no result
_TOKEN = msgspec.json.Decoder(_TokenAnswer)

# msgspec's message when the answer or its result is not an object at all.
_NOT_AN_OBJECT = re.compile(r"Expected `[^`]*`, got `(\w+)`(?: - at `\$(\.result)`)?")
_JSON_TYPE_NAMES = {"array": "list"}


def _shape_error(err: msgspec.ValidationError) -> InvalidResponse:
    """Say what did not fit; msgspec names types and paths (``$.result.phone[3]``), no value."""
    message = str(err)
    wrong = _NOT_AN_OBJECT.fullmatch(message)
    if wrong:
        what = "result" if wrong[2] else "response body"
        found = _JSON_TYPE_NAMES.get(wrong[1], wrong[1])
        return InvalidResponse(f"{what} is a JSON {found}, not an object")
    return InvalidResponse(f"response body is not as expected: {message}")


def _syntax_error(body: bytes) -> InvalidResponse:
    snippet = "an HTML page" if body.lstrip()[:1] == b"<" else "not valid JSON"
    return InvalidResponse(f"response body is {snippet}")


_BOM = b"\xef\xbb\xbf"


def _skip_bom(body: bytes) -> bytes:
    """``body`` without a leading UTF-8 byte-order mark: RFC 8259 lets parsers ignore one."""
    return body[3:] if body[:3] == _BOM else body


def _decode(decoder: msgspec.json.Decoder[_T], body: bytes) -> _T:
    """Decode ``body``; anything unreadable is InvalidResponse."""
    try:
        return decoder.decode(body)
    except msgspec.ValidationError as err:
        raise _shape_error(err) from None
    except (ValueError, RecursionError):  # msgspec.DecodeError, bad UTF-8, deep nesting
        raise _syntax_error(body) from None


def clip_vendor_text(value: object) -> str:
    """``value`` read as text (``text_of``), control characters escaped, cut to
    ``VENDOR_TEXT_CHARS`` (``…`` marks a cut): the only form vendor text is kept in.

    A 16 MB ``retMsg`` would otherwise be copied into the error, each log line and the
    history, and cost the shared event loop (and every other target) seconds to log."""
    if isinstance(value, str):
        value = value[: 2 * VENDOR_TEXT_CHARS]  # before any copy of the whole
    text = text_of(value)
    if len(text) <= VENDOR_TEXT_CHARS and text.isprintable():
        return text  # the usual short message, as it came
    return clip(text, VENDOR_TEXT_CHARS)


def _ret_code(value: object) -> str:
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise InvalidResponse("retCode is missing or not a string")
    return clip_vendor_text(value)


def _endpoint(raw: _Endpoint, mode: str, node: str) -> Endpoint:
    return Endpoint(
        mode=mode,
        node=node,
        reg_ip=text_of(raw.regIPAddress),
        reg_port=text_of(raw.regPort),
        sip_ip=text_of(raw.sipServiceIp),
        sip_port=text_of(raw.sipServicePort),
    )


def _endpoints(result: _Result[Any]) -> Iterator[Endpoint]:
    single = result.singleRegServ
    if single is not None:
        items = single if isinstance(single, list) else [single]
        yield from (_endpoint(item, "single", "") for item in items)
    if result.poolRegServ is not None:
        for node, entries in result.poolRegServ.items():
            items = entries if isinstance(entries, list) else [entries]
            yield from (_endpoint(item, "pool", node) for item in items)
    if result.regIPAddress is not None or result.regPort is not None:
        yield _endpoint(result, "legacy", "")


# --- phones into columns ---------------------------------------------------------------------

_NUMBER, _ID, _TENANT, _CODE = map(attrgetter, ("phoneNum", "id", "tenantId", "status"))
_Columns = tuple[tuple[int | None, ...], tuple[str, ...], tuple[object, ...], tuple[object, ...]]


def _identity(text: str) -> int | str:
    """An id's text as keys compare it: the int for a plain integer ("42", not "042" or
    "+42"), so that 42 and "42" are one id while hashing an int id costs no string."""
    digits = text[1:] if text[:1] == "-" else text
    if not (digits.isascii() and digits.isdigit()):  # "", "x", "1.5": text (no exception)
        return text
    try:
        number = int(text)
    except ValueError:  # more digits than int() converts
        return text
    return number if str(number) == text else text


# Ints strictly inside (-M, M), M = 2**61 - 1, hash to themselves, but for -1 (its hash
# is -2, the C error value). Any other int id is keyed by its decimal text, which no text
# id can equal (``_identity`` turns integer texts into ints): the key stays injective.
_HASH_MODULUS = sys.hash_info.modulus


def _hashable_id(ident: int | str) -> int | str:
    """``ident`` itself where an int's hash is injective, else its text."""
    if type(ident) is int and not (-_HASH_MODULUS < ident < _HASH_MODULUS and ident != -1):
        return str(ident)
    return ident


def _injective_ids(ids: tuple[int | str, ...], all_ints: bool) -> tuple[int | str, ...]:
    """``ids`` with every int whose hash another int shares replaced by its text.

    ``all_ints``: the caller knows every id is an int (the usual page), so no type check.
    """
    ints = cast("tuple[int, ...]", ids) if all_ints else [i for i in ids if type(i) is int]
    if not ints:
        return ids
    lowest = min(ints)  # -1 can only be there when some id is negative
    if lowest > -_HASH_MODULUS and max(ints) < _HASH_MODULUS and (lowest > -1 or -1 not in ints):
        return ids  # the usual case: checked at C speed, nothing to change
    return tuple(map(_hashable_id, ids))


def _columns(
    ids: tuple[int | str, ...],
    numbers: tuple[str, ...],
    tenants: tuple[object, ...],
    codes: tuple[object, ...],
    all_ints: bool = False,
) -> _Columns:
    pairs = zip(_injective_ids(ids, all_ints), numbers, strict=True)
    keys: tuple[int | None, ...] = tuple(map(hash, pairs))
    if "" in numbers:  # a phone with neither id nor number has no identity
        rows = zip(keys, ids, numbers, strict=True)
        keys = tuple(key if ident != "" or number else None for key, ident, number in rows)
    return keys, numbers, tenants, codes


def _usual_columns(phones: list[_Phone]) -> _Columns:
    """Each field is a str or an int here; ``str(x).strip()`` is what ``text_of`` makes of it."""
    raw = tuple(map(_NUMBER, phones))
    try:
        numbers = tuple(map(str.strip, raw))
    except TypeError:  # some number came as an int
        numbers = tuple(map(str.strip, map(str, raw)))
    ids: tuple[int | str, ...] = tuple(map(_ID, phones))
    all_ints = str not in set(map(type, ids))
    if not all_ints:  # ids as strings: each to its identity
        ids = tuple(map(_identity, map(str.strip, map(str, ids))))
    tenants, codes = tuple(map(_TENANT, phones)), tuple(map(_CODE, phones))
    return _columns(ids, numbers, tenants, codes, all_ints)


def _loose_columns(phones: list[_LoosePhone]) -> _Columns:
    """Any JSON value in any field: each read to text (or an int code) the loose way."""
    numbers = tuple(map(text_of, map(_NUMBER, phones)))
    ids = tuple(map(_identity, map(text_of, map(_ID, phones))))
    tenants = tuple(map(text_of, map(_TENANT, phones)))
    codes = tuple(map(integer_of, map(_CODE, phones)))  # hashable; status_of reads it alike
    return _columns(ids, numbers, tenants, codes)


_Reader = Callable[[list[Any]], _Columns]
_DECODERS: tuple[tuple[msgspec.json.Decoder[_Answer[_Result[Any]]], _Reader], ...] = (
    (_USUAL, _usual_columns),
    (_LOOSE, _loose_columns),
)


def _decode_answer(body: bytes) -> tuple[_Answer[_Result[Any]], _Reader]:
    """The answer, decoded with the usual wire types if they fit, else with any types."""
    error: msgspec.ValidationError | None = None
    for decoder, reader in _DECODERS:
        try:
            return decoder.decode(body), reader
        except msgspec.ValidationError as err:
            error = err
        except (ValueError, RecursionError):  # msgspec.DecodeError, bad UTF-8, deep nesting
            raise _syntax_error(body) from None
    head = _decode(_HEAD, body)
    if _ret_code(head.retCode) != "0":  # a failed retCode is that, whatever its result
        return _Answer(retCode=head.retCode, retMsg=head.retMsg), _loose_columns
    assert error is not None
    raise _shape_error(error)


def parse_page(body: bytes) -> Page:
    """Read a queryPhone answer; the caller decides what a non-zero retCode means."""
    answer, columns = _decode_answer(_skip_bom(body))
    ret_code = _ret_code(answer.retCode)
    ret_msg = clip_vendor_text(answer.retMsg)
    if ret_code != "0":
        return Page(ret_code, ret_msg, None, ())
    result = answer.result or _Result()
    total = result.total
    total_value = None if total is None else integer_of(total)
    if total is not None and (total_value is None or total_value < 0):
        raise InvalidResponse("result.total is not a non-negative integer")
    keys, numbers, tenants, codes = columns(result.phone or [])
    endpoints = tuple(_endpoints(result))
    return Page(ret_code, ret_msg, total_value, endpoints, keys, numbers, tenants, codes)


def parse_token(body: bytes, now: float) -> Token:
    """Read a tokenByAkSk answer into a ``Token`` valid until ``CreateTime + Expires``.

    The vendor's ``CreateTime`` is trusted only within five minutes of our clock;
    beyond that (a skewed server clock) the lifetime counts from ``now``.
    """
    answer = _decode(_TOKEN, _skip_bom(body))
    value = answer.AccessToken
    if not isinstance(value, str) or not value.strip():
        raise InvalidResponse("token response has no AccessToken")
    expires = integer_of(answer.Expires)
    if expires is None or expires <= 0:
        raise InvalidResponse("token response has no positive numeric Expires")
    created = integer_of(answer.CreateTime)
    # Integer arithmetic: a CreateTime of hundreds of digits is a skewed clock, not a crash.
    start = created if created is not None and abs(created - math.floor(now)) <= 300 else now
    try:
        expires_at = float(start + expires)
    except OverflowError:  # "Expires": "1111...1" (hundreds of digits) is no lifetime
        raise InvalidResponse("token response has an out-of-range Expires") from None
    return Token(value=value.strip(), expires_at=expires_at)
