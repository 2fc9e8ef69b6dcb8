"""Simulated CEC account: its configuration, its phones and the ground truth about them.

Phones are never stored: record ``i`` is a pure function of the config, so any page of
100,000 phones is generated on the fly and :func:`expected` can be recomputed at will.
"""

import dataclasses
import math
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from exporter.simulator.edits import Change, PhoneEdits, Phones

MODES = ("single", "pool", "legacy")
FIRST_PHONE_NUMBER = 88880000
MAX_PHONES = 10_000_000
MAX_POOL_NODES = 64
# Ratios are turned into integers on this scale so status assignment is exact, not float-fuzzy.
_SCALE = 1_000_000_000

SINGLE_ENDPOINT = {
    "regIPAddress": "10.10.0.10",
    "regPort": "5060",
    "sipServiceIp": "10.10.1.10",
    "sipServicePort": "5061",
}
LEGACY_REG_IP = "10.162.98.43"
LEGACY_REG_PORT = "5060"

Endpoint = tuple[str, str, str, str, str, str]
NO_EDITS = PhoneEdits()


@dataclass
class SimConfig:
    """What the simulated account looks like; changed at run time through ``Simulator.update``."""

    phones: int = 1000
    tenants: int = 3
    suspended_ratio: float = 0.1
    unknown_ratio: float = 0.0
    mode: str = "single"
    pool_nodes: int = 2
    latency_ms: float = 0.0
    jitter_ms: float = 0.0
    app_key: str = "demo-app-key"
    app_secret: str = "demo-app-secret"
    apps: int = 1
    """Vendor apps the gateway knows: ``app_key``/``app_secret``, and ``app_key-N``/
    ``app_secret-N`` for N in 1..apps-1 (many apps, each its own tokens, on one gateway)."""
    one_token_per_app: bool = False
    """Issuing a token revokes the app's older ones, as a gateway that keeps one live
    token per app does."""
    token_max_seconds: int = 3600
    numbers_as_strings: bool = False
    max_limit: int = 100
    password_prefix: str = "SIPPW-canary-"
    seed: int = 0
    id_period: int = 0
    """0: every phone has its own ``id``; N: ids repeat every N records (a "Configuration ID"
    shared by phones in different ``partdbId`` partitions), phone numbers stay distinct."""
    edits: PhoneEdits = NO_EDITS
    """Phones removed, or with another status, tenant or number (``steer`` edits it)."""
    set_cookie: bool = False
    """Answer every queryPhone with ``Set-Cookie: session=<X-TenantSpaceID or ->``, as a
    gateway keeping sessions per tenant space would (clients must not send it back)."""
    shared_numbers: bool = False
    """Each phone number is allocated once in every tenant (phone ``i`` has number
    ``i // tenants``, tenant ``i % tenants``), as when tenants reuse a numbering plan.
    Single and pool modes only: a legacy record has neither tenant nor id."""

    def to_dict(self) -> dict[str, Any]:
        """The config as a JSON-able dict (secrets included: this is a test double)."""
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class Expected:
    """Ground truth an exporter must report for the current config when no fault is active.

    ``counts`` holds only non-zero (tenant_id, status) pairs.
    """

    total: int
    counts: dict[tuple[str, str], int]
    endpoints: list[Endpoint]

    def to_dict(self) -> dict[str, Any]:
        """JSON form used by ``GET /_sim/state``."""
        return {
            "total": self.total,
            "counts": [
                {"tenant_id": tenant, "status": status, "count": n}
                for (tenant, status), n in sorted(self.counts.items())
            ],
            "endpoints": [
                dict(
                    zip(
                        ("mode", "node", "reg_ip", "reg_port", "sip_ip", "sip_port"),
                        ep,
                        strict=True,
                    )
                )
                for ep in self.endpoints
            ],
        }


_FIELD_TYPES: dict[str, type] = {f.name: type(f.default) for f in dataclasses.fields(SimConfig)}


