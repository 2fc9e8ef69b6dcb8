"""The CEC simulator over real HTTP: token flow, paging ground truth, faults, control endpoints."""

import json
import threading
import time
from collections import Counter
from collections.abc import Iterator
from typing import Any

import httpx2
import pytest

from exporter.simulator import Expected, Fault, SimConfig, Simulator, parse_faults

TOKEN = "/apigovernance/api/oauth/tokenByAkSk"
QUERY = "/apiaccess/CC-Management/v2/mobileAgent/queryPhone"
CREDS = {"app_key": "demo-app-key", "app_secret": "demo-app-secret"}


@pytest.fixture
def sim() -> Iterator[Simulator]:
    with Simulator(SimConfig(phones=250, tenants=3, suspended_ratio=0.1)) as s:
        yield s


@pytest.fixture
def client(sim: Simulator) -> Iterator[httpx2.Client]:
    with httpx2.Client(base_url=sim.url, timeout=5, verify=False) as c:
        yield c


def get_token(client: httpx2.Client, expire: str | None = None) -> str:
    headers = {"X-Token-Expire": expire} if expire is not None else {}
    r = client.post(TOKEN, json=CREDS, headers=headers)
    assert r.status_code == 200, r.text
    return str(r.json()["AccessToken"])


def auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}", "X-APP-Key": CREDS["app_key"]}


def query(
    client: httpx2.Client, token: str, offset: object = 0, limit: object = 100
) -> httpx2.Response:
    return client.post(QUERY, json={"offset": offset, "limit": limit}, headers=auth(token))


def status_name(record: dict[str, Any]) -> str:
    return {0: "registered", 1: "suspended"}.get(int(record.get("status", -1)), "unknown")


def collect(
    client: httpx2.Client, token: str, limit: int = 100
) -> tuple[Any, Counter[Any], set[Any]]:
    """Page through everything the way an exporter would: (total, counts, endpoints)."""
    total, offset = None, 0
    counts: Counter[tuple[str, str]] = Counter()
    endpoints: set[tuple[str, ...]] = set()
    while total is None or offset < int(total):
        body = query(client, token, offset, limit).json()
        assert body["retCode"] == "0"
        result = body["result"]
        total = result["total"] if total is None else total
        for rec in result["phone"]:
            if "tenantId" in rec:
                counts[(rec["tenantId"], status_name(rec))] += 1
            else:
                counts[("", "unknown")] += 1
        for ep in result.get("singleRegServ", []):
            endpoints.add(("single", "", *_ep(ep)))
        for node, eps in result.get("poolRegServ", {}).items():
            endpoints.update(("pool", node, *_ep(ep)) for ep in eps)
        if "regIPAddress" in result:
            endpoints.add(("legacy", "", result["regIPAddress"], result["regPort"], "", ""))
        offset += limit
    return total, counts, endpoints


def _ep(ep: dict[str, str]) -> tuple[str, str, str, str]:
    return ep["regIPAddress"], ep["regPort"], ep["sipServiceIp"], ep["sipServicePort"]


# --- token flow ------------------------------------------------------------------------------


def test_token_body_is_all_strings_and_lifetime_is_capped(
    sim: Simulator, client: httpx2.Client
) -> None:
    r = client.post(TOKEN, json=CREDS)
    body = r.json()
    assert r.status_code == 200
    assert set(body) == {
        "AccessToken",
        "ApplyType",
        "CreateTime",
        "Expires",
        "Scope",
        "AppKey",
        "UserID",
    }
    assert all(isinstance(v, str) for v in body.values())
    assert body["ApplyType"] == "Bearer"
    assert body["UserID"] == "Anonymous"
    assert body["Expires"] == "600"
    assert abs(int(body["CreateTime"]) - time.time()) < 5
    assert (
        client.post(TOKEN, json=CREDS, headers={"X-Token-Expire": "60"}).json()["Expires"] == "60"
    )
    assert (
        client.post(TOKEN, json=CREDS, headers={"X-Token-Expire": "9999"}).json()["Expires"]
        == "3600"
    )
    assert client.post(TOKEN, json=CREDS, headers={"X-Token-Expire": "soon"}).status_code == 400
    stats = sim.stats()
    assert stats["token_requests"] == 4
    assert stats["tokens_issued"] == 3
    assert stats["token_expire_requested"] == [None, 60, 9999, "soon"]


