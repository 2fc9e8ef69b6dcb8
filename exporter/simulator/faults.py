"""Injectable faults: what can go wrong with the CEC API, on which pages, how many times.

Faults are plain frozen values; :class:`FaultBook` holds the active ones and spends ``times``.
"""

import json
import math
import threading
from dataclasses import dataclass, fields
from typing import Any, TypeGuard

APIS = ("queryPhone", "tokenByAkSk")
# Delays run before the answer; modifiers alter a normal page; every other kind *is* the answer.
DELAY_KINDS = frozenset({"hang", "slow"})
MODIFIER_KINDS = frozenset({"total_shift", "duplicate", "twin", "short_page", "shift", "no_total"})
_SHARED_KINDS = frozenset(
    {"http_status", "malformed_json", "html", "truncated", "not_object", "huge", "close"}
)
KINDS_BY_API: dict[str, frozenset[str]] = {
    "queryPhone": DELAY_KINDS
    | MODIFIER_KINDS
    | _SHARED_KINDS
    | {"ret_code", "result_wrong_type", "huge_ret_msg"},
    "tokenByAkSk": DELAY_KINDS | _SHARED_KINDS | {"no_access_token", "bad_expires"},
}
ALL_KINDS = KINDS_BY_API["queryPhone"] | KINDS_BY_API["tokenByAkSk"]
# Kinds that fit one API only: a fault given without "api" goes to that one.
_ONLY_API = {
    kind: api
    for api, kinds in KINDS_BY_API.items()
    for kind in kinds
    if not any(kind in other for name, other in KINDS_BY_API.items() if name != api)
}

DEFAULT_HANG_SECONDS = 3600.0
DEFAULT_SLOW_SECONDS = 1.0
DEFAULT_HUGE_BYTES = 20 * 1024 * 1024
DEFAULT_HUGE_RET_MSG_BYTES = 16_000_000  # within the exporter's default 16 MiB body cap

Value = float | int | str | None


@dataclass(frozen=True)
class Fault:
    """One fault: ``kind`` on ``api``, on ``pages`` (offset // limit; None = all), ``times`` max."""

    kind: str
    api: str = "queryPhone"
    pages: tuple[int, ...] | None = None
    value: Value = None
    retry_after: float | None = None
    times: int | None = None

    def __post_init__(self) -> None:
        if isinstance(self.pages, list):  # callers in Python naturally write pages=[1, 2]
            object.__setattr__(self, "pages", tuple(self.pages))
        _check(self)

    def matches(self, api: str, page: int | None) -> bool:
        """Whether this fault applies to a request to ``api`` for page ``page``."""
        return api == self.api and (self.pages is None or page in self.pages)

    def to_dict(self) -> dict[str, Any]:
        """JSON form, accepted back by :func:`parse_faults`."""
        out: dict[str, Any] = {"kind": self.kind, "api": self.api}
        if self.pages is not None:
            out["pages"] = list(self.pages)
        for name in ("value", "retry_after", "times"):
            if getattr(self, name) is not None:
                out[name] = getattr(self, name)
        return out


def _is_number(value: object) -> TypeGuard[int | float]:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _is_int(value: object) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool)


def _check(fault: Fault) -> None:
    """Raise ValueError unless every field of ``fault`` makes sense for its kind and api."""
    if fault.api not in APIS:
        raise ValueError(f"api: {fault.api!r} is not one of {', '.join(APIS)}")
    if fault.kind not in ALL_KINDS:
        raise ValueError(f"kind: {fault.kind!r} is not one of {', '.join(sorted(ALL_KINDS))}")
    if fault.kind not in KINDS_BY_API[fault.api]:
        raise ValueError(f"kind: {fault.kind!r} does not apply to api {fault.api!r}")
    if fault.pages is not None:
        if fault.api != "queryPhone":
            raise ValueError("pages: only queryPhone requests have pages (use times)")
        if not all(_is_int(p) and p >= 0 for p in fault.pages):
            raise ValueError("pages: must be non-negative integers")
    if fault.times is not None and not (_is_int(fault.times) and fault.times >= 1):
        raise ValueError("times: must be a positive integer")
    if fault.retry_after is not None and not (
        _is_number(fault.retry_after) and fault.retry_after >= 0
    ):
        raise ValueError("retry_after: must be a non-negative number")
    problem = _value_problem(fault.kind, fault.value)
    if problem:
        raise ValueError(f"value: {problem} for kind {fault.kind!r}")