def _coerce(name: str, value: object) -> object:
    """Check one field's type, accepting an int where a float is wanted (JSON has one number)."""
    want = _FIELD_TYPES[name]
    if want is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if isinstance(value, bool) and want is not bool:
        raise ValueError(f"{name}: expected {want.__name__}, got a boolean")
    if not isinstance(value, want):
        raise ValueError(f"{name}: expected {want.__name__}, got {type(value).__name__}")
    if isinstance(value, float) and not math.isfinite(value):
        raise ValueError(f"{name}: must be a finite number")
    return value


def validate(config: SimConfig) -> None:
    """Raise ValueError naming the first field whose value makes no sense."""
    for f in dataclasses.fields(SimConfig):
        _coerce(f.name, getattr(config, f.name))
    checks = [
        (0 <= config.phones <= MAX_PHONES, f"phones: must be 0..{MAX_PHONES}"),
        (config.tenants >= 1, "tenants: must be at least 1"),
        (0.0 <= config.suspended_ratio <= 1.0, "suspended_ratio: must be 0..1"),
        (0.0 <= config.unknown_ratio <= 1.0, "unknown_ratio: must be 0..1"),
        (
            _scaled(config.suspended_ratio) + _scaled(config.unknown_ratio) <= _SCALE,
            "suspended_ratio + unknown_ratio: must not exceed 1",
        ),
        (config.mode in MODES, f"mode: must be one of {', '.join(MODES)}"),
        (1 <= config.pool_nodes <= MAX_POOL_NODES, f"pool_nodes: must be 1..{MAX_POOL_NODES}"),
        (config.latency_ms >= 0, "latency_ms: must be >= 0"),
        (config.jitter_ms >= 0, "jitter_ms: must be >= 0"),
        (config.app_key != "", "app_key: must not be empty"),
        (config.app_secret != "", "app_secret: must not be empty"),
        (config.apps >= 1, "apps: must be at least 1"),
        (config.token_max_seconds >= 1, "token_max_seconds: must be >= 1"),
        (config.max_limit >= 1, "max_limit: must be >= 1"),
        (config.id_period >= 0, "id_period: must be >= 0"),
    ]
    for ok, message in checks:
        if not ok:
            raise ValueError(message)


def app_secret(config: SimConfig, app_key: object) -> str | None:
    """The secret of the app ``app_key`` (see ``SimConfig.apps``), or None for no such app."""
    if app_key == config.app_key:
        return config.app_secret
    prefix = f"{config.app_key}-"
    if not isinstance(app_key, str) or not app_key.startswith(prefix):
        return None
    number = app_key[len(prefix) :]
    if not number.isdigit() or number != str(int(number)) or not 1 <= int(number) < config.apps:
        return None
    return f"{config.app_secret}-{number}"


def with_changes(config: SimConfig, changes: dict[str, object]) -> SimConfig:
    """A validated copy of ``config`` with ``changes`` applied; ValueError on unknown names."""
    unknown = sorted(set(changes) - set(_FIELD_TYPES))
    if unknown:
        raise ValueError(f"unknown config field(s): {', '.join(unknown)}")
    if "edits" in changes:
        raise ValueError("edits: change the phone list with POST /_sim/phones")
    coerced = {name: _coerce(name, value) for name, value in changes.items()}
    new = dataclasses.replace(config, **coerced)  # type: ignore[arg-type]
    validate(new)
    return new


def _scaled(ratio: float) -> int:
    return round(ratio * _SCALE)


def status_of(config: SimConfig, i: int) -> str:
    """Status bucket of phone ``i``: registered, suspended or unknown.

    Bresenham-style spreading puts exactly floor(N * ratio) phones (seed 0) in each
    non-registered bucket, evenly spaced rather than the first N; ``seed`` shifts the phase.
    """
    suspended, unknown = _scaled(config.suspended_ratio), _scaled(config.unknown_ratio)
    off = suspended + unknown
    x = i + config.seed
    if off == 0 or (x + 1) * off // _SCALE == x * off // _SCALE:
        return "registered"
    j = x * off // _SCALE  # rank among the non-registered phones
    return "suspended" if (j + 1) * suspended // off > j * suspended // off else "unknown"


def _number(config: SimConfig, value: int) -> int | str:
    return str(value) if config.numbers_as_strings else value


