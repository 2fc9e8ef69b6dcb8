"""The two vendor endpoints: tokenByAkSk and queryPhone, as SPEC section 2 describes them.

Faults are applied only to requests that would otherwise succeed (right credentials, live
token, valid paging), after the configured latency.
"""

import dataclasses
import json
import re
import threading
import time
from email.message import Message
from typing import Any

from exporter.simulator.answers import broken_answer
from exporter.simulator.faults import (
    DEFAULT_HANG_SECONDS,
    DEFAULT_SLOW_SECONDS,
    DELAY_KINDS,
    MODIFIER_KINDS,
    Fault,
)
from exporter.simulator.model import SimConfig, app_secret, page_result
from exporter.simulator.reply import DROP, Reply, error_reply, json_reply
from exporter.simulator.state import SimState

TOKEN_PATH = "/apigovernance/api/oauth/tokenByAkSk"
QUERY_PATH = "/apiaccess/CC-Management/v2/mobileAgent/queryPhone"
DEFAULT_TOKEN_SECONDS = 600
_DIGITS = re.compile(r"[0-9]{1,12}")
# Encoded success pages, most recent last. A page is a pure function of the config and its
# paging, so a benchmark that reads the same pages again measures the exporter, not how
# fast the simulator builds JSON. Bounded: about 15 MB at 100 phones a page.
_PAGE_CACHE_SIZE = 1024
_page_cache: dict[tuple[object, ...], bytes] = {}
_page_cache_lock = threading.Lock()


def _json_object(body: bytes) -> dict[str, object] | None:
    try:
        data = json.loads(body)
    except ValueError:  # also covers bad UTF-8
        return None
    return data if isinstance(data, dict) else None


def _delays_pass(state: SimState, faults: list[Fault]) -> bool:
    """Run the hang/slow faults; False when the simulator stopped meanwhile."""
    for fault in faults:
        if fault.kind in DELAY_KINDS:
            default = DEFAULT_HANG_SECONDS if fault.kind == "hang" else DEFAULT_SLOW_SECONDS
            seconds = float(fault.value) if fault.value is not None else default
            if not state.pause(seconds):
                return False
    return True


def _answer_fault(faults: list[Fault]) -> Fault | None:
    return next((f for f in faults if f.kind not in DELAY_KINDS | MODIFIER_KINDS), None)


def _requested_expire(raw: str | None) -> int | str | None:
    """X-Token-Expire as int when it is a number, else the raw text (None when absent)."""
    if raw is None:
        return None
    text = raw.strip()
    return int(text) if _DIGITS.fullmatch(text) else raw


def token_by_ak_sk(state: SimState, headers: Message, body: bytes) -> Reply:
    """Issue a token for the right app_key/app_secret; lifetime min(X-Token-Expire, cap)."""
    config = state.config
    state.stats.request("tokenByAkSk")
    requested = _requested_expire(headers.get("X-Token-Expire"))
    state.stats.token_expire(requested)
    if not state.pause(state.api_delay(config)):
        return DROP
    payload = _json_object(body)
    if payload is None:
        return error_reply(400, "request body must be a JSON object")
    app_key = payload.get("app_key")
    secret = app_secret(config, app_key)
    if secret is None or payload.get("app_secret") != secret:
        return error_reply(401, "invalid app_key or app_secret")
    if isinstance(requested, str) or requested == 0:
        return error_reply(400, "X-Token-Expire must be a positive number of seconds")
    lifetime = min(requested or DEFAULT_TOKEN_SECONDS, config.token_max_seconds)
    faults = state.faults.take("tokenByAkSk", None)
    for fault in faults:
        state.stats.fault(fault.kind)
    if not _delays_pass(state, faults):
        return DROP
    kinds = {f.kind for f in faults}
    answer = _answer_fault(faults)
    if answer is not None and answer.kind not in ("no_access_token", "bad_expires"):
        return broken_answer(answer, "tokenByAkSk")
    reply: dict[str, str] = {
        "ApplyType": "Bearer",
        "CreateTime": str(int(time.time())),
        "Expires": "soon" if "bad_expires" in kinds else str(lifetime),
        "Scope": "cec-api",
        "AppKey": str(app_key),
        "UserID": "Anonymous",
    }
    if "no_access_token" not in kinds:
        token = state.tokens.issue(lifetime, str(app_key), config.one_token_per_app)
        reply = {"AccessToken": token, **reply}
        state.stats.incr("tokens_issued")
    return json_reply(reply)


