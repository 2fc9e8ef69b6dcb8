"""Property tests of the parsing edge: anything the API may send gives a record or InvalidResponse.

``parse_page`` and ``parse_token`` are fed arbitrary JSON values, nearly-valid V2 and
legacy answers with random field types, and arbitrary bytes. Whatever comes in, they
return a ``Page``/``Token`` or raise ``InvalidResponse``, never another exception, and a
phone password never survives into the returned page (nor into an error message).
"""

from __future__ import annotations

import json
import math
from collections import Counter
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from exporter.cec.errors import InvalidResponse
from exporter.cec.keyset import KeySet
from exporter.cec.parse import parse_page, parse_token
from exporter.cec.records import Page, Status, Token
from exporter.cec.roster import Roster, compare
from exporter.cec.snapshot import SnapshotBuilder
from exporter.cec.text import VENDOR_TEXT_CHARS

NOW = 1_800_000_000.0
PASSWORD_PREFIX = "SIPPW-canary-"
FUZZ = settings(
    max_examples=250,
    deadline=None,  # a loaded CI machine must not turn slowness into a failure
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

# --- strategies -------------------------------------------------------------------------------

scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.integers(min_value=-(10**400), max_value=10**400)  # beyond float range
    | st.floats()  # NaN and the infinities too: json.dumps writes them, json.loads reads them
    | st.text(max_size=20)
)
json_values = st.recursive(
    scalars,
    lambda children: (
        st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=10), children, max_size=5)
    ),
    max_leaves=20,
)
numeric_text = st.integers(min_value=-(10**30), max_value=10**30).map(str) | st.sampled_from(
    [" 42 ", "1e3", "1.0", "1.5", "-0", "NaN", "inf", "0x10", "", " ", "1" * 500, "9" * 5000]
)