def test_wrong_secret_is_401_json(sim: Simulator, client: httpx2.Client) -> None:
    r = client.post(TOKEN, json={**CREDS, "app_secret": "nope"})
    assert r.status_code == 401
    assert "error_msg" in r.json()
    assert sim.stats()["unauthorized"] == 1


@pytest.mark.slow
def test_token_expires_for_real(sim: Simulator, client: httpx2.Client) -> None:
    sim.update(token_max_seconds=1)
    token = get_token(client, "600")
    assert query(client, token).status_code == 200
    time.sleep(1.05)
    assert query(client, token).status_code == 401


def test_expire_tokens_and_auth_header_rules(sim: Simulator, client: httpx2.Client) -> None:
    token = get_token(client)
    assert query(client, token).status_code == 200
    bad_headers = [
        {"Authorization": f"Bearer  {token}", "X-APP-Key": CREDS["app_key"]},
        {"Authorization": f"bearer {token}", "X-APP-Key": CREDS["app_key"]},
        {"Authorization": f"Bearer {token}"},
        {"Authorization": f"Bearer {token}", "X-APP-Key": "other"},
        {"X-APP-Key": CREDS["app_key"]},
    ]
    for headers in bad_headers:
        assert (
            client.post(QUERY, json={"offset": 0, "limit": 1}, headers=headers).status_code == 401
        )
    sim.expire_tokens()
    assert query(client, token).status_code == 401
    token = get_token(client)
    assert query(client, token).status_code == 200
    assert client.post("/_sim/expire-tokens").json() == {"ok": True}
    assert query(client, token).status_code == 401
    assert sim.stats()["unauthorized"] == len(bad_headers) + 2


# --- paging and ground truth -----------------------------------------------------------------


@pytest.mark.parametrize("mode", ["single", "pool", "legacy"])
def test_paging_matches_expected(mode: str) -> None:
    config = SimConfig(phones=1234, tenants=4, suspended_ratio=0.15, unknown_ratio=0.1, mode=mode)
    with Simulator(config) as sim, httpx2.Client(base_url=sim.url, verify=False) as client:
        token = get_token(client)
        total, counts, endpoints = collect(client, token)
        exp = sim.expected()
        assert total == exp.total == 1234
        assert dict(counts) == exp.counts
        assert endpoints == set(exp.endpoints)
        assert len(exp.endpoints) == (2 if mode == "pool" else 1)
        assert sim.stats()["query_requests_by_page"] == {p: 1 for p in range(13)}


def test_expected_shape_and_spread() -> None:
    with Simulator(SimConfig(phones=1000, tenants=3, suspended_ratio=0.1)) as sim:
        exp = sim.expected()
    assert isinstance(exp, Expected)
    assert sum(n for (_, s), n in exp.counts.items() if s == "suspended") == 100
    assert exp.endpoints == [("single", "", "10.10.0.10", "5060", "10.10.1.10", "5061")]
    legacy = Simulator(SimConfig(phones=7, mode="legacy"))
    legacy.stop()
    assert legacy.expected().counts == {("", "unknown"): 7}
    assert legacy.expected().endpoints == [("legacy", "", "10.162.98.43", "5060", "", "")]


def test_records_are_v2_shaped_and_suspended_are_spread(client: httpx2.Client) -> None:
    phones = query(client, get_token(client), 0, 100).json()["result"]["phone"]
    assert phones[0] == {
        "phoneNum": "88880000",
        "password": "SIPPW-canary-000000",
        "id": 1,
        "status": 0,
        "remark": "",
        "tenantId": "tenant-0",
        "partdbId": "p1",
    }
    suspended = [p["id"] for p in phones if p["status"] == 1]
    assert len(suspended) == 10
    assert suspended != list(range(1, 11))  # spread out, not the first N
    assert max(suspended) > 50