def _value_problem(kind: str, value: Value) -> str | None:
    """Why ``value`` is wrong for ``kind``, or None when it is fine."""
    if value is None:
        return None
    if kind == "ret_code":
        ok = isinstance(value, str) and value != ""
        return None if ok else "must be a non-empty string"
    if kind in ("http_status", "html"):
        ok = _is_int(value) and 100 <= value <= 599
        return None if ok else "must be an HTTP status 100..599"
    if kind in ("hang", "slow"):
        ok = _is_number(value) and value >= 0
        return None if ok else "must be seconds >= 0"
    if kind in ("huge", "huge_ret_msg"):
        ok = _is_int(value) and value > 0
        return None if ok else "must be a positive byte count"
    if kind in ("total_shift", "shift"):
        return None if _is_int(value) else "must be an integer"
    if kind == "short_page":
        ok = _is_int(value) and value >= 1
        return None if ok else "must be a positive record count"
    if kind == "twin":
        ok = _is_int(value) and value >= 0
        return None if ok else "must be a phone's position in the list (0 or more)"
    if kind in ("not_object", "result_wrong_type"):
        return None if value in ("list", "string") else "must be 'list' or 'string'"
    return "takes no value"


_FIELD_NAMES = frozenset(f.name for f in fields(Fault))


def _one(item: object, where: str) -> Fault:
    if not isinstance(item, dict):
        raise ValueError(f"{where}: expected an object, got {type(item).__name__}")
    unknown = sorted(set(item) - _FIELD_NAMES)
    if unknown:
        raise ValueError(f"{where}: unknown field(s) {', '.join(map(str, unknown))}")
    if "kind" not in item:
        raise ValueError(f"{where}: missing 'kind'")
    args = dict(item)
    pages = args.get("pages")
    if isinstance(pages, int) and not isinstance(pages, bool):
        args["pages"] = (pages,)
    elif isinstance(pages, list | tuple):
        args["pages"] = tuple(pages)
    elif pages is not None:
        raise ValueError(f"{where}: pages: must be a list of integers")
    for name in ("kind", "api"):
        if name in args and not isinstance(args[name], str):
            raise ValueError(f"{where}: {name}: must be a string")
    if "api" not in args and args["kind"] in _ONLY_API:
        args["api"] = _ONLY_API[args["kind"]]
    if args["kind"] == "ret_code" and _is_int(args.get("value")):
        args["value"] = str(args["value"])  # "retCode": 3 in a hand-written fault means "3"
    try:
        return Fault(**args)
    except ValueError as exc:
        raise ValueError(f"{where}: {exc}") from None


def parse_faults(data: object) -> list[Fault]:
    """Faults from JSON text, one fault object, or a list of them; ValueError says what is wrong."""
    if isinstance(data, str):
        try:
            data = json.loads(data)
        except json.JSONDecodeError as exc:
            raise ValueError(f"faults: not valid JSON: {exc}") from None
    if isinstance(data, Fault):
        return [data]
    if isinstance(data, dict):
        return [_one(data, "fault")]
    if isinstance(data, list):
        return [
            item if isinstance(item, Fault) else _one(item, f"fault {n}")
            for n, item in enumerate(data)
        ]
    raise ValueError(f"faults: expected an object or a list, got {type(data).__name__}")


class FaultBook:
    """Thread-safe set of active faults; spends ``times`` and forgets spent faults."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._entries: list[list[Any]] = []  # [fault, remaining times or None]

    def set(self, faults: list[Fault]) -> None:
        """Replace every active fault."""
        with self._lock:
            self._entries = [[f, f.times] for f in faults]

    def add(self, fault: Fault) -> None:
        """Add one fault after the existing ones."""
        with self._lock:
            self._entries.append([fault, fault.times])

    def clear(self) -> None:
        """Remove every fault."""
        self.set([])

    def active(self) -> list[Fault]:
        """Active faults, ``times`` showing what is left of each."""
        with self._lock:
            return [_with_times(f, left) for f, left in self._entries]

    def take(self, api: str, page: int | None) -> list[Fault]:
        """Faults to apply to one request: every matching delay and modifier, the first answer.

        Only the returned faults are spent.
        """
        chosen: list[list[Any]] = []
        answered = False
        with self._lock:
            for entry in self._entries:
                fault: Fault = entry[0]
                if not fault.matches(api, page):
                    continue
                if fault.kind not in DELAY_KINDS | MODIFIER_KINDS:
                    if answered:
                        continue
                    answered = True
                chosen.append(entry)
            for entry in chosen:
                if entry[1] is not None:
                    entry[1] -= 1
            self._entries = [e for e in self._entries if e[1] is None or e[1] > 0]
        return [entry[0] for entry in chosen]


def _with_times(fault: Fault, left: int | None) -> Fault:
    if left == fault.times:
        return fault
    return Fault(fault.kind, fault.api, fault.pages, fault.value, fault.retry_after, left)
