"""The simulator's phone list changing between collections: ``POST /_sim/phones``.

Phones are suspended, re-registered, flapped, removed, added and moved; the pages it
serves afterwards and its ground truth (``/_sim/state``) must agree, over real HTTP.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from typing import Any

import httpx2
import pytest
from hypothesis import given
from hypothesis import strategies as st

from exporter.simulator import SimConfig, Simulator, model
from exporter.simulator.edits import ACTIONS, Change, PhoneEdits

TOKEN = "/apigovernance/api/oauth/tokenByAkSk"
QUERY = "/apiaccess/CC-Management/v2/mobileAgent/queryPhone"
STATUS = {0: "registered", 1: "suspended"}


@pytest.fixture
def sim() -> Iterator[Simulator]:
    with Simulator(SimConfig(phones=120, tenants=3, suspended_ratio=0.25, mode="pool")) as s:
        yield s


@pytest.fixture
def client(sim: Simulator) -> Iterator[httpx2.Client]:
    with httpx2.Client(base_url=sim.url, timeout=5) as c:
        yield c


def records(client: httpx2.Client, sim: Simulator, limit: int = 7) -> list[dict[str, Any]]:
    """Every phone record, paged as the exporter pages (``limit`` apart, to cross edits)."""
    creds = {"app_key": sim.config.app_key, "app_secret": sim.config.app_secret}
    token = client.post(TOKEN, json=creds).json()["AccessToken"]
    headers = {"Authorization": f"Bearer {token}", "X-APP-Key": sim.config.app_key}
    found: list[dict[str, Any]] = []
    total, offset = 1, 0
    while offset < total:
        body = client.post(QUERY, json={"offset": offset, "limit": limit}, headers=headers).json()
        total = body["result"]["total"]
        found += body["result"]["phone"]
        offset += limit
    assert len(found) == total
    return found


def tally(found: list[dict[str, Any]]) -> dict[tuple[str, str], int]:
    return dict(Counter((r["tenantId"], STATUS.get(r.get("status"), "unknown")) for r in found))


def steer(client: httpx2.Client, **change: Any) -> list[dict[str, Any]]:
    response = client.post("/_sim/phones", json=change)
    assert response.status_code == 200, response.text
    phones: list[dict[str, Any]] = response.json()["phones"]
    return phones


def by_number(found: list[dict[str, Any]]) -> dict[tuple[str, object], dict[str, Any]]:
    return {(r["phoneNum"], r["id"]): r for r in found}


def test_each_action_changes_the_pages_and_the_ground_truth_alike(
    sim: Simulator, client: httpx2.Client
) -> None:
    before = records(client, sim)
    suspended = steer(client, action="suspend", count=4, tenant="tenant-1")
    assert [(p["before"]["status"], p["after"]["status"]) for p in suspended] == [
        ("registered", "suspended")
    ] * 4
    assert {p["after"]["tenant_id"] for p in suspended} == {"tenant-1"}
    flapped = steer(client, action="flap", count=3, tenant="tenant-0")
    assert Counter(p["after"]["status"] for p in flapped) == {"suspended": 3, "registered": 3}
    registered = steer(client, action="register", count=2)
    removed = steer(client, action="remove", count=5, tenant="tenant-2")
    added = steer(client, action="add", count=4, tenant="tenant-9")
    moved = steer(client, action="move", count=2, tenant="tenant-0", to="tenant-1")
    after = records(client, sim)
    assert len(after) == len(before) - 5 + 4 == sim.config.phones
    assert tally(after) == sim.expected().counts
    state = client.get("/_sim/state").json()
    assert state["expected"]["total"] == len(after)
    numbers = {r["phoneNum"] for r in after}
    assert not {p["before"]["phone_num"] for p in removed} & numbers
    assert {p["after"]["phone_num"] for p in added} <= numbers
    assert [
        r["tenantId"] for r in after if r["phoneNum"] in {p["after"]["phone_num"] for p in added}
    ] == ["tenant-9"] * 4
    old, new = by_number(before), by_number(after)
    assert len(set(old) & set(new)) == len(before) - 5  # every id kept: the same phones
    last = {
        p["after"]["phone_num"]: p["after"] for p in (*suspended, *flapped, *registered, *moved)
    }
    for record in after:  # a phone touched twice shows what the later change made of it
        if record["phoneNum"] in last:
            want = last[record["phoneNum"]]
            assert (record["tenantId"], STATUS[record["status"]]) == (
                want["tenant_id"],
                want["status"],
            )


def test_an_added_phone_may_share_a_number_with_another_tenant(
    sim: Simulator, client: httpx2.Client
) -> None:
    added = steer(client, action="add", count=1, tenant="other", number="88880000")
    twins = [r for r in records(client, sim) if r["phoneNum"] == "88880000"]
    assert [r["tenantId"] for r in twins] == ["tenant-0", "other"]
    assert twins[0]["id"] != twins[1]["id"]
    assert added[0]["before"] is None


@pytest.mark.parametrize(
    ("change", "words"),
    [
        ({"action": "explode", "count": 1}, "action"),
        ({"action": "suspend", "count": 0}, "count"),
        ({"action": "suspend", "count": True}, "count"),
        ({"action": "move", "count": 1, "tenant": "tenant-0"}, "move"),
        ({"action": "suspend", "count": 1, "tenant": 3}, "tenant"),
        ({"action": "remove", "count": 1, "colour": "red"}, "unknown field"),
        ({"action": "remove", "count": 121}, "only 120"),
        ({"action": "flap", "count": 1, "tenant": "nobody"}, "only 0"),
        ([], "one object"),
    ],
)
def test_a_bad_change_is_400_and_changes_nothing(
    sim: Simulator, client: httpx2.Client, change: object, words: str
) -> None:
    response = client.post("/_sim/phones", json=change)
    assert response.status_code == 400
    assert words in response.json()["error"]
    assert sim.config.edits == PhoneEdits()
    assert sim.config.phones == 120


def test_the_roster_is_steered_only_through_its_endpoint(
    sim: Simulator, client: httpx2.Client
) -> None:
    response = client.patch("/_sim/config", json={"edits": {}})
    assert response.status_code == 400
    assert "/_sim/phones" in response.json()["error"]
    sim.update(mode="legacy")
    response = client.post("/_sim/phones", json={"action": "suspend", "count": 1})
    assert response.status_code == 400
    sim.change_phones("remove", 3)
    assert len(records(client, sim)) == 117 == sim.expected().counts[("", "unknown")]
    assert client.delete("/_sim/phones").json() == {"phones": [], "total": 117}
    assert sim.config.edits == PhoneEdits()
    assert [r["phoneNum"] for r in records(client, sim)][:2] == ["88880000", "88880001"]


@given(
    removed=st.sets(st.integers(min_value=0, max_value=60), max_size=30),
    start=st.integers(min_value=0, max_value=40),
    count=st.integers(min_value=0, max_value=20),
)
def test_listed_indices_skip_exactly_the_removed_ones(
    removed: set[int], start: int, count: int
) -> None:
    edits = PhoneEdits(removed=tuple(sorted(removed)))
    listed = [i for i in range(200) if i not in removed]
    assert list(edits.indices(start, start + count)) == listed[start : start + count]
    assert edits.index(start) == listed[start]


def page(config: SimConfig, offset: int, limit: int) -> list[dict[str, Any]]:
    phones = model.page_result(config, offset, limit)["phone"]
    assert isinstance(phones, list)
    return phones


@given(
    changes=st.lists(
        st.tuples(
            st.sampled_from(ACTIONS),
            st.integers(min_value=1, max_value=6),
            st.sampled_from([None, "tenant-0", "tenant-1", "new"]),
        ),
        max_size=8,
    )
)
def test_any_sequence_of_changes_keeps_pages_and_ground_truth_in_step(
    changes: list[tuple[str, int, str | None]],
) -> None:
    config = SimConfig(phones=40, tenants=2, suspended_ratio=0.3, unknown_ratio=0.1)
    for action, count, tenant in changes:
        extra = {"tenant": tenant or "tenant-0", "to": "tenant-1"} if action == "move" else {}
        change = Change.parse({"action": action, "count": count, "tenant": tenant, **extra})
        try:
            config, _ = model.steer(config, change)
        except ValueError:  # fewer phones match than asked: nothing changes
            continue
    whole = page(config, 0, config.phones + 1)
    assert [r for at in range(0, config.phones, 7) for r in page(config, at, 7)] == whole
    assert len(whole) == config.phones == model.expected(config).total
    assert len({(r["id"], r["phoneNum"]) for r in whole}) == len(whole)
    assert tally(whole) == model.expected(config).counts