def test_legacy_records_and_unknown_statuses() -> None:
    with (
        Simulator(SimConfig(phones=10, mode="legacy")) as sim,
        httpx2.Client(base_url=sim.url, verify=False) as c,
    ):
        result = query(c, get_token(c)).json()["result"]
        assert set(result) == {"total", "regIPAddress", "regPort", "phone"}
        assert all(set(p) == {"phoneNum", "password"} for p in result["phone"])
        sim.update(mode="single", suspended_ratio=0.0, unknown_ratio=1.0)
        phones = query(c, get_token(c)).json()["result"]["phone"]
        assert {p.get("status") for p in phones} == {None, 7}  # missing and out-of-range


def test_numbers_as_strings_and_string_pagination(sim: Simulator, client: httpx2.Client) -> None:
    sim.update(numbers_as_strings=True)
    token = get_token(client)
    result = query(client, token, "100", "100").json()["result"]
    assert result["total"] == "250"
    assert len(result["phone"]) == 100
    assert all(isinstance(p["id"], str) and isinstance(p["status"], str) for p in result["phone"])
    assert result["phone"][0]["id"] == "101"
    query(client, token, 0, 10)
    assert sim.stats()["pagination_types"] == {"number": 1, "string": 1}
    assert sim.stats()["query_requests_by_page"] == {1: 1, 0: 1}


def test_offset_past_the_end_is_an_empty_page(client: httpx2.Client) -> None:
    result = query(client, get_token(client), 300, 100).json()["result"]
    assert result["total"] == 250
    assert result["phone"] == []


@pytest.mark.parametrize(
    "body",
    [
        {"offset": 0, "limit": 101},
        {"offset": 0},
        {"limit": 10},
        {"offset": -1, "limit": 10},
        {"offset": 0, "limit": 0},
        {"offset": "x", "limit": 10},
        {"offset": 0.5, "limit": 10},
        {"offset": True, "limit": 10},
    ],
)
def test_bad_paging_is_ret_code_4(client: httpx2.Client, body: dict[str, object]) -> None:
    r = client.post(QUERY, json=body, headers=auth(get_token(client)))
    assert r.status_code == 200
    assert r.json()["retCode"] == "4"
    assert "result" not in r.json()


def test_non_json_body_is_400_and_unknown_path_404(client: httpx2.Client) -> None:
    r = client.post(QUERY, content=b"nope", headers=auth(get_token(client)))
    assert r.status_code == 400
    assert client.post("/elsewhere", json={}).status_code == 404
    assert client.get(QUERY).status_code == 405


def test_keep_alive_and_tenant_space_ids(sim: Simulator, client: httpx2.Client) -> None:
    token = get_token(client)
    for _ in range(5):
        client.post(
            QUERY,
            json={"offset": 0, "limit": 1},
            headers={**auth(token), "X-TenantSpaceID": "ts-1"},
        )
    stats = sim.stats()
    assert stats["connections"] == 1
    assert stats["tenant_space_ids"] == ["ts-1"]


def test_set_cookie_per_tenant_space_and_cookies_recorded(
    sim: Simulator, client: httpx2.Client
) -> None:
    page, token = {"offset": 0, "limit": 1}, get_token(client)
    assert "set-cookie" not in client.post(QUERY, json=page, headers=auth(token)).headers
    sim.update(set_cookie=True)
    tenant = {**auth(token), "X-TenantSpaceID": "ts-2"}
    r = client.post(QUERY, json=page, headers=tenant)
    assert r.headers["set-cookie"] == "session=ts-2; Path=/"
    assert sim.stats()["cookies"] == []
    client.post(QUERY, json=page, headers={**tenant, "Cookie": "session=x"})
    assert sim.stats()["cookies"] == ["session=x"]