def loose(valid: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """Mostly the right type, sometimes a number-as-string, sometimes anything at all."""
    return st.one_of(valid, valid, numeric_text, scalars, json_values)


passwords = st.text(min_size=1, max_size=12).map(lambda s: PASSWORD_PREFIX + s)
endpoints = st.fixed_dictionaries(
    {},
    optional={
        "regIPAddress": loose(st.ip_addresses(v=4).map(str)),
        "regPort": loose(st.integers(0, 65535)),
        "sipServiceIp": loose(st.ip_addresses(v=4).map(str)),
        "sipServicePort": loose(st.integers(0, 65535)),
    },
)
phones = st.fixed_dictionaries(
    {"password": loose(passwords)},
    optional={
        "phoneNum": loose(st.integers(80000000, 89999999).map(str)),
        "id": loose(st.integers(1, 10**6)),
        "status": loose(st.sampled_from([0, 1, "0", "1", 7])),
        "remark": loose(st.text(max_size=10)),
        "tenantId": loose(st.sampled_from(["t1", "t2", "t3"])),
        "partdbId": loose(st.text(max_size=5)),
    },
)
ret_codes = st.one_of(st.sampled_from(["0", 0, 0.0, " 0 ", "1", "5", 3]), scalars)
v2_results = st.fixed_dictionaries(
    {},
    optional={
        "total": loose(st.integers(0, 10**6)),
        "singleRegServ": loose(st.lists(endpoints, max_size=3) | endpoints),
        "poolRegServ": loose(
            st.dictionaries(st.text(max_size=6), st.lists(endpoints, max_size=2) | endpoints)
        ),
        "phone": loose(st.lists(phones | json_values, max_size=6)),
    },
)
legacy_results = st.fixed_dictionaries(
    {},
    optional={
        "total": loose(st.integers(0, 10**6)),
        "regIPAddress": loose(st.ip_addresses(v=4).map(str)),
        "regPort": loose(st.integers(0, 65535)),
        "phone": loose(
            st.lists(
                st.fixed_dictionaries(
                    {"password": loose(passwords)},
                    optional={"phoneNum": loose(st.text(max_size=8))},
                ),
                max_size=6,
            )
        ),
    },
)
answers = st.fixed_dictionaries(
    {},
    optional={
        "retCode": ret_codes,
        "retMsg": loose(st.text(max_size=20)),
        "result": v2_results | legacy_results | json_values,
    },
)
tokens = st.fixed_dictionaries(
    {},
    optional={
        "AccessToken": loose(st.text(min_size=1, max_size=30)),
        "ApplyType": loose(st.just("Bearer")),
        "CreateTime": loose(st.integers(0, 4 * 10**9).map(str)),
        "Expires": loose(st.integers(-10, 10**6).map(str)),
        "Scope": loose(st.text(max_size=5)),
    },
)


def encode(value: object) -> bytes:
    return json.dumps(value).encode()


def page_or_invalid(body: bytes) -> Page | None:
    """The page, or None for InvalidResponse (whose message must not quote a password)."""
    message = ""
    try:
        page = parse_page(body)
    except InvalidResponse as err:
        message = str(err)
        page = None
    assert PASSWORD_PREFIX not in message
    assert page is None or isinstance(page, Page)
    return page


def token_or_invalid(body: bytes) -> Token | None:
    try:
        token = parse_token(body, NOW)
    except InvalidResponse:
        return None
    assert isinstance(token, Token)
    assert token.value
    assert repr(token).startswith("Token(<redacted>, expires_at=")
    assert len(token.value) < 8 or token.value not in repr(token)
    assert math.isfinite(token.expires_at)
    assert token.expires_at > NOW - 300  # a positive lifetime from a start near now
    return token


def assert_no_password(page: Page | None, answer: object) -> None:
    """No canary password of ``answer`` appears in the page's repr."""
    if page is None:
        return
    text = repr(page)
    assert PASSWORD_PREFIX not in text
    for value in _passwords(answer):
        assert value not in text


def _passwords(node: object) -> list[str]:
    if isinstance(node, dict):
        found = [
            v
            for k, v in node.items()
            if k == "password" and isinstance(v, str) and v.startswith(PASSWORD_PREFIX)
        ]
        return found + [p for v in node.values() for p in _passwords(v)]
    if isinstance(node, list):
        return [p for v in node for p in _passwords(v)]
    return []


# --- anything in, a record or InvalidResponse out ---------------------------------------------


@FUZZ
@given(json_values)
def test_parse_page_takes_any_json_value(value: object) -> None:
    page_or_invalid(encode(value))


@FUZZ
@given(json_values)
def test_parse_token_takes_any_json_value(value: object) -> None:
    token_or_invalid(encode(value))


@FUZZ
@given(st.binary(max_size=200) | json_values.map(encode).map(lambda b: b[: len(b) // 2]))
def test_arbitrary_and_cut_short_bytes(body: bytes) -> None:
    page_or_invalid(body)
    token_or_invalid(body)


@FUZZ
@given(answers)
def test_nearly_valid_answers_never_leak_a_password(answer: dict[str, Any]) -> None:
    page = page_or_invalid(encode(answer))
    assert_no_password(page, answer)
    if page is not None and page.ret_code == "0":
        assert page.total is None or page.total >= 0
        builder = SnapshotBuilder(per_phone=True)
        builder.add(page)  # whatever parsed also folds into a snapshot
        snapshot = builder.build()
        assert PASSWORD_PREFIX not in repr(snapshot)
        assert sum(snapshot.counts.values()) <= len(page.phones)


@FUZZ
@given(st.fixed_dictionaries({"retCode": st.just("0"), "result": v2_results}))
def test_nearly_valid_v2_results(answer: dict[str, Any]) -> None:
    assert_no_password(page_or_invalid(encode(answer)), answer)


@FUZZ
@given(st.fixed_dictionaries({"retCode": st.just("0"), "result": legacy_results}))
def test_nearly_valid_legacy_results(answer: dict[str, Any]) -> None:
    assert_no_password(page_or_invalid(encode(answer)), answer)


@FUZZ
@given(tokens)
def test_nearly_valid_tokens(answer: dict[str, Any]) -> None:
    token_or_invalid(encode(answer))


def test_the_examples_the_fuzzers_lean_on() -> None:
    """Spot checks that the properties above are not vacuous."""
    good = {"AccessToken": "tok-123", "Expires": "600", "CreateTime": str(int(NOW))}
    assert token_or_invalid(encode(good)) == Token("tok-123", NOW + 600)
    for expires in ("9" * 400, "1e400", 10**400):
        assert token_or_invalid(encode({**good, "Expires": expires})) is None
    page = page_or_invalid(
        encode({"retCode": 0, "result": {"phone": [{"password": PASSWORD_PREFIX + "x"}]}})
    )
    assert page is not None
    assert len(page.phones) == 1
    assert_no_password(page, {"password": PASSWORD_PREFIX + "x"})


@FUZZ
@given(st.text(), st.integers(min_value=0, max_value=100_000))
def test_vendor_text_is_clipped_where_it_is_parsed(text: str, repeat: int) -> None:
    """``retCode`` and ``retMsg`` of any length come out bounded, on one line."""
    long = text * min(repeat, 100_000 // max(len(text), 1))
    page = parse_page(encode({"retCode": "1" + long, "retMsg": long}))
    for kept in (page.ret_code, page.ret_msg):
        assert len(kept) <= VENDOR_TEXT_CHARS
        assert kept.isprintable()  # no newline forges a log line
    if len(long) <= VENDOR_TEXT_CHARS and long.isprintable():
        assert page.ret_msg == long.strip()  # a usual message comes through as it came


def test_a_body_the_usual_decoder_rejects_early_and_the_loose_one_cannot_read() -> None:
    """A null phoneNum fails the usual types before the parser reaches the bad literal."""
    body = b'{"retCode": "0", "result": {"phone": [{"phoneNum": null}, Infinity]}}'
    assert page_or_invalid(body) is None


def test_a_utf8_byte_order_mark_is_ignored() -> None:
    """RFC 8259 lets a parser ignore a BOM, and some gateways send one: it is no failure."""
    bom = b"\xef\xbb\xbf"
    page = page_or_invalid(bom + encode({"retCode": "0", "result": {"total": 1, "phone": [{}]}}))
    assert page is not None
    assert page.total == 1
    good = {"AccessToken": "tok-123", "Expires": "600", "CreateTime": str(int(NOW))}
    assert token_or_invalid(bom + encode(good)) == Token("tok-123", NOW + 600)


# --- statuses land in the right buckets -------------------------------------------------------

STATUS_CASES: list[tuple[object, Status]] = [
    (0, Status.REGISTERED),
    ("0", Status.REGISTERED),
    (" 0 ", Status.REGISTERED),
    (0.0, Status.REGISTERED),
    (1, Status.SUSPENDED),
    ("1", Status.SUSPENDED),
    (1.0, Status.SUSPENDED),
    (2, Status.UNKNOWN),
    (-1, Status.UNKNOWN),
    ("7", Status.UNKNOWN),
    ("registered", Status.UNKNOWN),
    ("", Status.UNKNOWN),
    (None, Status.UNKNOWN),
    (True, Status.UNKNOWN),  # a JSON boolean is not the number 1
    (False, Status.UNKNOWN),
    (0.5, Status.UNKNOWN),
    ([], Status.UNKNOWN),
    ({}, Status.UNKNOWN),
]
MISSING = object()
phone_specs = st.lists(
    st.tuples(
        st.sampled_from([*STATUS_CASES, (MISSING, Status.UNKNOWN)]),
        st.sampled_from(["t1", "t2", 7, MISSING]),
    ),
    max_size=60,
)


@FUZZ
@given(phone_specs, st.integers(1, 10))
def test_statuses_are_counted_into_the_right_buckets(
    specs: list[tuple[tuple[object, Status], object]], page_size: int
) -> None:
    records: list[dict[str, object]] = []
    expected: Counter[tuple[str, Status]] = Counter()
    for i, ((status, bucket), tenant) in enumerate(specs):
        record: dict[str, object] = {"phoneNum": str(88880000 + i), "id": i + 1}
        record["password"] = f"{PASSWORD_PREFIX}{i:06d}"
        if status is not MISSING:
            record["status"] = status
        if tenant is not MISSING:
            record["tenantId"] = tenant
        records.append(record)
        expected[("" if tenant is MISSING else str(tenant), bucket)] += 1
    builder = SnapshotBuilder()
    for offset in range(0, max(len(records), 1), page_size):
        chunk = records[offset : offset + page_size]
        body = {"retCode": "0", "result": {"total": len(records), "phone": chunk}}
        page = parse_page(encode(body))
        assert_no_password(page, body)
        builder.add(page)
    snapshot = builder.build()
    assert snapshot.counts == dict(expected)
    assert snapshot.total == len(records)
    assert snapshot.duplicates == 0


# --- the two decoding paths agree -------------------------------------------------------------

# What the usual wire types (str and int fields) can hold, odd spellings included.
usual_text = st.one_of(
    st.integers(-(10**30), 10**30),
    st.integers(0, 10**6).map(str),
    st.sampled_from(["", " ", " 42 ", "042", "1.0", "x", "t1", "t2"]),
)
usual_phones = st.fixed_dictionaries(
    {"password": passwords},
    optional={
        "phoneNum": usual_text,
        "id": usual_text,
        "tenantId": usual_text,
        "status": st.sampled_from([0, 1, 7, -1, "0", "1", " 1 ", "1.0", "7", "", None]),
    },
)


@FUZZ
@given(st.lists(usual_phones, max_size=12), st.sampled_from([1.5, True, None, [1], {"a": 1}]))
def test_usual_and_loose_decoding_read_phones_alike(
    records: list[dict[str, object]], odd_id: object
) -> None:
    """A page of usual field types, and the same page plus one phone with an odd-typed ``id``
    (decoded the loose way, field by field), give the same records for the shared phones."""
    usual = parse_page(encode({"retCode": "0", "result": {"phone": records}}))
    odd = {"phoneNum": "1", "id": odd_id}
    loose = parse_page(encode({"retCode": "0", "result": {"phone": [*records, odd]}}))
    assert loose.phones[: len(records)] == usual.phones
    assert len(loose.phones) == len(records) + 1
    assert_no_password(usual, records)


pool_of_phones = st.lists(
    st.fixed_dictionaries(
        {"password": passwords},
        optional={
            "phoneNum": st.sampled_from(["100", "200", " 200 ", 200, ""]),
            "id": st.sampled_from([1, "1", 2, ""]),
            "status": st.sampled_from([0, 1, "1"]),
            "tenantId": st.sampled_from(["t1", "t2"]),
        },
    ),
    min_size=1,
    max_size=8,
)


@FUZZ
@given(pool_of_phones, st.lists(st.lists(st.integers(0, 7), max_size=6), max_size=5))
def test_folding_counts_each_identity_once(
    phones: list[dict[str, object]], pages: list[list[int]]
) -> None:
    """Pages that repeat phones (within a page and across pages) fold like a row-by-row model:
    a phone counts once per (id, phoneNum) as text; one with neither always counts."""
    builder = SnapshotBuilder(per_phone=True)
    expected: Counter[tuple[str, Status]] = Counter()
    seen: set[int] = set()
    duplicates = offset = 0
    for picks in pages:
        records = [phones[i % len(phones)] for i in picks]
        page = parse_page(encode({"retCode": "0", "result": {"phone": records}}))
        builder.add(page, offset)
        offset += len(records)
        for phone in page.phones:
            if phone.key is not None and phone.key in seen:
                duplicates += 1
                continue
            if phone.key is not None:
                seen.add(phone.key)
            expected[(phone.tenant_id, phone.status)] += 1
    snapshot = builder.build()
    assert snapshot.counts == dict(expected)
    assert snapshot.duplicates == duplicates
    assert snapshot.phones is not None
    assert all(number.strip() == number and number for _, number in snapshot.phones)


@FUZZ
@given(
    pool_of_phones,
    st.lists(st.lists(st.integers(0, 7), max_size=6), min_size=1, max_size=5),
    st.randoms(use_true_random=False),
)
def test_folding_is_the_same_in_any_page_order(
    phones: list[dict[str, object]], pages: list[list[int]], rng: Any
) -> None:
    """Pages arrive in any order: the record at the lower offset is the phone, so the counts,
    the per-phone series and the roster do not depend on which page came first."""
    parsed, offset = [], 0
    for picks in pages:
        records = [phones[i % len(phones)] for i in picks]
        parsed.append((parse_page(encode({"retCode": "0", "result": {"phone": records}})), offset))
        offset += len(records)

    def fold(order: list[tuple[Page, int]]) -> tuple[tuple[Any, ...], Roster]:
        builder = SnapshotBuilder(per_phone=True)
        for page, at in order:
            builder.add(page, at)
        snapshot = builder.build()
        assert snapshot.roster is not None
        found = snapshot.counts, snapshot.phones, snapshot.duplicates, builder.records
        return found, snapshot.roster

    shuffled = list(parsed)
    rng.shuffle(shuffled)
    (in_order, before), (any_order, after) = fold(parsed), fold(shuffled)
    assert any_order == in_order
    assert compare(before, after).total == 0  # phone by phone, the same rosters


@FUZZ
@given(
    st.lists(
        st.lists(
            st.none()
            | st.integers(-(2**63), 2**63 - 1)
            | st.integers(0, 600)  # small keys: the same slots, repeats, resizes
            | st.integers(0, 40).map(lambda i: i << 40),  # equal low bits: long probe runs
            max_size=300,
        ),
        max_size=8,
    ),
    st.integers(0, 2000),
)
def test_keyset_holds_each_key_once(pages: list[list[int | None]], hint: int) -> None:
    """``KeySet`` against a plain set, through resizes: the 63 high bits are the identity,
    and 0 is no key (a phone with neither id nor number)."""
    keys = KeySet()
    model: set[int] = set()
    if hint % 2:
        keys.reserve(hint)
    for page in pages:
        expected = []
        for position, key in enumerate(page):
            if not key:
                continue
            if key | 1 in model:
                expected.append(position)
            model.add(key | 1)
        assert keys.add([key or 0 for key in page]) == expected
        assert len(keys) == len(model)


def test_keyset_finds_every_key_again_after_growing() -> None:
    keys = KeySet()
    pages = [[hash(("id", str(n))) for n in range(start, start + 100)] for start in (0, 1000, 2000)]
    pages += [list(range((k << 20) + 2, (k << 20) + 202, 2)) for k in range(10)]  # runs of slots
    for page in pages:
        assert keys.add(page) == []
    assert len(keys) == 1300
    for page in pages:
        assert keys.add(page) == list(range(100))
    keys.reserve(100_000)  # grows again
    assert keys.add([key for page in pages for key in page]) == list(range(1300))
    assert len(keys) == 1300
