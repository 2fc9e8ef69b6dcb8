"""Change counters: per-phone status and allocation changes between successful collections.

A real simulator changes its phone list between collections (``POST /_sim/phones``),
a real exporter scrapes it over loopback, and the counters are read from ``/metrics``.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from collection_invariants import changes_between
from hypothesis import given
from hypothesis import strategies as st
from support import RunningExporter, run_cli, sample, samples_named, softphone_counts, target_entry
from support_procs import HealthWatch

from exporter.cec.records import Page
from exporter.cec.roster import compare
from exporter.cec.snapshot import Deduplicated, SnapshotBuilder
from exporter.scrape.changes import ChangeTracker
from exporter.simulator import Fault, Simulator

STATUS = "cec_softphone_status_changes_total"
ALLOCATION = "cec_softphone_allocation_changes_total"
PAIRS = {
    (a, b)
    for a in ("registered", "suspended", "unknown")
    for b in ("registered", "suspended", "unknown")
    if a != b
}

Tally = dict[tuple[str, ...], float]


def status_changes(text: str, target: str = "sim") -> Tally:
    """Non-zero status change counters of ``target``: (tenant_id, from, to) -> value."""
    return {
        (labels["tenant_id"], labels["from"], labels["to"]): value
        for labels, value in samples_named(text, STATUS)
        if labels["target"] == target and value
    }


def allocation_changes(text: str, target: str = "sim") -> Tally:
    """Non-zero allocation change counters of ``target``: (tenant_id, change) -> value."""
    return {
        (labels["tenant_id"], labels["change"]): value
        for labels, value in samples_named(text, ALLOCATION)
        if labels["target"] == target and value
    }


def expected_changes(touched: list[dict[str, Any]]) -> tuple[Tally, Tally]:
    """What the counters should add for the phones the simulator says it touched."""
    status: Counter[tuple[str, ...]] = Counter()
    allocation: Counter[tuple[str, ...]] = Counter()
    for phone in touched:
        before, after = phone["before"], phone["after"]
        if before is None:
            allocation[(after["tenant_id"], "added")] += 1
        elif after is None:
            allocation[(before["tenant_id"], "removed")] += 1
        elif before["tenant_id"] != after["tenant_id"]:
            allocation[(before["tenant_id"], "removed")] += 1
            allocation[(after["tenant_id"], "added")] += 1
        else:
            status[(after["tenant_id"], before["status"], after["status"])] += 1
    return {k: float(n) for k, n in status.items()}, {k: float(n) for k, n in allocation.items()}


Serve = Callable[..., tuple[Simulator, RunningExporter]]


@pytest.fixture
def serve(
    simulator: Callable[..., Simulator],
    write_config: Callable[..., Path],
    exporter_server: Callable[..., RunningExporter],
) -> Serve:
    """Factory: a simulator of 300 phones in 3 tenants and an exporter with one target on it."""

    def start(**settings: Any) -> tuple[Simulator, RunningExporter]:
        sim = simulator(phones=300, tenants=3, suspended_ratio=0.2)
        return sim, exporter_server(write_config(targets=[target_entry(sim, **settings)]))

    return start


def assert_counted(text: str, status: Tally, allocation: Tally) -> None:
    assert (status_changes(text), allocation_changes(text)) == (status, allocation)


def test_the_baseline_counts_nothing_and_every_series_starts_at_zero(serve: Serve) -> None:
    _, exp = serve()
    for _ in range(2):  # the baseline, then the same phones again
        text = exp.metrics()
        series = samples_named(text, STATUS)
        tenants = {"tenant-0", "tenant-1", "tenant-2"}
        assert {(s["tenant_id"], s["from"], s["to"]) for s, _ in series} == {
            (t, *pair) for t in tenants for pair in PAIRS
        }
        changes = {(s["tenant_id"], s["change"]) for s, _ in samples_named(text, ALLOCATION)}
        assert changes == {(t, c) for t in tenants for c in ("added", "removed")}
        assert_counted(text, {}, {})
    assert exp.metrics("/probe?target=sim").count(ALLOCATION + "{") == 6


def test_suspended_removed_added_and_moved_phones_are_counted_per_tenant(serve: Serve) -> None:
    sim, exp = serve()
    exp.metrics()
    touched = sim.change_phones("suspend", 10, tenant="tenant-1")
    touched += sim.change_phones("remove", 5, tenant="tenant-2")
    touched += sim.change_phones("add", 5, tenant="tenant-0")
    text = exp.metrics()
    assert softphone_counts(text) == {k: float(n) for k, n in sim.expected().counts.items()}
    assert_counted(
        text,
        {("tenant-1", "registered", "suspended"): 10},
        {("tenant-2", "removed"): 5, ("tenant-0", "added"): 5},
    )
    assert expected_changes(touched) == (status_changes(text), allocation_changes(text))
    moved = sim.change_phones("move", 3, tenant="tenant-0", to="brand-new")
    text = exp.metrics()
    assert_counted(  # a moved phone: removed from one tenant, added to the other
        text,
        {("tenant-1", "registered", "suspended"): 10},
        {
            ("tenant-2", "removed"): 5,
            ("tenant-0", "added"): 5,
            ("tenant-0", "removed"): 3,
            ("brand-new", "added"): 3,
        },
    )
    assert len(moved) == 3
    assert (
        sample(
            text,
            STATUS,
            target="sim",
            tenant_id="brand-new",
            **{"from": "unknown", "to": "registered"},
        )
        == 0
    )


def test_flapping_phones_are_counted_while_the_suspended_count_stays_flat(serve: Serve) -> None:
    sim, exp = serve()
    before = exp.metrics()
    touched = sim.change_phones("flap", 10, tenant="tenant-0")  # 10 suspended, 10 back
    text = exp.metrics()
    assert softphone_counts(text) == softphone_counts(before)  # every gauge flat
    status, allocation = expected_changes(touched)
    assert len(touched) == 20
    assert sum(status.values()) == 20
    assert not allocation
    assert_counted(text, status, {})


def test_a_failure_in_between_keeps_the_baseline_and_is_compared_once(serve: Serve) -> None:
    sim, exp = serve()
    exp.metrics()
    sim.change_phones("suspend", 4, tenant="tenant-0")
    sim.add_fault(Fault("ret_code", value="1", pages=(1,), times=1))
    failed = exp.metrics()
    assert sample(failed, "cec_up", target="sim") == 0
    assert samples_named(failed, STATUS) == []
    assert samples_named(failed, ALLOCATION) == []
    sim.change_phones("remove", 2, tenant="tenant-1")
    for _ in range(2):  # compared with the last success once; then nothing new
        text = exp.metrics()
        assert sample(text, "cec_up", target="sim") == 1
        assert_counted(
            text, {("tenant-0", "registered", "suspended"): 4}, {("tenant-1", "removed"): 2}
        )


@pytest.mark.slow
def test_cache_hits_and_coalesced_scrapes_count_nothing_again(serve: Serve) -> None:
    ttl = 3.0
    sim, exp = serve(cache_ttl_seconds=ttl)
    exp.metrics()
    collected = time.monotonic()
    sim.change_phones("suspend", 6)
    for _ in range(3):  # served from the cache: no collection, nothing compared
        assert_counted(exp.metrics(), {}, {})
    assert time.monotonic() - collected < ttl, "the scrapes above must be cache hits"
    time.sleep(max(0.0, collected + ttl + 0.2 - time.monotonic()))
    status = status_changes(exp.metrics())  # a real collection, counted once
    assert sum(status.values()) == 6
    assert status_changes(exp.metrics()) == status  # the cached answer counts nothing again
    sim.update(latency_ms=150)
    sim.change_phones("flap", 2)
    time.sleep(ttl + 0.2)
    sim.reset_stats()
    with concurrent.futures.ThreadPoolExecutor(6) as pool:  # six scrapes, one collection
        texts = list(pool.map(lambda _: exp.metrics("/probe?target=sim"), range(6)))
    assert sim.stats()["query_requests_by_page"] == {0: 1, 1: 1, 2: 1}, "not one collection"
    for text in texts:  # each scrape shows the one comparison, counted once
        assert sum(status_changes(text).values()) == 6 + 4
    after = status_changes(exp.metrics())
    assert sum(after.values()) == 6 + 4
    assert sim.stats()["query_requests_by_page"] == {0: 1, 1: 1, 2: 1}  # from the cache


def test_a_reload_that_changes_the_target_starts_a_new_baseline(
    simulator: Callable[..., Simulator],
    write_config: Callable[..., Path],
    exporter_server: Callable[..., RunningExporter],
) -> None:
    sim = simulator(phones=300, tenants=3, suspended_ratio=0.2)
    config = write_config(targets=[target_entry(sim), target_entry(sim, name="other")])
    exp = exporter_server(config)
    exp.metrics()
    sim.change_phones("suspend", 3)
    text = exp.metrics()
    assert sum(status_changes(text).values()) == 3
    config.write_text(
        write_config(targets=[target_entry(sim), target_entry(sim, name="other")]).read_text()
    )
    assert exp.client.post(exp.url + "/-/reload").status_code == 200  # same targets: kept
    assert sum(status_changes(exp.metrics()).values()) == 3
    changed = write_config(targets=[target_entry(sim, timeout_seconds=9)])
    config.write_text(changed.read_text())  # "sim" changes, "other" leaves the config
    assert exp.client.post(exp.url + "/-/reload").status_code == 200
    sim.change_phones("suspend", 2)
    text = exp.metrics()  # the new collector's first success: a baseline again
    assert_counted(text, {}, {})
    assert samples_named(text, STATUS)
    assert not status_changes(text, "other")
    assert {s["target"] for s, _ in samples_named(text, ALLOCATION)} == {"sim"}
    sim.change_phones("register", 1)
    assert sum(status_changes(exp.metrics()).values()) == 1


def test_per_phone_metrics_do_not_change_the_counts(
    simulator: Callable[..., Simulator],
    write_config: Callable[..., Path],
    exporter_server: Callable[..., RunningExporter],
) -> None:
    sim = simulator(phones=300, tenants=3, suspended_ratio=0.2)
    targets = [target_entry(sim), target_entry(sim, name="each", per_phone_metrics=True)]
    exp = exporter_server(write_config(targets=targets))
    exp.metrics()
    sim.change_phones("flap", 5, tenant="tenant-2")
    sim.change_phones("remove", 2)
    sim.change_phones("add", 3, tenant="tenant-1")
    text = exp.metrics()
    assert status_changes(text, "each") == status_changes(text) != {}
    assert allocation_changes(text, "each") == allocation_changes(text) != {}


def test_the_same_number_in_two_tenants_is_two_phones(serve: Serve) -> None:
    sim, exp = serve(per_phone_metrics=True)
    sim.change_phones("add", 1, tenant="other", number="88880000")  # tenant-0 has it too
    exp.metrics()
    sim.change_phones("suspend", 1, tenant="other")
    text = exp.metrics()
    assert_counted(text, {("other", "registered", "suspended"): 1}, {})
    sim.change_phones("remove", 1, tenant="other")
    text = exp.metrics()
    assert_counted(text, {("other", "registered", "suspended"): 1}, {("other", "removed"): 1})
    registered = samples_named(text, "cec_softphone_registered")
    assert [s["tenant_id"] for s, _ in registered if s["phone_num"] == "88880000"] == ["tenant-0"]


def test_the_debug_probe_lists_the_changes_of_its_collection(serve: Serve) -> None:
    sim, exp = serve(per_phone_metrics=True)
    debug = "/probe?target=sim&debug=true"
    assert "none counted: this is the baseline" in exp.metrics(debug)
    suspended = sim.change_phones("suspend", 3, tenant="tenant-1")
    removed = sim.change_phones("remove", 2, tenant="tenant-2")
    report = exp.metrics(debug)
    changes = report.split("Changes since the previous success:\n", 1)[1].split("\n\n", 1)[0]
    lines = changes.splitlines()
    assert lines[:2] == [
        "  tenant 'tenant-1': registered -> suspended 3",
        "  tenant 'tenant-2': removed 2",
    ]
    numbers = [p["before"]["phone_num"] for p in (*suspended, *removed)]
    assert lines[2:] == [
        *(f"  e.g. {n} in tenant 'tenant-1' is not registered now" for n in numbers[:3]),
        *(f"  e.g. {n} removed from tenant 'tenant-2'" for n in numbers[3:]),
    ]
    assert "  no phone changed" in exp.metrics(debug)
    sim.add_fault(Fault("ret_code", value="1", times=1))
    assert "none compared: a failed collection keeps the last success" in exp.metrics(debug)


def test_scrape_debug_says_its_one_collection_is_a_baseline(
    simulator: Callable[..., Simulator], write_config: Callable[..., Path]
) -> None:
    sim = simulator(phones=50)
    result = run_cli(
        "scrape", "--config", str(write_config(targets=[target_entry(sim)])), "--debug"
    )
    assert result.returncode == 0, result.stderr
    assert (
        "Changes since the previous success:\n  none counted: this is the baseline" in result.stdout
    )


# --- the comparison itself, against a plain dict diff ------------------------------------------

_VALUE = st.tuples(st.sampled_from(["", "t1", "t2"]), st.sampled_from([0, 1, 7, None]))
_PHONES = st.dictionaries(
    # a 64-bit key as hash() makes it, odd: KeySet keeps 63 bits (keys 2k and 2k+1 are one)
    st.integers(min_value=-(2**63), max_value=2**63 - 1).map(lambda key: key | 1),
    _VALUE,
    max_size=60,
)
Phones = dict[int, tuple[str, int | None]]


def fold(phones: Phones, last: Deduplicated | None = None) -> SnapshotBuilder:
    """A collection of these phones (key -> tenant, status code) folded in pages of 100, as
    the client folds the one after ``last``."""
    builder = SnapshotBuilder.after(last)
    items = list(phones.items())
    for offset in range(0, len(items), 100):
        page = items[offset : offset + 100]
        keys = tuple(key for key, _ in page)
        tenants = tuple(tenant for _, (tenant, _) in page)
        codes = tuple(code for _, (_, code) in page)
        builder.add(Page("0", "", len(items), (), keys, ("",) * len(keys), tenants, codes), offset)
    return builder


def status_name(code: int | None) -> str:
    return {0: "registered", 1: "suspended"}.get(code, "unknown") if code is not None else "unknown"


@given(
    before=_PHONES,
    removed=st.integers(min_value=0, max_value=10),
    edits=st.lists(st.tuples(st.integers(min_value=0, max_value=59), _VALUE), max_size=20),
    new=_PHONES,
)
def test_compare_matches_a_plain_diff(
    before: Phones, removed: int, edits: list[tuple[int, tuple[str, int | None]]], new: Phones
) -> None:
    keys = list(before)
    after = dict(list(before.items())[removed:])
    after.update({keys[i]: value for i, value in edits if i < len(keys)})
    after.update(new)
    named = {  # the plain diff of the invariant test, on named statuses
        key: {phone: (tenant, status_name(code)) for phone, (tenant, code) in phones.items()}
        for key, phones in (("before", before), ("after", after))
    }
    diff = changes_between(named["before"], named["after"])
    status = {change: n for change, n in diff.items() if len(change) == 3}
    allocation = {change: n for change, n in diff.items() if len(change) == 2}
    first = fold(before).deduplicated
    for second in (fold(after), fold(after, first)):  # tenants in any order, or the same
        found = compare(first.roster, second.deduplicated.roster)
        assert (found.status, found.allocation) == (dict(status), dict(allocation))
    assert fold(before, first).deduplicated is first  # the same listing: taken over
    shuffled = fold(dict(reversed(before.items())), first).deduplicated
    assert compare(first.roster, shuffled.roster).total == 0  # the same phones in another order


@pytest.mark.slow
def test_a_million_phone_comparison_leaves_the_loop_free_to_answer(
    simulator: Callable[..., Simulator],
    write_config: Callable[..., Path],
    exporter_server: Callable[..., RunningExporter],
) -> None:
    """Comparing a million phones takes half a second: in steps, the exporter's loop answers
    ``/-/healthy`` between them (it stalled for the whole of it)."""
    exp = exporter_server(write_config(targets=[target_entry(simulator(phones=1))]))
    tenants = ("t0", "t1", "t2")
    phones: Phones = {hash(("id", n)) | 1: (tenants[n % 3], n % 2) for n in range(1_000_000)}
    tracker = ChangeTracker()
    first = fold(phones)
    exp.exporter.run(tracker.observe(first.build()))  # the baseline
    for key in list(phones)[::100]:  # 10,000 phones change status
        phones[key] = (phones[key][0], 1 - (phones[key][1] or 0))
    second = fold(phones, first.deduplicated).build()
    with HealthWatch(exp.url) as health:
        observed = asyncio.run_coroutine_threadsafe(tracker.observe(second), exp.exporter.loop)
        found = observed.result(timeout=60)[1].found
    assert found is not None
    assert found.total == 10_000
    assert health.answers > 5, "the comparison ended before it could be watched"
    assert health.worst < 0.05, f"/-/healthy took up to {health.worst:.3f} s"