def test_latency_and_concurrency_are_observed(sim: Simulator, client: httpx2.Client) -> None:
    sim.update(latency_ms=150, jitter_ms=20)
    token = get_token(client)
    results: list[int] = []

    def one(page: int) -> None:
        with httpx2.Client(base_url=sim.url, verify=False) as c:
            results.append(query(c, token, page * 10, 10).status_code)

    threads = [threading.Thread(target=one, args=(p,)) for p in range(6)]
    started = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == [200] * 6
    assert 0.15 <= time.monotonic() - started < 1.0
    assert sim.stats()["in_flight_max"] >= 4


def test_deterministic_across_instances() -> None:
    pages = []
    for _ in range(2):
        with (
            Simulator(SimConfig(phones=50, unknown_ratio=0.2)) as sim,
            httpx2.Client(base_url=sim.url, verify=False) as c,
        ):
            pages.append(query(c, get_token(c), 0, 50).json())
    assert pages[0] == pages[1]


def test_large_account_pages_on_the_fly() -> None:
    with (
        Simulator(SimConfig(phones=100_000)) as sim,
        httpx2.Client(base_url=sim.url, verify=False) as c,
    ):
        result = query(c, get_token(c), 99_900, 100).json()["result"]
        assert result["total"] == 100_000
        assert result["phone"][-1]["phoneNum"] == str(88880000 + 99_999)
        assert sim.expected().total == 100_000


# --- faults ----------------------------------------------------------------------------------


def faulted(
    sim: Simulator, client: httpx2.Client, *faults: Fault, page: int = 0
) -> httpx2.Response:
    token = get_token(client)
    sim.set_faults(list(faults))
    return query(client, token, page * 100, 100)


def test_fault_ret_code(sim: Simulator, client: httpx2.Client) -> None:
    r = faulted(sim, client, Fault("ret_code", value="E_LONG_CODE_123"))
    assert r.status_code == 200
    assert r.json()["retCode"] == "E_LONG_CODE_123"
    assert "result" not in r.json()


def test_fault_http_status_with_retry_after(sim: Simulator, client: httpx2.Client) -> None:
    r = faulted(sim, client, Fault("http_status", value=429, retry_after=2))
    assert r.status_code == 429
    assert r.headers["Retry-After"] == "2"
    r = faulted(sim, client, Fault("http_status", value=503, retry_after=0.5))
    assert r.status_code == 503
    assert r.headers["Retry-After"] == "0.5"


def test_fault_only_on_chosen_pages(sim: Simulator, client: httpx2.Client) -> None:
    token = get_token(client)
    sim.add_fault(Fault("http_status", pages=(1,), value=500))
    assert [query(client, token, p * 100, 100).status_code for p in range(3)] == [200, 500, 200]


def test_fault_times_is_spent(sim: Simulator, client: httpx2.Client) -> None:
    token = get_token(client)
    sim.set_faults([Fault("http_status", value=500, times=2)])
    assert [query(client, token).status_code for _ in range(3)] == [500, 500, 200]
    assert sim.faults() == []
    sim.set_faults([Fault("ret_code", value="2", times=3)])
    query(client, token)
    assert sim.faults() == [Fault("ret_code", value="2", times=2)]


def test_shared_numbers_allocate_each_number_once_in_every_tenant(
    sim: Simulator, client: httpx2.Client
) -> None:
    sim.update(phones=9, tenants=3, shared_numbers=True)
    phones = query(client, get_token(client), 0, 100).json()["result"]["phone"]
    pairs = [(p["tenantId"], int(p["phoneNum"]) - 88880000) for p in phones]
    assert sorted(pairs) == [(f"tenant-{t}", n) for t in range(3) for n in range(3)]
    assert len({p["id"] for p in phones}) == 9