def base_number(config: SimConfig, i: int) -> str:
    """The phone number of phone ``i`` as the config alone makes it (no edits)."""
    return str(FIRST_PHONE_NUMBER + (i // config.tenants if config.shared_numbers else i))


def base_phone(config: SimConfig, i: int) -> tuple[str, str, str]:
    """(phoneNum, tenantId, status) of phone ``i`` as the config alone makes it (no edits)."""
    return base_number(config, i), f"tenant-{i % config.tenants}", status_of(config, i)


def phone_record(config: SimConfig, i: int) -> dict[str, object]:
    """The wire record of phone ``i`` in the config's mode, with the config's edits."""
    edits = config.edits
    record: dict[str, object] = {
        "phoneNum": edits.number_map.get(i) or base_number(config, i),
        "password": f"{config.password_prefix}{i:06d}",
    }
    if config.mode == "legacy":
        return record
    record["id"] = _number(config, (i % config.id_period if config.id_period else i) + 1)
    status = edits.status_map.get(i) or status_of(config, i)
    if status != "unknown":
        record["status"] = _number(config, 0 if status == "registered" else 1)
    elif i % 2:  # half the unknowns carry an out-of-range code, half omit the field
        record["status"] = _number(config, 7)
    record["remark"] = ""
    record["tenantId"] = edits.tenant_map.get(i) or f"tenant-{i % config.tenants}"
    record["partdbId"] = f"p{i // config.id_period + 1}" if config.id_period else "p1"
    return record


def twin_record(config: SimConfig, i: int) -> dict[str, object]:
    """Phone ``i``'s record with its key (``id``, ``phoneNum``) and another content: the
    tenant ``<tenant>-twin`` and the other status (registered <-> suspended)."""
    record = phone_record(config, i)
    record["tenantId"] = f"{record['tenantId']}-twin"
    registered = record.get("status") in (0, "0")
    record["status"] = _number(config, 1 if registered else 0)
    return record


def pool_endpoint(node: int) -> dict[str, str]:
    """Distinct registration addresses of pool node ``node`` (1-based)."""
    return {
        "regIPAddress": f"10.20.{node}.10",
        "regPort": "5060",
        "sipServiceIp": f"10.21.{node}.10",
        "sipServicePort": "5061",
    }


def page_result(
    config: SimConfig,
    offset: int,
    limit: int,
    total_shift: int = 0,
    duplicate: bool = False,
    short: int = 0,
    shift: int = 0,
    no_total: bool = False,
    twin: int | None = None,
) -> dict[str, object]:
    """The ``result`` object for one page; only this page's phones are generated.

    ``duplicate`` prepends the first phone of the previous page (page 0 repeats its own).
    ``short`` drops that many records from the end of the page (``total`` unchanged).
    ``shift`` moves the page's window by that many records, as when phones are added or
    removed before it while paging: -1 repeats the previous page's last phone and loses
    this page's last one. ``no_total`` leaves ``total`` out (any field may be missing).
    ``twin`` prepends the phone at that list position with its ``id`` and ``phoneNum`` but
    another tenant and status: one key, two contents (the lower position is the phone).
    """
    start = max(0, offset + shift)
    indices = list(config.edits.indices(start, min(start + limit, config.phones)))
    if short:
        indices = indices[: max(0, len(indices) - short)]
    if duplicate and offset < config.phones:
        indices.insert(0, config.edits.index(max(offset - limit, 0)))
    total = _number(config, config.phones + total_shift)
    phones = [phone_record(config, i) for i in indices]
    if twin is not None and twin < config.phones and config.mode != "legacy":
        phones.insert(0, twin_record(config, config.edits.index(twin)))
    result: dict[str, object] = {} if no_total else {"total": total}
    if config.mode == "legacy":
        return {
            **result,
            "regIPAddress": LEGACY_REG_IP,
            "regPort": LEGACY_REG_PORT,
            "phone": phones,
        }
    if config.mode == "pool":
        result["poolRegServ"] = {
            f"node{n}": [pool_endpoint(n)] for n in range(1, config.pool_nodes + 1)
        }
    else:
        result["singleRegServ"] = [dict(SINGLE_ENDPOINT)]
    result["phone"] = phones
    return result


def expected(config: SimConfig) -> Expected:
    """Ground truth for ``config``; O(phones) once per distinct config, then cached.

    With edits, the count over every index up to the last listed phone, less the
    removed ones and moved by the edited ones (O(edits)).
    """
    edits = config.edits
    span = edits.index(config.phones - 1) + 1 if config.phones else 0
    _total, counts, endpoints = _expected_cached(
        config.mode,
        span,
        config.tenants,
        config.suspended_ratio,
        config.unknown_ratio,
        config.seed,
        config.pool_nodes,
    )
    tally = dict(counts)
    if config.mode != "legacy":
        phones = Phones(config.phones, edits, lambda i: base_phone(config, i))
        edited = {i for i, _ in (*edits.statuses, *edits.tenants) if i < span} - phones.removed
        for i in (*(i for i in phones.removed if i < span), *edited):
            _, tenant, status = base_phone(config, i)
            tally[(tenant, status)] -= 1
        for i in edited:
            state = phones.state(i)
            key = (state["tenant_id"], state["status"])
            tally[key] = tally.get(key, 0) + 1
    else:
        tally = {("", "unknown"): config.phones} if config.phones else {}
    counts_now = {key: n for key, n in tally.items() if n}
    return Expected(total=config.phones, counts=counts_now, endpoints=list(endpoints))


def reset_edits(config: SimConfig) -> SimConfig:
    """``config`` without phone-list edits (``phones`` unchanged)."""
    return dataclasses.replace(config, edits=NO_EDITS)


def steer(config: SimConfig, change: Change) -> tuple[SimConfig, list[dict[str, object]]]:
    """``config`` with ``change`` made to its phone list, and the phones it touched."""
    if config.mode == "legacy" and change.action not in ("add", "remove"):
        raise ValueError(f"{change.action}: legacy records have no status or tenant")
    if change.action == "add" and config.phones + change.count > MAX_PHONES:
        raise ValueError(f"add: at most {MAX_PHONES} phones")
    phones = Phones(config.phones, config.edits, lambda i: base_phone(config, i))
    touched = phones.apply(change)
    return dataclasses.replace(config, phones=phones.phones, edits=phones.edits()), touched


@lru_cache(maxsize=16)
def _expected_cached(
    mode: str,
    phones: int,
    tenants: int,
    suspended_ratio: float,
    unknown_ratio: float,
    seed: int,
    pool_nodes: int,
) -> tuple[int, tuple[tuple[tuple[str, str], int], ...], tuple[Endpoint, ...]]:
    config = SimConfig(
        phones=phones,
        tenants=tenants,
        suspended_ratio=suspended_ratio,
        unknown_ratio=unknown_ratio,
        mode=mode,
        pool_nodes=pool_nodes,
        seed=seed,
    )
    counts: dict[tuple[str, str], int] = {}
    if mode == "legacy":
        if phones:
            counts[("", "unknown")] = phones
        endpoints: list[Endpoint] = [("legacy", "", LEGACY_REG_IP, LEGACY_REG_PORT, "", "")]
    else:
        for i in range(phones):
            key = (f"tenant-{i % tenants}", status_of(config, i))
            counts[key] = counts.get(key, 0) + 1
        if mode == "pool":
            endpoints = [
                _endpoint_tuple("pool", f"node{n}", pool_endpoint(n))
                for n in range(1, pool_nodes + 1)
            ]
        else:
            endpoints = [_endpoint_tuple("single", "", SINGLE_ENDPOINT)]
    return phones, tuple(sorted(counts.items())), tuple(endpoints)


def _endpoint_tuple(mode: str, node: str, ep: dict[str, str]) -> Endpoint:
    return (
        mode,
        node,
        ep["regIPAddress"],
        ep["regPort"],
        ep["sipServiceIp"],
        ep["sipServicePort"],
    )


__all__ = [
    "MODES",
    "Expected",
    "SimConfig",
    "expected",
    "page_result",
    "phone_record",
    "reset_edits",
    "status_of",
    "steer",
    "validate",
    "with_changes",
]