def _authorized(state: SimState, config: SimConfig, headers: Message) -> bool:
    auth, app_key = headers.get("Authorization") or "", headers.get("X-APP-Key")
    if app_secret(config, app_key) is None or not auth.startswith("Bearer "):
        return False
    return state.tokens.is_live(auth[len("Bearer ") :], str(app_key))


def _paging(payload: dict[str, object], max_limit: int) -> tuple[int, int, str] | str:
    """(offset, limit, "number"|"string"|"mixed"), or why the paging is refused (retCode 4)."""
    values: dict[str, int] = {}
    types: set[str] = set()
    for name in ("offset", "limit"):
        raw = payload.get(name)
        if isinstance(raw, int) and not isinstance(raw, bool):
            values[name] = raw
            types.add("number")
        elif isinstance(raw, str) and _DIGITS.fullmatch(raw.strip()):
            values[name] = int(raw)
            types.add("string")
        else:
            return f"the {name} pagination data is empty or invalid"
    offset, limit = values["offset"], values["limit"]
    if offset < 0 or limit < 1:
        return "offset must be >= 0 and limit >= 1"
    if limit > max_limit:  # refused rather than capped, so a client sending too much is caught
        return f"limit must not exceed {max_limit}"
    return offset, limit, types.pop() if len(types) == 1 else "mixed"


def query_phone(state: SimState, headers: Message, body: bytes) -> Reply:
    """One page of phones for a live token, shaped by the config's mode and any faults.

    Cookies sent are recorded; with ``set_cookie`` every answer sets one per tenant space.
    """
    config = state.config
    state.stats.request("queryPhone")
    tenant_space = ""
    for value in headers.get_all("X-TenantSpaceID") or []:
        tenant_space = str(value)
        state.stats.tenant_space_id(tenant_space)
    for value in headers.get_all("Cookie") or []:
        state.stats.cookie(str(value))
    reply = _query_phone(state, config, headers, body)
    if not config.set_cookie or reply.drop:
        return reply
    cookie = ("Set-Cookie", f"session={tenant_space or '-'}; Path=/")
    return dataclasses.replace(reply, headers=(*reply.headers, cookie))


def _query_phone(state: SimState, config: SimConfig, headers: Message, body: bytes) -> Reply:
    with state.stats.in_flight():
        if not state.pause(state.api_delay(config)):
            return DROP
        if not _authorized(state, config, headers):
            return error_reply(401, "unauthorized: missing, expired or unknown token or app key")
        payload = _json_object(body)
        if payload is None:
            return error_reply(400, "request body must be a JSON object")
        paging = _paging(payload, config.max_limit)
        if isinstance(paging, str):
            return json_reply({"retCode": "4", "retMsg": paging})
        offset, limit, pagination_type = paging
        page = offset // limit
        state.stats.page(page, pagination_type)
        faults = state.faults.take("queryPhone", page)
        for fault in faults:
            state.stats.fault(fault.kind)
        if not _delays_pass(state, faults):
            return DROP
        answer = _answer_fault(faults)
        if answer is not None:
            return broken_answer(answer, "queryPhone")
        shift = sum(_amount(f, 1) for f in faults if f.kind == "total_shift")
        changes = {
            "total_shift": shift,
            "duplicate": any(f.kind == "duplicate" for f in faults),
            "short": sum(_amount(f, 1) for f in faults if f.kind == "short_page"),
            "shift": sum(_amount(f, -1) for f in faults if f.kind == "shift"),
            "no_total": any(f.kind == "no_total" for f in faults),
            "twin": next((_twin_of(f, offset, limit) for f in faults if f.kind == "twin"), None),
        }
        return Reply(body=_page_body(config, offset, limit, changes))


def _amount(fault: Fault, default: int) -> int:
    return int(fault.value) if fault.value is not None else default


def _twin_of(fault: Fault, offset: int, limit: int) -> int:
    """The list position a ``twin`` fault repeats: its value, else the previous page's first."""
    return _amount(fault, max(offset - limit, 0))


def _page_body(config: SimConfig, offset: int, limit: int, changes: dict[str, Any]) -> bytes:
    """The JSON body of a successful page, from the cache when the same page was built before."""
    key = (*vars(config).values(), offset, limit, *changes.values())
    with _page_cache_lock:
        body = _page_cache.get(key)
    if body is None:
        result = page_result(config, offset, limit, **changes)
        body = json.dumps({"retCode": "0", "retMsg": "successfully", "result": result}).encode()
        with _page_cache_lock:
            if len(_page_cache) >= _PAGE_CACHE_SIZE:
                del _page_cache[next(iter(_page_cache))]  # the oldest
            _page_cache[key] = body
    return body