def test_fault_no_total_leaves_total_out_of_the_chosen_pages(
    sim: Simulator, client: httpx2.Client
) -> None:
    token = get_token(client)
    sim.set_faults([Fault("no_total", pages=(1, 2))])
    pages = [query(client, token, offset, 100).json()["result"] for offset in (0, 100, 200)]
    assert pages[0]["total"] == 250
    assert "total" not in pages[1]
    assert "total" not in pages[2]
    assert [len(page["phone"]) for page in pages] == [100, 100, 50]
    sim.update(mode="legacy")
    legacy = query(client, token, 100, 100).json()["result"]
    assert "total" not in legacy
    assert legacy["regIPAddress"]


def test_fault_twin_repeats_a_phone_with_another_tenant_and_status(
    sim: Simulator, client: httpx2.Client
) -> None:
    token = get_token(client)
    sim.set_faults([Fault("twin", pages=(2,), value=30), Fault("twin", pages=(1,))])
    pages = [query(client, token, o, 100).json()["result"]["phone"] for o in (0, 100, 200)]
    assert [len(page) for page in pages] == [100, 101, 51]
    for twin, phone in ((pages[2][0], pages[0][30]), (pages[1][0], pages[0][0])):
        assert (twin["id"], twin["phoneNum"]) == (phone["id"], phone["phoneNum"])
        assert (twin["tenantId"], status_name(twin)) != (phone["tenantId"], status_name(phone))


@pytest.mark.parametrize(
    ("fault", "check"),
    [
        (Fault("malformed_json"), lambda r: r.content == b'{"retCode": "0", "result": {'),
        (Fault("not_object"), lambda r: isinstance(r.json(), list)),
        (Fault("not_object", value="string"), lambda r: isinstance(r.json(), str)),
        (Fault("result_wrong_type"), lambda r: r.json()["result"] == "oops"),
        (Fault("result_wrong_type", value="list"), lambda r: r.json()["result"] == []),
        (
            Fault("html"),
            lambda r: r.status_code == 200 and r.headers["content-type"].startswith("text/html"),
        ),
        (Fault("html", value=502), lambda r: r.status_code == 502 and b"<html>" in r.content),
    ],
)
def test_fault_broken_bodies(
    sim: Simulator, client: httpx2.Client, fault: Fault, check: Any
) -> None:
    assert check(faulted(sim, client, fault))


@pytest.mark.parametrize("kind", ["truncated", "close"])
def test_fault_connection_level(sim: Simulator, client: httpx2.Client, kind: str) -> None:
    with pytest.raises(httpx2.RemoteProtocolError):
        faulted(sim, client, Fault(kind))
    sim.clear_faults()
    assert query(client, get_token(client)).status_code == 200  # the client recovers


def test_fault_huge_is_exact_size_valid_json(sim: Simulator, client: httpx2.Client) -> None:
    r = faulted(sim, client, Fault("huge", value=3 * 1024 * 1024 + 7))
    assert len(r.content) == 3 * 1024 * 1024 + 7
    assert r.json()["retCode"] == "0"


def test_fault_huge_ret_msg(sim: Simulator, client: httpx2.Client) -> None:
    answer = faulted(sim, client, Fault("huge_ret_msg", value=2_000_000)).json()
    assert answer == {"retCode": "1", "retMsg": "query failed: " + "x" * 2_000_000}


def test_fault_slow_and_hang(sim: Simulator, client: httpx2.Client) -> None:
    started = time.monotonic()
    assert faulted(sim, client, Fault("slow", value=0.3)).status_code == 200
    assert time.monotonic() - started >= 0.3
    token = get_token(client)
    sim.set_faults([Fault("hang")])
    with pytest.raises(httpx2.ReadTimeout):
        client.post(QUERY, json={"offset": 0, "limit": 1}, headers=auth(token), timeout=0.3)


def test_fault_total_shift_and_duplicate(sim: Simulator, client: httpx2.Client) -> None:
    token = get_token(client)
    sim.set_faults([Fault("total_shift", pages=(1,), value=-5), Fault("duplicate", pages=(1,))])
    first = query(client, token, 0, 100).json()["result"]
    second = query(client, token, 100, 100).json()["result"]
    assert first["total"] == 250
    assert second["total"] == 245
    assert len(second["phone"]) == 101
    assert second["phone"][0] == first["phone"][0]  # same id, repeated from the previous page


