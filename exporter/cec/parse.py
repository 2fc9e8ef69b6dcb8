"""Parse the vendor's loose JSON, once, into typed records.

This is the edge: numbers may come as strings and strings as numbers, any
field may be missing, and phone passwords are dropped right here, never copied
into a record. Anything we cannot read raises ``InvalidResponse``.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, NamedTuple

from exporter.cec.errors import InvalidResponse
from exporter.cec.snapshot import Endpoint, Status

_STATUS = {0: Status.REGISTERED, 1: Status.SUSPENDED}


class Phone(NamedTuple):
    """One softphone record, without its password.

    A NamedTuple, not a frozen dataclass: one is built per phone (100,000 per
    scrape at the size cap), and a frozen dataclass costs several times more.
    """

    key: tuple[str, str] | None
    """Identity for de-duplication across pages: (``id``, ``phoneNum``); None when both are
    missing (such records are all counted). ``id`` alone is no identity: it is a
    "Configuration ID" that phones in different ``partdbId`` partitions share."""
    phone_num: str
    tenant_id: str
    status: Status


@dataclass(frozen=True)
class Page:
    """One queryPhone answer: its retCode and, on success, what it carried."""

    ret_code: str
    ret_msg: str
    total: int | None
    endpoints: tuple[Endpoint, ...]
    phones: tuple[Phone, ...]


@dataclass(frozen=True)
class Token:
    """An access token and when, by the local clock, it stops being valid."""

    value: str
    expires_at: float

    def __repr__(self) -> str:
        return f"Token(<redacted>, expires_at={self.expires_at:.0f})"


def load_json_object(body: bytes) -> dict[str, Any]:
    """Decode a body that must be a JSON object."""
    try:
        data = json.loads(body)
    except (ValueError, RecursionError):
        snippet = "an HTML page" if body.lstrip()[:1] == b"<" else "not valid JSON"
        raise InvalidResponse(f"response body is {snippet}") from None
    if not isinstance(data, dict):
        raise InvalidResponse(f"response body is a JSON {type(data).__name__}, not an object")
    return data


def _integer(value: object) -> int | None:
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
                return _integer(float(text))
            except ValueError:
                return None
    return None


def _text(value: object) -> str:
    """A label-friendly string from a string or number; anything else is ``""``."""
    if isinstance(value, bool) or value is None:
        return ""
    if isinstance(value, (int, str)):
        return str(value).strip()
    if isinstance(value, float):
        number = _integer(value)
        return str(number) if number is not None else str(value)
    return ""


def _ret_code(value: object) -> str:
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise InvalidResponse("retCode is missing or not a string")
    return _text(value)


def _endpoint(raw: object, mode: str, node: str) -> Endpoint:
    if not isinstance(raw, dict):
        raise InvalidResponse(f"{mode} registration endpoint is not an object")
    return Endpoint(
        mode=mode,
        node=node,
        reg_ip=_text(raw.get("regIPAddress")),
        reg_port=_text(raw.get("regPort")),
        sip_ip=_text(raw.get("sipServiceIp")),
        sip_port=_text(raw.get("sipServicePort")),
    )


def _endpoints(result: dict[str, Any]) -> Iterator[Endpoint]:
    single = result.get("singleRegServ")
    if single is not None:
        items = single if isinstance(single, list) else [single]
        yield from (_endpoint(item, "single", "") for item in items)
    pool = result.get("poolRegServ")
    if pool is not None:
        if not isinstance(pool, dict):
            raise InvalidResponse("poolRegServ is not an object")
        for node, entries in pool.items():
            items = entries if isinstance(entries, list) else [entries]
            yield from (_endpoint(item, "pool", str(node)) for item in items)
    if result.get("regIPAddress") is not None or result.get("regPort") is not None:
        yield _endpoint(result, "legacy", "")


def _phone(raw: object) -> Phone:
    if not isinstance(raw, dict):
        raise InvalidResponse("phone entry is not an object")
    get = raw.get
    number, ident, tenant, code = get("phoneNum"), get("id"), get("tenantId"), get("status")
    # Hot path (once per phone): the usual wire types first, the loose readers for the rest.
    phone_num = number.strip() if type(number) is str else _text(number)
    key = str(ident) if type(ident) is int else _text(ident)
    tenant_id = tenant.strip() if type(tenant) is str else _text(tenant)
    if type(code) is not int:
        code = _integer(code)
    status = _STATUS.get(code, Status.UNKNOWN) if code is not None else Status.UNKNOWN
    return Phone((key, phone_num) if key or phone_num else None, phone_num, tenant_id, status)


def parse_page(body: bytes) -> Page:
    """Read a queryPhone answer; the caller decides what a non-zero retCode means."""
    data = load_json_object(body)
    ret_code = _ret_code(data.get("retCode"))
    ret_msg = _text(data.get("retMsg"))
    if ret_code != "0":
        return Page(ret_code, ret_msg, None, (), ())
    result = data.get("result")
    if result is None:
        result = {}
    if not isinstance(result, dict):
        raise InvalidResponse(f"result is a JSON {type(result).__name__}, not an object")
    total = result.get("total")
    total_value = None if total is None else _integer(total)
    if total is not None and (total_value is None or total_value < 0):
        raise InvalidResponse("result.total is not a non-negative integer")
    phones = result.get("phone")
    if phones is None:
        phones = []
    if not isinstance(phones, list):
        raise InvalidResponse("result.phone is not a list")
    return Page(
        ret_code=ret_code,
        ret_msg=ret_msg,
        total=total_value,
        endpoints=tuple(_endpoints(result)),
        phones=tuple(map(_phone, phones)),
    )


def parse_token(body: bytes, now: float) -> Token:
    """Read a tokenByAkSk answer into a ``Token`` valid until ``CreateTime + Expires``.

    The vendor's ``CreateTime`` is trusted only within five minutes of our clock;
    beyond that (a skewed server clock) the lifetime counts from ``now``.
    """
    data = load_json_object(body)
    value = data.get("AccessToken")
    if not isinstance(value, str) or not value.strip():
        raise InvalidResponse("token response has no AccessToken")
    expires = _integer(data.get("Expires"))
    if expires is None or expires <= 0:
        raise InvalidResponse("token response has no positive numeric Expires")
    created = _integer(data.get("CreateTime"))
    # Integer arithmetic: a CreateTime of hundreds of digits is a skewed clock, not a crash.
    start = created if created is not None and abs(created - math.floor(now)) <= 300 else now
    try:
        expires_at = float(start + expires)
    except OverflowError:  # "Expires": "1111...1" (hundreds of digits) is no lifetime
        raise InvalidResponse("token response has an out-of-range Expires") from None
    return Token(value=value.strip(), expires_at=expires_at)