def test_fault_short_page_and_shift(sim: Simulator, client: httpx2.Client) -> None:
    token = get_token(client)
    sim.set_faults([Fault("shift", pages=(1,)), Fault("short_page", pages=(2,), value=3)])
    pages = [query(client, token, offset, 100).json()["result"] for offset in (0, 100, 200)]
    assert [page["total"] for page in pages] == [250, 250, 250]
    numbers = [[int(p["phoneNum"]) - 88880000 for p in page["phone"]] for page in pages]
    # Shifted back by one: the previous page's last phone again, this page's last one never.
    assert numbers[1] == list(range(99, 199))
    assert numbers[2] == list(range(200, 247))  # three short, total unchanged
    assert len(set(numbers[0] + numbers[1] + numbers[2])) == 250 - 1 - 3


@pytest.mark.parametrize(
    ("fault", "check"),
    [
        (Fault("http_status", api="tokenByAkSk", value=500), lambda r: r.status_code == 500),
        (Fault("no_access_token", api="tokenByAkSk"), lambda r: "AccessToken" not in r.json()),
        (Fault("bad_expires", api="tokenByAkSk"), lambda r: r.json()["Expires"] == "soon"),
        (
            Fault("malformed_json", api="tokenByAkSk"),
            lambda r: r.status_code == 200 and not r.content.endswith(b"}"),
        ),
        (Fault("slow", api="tokenByAkSk", value=0.1), lambda r: "AccessToken" in r.json()),
    ],
)
def test_token_faults(sim: Simulator, client: httpx2.Client, fault: Fault, check: Any) -> None:
    token = get_token(client)
    sim.set_faults([fault])
    assert check(client.post(TOKEN, json=CREDS))
    assert query(client, token).status_code == 200  # faults on tokenByAkSk leave queryPhone alone


def test_token_hang(sim: Simulator, client: httpx2.Client) -> None:
    sim.set_faults([Fault("hang", api="tokenByAkSk", times=1)])
    with pytest.raises(httpx2.ReadTimeout):
        client.post(TOKEN, json=CREDS, timeout=0.3)


def test_stop_releases_a_hanging_request_promptly() -> None:
    sim = Simulator(SimConfig(phones=10)).start()
    with httpx2.Client(base_url=sim.url, timeout=10, verify=False) as client:
        token = get_token(client)
        sim.set_faults([Fault("hang")])
        errors: list[BaseException] = []

        def call() -> None:
            try:
                query(client, token)
            except httpx2.HTTPError as exc:
                errors.append(exc)

        thread = threading.Thread(target=call)
        thread.start()
        time.sleep(0.2)
        started = time.monotonic()
        sim.stop()
        thread.join(2)
        assert not thread.is_alive()
        assert time.monotonic() - started < 1.0
        assert errors
        assert isinstance(errors[0], httpx2.RemoteProtocolError | httpx2.ReadError)
    with pytest.raises(httpx2.ConnectError):
        httpx2.post(sim.url + TOKEN, json=CREDS, verify=False)


def test_parse_faults() -> None:
    assert parse_faults({"kind": "close"}) == [Fault("close")]
    assert parse_faults('[{"kind": "ret_code", "value": 3, "pages": [1, 2], "times": 1}]') == [
        Fault("ret_code", pages=(1, 2), value="3", times=1)
    ]
    assert parse_faults([{"kind": "http_status", "value": 429, "retry_after": 1, "pages": 0}]) == [
        Fault("http_status", pages=(0,), value=429, retry_after=1)
    ]
    # Token-only kinds need no "api": it can only be tokenByAkSk.
    for kind in ("no_access_token", "bad_expires"):
        assert parse_faults({"kind": kind}) == [Fault(kind, api="tokenByAkSk")]
    bad = [
        ({"kind": "explode"}, "kind"),
        ({"kind": "no_access_token", "api": "queryPhone"}, "does not apply"),
        ({"kind": "no_access_token", "pages": [0]}, "only queryPhone requests have pages"),
        ({"kind": "close", "colour": 1}, "unknown field"),
        ({"value": 1}, "missing 'kind'"),
        ({"kind": "ret_code", "api": "tokenByAkSk"}, "does not apply"),
        ({"kind": "close", "api": "tokenByAkSk", "pages": [1]}, "pages"),
        ({"kind": "http_status", "value": 9999}, "value"),
        ({"kind": "close", "times": 0}, "times"),
        ({"kind": "close", "pages": [-1]}, "pages"),
        ("{not json", "JSON"),
        (42, "expected"),
    ]
    for data, words in bad:
        with pytest.raises(ValueError, match=words):
            parse_faults(data)


# --- config and control endpoints ------------------------------------------------------------


def test_update_validates(sim: Simulator) -> None:
    sim.update(phones=10, suspended_ratio=0.5, mode="pool", latency_ms=0)
    assert sim.config.phones == 10
    assert sim.config.mode == "pool"
    for changes, words in [
        ({"bogus": 1}, "unknown config field"),
        ({"mode": "cluster"}, "mode"),
        ({"phones": -1}, "phones"),
        ({"phones": "10"}, "phones"),
        ({"suspended_ratio": 0.7, "unknown_ratio": 0.7}, "must not exceed 1"),
    ]:
        with pytest.raises(ValueError, match=words):
            sim.update(**changes)
    assert sim.config.phones == 10


def test_control_endpoints(sim: Simulator, client: httpx2.Client) -> None:
    state = client.get("/_sim/state").json()
    assert set(state) == {"config", "stats", "expected", "faults"}
    assert state["config"]["phones"] == 250
    assert state["expected"]["total"] == 250
    assert sum(c["count"] for c in state["expected"]["counts"]) == 250
    assert state["expected"]["endpoints"][0]["reg_ip"] == "10.10.0.10"
    for key in [
        "token_requests",
        "tokens_issued",
        "query_requests",
        "query_requests_by_page",
        "connections",
        "pagination_types",
        "token_expire_requested",
        "tenant_space_ids",
        "unauthorized",
        "in_flight_max",
    ]:
        assert key in state["stats"]

    r = client.put("/_sim/faults", json=[{"kind": "ret_code", "value": "1", "pages": [0]}])
    assert r.status_code == 200
    assert len(r.json()["faults"]) == 1
    r = client.post("/_sim/faults", json={"kind": "slow", "value": 0.01})
    assert len(r.json()["faults"]) == 2
    assert query(client, get_token(client)).json()["retCode"] == "1"
    assert client.put("/_sim/faults", json={"kind": "close"}).status_code == 400
    assert client.post("/_sim/faults", json={"kind": "nope"}).status_code == 400
    assert client.delete("/_sim/faults").json() == {"faults": []}

    r = client.patch("/_sim/config", json={"suspended_ratio": 0.5, "phones": 100})
    assert r.status_code == 200
    assert r.json()["config"]["phones"] == 100
    assert sim.expected().total == 100
    for bad in [{"nope": 1}, {"suspended_ratio": 2}, {"mode": 3}]:
        r = client.patch("/_sim/config", json=bad)
        assert r.status_code == 400
        assert r.json()["error"]
    assert client.patch("/_sim/config", content=b"{").status_code == 400

    assert client.post("/_sim/reset-stats").json() == {"ok": True}
    stats = client.get("/_sim/state").json()["stats"]
    assert stats["query_requests"] == 0
    assert stats["query_requests_by_page"] == {}
    assert client.get("/_sim/reset-stats").status_code == 405
    assert client.get("/_sim/nothing").status_code == 404
    json.dumps(sim.stats())  # JSON-able from Python too
